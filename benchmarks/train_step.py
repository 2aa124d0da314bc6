"""One `lct train` step (objective, backward, RAdam, EMA): the authors' settings against the fast path.

    python benchmarks/train_step.py                                  # paper UNet, paper batch, this device
    python benchmarks/train_step.py --size tiny --batch 16 --steps 3 # a CPU check in under a minute

Prints, for the UNet at the given batch on the current device, three rows: the authors' settings
(fp32, TF32 on as their train_cm_latent.py sets it, eager, NCHW), the paper configuration as it will
train here (config/config.yaml's precision fp32 with lct.run.model.fast_path's other switches on this
device: channels_last, torch.compile, TF32 on a GPU), and the bf16 fast path (GPUs); images/s,
ratios against the authors' row, the achieved TFLOP/s from the FLOPs of one step counted by torch's
FlopCounterMode, the utilisation against the device's dense peak, and OT's share of a step at batch
128 and 256. The data are Gaussian latents of the training shape (the cost of
a step does not depend on the values). One process, one device: run it on the cluster's GPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lct.config import resolve_experiment
from lct.run.model import EMA, build_model, make_optimizer
from lct.run.model import compile_blocks, configure_fast_path, fast_path  # the public functions lct train uses
from lct.method.objectives import build_objective

# Dense peaks (TFLOP/s, no sparsity) from the vendors' data sheets, for the utilisation column.
PEAKS_TFLOPS = {
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "H100": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},  # SXM
    "H200": {"bf16": 989.0, "tf32": 494.0, "fp32": 67.0},  # same compute as H100 SXM
}


def device_peak(device: torch.device, precision: str, tf32: bool) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "CPU (no reference peak; utilisation not computed)", None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAKS_TFLOPS.items():
        if key in name:
            kind = "bf16" if precision == "bf16" else ("tf32" if tf32 else "fp32")
            return f"{name} dense {kind} peak {peaks[kind]:.0f} TFLOP/s", peaks[kind]
    return f"{name} (not in the peak table)", None


def make_step(size: str, batch: int, resolution: int, channels: int, device: torch.device, fast: dict, ot: bool = True):
    cfg = resolve_experiment("slct", {"network": {"size": size}, "loss": {"ot": ot},
                                      "train": {"total_steps": 10_000, "batch_size": batch}}, reading="as_coded")
    torch.manual_seed(0)
    model = build_model(cfg, resolution, channels).to(device)
    configure_fast_path(model, fast, device)
    net = compile_blocks(model) if fast["compile"] else model  # as the loop compiles it
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    ema = EMA(model, cfg.train.ema_decays)
    objective = build_objective(cfg, cfg.train.total_steps)
    mf = torch.channels_last if fast["channels_last"] else torch.contiguous_format
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.randn(batch, channels, resolution, resolution, generator=g, device=device).contiguous(memory_format=mf)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(k: int) -> dict:
        noise = torch.randn(x0.shape, generator=g, device=device).contiguous(memory_format=mf)
        per_sample, logs = objective(net, x0, noise, 5_000 + k, generator=torch.Generator().manual_seed(k))
        per_sample.float().mean().backward()
        torch.nn.utils.clip_grad_norm_(params, float("inf"), foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
        return logs

    return step, sum(p.numel() for p in params)


def timed(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step, OT seconds per step)."""
    for k in range(warmup):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0, ot = time.perf_counter(), 0.0
    for k in range(steps):
        ot += float(step(warmup + k).get("ot_time_s", 0.0))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps, ot / steps


def count_flops(size: str, batch: int, resolution: int, channels: int, device: torch.device) -> float:
    """FLOPs of one eager fp32 step (the same arithmetic in every variant)."""
    from torch.utils.flop_counter import FlopCounterMode

    step, _ = make_step(size, batch, resolution, channels, device,
                        {"precision": "fp32", "compile": False, "tf32": False, "channels_last": False})
    with FlopCounterMode(display=False) as fc:
        step(0)
    return float(fc.get_total_flops())


