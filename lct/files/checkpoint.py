"""Checkpoint files of a run directory: atomic writes, discovery of the latest, pruning.

Layout (docs/ARCHITECTURE.md "Run directory"):
  checkpoints/ckpt-<step:08d>.pt   resumable state, the last `train.keep_checkpoints` kept
  snapshots/ema-<step:08d>.pt      EMA weights for evaluation over training (Figure 3)
  final.pt                         written last: {"config", "step", "model", "ema", "data"}

Everything stored is a tensor, dict, list, str, int, float, bool or None, so every file loads
with ``torch.load(..., weights_only=True)`` (edm2 `CheckpointIO` idea: rerun to resume).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to `<path>.tmp`, fsync, then rename: a killed writer never leaves a half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # ENOSPC, quota, I/O error: no half file left, the path named
        tmp.unlink(missing_ok=True)
        raise OSError(getattr(e, "errno", None) or 28,
                      f"cannot write {path} ({e}); nothing was kept. Free space on {path.parent} (df -h) and rerun: "
                      "training resumes from the last complete checkpoint") from e
    tmp.replace(path)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (weights_only); the error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e


def ckpt_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"ckpt-{step:08d}.pt"


def snapshot_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "snapshots" / f"ema-{step:08d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete resumable checkpoints, oldest first (ignores *.tmp)."""
    d = Path(run_dir) / "checkpoints"
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def load_latest(run_dir: str | Path, map_location: str | torch.device = "cpu",
                move_damaged: bool = True, say=print) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest resumable checkpoint that loads, and its state; (None, None) when there is none.

    A checkpoint that fails to load (truncated, garbage, not a checkpoint) is moved aside to
    ``checkpoints/damaged-<name>`` (never deleted; `move_damaged`: only rank 0 moves) and named through
    `say`; the next older one is tried, so a damaged newest file costs the steps since the previous one."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            state = load(path, map_location)
            if not isinstance(state, dict) or not {"model", "step", "config"} <= set(state):
                raise RuntimeError(f"{path} is not a resumable checkpoint (keys {sorted(state)[:8]})")
            return path, state
        except (RuntimeError, FileNotFoundError, OSError) as e:
            where = path.with_name(f"damaged-{path.name}")
            if move_damaged and path.exists():
                path.replace(where)
            say(f"lct train: checkpoint {path} cannot be loaded ({str(e).splitlines()[0][:200]}); "
                f"moved to {where}; trying the previous one")
    return None, None


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints (and stale temporaries)."""
    found = list_checkpoints(run_dir)
    for _, p in found[: max(0, len(found) - max(1, keep))]:
        p.unlink(missing_ok=True)
    for p in (Path(run_dir) / "checkpoints").glob("*.tmp"):
        p.unlink(missing_ok=True)


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The global torch RNG states (CPU and the current CUDA device)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def plain(obj: Any) -> Any:
    """Convert an info dict to types that `weights_only` loading accepts."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return str(obj)
