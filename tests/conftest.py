"""Shared test setup: keep torch to one thread per test process so the suite fits 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a hub
# These machines have no GPU: `lct train --gpus N` refuses to fall back to CPU ranks unless told so
# (LCT_DEVICE=cpu, what `--device cpu` says); every test, its subprocesses and its SLURM jobs run so.
os.environ.setdefault("LCT_DEVICE", "cpu")

import torch  # noqa: E402

torch.set_num_threads(1)

# The longest files first, so that the two xdist workers (pyproject's addopts) start them at once and
# the short files fill in around them: the SLURM drills wait on the scheduler most of their time.
# pytest-xdist's loadfile queue is ordered by the number of tests in a file, so the order is set here.
FIRST = ("test_slurm.py", "test_paper_smoke.py")


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    class LongFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            for scope in [s for s in self.workqueue if s.split("::")[0].endswith(FIRST)][::-1]:
                self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return LongFilesFirst(config, log)
