"""A training run and its model: building, EMA, batches, the loop, sampling, Figure 1 statistics."""
