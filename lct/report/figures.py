"""Figures 1-3, sample grids (Figures 4-13) and the one-page Markdown report; PNG and PDF, matplotlib Agg.

- fig1: box-and-whisker plots from the data stage's statistics (`lct stats`): normalized latents vs
  pixels, and TD values of a latent and a pixel model.
- fig2: the robust losses (Pseudo-Huber, Cauchy, Geman-McClure) and their derivatives against the
  residual, from lct.method.losses.robust_distance, derivatives by autograd.
- fig3: left, c of the adaptive schedule (eq. 11) against N with c0 and the as-coded schedule; middle
  and right, FID and Recall over training for each c choice, from `eval/<exp>/snapshots/ema-<step>.json`.
- samples: an uncurated grid of fixed-seed samples of one checkpoint at one NFE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

FIGURE_EXTS = ("png", "pdf")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: str | Path) -> list[Path]:
    """Write <out>.png and <out>.pdf (temporary names, then renamed) and close the figure."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in FIGURE_EXTS:
        path = out.with_name(out.name + f".{ext}")
        tmp = path.with_name(path.name + f".tmp.{ext}")
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=ext)
        tmp.replace(path)
        paths.append(path)
    _plt().close(fig)
    return paths


# --- Figure 1 ------------------------------------------------------------------------------------

