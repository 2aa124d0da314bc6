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
  4 = ``train.max_bad_steps`` consecutive non-finite losses; the last good checkpoint is kept;
  5 = another `lct train` holds the run directory (``<run-dir>/.lock`` names its host, PID and SLURM
  job); nothing was done.
* Exits 2 and 4 are deterministic: ``<run-dir>/FAILED.json`` records them with a digest of the config
  and the data files, and the same command under the same digest (a scheduler's retry) stops at once
  with the same exit and message; changed settings or rebuilt data train again.
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
  and kills them ``SHUTDOWN_TIMEOUT_S`` later (its own default, 30 s, is too short for a 2.5 GB
  checkpoint on a slow shared file system; benchmarks/checkpoint.py measures the write).
* Settings changed (``--on-config-change supersede``, what the workflow passes): when the run
  directory holds state of another config, it is moved to ``superseded-<time>/`` (never deleted)
  and training starts afresh; the default ``error`` refuses instead.
* Only ``final.pt`` is a workflow output; ``checkpoints/`` stays undeclared so Snakemake never
  deletes it when a job fails. The last step is checkpointed too, so a job killed after writing
  ``final.pt`` (whose final.pt Snakemake then deletes) is redone in seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from lct.config import BOOKKEEPING_KEYS, ConfigError, ExperimentConfig, load_experiment, validate
from lct.data.datasets import DataError
# The loop and the run directory's bookkeeping, also reachable from here (lct.run.train is `lct train`).
from lct.run.loop import (BadStepsError, Preempted, make_objective, schedule_steps_for,  # noqa: F401
                          total_steps_for, train)
from lct.run.model import (EMA, build_model, fast_path, load_checkpoint_model, make_optimizer,  # noqa: F401
                           with_teacher_digest)
from lct.run.batches import DataOrder  # noqa: F401
from lct.run.rundir import (FAILURE, RESUME_MAY_CHANGE, STATE, config_diff as _config_diff,  # noqa: F401
                            inputs_digest, lock_run_dir, previous_failure, record_failure, supersede_if_changed)

EXIT_OK, EXIT_USAGE, EXIT_PREEMPTED, EXIT_BAD_STEPS, EXIT_BUSY = 0, 2, 3, 4, 5

# Stopping on SIGTERM under torchrun: the ranks finish the step, rank 0 writes the checkpoint (paper size
# 2.5 GB: weights, one EMA, RAdam's two moments), then all exit. Assumed worst write speed of a busy
# shared file system: 25 MB/s -> 100 s, plus a step; torchrun waits SHUTDOWN_TIMEOUT_S before SIGKILL, and
# the profile's --signal=TERM@300 leaves 60 s beyond it (tests/test_train.py checks the two agree).
ASSUMED_WRITE_MB_S = 25
SHUTDOWN_TIMEOUT_S = 240



# ----------------------------------------------------------------------------- configuration


def apply_sets(d: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML); unknown keys name the key."""
    import yaml

    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set loss.distance=cauchy")
        key, raw = item.split("=", 1)
        node = d
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                valid = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(f"--set {key}: unknown key {part!r} under {where}; valid keys are {valid}")
            if i < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return d


def run_settings_sets(path: str | Path | None) -> list[str]:
    """`--run-settings configs/<e>.run.yaml` (the workflow's bookkeeping: cadence, workers) as --set items;
    only lct.config.BOOKKEEPING_KEYS may appear there."""
    if not path or not Path(path).is_file():  # not written yet (lct train run by hand): the config's own
        return []
    import json

    import yaml

    d = yaml.safe_load(Path(path).read_text()) or {}
    bad = sorted(set(d) - set(BOOKKEEPING_KEYS))
    if bad:
        raise ConfigError(f"--run-settings {path}: {bad} change the weights; only {sorted(BOOKKEEPING_KEYS)} may be set there")
    return [f"{k}={json.dumps(v)}" for k, v in d.items() if k != "name"]


def resolve_config(config_path: str | Path, sets: list[str] | None = None) -> ExperimentConfig:
    """Load the experiment YAML, apply --set overrides, type-check and validate."""
    cfg = load_experiment(config_path)
    if sets:
        cfg = ExperimentConfig.from_dict(apply_sets(cfg.to_dict(), sets), where=f"{config_path} with --set")
    return validate(cfg)


def check_data_dir(path: str | Path) -> Path:
    """Fail before any work when the dataset dir is missing or holds neither format."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--data {p}: no such directory; run `lct prepare-data` / `lct encode` first")
    if not (p / "latents.npy").is_file() and not (p / "images.npy").is_file():
        raise FileNotFoundError(f"--data {p}: holds neither latents.npy (from `lct encode`) nor images.npy "
                                f"(from `lct prepare-data`)")
    return p



# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lct train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="resolved experiment YAML (lct.config)")
    p.add_argument("--data", required=True, help="latents dir (lct encode) or dataset dir (images.npy)")
    p.add_argument("--run-dir", required=True, help="output dir: config.yaml, checkpoints/, log.jsonl, final.pt")
    p.add_argument("--run-settings", default=None,
                   help="YAML of bookkeeping keys (dotted: train.checkpoint_every, ...) applied over --config; the "
                        "workflow writes configs/<e>.run.yaml so that editing them never retrains")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.total_steps=100 (repeatable)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: $LCT_DEVICE, else cuda when available); --gpus N or --device cuda "
                        "without a visible CUDA device is refused, --device cpu runs N CPU ranks on purpose")
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
           f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
           "-m", "lct.cli", "train", *rest]
    print(f"lct train: {gpus} GPUs: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def main(argv: list[str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:  # everything that can be wrong with the command is checked before any work
        sets = run_settings_sets(args.run_settings) + args.set
        cfg = with_teacher_digest(resolve_config(args.config, sets), args.teacher)
        check_data_dir(args.data)
    except (ConfigError, FileNotFoundError) as e:
        print(f"lct train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    args.device = args.device or os.environ.get("LCT_DEVICE") or None
    if "RANK" not in os.environ and not torch.cuda.is_available() and (
            args.device == "cuda" or ((args.gpus or 0) >= 1 and args.device != "cpu")):
        import socket

        print(f"lct train: error: {'--device cuda' if args.device == 'cuda' else f'--gpus {args.gpus}'} asked for "
              f"GPUs, but no CUDA device is visible on {socket.gethostname()} (CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); check the job's GPU request and the node's driver. "
              "(`--device cpu` or LCT_DEVICE=cpu trains CPU ranks on purpose, for tests.)", file=sys.stderr)
        return EXIT_USAGE
    lock = None
    if "RANK" not in os.environ:  # the launching process (torchrun's ranks skip this)
        lock = lock_run_dir(args.run_dir)
        if lock is None:  # one writer per run directory
            holder = (Path(args.run_dir) / ".lock").read_text().strip() or "another process"
            print(f"lct train: error: {args.run_dir} is being trained by {holder}; two writers would corrupt it. "
                  "Wait for it, or cancel that job (scancel) before rerunning; after `snakemake --unlock`, cancel "
                  "orphaned SLURM jobs first", file=sys.stderr)
            return EXIT_BUSY
        prev = previous_failure(args.run_dir, inputs_digest(cfg, args.data, args.on_config_change))
        if prev is not None:  # a retry of a failure that will repeat: seconds, not another queued attempt
            print(f"lct train: error: this run failed at {prev['time']} with exit {prev['exit']} under the same "
                  f"config and data: {prev['message']}\nIt would fail the same way. Fix the cause (settings or "
                  f"data), or remove {Path(args.run_dir) / FAILURE} to try again.", file=sys.stderr)
            os.close(lock)
            return int(prev["exit"])
    try:
        return _launch_and_train(args, argv, cfg)
    finally:
        if lock is not None:  # (under torchrun the exec'd launcher keeps it until the run ends)
            os.close(lock)


def _launch_and_train(args: argparse.Namespace, argv: list[str], cfg: ExperimentConfig) -> int:
    import os

    if "RANK" not in os.environ:
        if args.on_config_change == "supersede":
            moved = supersede_if_changed(cfg, args.run_dir)
            if moved is not None:
                print(f"lct train: settings changed; previous state moved to {moved}", file=sys.stderr)
        # GPUs: never more ranks than visible devices. No CUDA: the requested number of CPU ranks
        # (gloo), which is how a CPU node or the test cluster runs the multi-GPU path.
        n = min(args.gpus or 0, torch.cuda.device_count()) if torch.cuda.is_available() else (args.gpus or 0)
        if n > 1:
            launch_torchrun(argv, n)
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        train(cfg, args.data, args.run_dir, device=args.device, quiet=args.quiet, resources=args.resources,
              teacher=args.teacher)
    except Preempted as e:
        print(f"lct train: preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (BadStepsError, ConfigError, DataError) as e:  # deterministic: recorded, so a retry stops at once
        code = EXIT_BAD_STEPS if isinstance(e, BadStepsError) else EXIT_USAGE
        print(f"lct train: error: {e}", file=sys.stderr)
        if main_rank:
            record_failure(args.run_dir, code, str(e), inputs_digest(cfg, args.data, args.on_config_change))
        return code
    except OSError as e:  # disk full, quota, I/O: names the path; the last complete checkpoint is kept
        print(f"lct train: error: {e}", file=sys.stderr)
        return 1
    if main_rank:
        (Path(args.run_dir) / FAILURE).unlink(missing_ok=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
