"""`lct train`: train one experiment into a run directory; rerun the same command to resume.

    lct train --config runs/<e>/experiment.yaml --data data/<ds>/latents/ --run-dir runs/<e>/ \
        [--set train.total_steps=1000 --set loss.distance=cauchy ...] [--device cpu|cuda]
    lct train ... --gpus 4          # several GPUs: starts `torchrun --standalone` with min(4, visible) ranks
    torchrun --nproc_per_node 4 -m lct.cli train ...    # the same, launched by hand

Contract with the workflow and the SLURM profile
------------------------------------------------
* Exit status: 0 = finished (``<run-dir>/final.pt`` exists; rerunning is a no-op);
  2 = bad command line, config, or dataset (nothing was done; the message names the key or path);
  3 = preempted: SIGTERM or SIGUSR1 arrived, a checkpoint was saved at the end of the current
  step, rerun the same command to resume (``EXIT_PREEMPTED``);
  4 = ``train.max_bad_steps`` consecutive non-finite losses; the last good checkpoint is kept.
* Resume: the newest complete ``checkpoints/ckpt-<step:08d>.pt`` is loaded (model, EMAs,
  optimizer, step, RNG state, data order). Every step re-seeds from (seed, rank, step), so an
  interrupted and resumed run ends with the same weights as an uninterrupted one (CPU, same
  world size). A checkpoint whose config differs from the command's (beyond logging/checkpoint
  cadence) is refused rather than silently mixed.
* SLURM: submit with ``--signal=USR1@300`` (or ``B:USR1@300`` when the batch script forwards it)
  so the job has time to save before the time limit; on exit 3 requeue the job or let Snakemake
  retry (``retries:`` in profiles/slurm): the retried command resumes. Under ``torchrun`` every
  rank agrees on the stopping step, rank 0 saves, all ranks exit 3 (torchrun itself then reports
  a failure status, 1, which a retry treats the same way). torchrun forwards SIGTERM to its workers
  and kills them 30 s later, so a step plus a checkpoint must fit in 30 s there.
* Settings changed (``--on-config-change supersede``, what the workflow passes): when the run
  directory holds state of another config, it is moved to ``superseded-<time>/`` (never deleted)
  and training starts afresh; the default ``error`` refuses instead.
* Only ``final.pt`` is a workflow output; ``checkpoints/`` stays undeclared so Snakemake never
  deletes it when a job fails. The last step is checkpointed too, so a job killed after writing
  ``final.pt`` (whose final.pt Snakemake then deletes) is redone in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lct import checkpoint as ckio
from lct import distributed as ddist
from lct.config import BOOKKEEPING_KEYS, ConfigError, ExperimentConfig, load_experiment, save_experiment, validate
from lct.model import EMA, build_model, load_checkpoint_model, make_optimizer  # noqa: F401 (re-exported)
from lct.trainlog import Averager, JsonlLog, ProgressBar, plot_losses

EXIT_OK, EXIT_USAGE, EXIT_PREEMPTED, EXIT_BAD_STEPS = 0, 2, 3, 4

# Fields that may change between a checkpoint and the resuming command (cadence, not the math):
# lct.config.BOOKKEEPING_KEYS, the same set the workflow leaves out of the training rule's params.
RESUME_MAY_CHANGE = BOOKKEEPING_KEYS

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lct train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="resolved experiment YAML (lct.config)")
    p.add_argument("--data", required=True, help="latents dir (lct encode) or dataset dir (images.npy)")
    p.add_argument("--run-dir", required=True, help="output dir: config.yaml, checkpoints/, log.jsonl, final.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.total_steps=100 (repeatable)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the start / resume line is still printed)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs for this run: > 1 starts torchrun with min(N, visible GPUs) ranks (N gloo ranks on a "
                        "machine without CUDA); 0/1: one process")
    p.add_argument("--on-config-change", choices=["error", "supersede"], default="error",
                   help="the run dir holds state of another config: refuse (error) or move it aside and start "
                        "afresh (supersede)")
    p.add_argument("--resources", default=None,
                   help="folder of `lct fetch-weights` (read only by loss.distance elatentlpips)")
    p.add_argument("--teacher", default=None,
                   help="objective distillation: the teacher run's final.pt (a denoising run on the same data)")
    return p.parse_args(argv)


STATE = ("checkpoints", "snapshots", "config.yaml", "log.jsonl", "loss.png")  # a run dir's resumable state


def supersede_if_changed(cfg: ExperimentConfig, run_dir: str | Path) -> Path | None:
    """When `run_dir` holds state of another config, move it to superseded-<time>/ (never deleted)."""
    run_dir = Path(run_dir)
    old_cfg = run_dir / "config.yaml"
    if not old_cfg.is_file():
        return None
    from lct.config import load_experiment

    if not _config_diff(load_experiment(old_cfg).to_dict(), cfg.to_dict()):
        return None
    dest = run_dir / time.strftime("superseded-%Y%m%d-%H%M%S")
    dest.mkdir()
    for name in STATE:
        if (run_dir / name).exists():
            (run_dir / name).rename(dest / name)
    return dest


def launch_torchrun(argv: list[str], gpus: int) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node N -m lct.cli train ...` (N > 1).

    exec, not a child: SIGTERM from SLURM reaches torchrun, which forwards it to every rank."""
    import os

    rest, skip = [], False
    for a in argv:  # the same command without --gpus
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", "lct.cli", "train", *rest]
    print(f"lct train: {gpus} GPUs: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def main(argv: list[str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:  # everything that can be wrong with the command is checked before any work
        cfg = with_teacher_digest(resolve_config(args.config, args.set), args.teacher)
        check_data_dir(args.data)
    except (ConfigError, FileNotFoundError) as e:
        print(f"lct train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if "RANK" not in os.environ:  # the launching process (torchrun's ranks skip this)
        if args.on_config_change == "supersede":
            moved = supersede_if_changed(cfg, args.run_dir)
            if moved is not None:
                print(f"lct train: settings changed; previous state moved to {moved}", file=sys.stderr)
        # GPUs: never more ranks than visible devices. No CUDA: the requested number of CPU ranks
        # (gloo), which is how a CPU node or the test cluster runs the multi-GPU path.
        n = min(args.gpus or 0, torch.cuda.device_count()) if torch.cuda.is_available() else (args.gpus or 0)
        if n > 1:
            launch_torchrun(argv, n)
    try:
        train(cfg, args.data, args.run_dir, device=args.device, quiet=args.quiet, resources=args.resources,
              teacher=args.teacher)
    except Preempted as e:
        print(f"lct train: preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except BadStepsError as e:
        print(f"lct train: error: {e}", file=sys.stderr)
        return EXIT_BAD_STEPS
    except ConfigError as e:
        print(f"lct train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