def ddp_rows(world: int, device: torch.device, steps: int = 12) -> dict:
    """Throughput of `lct train` itself (the CLI the workflow runs) with 1 and `world` real processes on a
    small latent set (tiny UNet on a CPU, the paper UNet on GPUs); images/s from its log.jsonl."""
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import numpy as np

    from lct.config import save_experiment
    from lct.data.vae import LatentNormalizer

    size, batch = ("paper", 128) if device.type == "cuda" else ("tiny", 16)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "latents"
        d.mkdir()
        raw = np.random.default_rng(0).normal(size=(512, 4, 32, 32)).astype(np.float32)
        np.save(d / "latents.npy", raw)
        LatentNormalizer.fit(raw, "standardize").save(d / "norm.npz")
        cfg = resolve_experiment("slct", {"network": {"size": size}, "train": {
            "total_steps": steps, "batch_size": batch, "log_every": steps // 2, "checkpoint_every": 10 * steps}},
            reading="as_coded", name="bench")
        save_experiment(cfg, Path(tmp) / "bench.yaml")
        for w in (1, world):
            run = Path(tmp) / f"run{w}"
            cmd = [sys.executable, "-m", "lct", "train", "--config", str(Path(tmp) / "bench.yaml"), "--data", str(d),
                   "--run-dir", str(run), "--quiet", "--gpus", str(w), "--device", device.type]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // w))}
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            import json as _json

            last = _json.loads((run / "log.jsonl").read_text().splitlines()[-1])  # the second window: warm
            out[w] = last["images_per_s"]
            print(f"lct train --gpus {w} ({'NCCL' if device.type == 'cuda' else 'gloo'}, UNet {size!r}, batch {batch}): "
                  f"{out[w]:9.1f} img/s  x{out[w] / out[1]:.2f} of one process", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="paper", help="UNet size: paper (default), small, tiny")
    p.add_argument("--batch", type=int, default=128, help="global batch (paper: 128)")
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (torch.compile compiles in the first)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--ddp", type=int, default=2,
                   help="ranks for the DDP row: `lct train --gpus N` (real processes: NCCL on GPUs, gloo on a CPU); "
                        "1 skips it")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The authors' train_cm_latent.py: fp32, eager, NCHW, and TF32 on (it sets both allow_tf32 flags).
    authors = {"precision": "fp32", "compile": False, "tf32": True, "channels_last": False}
    paper_cfg = resolve_experiment("slct", {"train": {"total_steps": 1, "precision": "fp32"}})  # config/config.yaml's
    paper = fast_path(paper_cfg, device)  # the paper configuration as it will train here
    fast = {**paper, "precision": "bf16"} if device.type == "cuda" else paper  # the bf16 fast path (GPUs)
    flops = count_flops(a.size, a.batch, a.resolution, a.channels, device)
    rows = {}
    for name, switches in (("authors (fp32, TF32, eager, NCHW)", authors),
                           (f"paper config as it trains {paper}", paper), (f"bf16 fast path {fast}", fast)):
        step, n_params = make_step(a.size, a.batch, a.resolution, a.channels, device, switches)
        s, ot = timed(step, a.steps, a.warmup, device)
        label, peak = device_peak(device, switches["precision"], switches["tf32"])
        tflops = flops / s / 1e12
        rows[name] = {"images_per_s": a.batch / s, "s_per_step": s, "tflops": tflops,
                      "utilisation": tflops / peak if peak else None, "peak": label, "ot_s_per_step": ot}
        util = f"{100 * tflops / peak:5.1f}% of {label}" if peak else label
        ratio = a.batch / s / next(iter(rows.values()))["images_per_s"]
        print(f"{name:70s} {a.batch / s:9.1f} img/s  {s * 1e3:8.1f} ms/step  {tflops:7.2f} TFLOP/s  "
              f"x{ratio:.2f} of authors  {util}", flush=True)
    ra, rf = next(iter(rows.values())), list(rows.values())[-1]
    print(f"UNet {a.size!r} ({n_params / 1e6:.1f}M params) on {a.channels}x{a.resolution}x{a.resolution}, batch "
          f"{a.batch}, {device}: {flops / a.batch / 1e9:.1f} GFLOP per image per step")
    # OT's share of a step at batch 128 and 256 (the paper's and LSUN's; its cost depends on the batch only)
    ot_rows = {}
    for b in (128, 256):
        step, _ = make_step(a.size if a.batch >= 128 else "tiny", b, a.resolution, a.channels, device, paper)
        sb, otb = timed(step, max(2, a.steps // 2), 1, device)
        ot_rows[b] = {"s_per_step": sb, "ot_s_per_step": otb}
        exposed = max(0.0, otb - (sb - otb))  # lct.run.batches solves batch k+1 on a worker while step k runs
        ot_rows[b]["exposed_s_per_step"] = exposed
        print(f"OT at batch {b}: solve {otb * 1e3:.1f} ms beside a {(sb - otb) * 1e3:.1f} ms step "
              f"({'paper' if a.batch >= 128 else 'tiny'} UNet): {100 * otb / sb:.2f}% if solved in the step; "
              f"overlapped with the previous step (the loop): {exposed * 1e3:.1f} ms exposed, "
              f"{100 * exposed / (sb - otb + exposed):.2f}%")
    s128, ot128 = ot_rows[128]["s_per_step"], ot_rows[128]["ot_s_per_step"]
    ddp = ddp_rows(a.ddp, device) if a.ddp > 1 else {}
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": str(device), "size": a.size, "batch": a.batch, "flops_per_step": flops,
                       "rows": rows, "ratio": rf["images_per_s"] / ra["images_per_s"],
                       "ot_at_128": {"s_per_step": s128, "ot_s_per_step": ot128}, "ot": ot_rows, "ddp": ddp}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
