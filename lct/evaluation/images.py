"""Generated images as a metric sees them: the file format round trip (JPEG at PIL's default quality, as
the authors saved their samples, or lossless PNG) and the evaluation's stage timer."""

from __future__ import annotations

import contextlib
import io
import time
from typing import Any

import numpy as np
import torch

IMAGE_FORMATS = ("jpeg", "png")
DEFAULT_JPEG_QUALITY = 75


def encode_images(images: np.ndarray, image_format: str, quality: int = DEFAULT_JPEG_QUALITY) -> list[bytes]:
    """uint8 [B, H, W, C] -> encoded files (PNG lossless, JPEG at `quality`)."""
    from PIL import Image

    out = []
    for im in images:
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        buf = io.BytesIO()
        if image_format == "jpeg":
            pil.save(buf, format="JPEG", quality=quality)
        else:
            pil.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _jpeg_round_trip(im: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def apply_image_format(images: np.ndarray, image_format: str, quality: int = DEFAULT_JPEG_QUALITY) -> np.ndarray:
    """What a metric reading saved files would see: JPEG round trip (threads: PIL releases the GIL while
    coding), or the images unchanged (PNG)."""
    if image_format == "png":
        return images
    if image_format != "jpeg":
        raise ValueError(f"--image-format {image_format!r}; choose one of {IMAGE_FORMATS}")
    from lct.evaluation.metrics import image_pool

    decoded = list(image_pool().map(lambda im: _jpeg_round_trip(im, quality), images))  # the job's CPUs
    return np.stack(decoded).reshape(images.shape)


class StageTimer:
    """Wall time per stage of an evaluation (sampling, decoding, jpeg_resize, features, statistics); on a GPU
    each stage ends with a synchronisation so its kernels are counted where they ran."""

    STAGES = ("sampling", "decoding", "jpeg_resize", "features", "statistics")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds = {s: 0.0 for s in self.STAGES}
        self.images = 0
        self.wall = 0.0  # elapsed time of the image stream; the CPU stage overlaps the device stages

    @contextlib.contextmanager
    def stage(self, name: str, sync: bool = True):
        """Time one stage; `sync=False` for CPU work on another thread (it must not wait for the device)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - t0

    def report(self) -> dict[str, Any]:
        total = sum(self.seconds.values())
        per = {s: {"seconds": round(v, 3), "images_per_s": round(self.images / v, 2) if v > 0 and s != "statistics"
                   else None} for s, v in self.seconds.items()}
        return {"images": self.images, "total_seconds": round(total, 3), "wall_seconds": round(self.wall, 3),
                "stages": per}

    def line(self) -> str:
        return ", ".join(f"{s} {v:.1f}s" for s, v in self.seconds.items())
