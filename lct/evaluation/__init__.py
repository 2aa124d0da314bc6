"""Metric networks, FID and Recall, the evaluation of one cell."""
