"""Figure 1: box-and-whisker statistics of data values and of temporal differences (TD).

- `box_stats(array)`: quartiles (numpy's default linear percentiles), Tukey fences (inner
  Q1 - 1.5 IQR / Q3 + 1.5 IQR, outer Q1 - 3 IQR / Q3 + 3 IQR), counts beyond each, whisker ends,
  extremes, mean, std, and a small seeded random subsample of raw values for plotting.
- ``lct stats data``: normalized latents (a latents dir) vs pixels in [-1, 1] (a dataset dir);
  JSON ``{"latent": box, "pixel": box}``.
- ``lct stats td``: TD = f(x_{t_{i+1}}, t_{i+1}) - f(x_{t_i}, t_i) at N = 21 Karras points, with the
  same x0 and z in both terms and the teacher equal to the online weights (iCT: EMA decay 0).
  All N - 1 = 20 adjacent index pairs are used for every sample (the figure pools them); per-pair
  statistics are stored too. JSON ``{"td": box, "per_pair": [...], ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

PLOT_SAMPLES = 2000  # raw values kept per box for plotting (a random subsample, seeded)


def box_stats(array: np.ndarray | torch.Tensor, plot_samples: int = PLOT_SAMPLES, seed: int = 0) -> dict[str, Any]:
    """Box-and-whisker statistics of all values of `array` (flattened, float64)."""
    a = (array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)).astype(np.float64).ravel()
    if a.size == 0:
        raise ValueError("box_stats of an empty array")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    iqr = q3 - q1
    inner = (q1 - 1.5 * iqr, q3 + 1.5 * iqr)
    outer = (q1 - 3.0 * iqr, q3 + 3.0 * iqr)
    inside = a[(a >= inner[0]) & (a <= inner[1])]
    n = int(a.size)
    n_in = int((a < inner[0]).sum() + (a > inner[1]).sum())
    n_out = int((a < outer[0]).sum() + (a > outer[1]).sum())
    rng = np.random.default_rng(seed)
    sub = a if n <= plot_samples else a[rng.choice(n, plot_samples, replace=False)]
    return {
        "n": n, "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
        "q1": float(q1), "median": float(med), "q3": float(q3), "iqr": float(iqr),
        "inner_fence_low": float(inner[0]), "inner_fence_high": float(inner[1]),
        "outer_fence_low": float(outer[0]), "outer_fence_high": float(outer[1]),
        "whisker_low": float(inside.min()), "whisker_high": float(inside.max()),  # Tukey: last values inside
        "count_below_inner": int((a < inner[0]).sum()), "count_above_inner": int((a > inner[1]).sum()),
        "count_below_outer": int((a < outer[0]).sum()), "count_above_outer": int((a > outer[1]).sum()),
        "count_beyond_inner": n_in, "count_beyond_outer": n_out,
        "frac_beyond_inner": n_in / n, "frac_beyond_outer": n_out / n,
        "samples": [float(v) for v in sub],
    }


def _subsample(x: torch.Tensor, max_values: int | None, seed: int) -> np.ndarray:
    a = x.reshape(-1).numpy()
    if max_values is None or a.size <= max_values:
        return a
    return a[np.random.default_rng(seed).choice(a.size, max_values, replace=False)]


def data_stats(latents: str | Path, pixels: str | Path, max_values: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Box statistics of normalized latent values and of pixel values in [-1, 1]."""
    from lct.data.datasets import load_training_data

    out: dict[str, Any] = {}
    for key, path, want in (("latent", latents, "latents"), ("pixel", pixels, "pixels")):
        x, info = load_training_data(path)
        if info["kind"] != want:
            raise ValueError(f"--{key}s {path}: expected a {want} dir, found {info['kind']}")
        out[key] = {**box_stats(_subsample(x, max_values, seed), seed=seed), "source": str(path),
                    "shape": list(x.shape), "normalization": info.get("normalization")}
    out["max_values"] = max_values
    return out


