"""Time to write the paper-size training state (weights, EMA, RAdam moments) where the runs will live.

    python benchmarks/checkpoint.py --dir runs/          # on the cluster's shared file system
    python benchmarks/checkpoint.py --size tiny --dir /tmp

Writes one checkpoint the way `lct train` does (lct.files.checkpoint.save_atomic: temp file, fsync, rename)
and prints its size, the write time, the speed, and the stop budget it implies next to the one the
code uses: on SIGTERM (the profile's --signal=TERM@300) the ranks finish the step, rank 0 writes the
checkpoint, and torchrun waits `lct.run.train.SHUTDOWN_TIMEOUT_S` for them before SIGKILL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lct.files import checkpoint as ckio  # noqa: E402
from lct.config import resolve_experiment  # noqa: E402
from lct.run.model import EMA, build_model, make_optimizer  # noqa: E402
from lct.run.train import ASSUMED_WRITE_MB_S, SHUTDOWN_TIMEOUT_S  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    p.add_argument("--size", default="paper", help="UNet size")
    p.add_argument("--step-s", type=float, default=1.0, help="seconds of one training step (to finish before saving)")
    a = p.parse_args(argv)
    cfg = resolve_experiment("slct", {"network": {"size": a.size}, "train": {"total_steps": 10}}, reading="as_coded")
    model = build_model(cfg, 32, 4)
    ema, opt = EMA(model, cfg.train.ema_decays), make_optimizer(cfg, model.parameters())
    for q in model.parameters():  # optimizer moments exist after the first step
        q.grad = torch.zeros_like(q)
    opt.step()
    state = {"kind": "checkpoint", "config": cfg.to_dict(), "step": 1, "model": model.state_dict(),
             "ema": ema.state_dict(), "optimizer": opt.state_dict()}
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        t0 = time.perf_counter()
        path = ckio.save_atomic(state, Path(tmp) / "ckpt-00000001.pt")
        secs = time.perf_counter() - t0
        mb = path.stat().st_size / 2**20
    need = a.step_s + mb / ASSUMED_WRITE_MB_S
    print(f"checkpoint of UNet {a.size!r}: {mb:,.0f} MB written in {secs:.2f} s ({mb / secs:,.0f} MB/s) to "
          f"{a.dir or tempfile.gettempdir()}")
    print(f"stop budget at an assumed slow shared file system of {ASSUMED_WRITE_MB_S} MB/s: one step ({a.step_s:g} s) "
          f"+ write ({mb / ASSUMED_WRITE_MB_S:.0f} s) = {need:.0f} s; torchrun's grace (lct.run.train.SHUTDOWN_TIMEOUT_S) "
          f"{SHUTDOWN_TIMEOUT_S} s: {'fits' if need <= SHUTDOWN_TIMEOUT_S else 'DOES NOT FIT'}; "
          f"at the speed measured here: {a.step_s + mb / (mb / secs):.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
