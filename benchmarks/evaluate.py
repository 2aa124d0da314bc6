"""Images/s per stage of an evaluation on the current device, and the projected time of a 50K one.

    python benchmarks/evaluate.py                         # paper sizes: UNet on 32x32x4, SD-VAE decoder at 256
    python benchmarks/evaluate.py --size tiny --vae tiny --num 16   # a CPU check in under a minute

The same streamed path as `lct evaluate` (lct.evaluation.evaluate.run_evaluation with its StageTimer): sampling
(1 NFE), VAE decoding, the JPEG round trip, both feature networks (Inception for FID, the VGG16 of
pr50k3_full for Recall) and the statistics. Every network has the paper's architecture with random
weights (nothing is downloaded: the cost does not depend on the values), so the figures hold for the
real evaluation. Prints images/s per stage and the projected wall time for 50,000 images.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build(size: str, vae: str, device: torch.device, tmp: Path):
    from lct.config import resolve_experiment
    from lct.run.model import build_model
    from lct.weights.random_weights import SD_VAE_CONFIG

    from lct.infra.compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import AutoencoderKL

    cfg = resolve_experiment("slct", {"network": {"size": size}, "train": {"total_steps": 1}}, reading="as_coded")
    torch.manual_seed(0)
    model = build_model(cfg, 32, 4).to(device).eval().requires_grad_(False)
    vcfg = SD_VAE_CONFIG if vae == "sd" else {**SD_VAE_CONFIG, "block_out_channels": [32, 32, 32, 32],
                                               "norm_num_groups": 8, "layers_per_block": 1}
    v = AutoencoderKL.from_config(vcfg).to(device).eval().requires_grad_(False)
    return model, cfg, v


def main(argv: list[str] | None = None) -> int:
    from lct.evaluation.evaluate import StageTimer, run_evaluation
    from lct.evaluation.metrics import build_feature
    from lct.weights.random_weights import write_all
    from lct.method.samplers import generate

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="paper", help="UNet size")
    p.add_argument("--vae", default="sd", choices=["sd", "tiny"], help="sd: the SD-VAE architecture (256x256)")
    p.add_argument("--num", type=int, default=None, help="images (default: 2000 on a GPU, 16 on a CPU)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: 250 on a GPU, 8 on a CPU)")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--reals", type=int, default=30_000, help="real images behind the reference (CelebA-HQ: 30,000)")
    p.add_argument("--samples", type=int, default=50_000, help="generated images of the real evaluation")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import os

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    num = a.num or (2000 if device.type == "cuda" else 16)
    batch = a.batch or (250 if device.type == "cuda" else 8)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, cfg, vae = build(a.size, a.vae, device, tmp)
        write_all(tmp / "res", None, inception=True, vgg16=True, elatentlpips=False)
        os.environ["LCT_ALLOW_RANDOM_WEIGHTS"] = "1"  # this benchmark's own random-weight files
        extractors = {n: build_feature(n, tmp / "res", device) for n in ("inception_legacy", "vgg16_nvidia")}
        # clean mode: NVIDIA's TorchScript Inception is not downloadable here; the same Inception-v3 network
        # behind clean-fid's clean resizer (PIL bicubic per image) costs the same as the real one.
        import dataclasses

        from cleanfid.resize import build_resizer

        extractors["inception_clean"] = dataclasses.replace(extractors["inception_legacy"], name="inception_clean",
                                                            fn_resize=build_resizer("clean"))
        rng = np.random.default_rng(0)
        ref = {"mu_legacy_pytorch": np.zeros(2048), "sigma_legacy_pytorch": np.eye(2048),
               "mu_clean": np.zeros(2048), "sigma_clean": np.eye(2048),
               "recall_feats": rng.normal(size=(num, 4096)).astype(np.float16)}
        timer = StageTimer(device)

        def images_for_seeds(seeds):
            for i in range(0, len(seeds), batch):
                with timer.stage("sampling"):
                    z = generate(model, cfg, (4, 32, 32), list(seeds[i:i + batch]), 1, device, batch)
                with timer.stage("decoding"), torch.no_grad():
                    x = vae.decode(z.to(device) / 0.18215).sample
                    images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                yield images

        # Warm-up (cuDNN autotuning, first allocations, thread start-up), not timed: one batch through every stage.
        for images in images_for_seeds(list(range(batch))):
            for ext in extractors.values():
                ext(images[:4])
        timer = StageTimer(device)
        t0 = time.perf_counter()
        res = run_evaluation(images_for_seeds, list(range(num)), extractors,
                             {"legacy_pytorch": "inception_legacy", "clean": "inception_clean"},
                             "vgg16_nvidia", ref, tmp / "cache", {"bench": 1}, "jpeg", 75, shard_size=num,
                             device=device, timer=timer)
        wall = time.perf_counter() - t0
    rep = res["timing"]
    print(f"{num} images, batch {batch}, UNet {a.size!r}, VAE {a.vae}, {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}):")
    for stage, v in rep["stages"].items():
        ips = f"{v['images_per_s']:9.1f} img/s" if v["images_per_s"] else " " * 15
        print(f"  {stage:11s} {v['seconds']:8.2f} s  {ips}")
    # The CPU stage (jpeg_resize: the JPEG round trip and the resizes) runs beside the device stages
    # (lct.evaluation.evaluate.shard_features), so the stream's elapsed time, not the sum of the stages, sets the pace.
    busy = sum(v["seconds"] for s, v in rep["stages"].items() if s != "statistics")
    per_image = rep["wall_seconds"] / num
    print(f"  stream      {rep['wall_seconds']:8.2f} s  {num / rep['wall_seconds']:9.1f} img/s elapsed "
          f"(stages sum {busy:.2f} s: {max(0.0, busy - rep['wall_seconds']):.2f} s hidden by the overlap)")
    # Statistics: the Frechet distance (a 2048-d matrix square root) costs the same at any N; the k-NN
    # distances of Recall grow as (N_real + N_gen)^2, timed here at this size and scaled to 50K + 50K.
    from lct.evaluation.metrics import precision_recall

    m = 2000  # a size whose distance matrices take measurable time on any device
    feats = np.random.default_rng(1).normal(size=(2 * m, 4096)).astype(np.float32)
    t1 = time.perf_counter()
    precision_recall(feats[:m], feats[m:], k=3, device=device)
    pr_s = time.perf_counter() - t1
    frechet_s = rep["stages"]["statistics"]["seconds"]  # at `num` images the k-NN part is negligible
    # The k-NN radii of both sets and the two cross checks compute N_r^2 + N_g^2 + 2 N_r N_g = (N_r + N_g)^2
    # distances; timed at (m + m)^2, scaled to the real sizes.
    pairs, pairs_timed = (a.reals + a.samples) ** 2, (2 * m) ** 2
    pr_full = pr_s * pairs / pairs_timed
    projected = per_image * a.samples + frechet_s + pr_full
    print(f"  total {wall:.1f} s (warm-up excluded); projected {a.samples:,} images against {a.reals:,} reals: "
          f"{projected / 60:.1f} min (Frechet {frechet_s:.1f} s; Recall distances {pr_full / 60:.1f} min: "
          f"{pairs:.2e} pairs, x{pairs / pairs_timed:.0f} the {pairs_timed:.1e} timed in {pr_s:.2f} s)")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": str(device), "num": num, "batch": batch, "timing": rep,
                                            "projected_50k_s": projected}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