def _find_box_stats(obj: Any, label: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Box dicts (`lct.run.stats.box_stats`: q1, median, q3, fences, `samples`) in a stats JSON, by key.

    A TD JSON (`lct stats td`) gives its pooled `td` box; `per_pair` boxes are not plotted.
    """
    if not isinstance(obj, dict):
        return []
    if {"q1", "median", "q3"} <= set(obj):
        return [(label, obj)]
    if isinstance(obj.get("box_stats"), dict):
        return [(label, {"samples": obj.get("sample", obj.get("samples", [])), **obj["box_stats"]})]
    found: list[tuple[str, dict[str, Any]]] = []
    for k, v in obj.items():
        if k != "per_pair":
            found += _find_box_stats(v, f"{label} / {k}" if label else str(k))
    return found


def _bxp_entry(label: str, bs: dict[str, Any]) -> dict[str, Any]:
    """matplotlib bxp dict: Tukey whiskers (last values inside the inner fences), fliers from the raw sample."""
    q1, med, q3 = float(bs["q1"]), float(bs["median"]), float(bs["q3"])
    iqr = q3 - q1
    lo_f = float(bs.get("inner_fence_low", q1 - 1.5 * iqr))
    hi_f = float(bs.get("inner_fence_high", q3 + 1.5 * iqr))
    whislo = float(bs.get("whisker_low", max(lo_f, float(bs.get("min", lo_f)))))
    whishi = float(bs.get("whisker_high", min(hi_f, float(bs.get("max", hi_f)))))
    sample = np.asarray(bs.get("samples", bs.get("sample")) or [], dtype=float)
    fliers = sample[(sample < lo_f) | (sample > hi_f)]
    return {"label": label, "med": med, "q1": q1, "q3": q3, "whislo": whislo, "whishi": whishi, "fliers": fliers}


def _box_panel(ax: Any, boxes: list[tuple[str, dict[str, Any]]], title: str) -> None:
    ax.bxp([_bxp_entry(lbl, bs) for lbl, bs in boxes], showfliers=True, flierprops={"markersize": 2, "alpha": 0.4})
    for i, (_, bs) in enumerate(boxes, start=1):  # the paper's point: the share of impulsive outliers
        if "frac_beyond_outer" in bs:
            ax.annotate(f"{100 * bs['frac_beyond_outer']:.2f}% beyond\nouter fences", (i, 1.0),
                        xycoords=("data", "axes fraction"), ha="center", va="top", fontsize=7)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")


def figure1(data_stats: str | Path | dict[str, Any], td_latent: str | Path | dict[str, Any] | None,
            td_pixel: str | Path | dict[str, Any] | None, out: str | Path) -> list[Path]:
    """Box plots: normalized latent vs pixel data (left), TD values of a latent and a pixel model (right)."""
    plt = _plt()
    load = lambda x: x if isinstance(x, dict) or x is None else json.loads(Path(x).read_text())  # noqa: E731
    data = _find_box_stats(load(data_stats))
    if not data:
        raise ValueError(f"{data_stats}: no box statistics (q1, median, q3) found; write it with `lct stats data`")
    td = [(f"{name} model", bs) for name, x in (("latent", td_latent), ("pixel", td_pixel)) if x is not None
          for _, bs in _find_box_stats(load(x))[:1]]
    fig, axes = plt.subplots(1, 2 if td else 1, figsize=(10 if td else 5, 4), squeeze=False)
    _box_panel(axes[0][0], data, "Data values (normalized latents vs pixels)")
    axes[0][0].set_ylabel("value")
    if td:
        _box_panel(axes[0][1], td, "Temporal differences f(x_{t_{i+1}}) - f(x_{t_i})")
    fig.tight_layout()
    return save_figure(fig, out)


# --- Figure 2 ------------------------------------------------------------------------------------

ROBUST_LOSSES = {"pseudo_huber": "Pseudo-Huber (eq. 7)", "cauchy": "Cauchy (eq. 6)", "geman_mcclure": "Geman-McClure (eq. 8)"}


def robust_curves(residual: np.ndarray, c: float = 1.0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{loss: (d(r), d'(r))} for a scalar residual r = x - y (y = 0), derivative by autograd."""
    import torch

    from lct.method.losses import robust_distance

    out = {}
    for name in ROBUST_LOSSES:
        x = torch.tensor(residual, dtype=torch.float64).reshape(-1, 1).requires_grad_(True)
        d = robust_distance(name, x, torch.zeros_like(x), c, "sum")
        (g,) = torch.autograd.grad(d.sum(), x)
        out[name] = (d.detach().numpy(), g[:, 0].numpy())
    return out


def figure2(out: str | Path, c: float = 1.0, r_max: float = 6.0) -> list[Path]:
    """The three robust losses and their derivatives against the residual."""
    plt = _plt()
    r = np.linspace(-r_max, r_max, 601)
    curves = robust_curves(r, c)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, (d, g) in curves.items():
        a.plot(r, d, label=ROBUST_LOSSES[name])
        b.plot(r, g, label=ROBUST_LOSSES[name])
    a.set(title=f"Loss d(r), c = {c:g}", xlabel="residual r", ylabel="d(r)")
    b.set(title="Derivative d'(r)", xlabel="residual r", ylabel="d'(r)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)


# --- Figure 3 ------------------------------------------------------------------------------------

def c_curves(n_values: Iterable[int], d: int, s0: int = 10) -> dict[str, np.ndarray]:
    """c against N: adaptive (eq. 11), fixed c0, and the authors' as-coded schedule."""
    from lct.method.schedules import c_adaptive, c_as_coded, c_fixed

    n = list(n_values)
    return {
        "adaptive c (eq. 11)": np.array([c_adaptive(k) for k in n]),
        "fixed c0": np.full(len(n), c_fixed(d)),
        "as-coded c": np.array([c_as_coded(k, k <= s0 + 1, d) for k in n]),
    }


def snapshot_evals(eval_dir: str | Path | dict[str, Path], experiment: str) -> list[dict[str, Any]]:
    """Eval JSONs of an experiment's snapshots, sorted by step (`eval/<exp>/snapshots/ema-<step>.json`).

    `eval_dir` is results/<name>/eval, or a dict experiment -> its snapshots dir.
    """
    rows = []
    folder = eval_dir.get(experiment, Path("/nonexistent")) if isinstance(eval_dir, dict) else \
        Path(eval_dir) / experiment / "snapshots"
    for path in sorted(Path(folder).glob("ema-*.json")):
        res = json.loads(path.read_text())
        step = res.get("step")
        if step is None:
            m = re.search(r"ema-(\d+)", path.name)
            step = int(m.group(1)) if m else None
        if step is not None:
            rows.append({**res, "step": int(step)})
    return sorted(rows, key=lambda r: r["step"])


def _sample_dim(path: str | Path) -> int:
    """Dimension d of one training sample in a latents.npy / images.npy file (read lazily)."""
    shape = np.load(path, mmap_mode="r").shape
    return int(np.prod(shape[1:]))


def figure3(experiments: dict[str, str], eval_dir: str | Path | dict[str, Path], out: str | Path, d: int = 4096, s0: int = 10,
            s1: int = 640, fid_mode: str | None = None) -> list[Path]:
    """c against N (left); FID (middle) and Recall (right) over training for each c choice."""
    plt = _plt()
    n = np.arange(s0 + 1, s1 + 2)
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4))
    stages = [min(s0 * 2**k, s1) + 1 for k in range(int(math.log2(s1 // s0)) + 1)]  # N(k) values of eq. 10
    for label, vals in c_curves(n, d, s0).items():
        if label == "as-coded c":  # stage-wise in the authors' code: only defined at the curriculum's N
            a.plot(stages, c_curves(stages, d, s0)[label], marker="s", markersize=4, label=label)
        else:
            a.plot(n, vals, label=label)
    a.scatter(stages, c_curves(stages, d, s0)["adaptive c (eq. 11)"], s=12, color="k", zorder=3,
              label="curriculum N (eq. 10)")
    a.set(xscale="log", yscale="log", xlabel="N (discretization steps)", ylabel="c", title=f"c against N (d = {d})")
    a.legend(fontsize=8)
    metric_name = "FID"
    missing = []
    for label, exp in experiments.items():
        rows = snapshot_evals(eval_dir, exp)
        if not rows:
            missing.append(label)
            continue
        metric_name = rows[0].get("metric_name", metric_name)
        mode = fid_mode if fid_mode in rows[0]["fid"] else next(iter(rows[0]["fid"]))
        steps = [r["step"] for r in rows]
        b.plot(steps, [r["fid"][mode] for r in rows], marker="o", label=f"{label} ({exp})")
        c.plot(steps, [r["recall"] for r in rows], marker="o", label=label)
    b.set(xlabel="training iteration", ylabel=metric_name, title=f"{metric_name} over training")
    c.set(xlabel="training iteration", ylabel="Recall", title="Recall over training")
    for ax in (b, c):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if missing:
        b.text(0.02, 0.02, "not computed: " + ", ".join(missing), transform=b.transAxes, fontsize=7, color="gray")
    fig.tight_layout()
    return save_figure(fig, out)


# --- sample grids --------------------------------------------------------------------------------

def tile(images: np.ndarray, grid: int) -> np.ndarray:
    """uint8 [grid*grid, H, W, C] -> one uint8 image [grid*H, grid*W, C]."""
    n, h, w, ch = images.shape
    if n < grid * grid:
        raise ValueError(f"need {grid * grid} images for a {grid}x{grid} grid, got {n}")
    x = images[: grid * grid].reshape(grid, grid, h, w, ch)
    return x.transpose(0, 2, 1, 3, 4).reshape(grid * h, grid * w, ch)


def save_grid(images: np.ndarray, grid: int, out: str | Path, title: str | None = None) -> list[Path]:
    """PNG at exact pixels, PDF through matplotlib."""
    from PIL import Image

    plt = _plt()
    im = tile(np.asarray(images, dtype=np.uint8), grid)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_name(out.name + ".png")
    tmp = png.with_name(png.name + ".tmp.png")
    Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(tmp)
    tmp.replace(png)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray" if im.shape[-1] == 1 else None, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    pdf = out.with_name(out.name + ".pdf")
    tmp = pdf.with_name(pdf.name + ".tmp.pdf")
    fig.savefig(tmp, bbox_inches="tight", format="pdf")
    tmp.replace(pdf)
    plt.close(fig)
    return [png, pdf]


def load_sample_dir(folder: str | Path, count: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The first `count` images (by seed) of an `lct sample --decode` dir: npz shards or PNG/JPEG files."""
    from PIL import Image

    folder = Path(folder)
    meta_path = folder / "sampling.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    shards = sorted(folder.glob("shard-*.npz"))
    if shards:
        imgs = []
        for path in shards:
            with np.load(path) as z:
                if z["samples"].dtype != np.uint8:
                    raise ValueError(f"{path} holds latents, not images; rerun `lct sample` with --decode")
                imgs.append(z["samples"])
            if sum(map(len, imgs)) >= count:
                break
        images = np.concatenate(imgs)
    else:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images = np.stack([np.asarray(Image.open(p)) for p in files[:count]]) if files else np.zeros((0, 1, 1, 1), np.uint8)
        if images.ndim == 3:
            images = images[..., None]
    if len(images) < count:
        raise ValueError(f"{folder}: {len(images)} images, a grid needs {count}; sample more seeds (lct sample --seeds)")
    return images[:count], meta


def grid_from_dir(folder: str | Path, grid: int, out: str | Path) -> list[Path]:
    """Sample grid from the images `lct sample --decode` wrote."""
    images, meta = load_sample_dir(folder, grid * grid)
    title = None
    if meta:
        title = f"{Path(str(meta.get('checkpoint', ''))).parent.name}, NFE {meta.get('nfe')}, EMA {meta.get('ema')}, " \
                f"seeds {meta.get('seeds', ['?'])[0]}-{int(meta.get('seeds', [0])[0]) + grid * grid - 1}"
    return save_grid(images, grid, out, title)


def samples_grid(checkpoint: str | Path, data: str | Path, nfe: int, grid: int, out: str | Path, ema: str = "0.99993",
                 seed_offset: int = 0, batch_size: int = 64, device: str = "auto") -> list[Path]:
    """Fixed-seed (seed_offset + k) uncurated samples of one checkpoint at one NFE."""
    from lct.evaluation.evaluate import pick_device
    from lct.run.sample import iter_samples
    from lct.run.model import load_checkpoint_model
    from lct.data.vae import load_codec

    dev = pick_device(device)
    model, cfg, info = load_checkpoint_model(checkpoint, ema=ema, device=dev)
    codec = load_codec(data, device=dev, batch_size=batch_size)
    seeds = list(range(seed_offset, seed_offset + grid * grid))
    images = np.concatenate(list(iter_samples(model, cfg, codec, seeds, nfe, dev, batch_size)))
    return save_grid(images, grid, out, title=f"{cfg.name}, NFE {nfe}, EMA {ema}, seeds {seeds[0]}-{seeds[-1]}")


# --- the report page -----------------------------------------------------------------------------

def figure_names(cfg: dict[str, Any]) -> list[str]:
    figs = cfg.get("figures") or {}
    names = [f for f in ("fig1", "fig2", "fig3") if f in figs or f == "fig2"]
    s = figs.get("samples") or {}
    names += [f"samples/{e}_nfe{k}" for e in s.get("experiments", []) for k in s.get("nfe", [1])]
    return names


def report_page(cfg: dict[str, Any] | str | Path, results_dir: str | Path, out: str | Path) -> Path:
    """One Markdown page with every table (inlined) and figure (linked PNG, PDF beside it)."""
    from lct.report.inputs import load_workflow_config

    cfg = load_workflow_config(cfg)
    results_dir, out = Path(results_dir), Path(out)
    rel = lambda p: Path(os.path.relpath(Path(p).resolve(), out.parent.resolve())).as_posix()  # noqa: E731
    lines = [f"# Reproduction report: {cfg.get('name', results_dir.name)}", "",
             "Tables put each reproduced cell beside its published value; figures are PNG with a PDF beside each.", ""]
    ev = cfg.get("evaluation") or {}
    lines += [f"Evaluation: feature `{ev.get('feature', 'inception')}`, {ev.get('num_samples', '?')} samples, "
              f"EMA {ev.get('ema', '?')}, images {ev.get('image_format', '?')}.", "", "## Tables", ""]
    for key in cfg.get("tables") or {}:
        md = results_dir / "tables" / f"{key}.md"
        lines += [f"### {key}", "", md.read_text() if md.is_file() else f"*{key}: not produced yet ({md}).*", ""]
    lines += ["## Figures", ""]
    for name in figure_names(cfg):
        png = results_dir / "figures" / f"{name}.png"
        if not png.is_file() and name.startswith("samples/"):
            png = results_dir / "figures" / f"{name.replace('/', '_')}.png"  # `lct report samples` layout
        if png.is_file():
            pdf = png.with_suffix(".pdf")
            lines += [f"### {name}", "", f"![{name}]({rel(png)})", ""]
            lines += [f"[PDF]({rel(pdf)})", ""] if pdf.is_file() else []
        else:
            lines += [f"### {name}", "", f"*not produced yet ({png}).*", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(out)
    return out


# --- command line (subcommands of `lct report`) --------------------------------------------------

def add_subparsers(sub: Any) -> None:
    f = sub.add_parser("figure", help="fig1, fig2 or fig3 as .png and .pdf")
    f.add_argument("--figure", required=True, choices=["fig1", "fig2", "fig3", "grid"])
    f.add_argument("--out", required=True, help="output prefix, e.g. results/<name>/figures/fig1")
    f.add_argument("--data-stats", help="fig1: stats/fig1_data.json")
    f.add_argument("--td-latent", help="fig1: stats/td_<latent experiment>.json")
    f.add_argument("--td-pixel", help="fig1: stats/td_<pixel experiment>.json")
    f.add_argument("--c", type=float, default=1.0, help="fig2: the scale c")
    f.add_argument("--workflow-config", "--config", dest="config", help="fig3: workflow config (figures.fig3)")
    f.add_argument("--eval-dir", help="fig3: results/<name>/eval (or give --snapshots)")
    f.add_argument("--snapshots", nargs="+", help="fig3: eval/<experiment>/snapshots dirs")
    f.add_argument("--samples", help="grid: a dir written by `lct sample --decode`")
    f.add_argument("--grid", type=int, default=8, help="grid: images per side")
    f.add_argument("--dim", type=int, default=None, help="fig3: data dimension d for c0 (default: from --data-file, else 32*32*4)")
    f.add_argument("--data-file", help="fig3: the training data (latents.npy or images.npy) whose sample size is d")
    f.add_argument("--s0", type=int, default=10, help="fig3: initial discretization intervals of the curriculum")
    f.add_argument("--s1", type=int, default=640, help="fig3: final discretization intervals of the curriculum")
    s = sub.add_parser("samples", help="a grid of fixed-seed samples as .png and .pdf")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True, help="data/<ds>/latents or data/<ds> (decodes samples)")
    s.add_argument("--nfe", type=int, required=True)
    s.add_argument("--grid", type=int, default=8)
    s.add_argument("--ema", default="0.99993")
    s.add_argument("--seed-offset", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", required=True)
    pg = sub.add_parser("page", help="one Markdown page showing every table and figure")
    pg.add_argument("--workflow-config", "--config", dest="config", required=True)
    pg.add_argument("--results-dir", required=True, help="results/<name>")
    pg.add_argument("--out", required=True, help="results/<name>/report.md")


def run_subcommand(a: argparse.Namespace) -> int:
    from lct.report.inputs import load_workflow_config, strip_ext as _strip_ext

    if a.cmd == "figure":
        out = _strip_ext(a.out)
        if a.figure == "fig1":
            if not a.data_stats:
                raise SystemExit("lct report figure --figure fig1 needs --data-stats (and --td-latent, --td-pixel)")
            paths = figure1(a.data_stats, a.td_latent, a.td_pixel, out)
        elif a.figure == "fig2":
            paths = figure2(out, c=a.c)
        elif a.figure == "grid":
            if not a.samples:
                raise SystemExit("lct report figure --figure grid needs --samples <dir of lct sample --decode>")
            paths = grid_from_dir(a.samples, a.grid, out)
        else:
            if not (a.config and (a.eval_dir or a.snapshots)):
                raise SystemExit("lct report figure --figure fig3 needs --workflow-config and --eval-dir or --snapshots")
            cfg = load_workflow_config(a.config)
            f3 = (cfg.get("figures") or {}).get("fig3")
            if not f3:
                raise SystemExit(f"{a.config}: no figures.fig3 section")
            modes = (cfg.get("evaluation") or {}).get("fid_modes") or []
            where = {Path(d).parent.name: Path(d) for d in a.snapshots} if a.snapshots else a.eval_dir
            d = a.dim or (_sample_dim(a.data_file) if a.data_file else 4096)
            from lct.config import resolve_workflow_experiment

            # Each legend says which c schedule its run resolved to under this config's reading.
            runs = {f"{label} [c: {resolve_workflow_experiment(cfg, e).loss.c}]": e for label, e in f3["experiments"].items()}
            paths = figure3(runs, where, out, d=d, s0=a.s0, s1=a.s1,
                            fid_mode="legacy_pytorch" if "legacy_pytorch" in modes else None)
    elif a.cmd == "samples":
        paths = samples_grid(a.checkpoint, a.data, a.nfe, a.grid, _strip_ext(a.out), a.ema, a.seed_offset,
                             a.batch_size, a.device)
    else:
        paths = [report_page(a.config, a.results_dir, a.out)]
    for p in paths:
        print(p)
    return 0
