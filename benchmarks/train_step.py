"""Images per second of one `lct train` step (objective, backward, RAdam, EMA) for a UNet size.

    python benchmarks/train_step.py --size tiny --batch 32 --resolution 32 --channels 4 [--device cuda]

Runs the sLCT objective with and without minibatch OT, in fp32 and (where the device supports it)
bf16 autocast, and prints one line per variant plus a JSON summary. The batch is Gaussian data of
the latent shape: the step's cost does not depend on the values (OT solves the same-size problem).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lct.config import resolve_experiment
from lct.model import EMA, build_model, make_optimizer
from lct.train import make_objective


def bench(size: str, batch: int, resolution: int, channels: int, device: torch.device, ot: bool, precision: str,
          steps: int, warmup: int) -> dict:
    cfg = resolve_experiment("slct", {"network": {"size": size},
                                      "loss": {"ot": ot}, "train": {"total_steps": 10_000, "batch_size": batch}})
    torch.manual_seed(0)
    model = build_model(cfg, resolution, channels).to(device)
    opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    ema = EMA(model, cfg.train.ema_decays)
    objective = make_objective(cfg, cfg.train.total_steps)
    g = torch.Generator(device).manual_seed(0)
    x0 = torch.randn(batch, channels, resolution, resolution, generator=g, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(k: int) -> None:
        noise = torch.randn(x0.shape, generator=g, device=device)
        with autocast:
            loss, _ = objective(model, x0, noise, 5_000 + k, generator=torch.Generator().manual_seed(k))
        loss.float().mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model)

    for k in range(warmup):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for k in range(steps):
        step(warmup + k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    return {"size": size, "params": params, "batch": batch, "shape": [channels, resolution, resolution],
            "device": str(device), "ot": ot, "precision": precision, "s_per_step": dt / steps,
            "images_per_s": batch * steps / dt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", nargs="+", default=["tiny"], help="UNet size(s): tiny small paper")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--cpu-bf16", action="store_true", help="also time bf16 autocast on a CPU")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precisions = ["fp32"]
    if (device.type == "cuda" and torch.cuda.is_bf16_supported()) or (device.type == "cpu" and a.cpu_bf16):
        precisions.append("bf16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # as `lct train` by default
        torch.backends.cudnn.allow_tf32 = False
    results = []
    for size in a.size:
        for precision in precisions:
            for ot in (False, True):
                try:
                    r = bench(size, a.batch, a.resolution, a.channels, device, ot, precision, a.steps, a.warmup)
                except RuntimeError as e:  # e.g. an op without a bf16 kernel on this device
                    print(f"{size:6s} {device.type} {precision} OT {ot}: failed: {str(e).splitlines()[0]}", flush=True)
                    results.append({"size": size, "device": str(device), "ot": ot, "precision": precision,
                                    "error": str(e).splitlines()[0]})
                    continue
                results.append(r)
                print(f"{size:6s} {r['params'] / 1e6:7.2f}M  batch {a.batch:4d}  {device.type:4s} {precision}  "
                      f"OT {'on ' if ot else 'off'}  {r['images_per_s']:9.1f} img/s  {r['s_per_step'] * 1e3:8.1f} ms/step",
                      flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
