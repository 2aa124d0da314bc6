"""Peak memory per image of each stage, measured, for lct/infra/memory.py's table (and the GPU check).

    python benchmarks/memory.py                    # every stage, on CUDA when present, else the CPU
    python benchmarks/memory.py --stage decode     # one stage

Each stage runs at two batch sizes in a fresh process; the peak (`torch.cuda.max_memory_allocated` on
a GPU; the process's peak resident set, `ru_maxrss`, on the CPU, whose allocator returns freed blocks at
once) is a + b x batch, and b, the memory per image, is what a card's free memory is divided by. Stages:

* train: one training step of the paper configuration (sLCT as coded, paper UNet on 32x32x4 latents,
  its precision fp32, two passes and the diffusion term, backward, RAdam, one EMA), per sample;
* train_ctm: one step of table_ctm's CTM (preset ctm, the same UNet with the s-embedding, a teacher of the
  same architecture, the longest solver path: every interval of the 18-point grid), per sample;
* decode: the SD-VAE decoder (its architecture, random weights: the cost does not depend on the
  values) from 32x32x4 to 256x256 images, fp32 and bf16;
* inception / vgg16: the two feature networks of FID and Recall on 256x256 uint8 images.

Prints one line per stage: the intercept, MB per image, and the batch that fits 40 GB and 80 GB cards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's lct, also in subprocesses

STAGES = ("train", "train_ctm", "decode_fp32", "decode_bf16", "inception", "vgg16")


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_stage(stage: str, batch: int, device: torch.device) -> float:
    """One stage at one batch size in this (fresh) process; its peak memory in MB."""
    import numpy as np

    from lct.infra.compat import ensure_torchvision

    ensure_torchvision()
    torch.manual_seed(0)
    if stage in ("train", "train_ctm"):
        from lct.config import resolve_experiment
        from lct.run.model import EMA, build_model, make_optimizer
        from lct.method.objectives import build_objective

        ctm = stage == "train_ctm"
        cfg = resolve_experiment("ctm" if ctm else "slct", {"train": {"total_steps": 1000}}, reading="as_coded")
        model = build_model(cfg, 32, 4).to(device)
        ema, opt = EMA(model, cfg.train.ema_decays[:1]), make_optimizer(cfg, model.parameters())
        teacher = None
        if ctm:
            teacher = build_model(resolve_experiment("ldm_ve", {"train": {"total_steps": 1}}), 32, 4).to(device)
        obj = build_objective(cfg, 1000, teacher=teacher)
        if ctm:
            obj.attach(model)
            obj.max_k = len(obj.grid) - 1
            obj.draw_times = lambda b, gen: (obj.max_k, torch.zeros(b, dtype=torch.long),  # the longest path
                                             torch.full((b,), obj.max_k, dtype=torch.long))
        x0 = torch.randn(batch, 4, 32, 32, device=device) * 0.5
        z = torch.randn_like(x0)
        loss, _ = obj(model, x0, z, 999)
        loss.mean().backward()
        opt.step()
        ema.update(model)
        return _peak_mb(device)  # the whole step, weights and optimizer included
    if stage.startswith("decode"):
        from diffusers import AutoencoderKL

        from lct.weights.random_weights import SD_VAE_CONFIG

        vae = AutoencoderKL.from_config(SD_VAE_CONFIG).to(device).eval().requires_grad_(False)
        z = torch.randn(batch, 4, 32, 32, device=device)
        dtype = torch.bfloat16 if stage.endswith("bf16") else None
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
            vae.decode(z).sample.float()
        return _peak_mb(device)
    from lct.evaluation.metrics import build_feature
    from lct.weights.random_weights import write_all

    with tempfile.TemporaryDirectory() as tmp:
        write_all(Path(tmp), None, inception=stage == "inception", vgg16=stage == "vgg16", elatentlpips=False)
        os.environ["LCT_ALLOW_RANDOM_WEIGHTS"] = "1"
        net = build_feature("inception_legacy" if stage == "inception" else "vgg16_nvidia", tmp, device)
        images = np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
        net(images)
    return _peak_mb(device)


def measure(stage: str, batches: tuple[int, int], device: str) -> dict[str, float]:
    peaks = []
    for b in batches:
        out = subprocess.run([sys.executable, __file__, "--one", stage, str(b), "--device", device],
                             capture_output=True, text=True, check=True)
        peaks.append(float(out.stdout.strip().splitlines()[-1]))
    per = (peaks[1] - peaks[0]) / (batches[1] - batches[0])
    return {"stage": stage, "batches": list(batches), "peaks_mb": peaks, "mb_per_image": per,
            "base_mb": peaks[0] - per * batches[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=STAGES, action="append")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default=None, help="two batch sizes, e.g. 2,6 (default: 2,6 on a CPU, 16,64 on a GPU)")
    p.add_argument("--one", nargs=2, metavar=("STAGE", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.one:
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        print(_run_stage(a.one[0], int(a.one[1]), torch.device(a.device)))
        return 0
    batches = tuple(int(x) for x in (a.batches or ("16,64" if a.device.startswith("cuda") else "2,6")).split(","))
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "CPU (peak RSS)"
    print(f"peak memory per stage on {name}, batches {batches[0]} and {batches[1]}:")
    rows = []
    for stage in a.stage or STAGES:
        r = measure(stage, batches, a.device)
        rows.append(r)
        fits = {gb: int((gb * 1024 * 0.9 - r["base_mb"]) // max(r["mb_per_image"], 1e-9)) for gb in (40, 80)}
        print(f"  {stage:12s} base {r['base_mb']:8.0f} MB  {r['mb_per_image']:8.1f} MB/image  "
              f"fits 40 GB: {fits[40]:6d}  80 GB: {fits[80]:6d}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
