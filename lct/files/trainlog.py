"""Training logs a researcher can read: progress bar, `log.jsonl`, `loss.png`.

- The progress bar (tqdm, rank 0) shows it/s, the loss, N(k) and c. When stderr is not a
  terminal (a SLURM log file) it refreshes at most every 30 s so logs stay short.
- `log.jsonl`: one JSON object per `train.log_every` steps with window averages of every loss
  part, N, c, the gradient norm, images/s, peak memory, the learning rate and bad-step counts.
  On resume, lines past the resumed step are dropped so the file is the history of one run.
- `loss.png`: the loss curves from `log.jsonl` (matplotlib Agg), written at the end.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm


class ProgressBar:
    """A tqdm bar over steps [start, total) that shows the latest loss, N and c."""

    def __init__(self, start: int, total: int, enabled: bool = True) -> None:
        interactive = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=start, disable=not enabled, unit="it", dynamic_ncols=True,
                        mininterval=0.5 if interactive else 30.0, smoothing=0.05)

    def update(self, logs: dict[str, float] | None = None, steps: int = 1) -> None:
        """Advance `steps`; `logs` (window averages, read at logging time) refresh the shown values."""
        if logs:
            post = {"loss": f"{logs.get('loss', float('nan')):.4g}"}
            if "N" in logs:
                post["N"] = int(logs["N"])
            if "c" in logs:
                post["c"] = f"{logs['c']:.3g}"
            self.bar.set_postfix(post, refresh=False)
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


class Averager:
    """Mean of each numeric log value over a window of steps. 0-d tensors are summed where they live
    (no host synchronisation per step) and read once, in `pop`."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, logs: dict[str, Any]) -> None:
        for k, v in logs.items():
            if hasattr(v, "detach"):  # a tensor: summed on its device
                self.sums[k] = self.sums[k] + v.detach().float()
                self.counts[k] += 1
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                self.sums[k] += float(v)
                self.counts[k] += 1

    def pop(self) -> dict[str, float]:
        out = {k: float(self.sums[k]) / self.counts[k] for k in self.sums if self.counts[k]}
        self.sums.clear()
        self.counts.clear()
        return out


class JsonlLog:
    """Append-only JSON-lines log; `truncate_after(step)` forgets entries from an abandoned future."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        if not self.path.is_file():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and _step(ln) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(ln) for ln in self.path.read_text().splitlines() if ln.strip()]


def _step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, TypeError, ValueError):
        return 1 << 62  # a torn last line from a killed run: drop it


def plot_losses(records: list[dict[str, Any]], out: str | Path, title: str = "") -> Path | None:
    """Loss curves (total and each part) against the step, log scale; written atomically."""
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    keys = [k for k in ("loss", "loss_ct", "loss_diff") if any(k in r for r in records)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if k in r and r[k] > 0]
        if pts:
            ax.plot(*zip(*pts), label=k, lw=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss (window mean)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(out)
    return out
