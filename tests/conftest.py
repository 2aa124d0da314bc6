"""Shared test setup: keep torch to one thread per test process so the suite fits 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub

import torch  # noqa: E402

torch.set_num_threads(1)

# The longest files first, so that the two xdist workers (pyproject's addopts) start them at once and
# the short files fill in around them: the SLURM drills wait on the scheduler most of their time.
FIRST = ("test_slurm.py", "test_paper_smoke.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the order inside each file is kept
