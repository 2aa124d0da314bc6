"""Memory per stage, and the batch sizes that fit the card a job runs on.

Per-image peak memory of each stage, measured by `benchmarks/memory.py` (the slope of the peak over two
batch sizes, in a fresh process each). No GPU has measured them yet: the figures are the CPU's peak
resident set, whose allocator returns freed memory at once, so they are the tensors alive at the peak
(cuDNN's workspaces come on top on a GPU; `benchmarks/gpu_check.sh` re-measures with
`torch.cuda.max_memory_allocated`). bf16 decoding is the fp32 figure halved (activations in 2 bytes):
a stated computation, since the CPU's autocast keeps float32 copies and measures more, not less.

`fit_batch` divides the device's free memory (x `HEADROOM`) by the per-image figure: the VAE decode of
the evaluation's 250 images in fp32 at 256x256 needs about 53 GB, so it runs in sub-batches that fit.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# MB per image at 256x256 (decode from 32x32x4 latents; features of 256x256 uint8 images).
# benchmarks/memory.py on the CPU, 2026-12-05: decode fp32 218.1, inception 19.0, vgg16 28.4.
MB_PER_IMAGE = {"decode_fp32": 218.1, "decode_bf16": 218.1 / 2, "inception": 19.0, "vgg16": 28.4}
# Training, paper UNet on 32x32x4 latents, per sample of one rank's batch, float32 (both passes, the
# diffusion term, backward): measured with benchmarks/memory.py --stage train --batches 8,24.
TRAIN_MB_PER_SAMPLE = 54.5  # (base 3,720 MB at 158.4M parameters: the state below plus the framework)
# CTM (objective trajectory, table_ctm): the student's jump, the target's outer jump the gradient crosses and DSM,
# the solver's longest path: benchmarks/memory.py --stage train_ctm --batches 4,12 (base 4,911 MB), 2026-12-05.
TRAIN_CTM_MB_PER_SAMPLE = 171.3
HEADROOM = 0.8  # of the free memory: the allocator's fragmentation and cuDNN's workspaces


def fit_batch(stage: str, requested: int, device: torch.device | str, resolution: int = 256) -> int:
    """The largest batch <= `requested` whose `stage` peak fits the device's free memory (CUDA); on the
    CPU `requested`. Per-image figures scale with the pixel count from 256x256."""
    device = torch.device(device)
    if device.type != "cuda" or stage not in MB_PER_IMAGE:
        return max(1, int(requested))
    free, _ = torch.cuda.mem_get_info(device)
    per = MB_PER_IMAGE[stage] * (resolution / 256) ** 2 * 2**20
    return max(1, min(int(requested), int(free * HEADROOM // per)))


def train_memory_gb(params: int, per_rank_batch: int, n_ema: int = 1, precision: str = "fp32",
                    data_gb: float = 0.0, ctm: bool = False) -> float:
    """Peak GB of one training rank: weights, gradients, the two Adam moments and the EMAs in float32
    (4 bytes each), the dataset when held on the device, and the measured activations per sample (bf16:
    halved). `ctm`: CTM's step (its target network and teacher are two more copies of the weights)."""
    state = params * 4 * (1 + 1 + 2 + n_ema + (2 if ctm else 0)) / 2**30
    per = TRAIN_CTM_MB_PER_SAMPLE if ctm else TRAIN_MB_PER_SAMPLE
    act = per * (0.5 if precision == "bf16" else 1.0) * per_rank_batch / 1024
    return state + act + data_gb


def stage_table(params: int, batch: int, n_ema: int, precision: str, data_gb: float, eval_batch: int = 250,
                cards_gb: tuple[int, ...] = (40, 80)) -> list[dict[str, Any]]:
    """Rows for `lct estimate --memory`: per stage, the peak at the configured batch and what each card does."""
    rows = []
    for ctm in (False, True):
        for gpus in (1, 2, 4, 8):
            if batch % gpus:
                continue
            gb = train_memory_gb(params, batch // gpus, n_ema, precision, data_gb, ctm)
            rows.append({"stage": f"train{' CTM' if ctm else ''}, {gpus} GPU(s), {batch // gpus} per GPU ({precision})",
                         "gb": gb, **{f"{c}GB": "fits" if gb <= c * 0.9 else
                                     f"accumulate x{math.ceil(gb / (c * 0.9))} or more GPUs" for c in cards_gb}})
    for stage in ("decode_fp32", "decode_bf16", "inception", "vgg16"):
        gb = MB_PER_IMAGE[stage] * eval_batch / 1024
        rows.append({"stage": f"{stage}, batch {eval_batch}", "gb": gb,
                     **{f"{c}GB": "fits" if gb <= c * HEADROOM else
                        f"sub-batches of {int(c * 1024 * HEADROOM // MB_PER_IMAGE[stage])}" for c in cards_gb}})
    return rows
