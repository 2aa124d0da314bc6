"""A run directory's bookkeeping: one writer at a time (its lock), a failure that would repeat (FAILED.json),
and whether a checkpoint's config is this command's (what may change on resume; superseding the old state)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lct.config import BOOKKEEPING_KEYS, SAMPLING_KEYS, ExperimentConfig

FAILURE = "FAILED.json"  # a deterministic failure of this run dir: config, data and what went wrong


def inputs_digest(cfg: ExperimentConfig, data: str | Path, mode: str = "error") -> str:
    """What decides whether a failure repeats: the whole config, the data files' names, sizes and mtimes, and
    `--on-config-change` (a run refused for a changed config trains under `supersede`)."""
    import hashlib
    import json

    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(data).iterdir() if p.is_file())
    return hashlib.sha256(json.dumps([cfg.to_dict(), files, mode], sort_keys=True, default=str).encode()).hexdigest()


def previous_failure(run_dir: str | Path, digest: str) -> dict[str, Any] | None:
    import json

    f = Path(run_dir) / FAILURE
    try:
        rec = json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return None
    return rec if rec and rec.get("inputs") == digest else None


def record_failure(run_dir: str | Path, code: int, message: str, digest: str) -> None:
    """Written by rank 0 on exit 2 (bad config or data) or 4 (non-finite losses): the same command with the
    same config and data fails the same way, so a retry stops in seconds instead of training again."""
    import json

    f = Path(run_dir) / FAILURE
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps({"exit": code, "message": message, "inputs": digest,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    tmp.replace(f)


def lock_run_dir(run_dir: str | Path) -> int | None:
    """An exclusive lock on <run_dir>/.lock held for the life of this process (and of torchrun, which
    inherits the descriptor through exec); None when another writer holds it. The file names the holder
    (host, PID, SLURM job id) for the message of the one refused."""
    import fcntl
    import os
    import socket

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.set_inheritable(fd, True)
    os.ftruncate(fd, 0)
    os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} slurm_job {os.environ.get('SLURM_JOB_ID', '-')}\n"
             .encode())
    return fd

# Fields that may change between a checkpoint and the resuming command (cadence, not the math):
# lct.config.BOOKKEEPING_KEYS, the same set the workflow leaves out of the training rule's params, and how the
# model is sampled (lct.config.SAMPLING_KEYS: evaluation's business, given to `lct evaluate --sampling`).
RESUME_MAY_CHANGE = BOOKKEEPING_KEYS | SAMPLING_KEYS


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The weight settings that differ; a setting added since `a` was written (lct.config.ADDED_SETTINGS) at
    its neutral value is no difference."""
    from lct.config import MISSING, is_added_default

    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k, MISSING), b.get(k, MISSING)
        if isinstance(va, dict) or isinstance(vb, dict):  # a section, or one added since `a` (compared key by key)
            out += config_diff(va if isinstance(va, dict) else {}, vb if isinstance(vb, dict) else {}, key + ".")
        elif va != vb and key not in RESUME_MAY_CHANGE and not is_added_default(key, va, vb):
            out.append(f"{key}: {None if va is MISSING else va!r} -> {None if vb is MISSING else vb!r}")
    return out


STATE = ("checkpoints", "snapshots", "config.yaml", "log.jsonl", "loss.png", "FAILED.json")  # a run dir's resumable state


def supersede_if_changed(cfg: ExperimentConfig, run_dir: str | Path) -> Path | None:
    """When `run_dir` holds state of another config, move it to superseded-<time>/ (never deleted)."""
    run_dir = Path(run_dir)
    old_cfg = run_dir / "config.yaml"
    if not old_cfg.is_file():
        return None
    from lct.config import load_experiment

    if not config_diff(load_experiment(old_cfg).to_dict(), cfg.to_dict()):
        return None
    dest = run_dir / time.strftime("superseded-%Y%m%d-%H%M%S")
    dest.mkdir()
    for name in STATE:
        if (run_dir / name).exists():
            (run_dir / name).rename(dest / name)
    return dest
