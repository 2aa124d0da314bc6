"""Benchmark of the method layer on the current device (CUDA when present, else CPU).

1. Forward + backward time per step of the paper UNet (f_theta, eq. 2) on 32x32x4 latents at a
   small batch.
2. The OT coupling's time (lct.method.ot.ot_pair at batch 128) as a share of a full sLCT consistency
   step at batch 128 (paper UNet on GPU; on CPU the `small` size unless --ot-size says otherwise,
   because the paper UNet at batch 128 takes minutes per step there). The paper reports 0.93%.

    python benchmarks/method_step.py [--batch 4] [--ot-batch 128] [--ot-size small|paper|tiny] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from lct.config import resolve_experiment
from lct.method.nn.params import count_parameters
from lct.method.objectives import build_objective
from lct.method.ot import ot_pair
from lct.method.precond import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="batch of the paper-UNet step (default: 4 on CPU, 32 on GPU)")
    ap.add_argument("--ot-batch", type=int, default=128)
    ap.add_argument("--ot-size", default=None, help="UNet size of the step OT is compared with (default: paper on GPU, small on CPU)")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}")
    r, c = args.resolution, 4

    # 1. Paper UNet forward + backward.
    batch = args.batch or (32 if device.type == "cuda" else 4)
    cfg = resolve_experiment("slct", {"network": {"size": "paper"}, "train": {"total_steps": 1000}})
    net = build_model(cfg, r, c).to(device)
    x = torch.randn(batch, c, r, r, device=device)
    sigma = torch.full((batch,), 1.0, device=device)

    def fwd_bwd() -> None:
        net.zero_grad(set_to_none=True)
        net(x, sigma).square().mean().backward()

    t = _time(fwd_bwd, args.repeats, device)
    print(f"paper UNet ({count_parameters(net) / 1e6:.1f}M params, norm {cfg.network.norm}) on {c}x{r}x{r}, "
          f"batch {batch}: forward+backward {t * 1000:.1f} ms/step ({t / batch * 1000:.1f} ms/sample)")
    del net

    # 2. OT coupling as a share of an sLCT step at batch 128.
    size = args.ot_size or ("paper" if device.type == "cuda" else "small")
    b = args.ot_batch
    cfg = resolve_experiment("slct", {"network": {"size": size}, "train": {"total_steps": 1000}})
    net = build_model(cfg, r, c).to(device)
    obj = build_objective(cfg, 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(b, c, r, r, generator=g).mul(0.5).to(device)
    z = torch.randn(b, c, r, r, generator=g).to(device)
    t_ot = _time(lambda: ot_pair(x0, z), max(args.repeats, 5), device)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        loss, _ = obj(net, x0, z, 0)  # includes OT (cfg.loss.ot is on in slct)
        loss.mean().backward()

    t_step = _time(step, args.repeats, device)
    print(f"OT coupling at batch {b} ({c}x{r}x{r}): {t_ot * 1000:.1f} ms; full sLCT step with the "
          f"{size!r} UNet ({count_parameters(net) / 1e6:.1f}M params): {t_step * 1000:.1f} ms; "
          f"OT share {100 * t_ot / t_step:.2f}% (paper: 0.93% of training time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