@torch.no_grad()
def td_stats(checkpoint: str | Path, data: str | Path | None = None, num_timesteps: int = 21, num_samples: int = 256,
             seed: int = 0, batch_size: int = 64, device: str | None = None) -> dict[str, Any]:
    """TD values f(x0 + t_{i+1} z, t_{i+1}) - f(x0 + t_i z, t_i) over all adjacent pairs of the grid."""
    from lct.data.datasets import load_training_data
    from lct.method.schedules import karras_sigmas
    from lct.run.model import load_checkpoint_model

    from lct.infra.device import pick_device

    device = pick_device(device)
    model, cfg, info = load_checkpoint_model(checkpoint, ema="online", device=device)
    data = data or info["data"]["path"]
    x, dinfo = load_training_data(data)
    s = cfg.schedule
    sigmas = karras_sigmas(num_timesteps, s.sigma_min, s.sigma_max, s.rho)  # ascending, float64
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=g)[: min(num_samples, len(x))]
    x0 = x[idx]
    z = torch.randn(x0.shape, generator=g)  # the same z for both terms of every pair
    per_pair: list[list[np.ndarray]] = [[] for _ in range(num_timesteps - 1)]
    for b in range(0, len(x0), batch_size):
        xb, zb = x0[b : b + batch_size].to(device), z[b : b + batch_size].to(device)
        f = [model(xb + float(t) * zb, torch.full((len(xb),), float(t), device=device)) for t in sigmas]
        for i in range(num_timesteps - 1):
            per_pair[i].append((f[i + 1] - f[i]).float().cpu().numpy())  # TD at (t_i, t_{i+1})
    pairs = [np.concatenate(p) for p in per_pair]
    pooled = np.concatenate([p.ravel() for p in pairs])
    keys = ("q1", "median", "q3", "inner_fence_low", "inner_fence_high", "count_beyond_inner",
            "count_beyond_outer", "min", "max", "std")
    return {
        "checkpoint": str(checkpoint), "ema": "online", "step": info.get("step"), "data": str(data),
        "kind": dinfo["kind"], "num_timesteps": num_timesteps, "sigmas": [float(t) for t in sigmas],
        "pairs": "all adjacent pairs (i, i+1), i = 0..N-2", "num_samples": len(x0), "seed": seed,
        "td": box_stats(pooled, seed=seed),
        "per_pair": [{"i": i, "t_lo": float(sigmas[i]), "t_hi": float(sigmas[i + 1]),
                      **{k: v for k, v in box_stats(p, plot_samples=0).items() if k in keys}}
                     for i, p in enumerate(pairs)],
    }


def _write_json(obj: dict[str, Any], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lct stats", description="Figure 1 box-and-whisker statistics")
    sub = ap.add_subparsers(dest="what", required=True)
    d = sub.add_parser("data", help="normalized latent vs pixel values")
    d.add_argument("--latents", required=True, help="latents dir (from lct encode)")
    d.add_argument("--pixels", required=True, help="pixel dataset dir (images.npy)")
    d.add_argument("--max-values", type=int, default=None, help="random subsample of values per box (default: all)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True)
    t = sub.add_parser("td", help="temporal differences of a consistency model")
    t.add_argument("--checkpoint", required=True)
    t.add_argument("--data", default=None, help="training data dir (default: the one recorded in the checkpoint)")
    t.add_argument("--num-timesteps", type=int, default=21)
    t.add_argument("--num-samples", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default=None)
    t.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    try:
        if a.what == "data":
            res = data_stats(a.latents, a.pixels, a.max_values, a.seed)
        else:
            res = td_stats(a.checkpoint, a.data, a.num_timesteps, a.num_samples, a.seed, a.batch_size, a.device)
    except (RuntimeError, ValueError, FileNotFoundError) as e:
        print(f"lct stats {a.what}: {e}", file=sys.stderr)
        return 1
    _write_json(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
