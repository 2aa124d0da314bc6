"""Shared test setup: keep torch to one thread per test process so the suite fits 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub

import torch  # noqa: E402

torch.set_num_threads(1)
