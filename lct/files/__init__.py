"""Files the runs write and read: downloads, checkpoints, the training log."""
