"""VAEs (diffusers `AutoencoderKL`), latent normalization, and the codec between images and training space.

- `load_vae(dir)`: the SD-VAE (or the demo VAE) from a LOCAL folder only; a missing folder fails
  at once naming the `fetch_weights` rule (paper) or `lct train-vae` (demo).
- `LatentNormalizer`: ``sd_scale`` (z = 0.18215 x) or ``standardize`` (authors' code, docs/METHOD.md 4:
  z = 0.5 (0.18215 x - mean) / std per element, mean/std of the dataset); `denormalize` inverts it.
- `load_codec(data_path)`: images (uint8 NHWC) <-> the tensors a model is trained on; the identity
  codec ([-1, 1] <-> uint8) for a pixel dataset.
- `lct train-vae`: trains the tiny demo `AutoencoderKL` (32x32 -> 4x8x8) and reports its
  reconstruction error in ``<out>/reconstruction.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lct.infra.memory import fit_batch

SD_SCALE = 0.18215  # Stable Diffusion's latent scale factor
STANDARDIZE_STD = 0.5  # authors' code: standardized latents scaled to std 0.5 (= sigma_data)
NORMALIZATIONS = ("standardize", "sd_scale")


class VAEError(RuntimeError):
    """A VAE folder or latents dir is missing or wrong; the message names it and the fix."""


# ----------------------------------------------------------------------------- normalization


@dataclass
class LatentNormalizer:
    """z = target_std * (scale * x - mean) / std, per element [C, H, W]; exactly invertible."""

    mode: str
    scale: float
    mean: np.ndarray  # [C, H, W], in scaled space
    std: np.ndarray  # [C, H, W], in scaled space
    target_std: float

    @classmethod
    def fit(cls, raw: np.ndarray, mode: str, chunk: int = 4096, count: int | None = None,
            extra: np.ndarray | None = None) -> "LatentNormalizer":
        """Statistics of raw latents [N, C, H, W] (float64 accumulation, chunked for memmaps): over the first
        `count` (the training split; None: all) and every row of `extra` (the split's mirror images, if it
        trains on them), per element, std Bessel-corrected, as the authors' extract_stat.py computes them
        (`torch.std_mean(feats, dim=0)` over the training set)."""
        if mode not in NORMALIZATIONS:
            raise VAEError(f"normalization {mode!r}: choose one of {NORMALIZATIONS}")
        shape = raw.shape[1:]
        if mode == "sd_scale":
            return cls(mode, SD_SCALE, np.zeros(shape, np.float32), np.ones(shape, np.float32), 1.0)
        k = len(raw) if count is None else int(count)
        parts = [(raw, min(k, len(raw)))] + ([(extra, len(extra))] if extra is not None else [])
        n = sum(m for _, m in parts)
        if not 2 <= n or k > len(raw):
            raise VAEError(f"latent statistics over the first {count} of {len(raw)} latents: need 2 <= count <= "
                           f"{len(raw)}; check datasets.<name>.train_split.count")

        def chunks():
            for arr, m in parts:
                for i in range(0, m, chunk):
                    yield np.asarray(arr[i : min(m, i + chunk)], dtype=np.float64) * SD_SCALE

        mean = sum(c.sum(0) for c in chunks()) / n  # two passes (mean, then squared deviations): no cancellation
        s2 = sum(np.square(c - mean).sum(0) for c in chunks())
        std = np.sqrt(s2 / (n - 1))  # Bessel's correction, as torch.std
        std = np.maximum(std, 1e-6)  # a constant element (e.g. a padded border) must not divide by 0
        return cls(mode, SD_SCALE, mean.astype(np.float32), std.astype(np.float32), STANDARDIZE_STD)

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        mean, std = self._t(raw)
        return (raw.float() * self.scale - mean) / std * self.target_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._t(z)
        return (z.float() / self.target_std * std + mean) / self.scale

    def _t(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(self.mean, device=like.device), torch.as_tensor(self.std, device=like.device))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, mode=np.array(self.mode), scale=np.float64(self.scale), mean=self.mean, std=self.std,
                 target_std=np.float64(self.target_std))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "LatentNormalizer":
        with np.load(path) as d:
            return cls(str(d["mode"]), float(d["scale"]), d["mean"].astype(np.float32), d["std"].astype(np.float32),
                       float(d["target_std"]) if "target_std" in d else 1.0)


# ----------------------------------------------------------------------------- VAEs


def _autoencoder_cls():
    from lct.infra.compat import ensure_torchvision

    ensure_torchvision()  # diffusers imports torchvision
    from diffusers import AutoencoderKL

    return AutoencoderKL


def load_vae(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """`AutoencoderKL` from a local folder (never the hub); eval mode, no gradients."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise VAEError(
            f"VAE folder {path} is missing or has no config.json. Paper: run `snakemake fetch_weights` "
            f"(lct fetch-weights --out <resources>) on a machine with internet; demo: `lct train-vae --out {path}`"
        )
    from lct.weights.fetch import _load_manifest, check_not_random, require

    check_not_random(path)
    if any(k.startswith(path.name + "/") for k in _load_manifest(path.parent)["files"]):
        require(path.parent, path.name)  # a fetched VAE (SD-VAE): every file verified against MANIFEST.json
    vae = _autoencoder_cls().from_pretrained(str(path), local_files_only=True, low_cpu_mem_usage=False)
    return vae.to(device).eval().requires_grad_(False)


def build_tiny_vae(in_channels: int = 1, resolution: int = 32, widths: tuple[int, ...] = (16, 32, 32)):
    """A small `AutoencoderKL`: 4 latent channels, len(widths) - 1 halvings (demo: 32x32 -> 8x8)."""
    n = len(widths)
    if resolution % 2 ** (n - 1):
        raise VAEError(f"resolution {resolution} is not divisible by {2 ** (n - 1)}")
    return _autoencoder_cls()(
        in_channels=in_channels, out_channels=in_channels, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(widths), layers_per_block=1, norm_num_groups=8, sample_size=resolution,
    )


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


TO_UINT8 = ("round", "truncate")


def to_uint8(x: torch.Tensor, rule: str = "round") -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]. `round`: nearest level; `truncate`: the authors'
    `(clamp((x + 1) / 2, 0, 1) * 255).to(uint8)` (test_cm_latent_ddp.py), which rounds down."""
    x = x.detach().float().cpu()
    if rule == "truncate":
        y = ((x + 1.0) / 2.0).clamp(0, 1) * 255
    elif rule == "round":
        y = ((x + 1.0) * 127.5).round().clamp(0, 255)
    else:
        raise VAEError(f"to_uint8 rule {rule!r}: choose one of {TO_UINT8} (evaluation.to_uint8)")
    return y.to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def encode_mean(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Posterior mean of q(z|x): deterministic, what the authors' latents use (no sampling noise)."""
    return vae.encode(x).latent_dist.mean


@torch.no_grad()
def reconstruction_error(vae: torch.nn.Module, images: np.ndarray, batch_size: int = 250) -> dict[str, float]:
    """MSE in [-1, 1] and PSNR (dB, 8-bit) of decode(encode_mean(x)) after uint8 quantization."""
    se, n = 0.0, 0
    for i in range(0, len(images), batch_size):
        x = np.asarray(images[i : i + batch_size])
        y = to_uint8(vae.decode(encode_mean(vae, to_model_space(x))).sample)
        se += float(((y.astype(np.float64) - x) ** 2).sum())
        n += x.size
    mse255 = se / n
    return {"mse": mse255 / 127.5**2, "psnr_db": 10 * math.log10(255.0**2 / max(mse255, 1e-12)), "num_images": len(images)}


def train_tiny_vae(images: np.ndarray, out_dir: str | Path, steps: int = 600, batch_size: int = 64, lr: float = 2e-3,
                   kl_weight: float = 1e-6, seed: int = 0, widths: tuple[int, ...] = (16, 32, 32),
                   eval_images: int = 1000) -> dict[str, Any]:
    """Train the demo `AutoencoderKL` on uint8 NHWC images; save_pretrained into `out_dir` atomically.

    KL weight 1e-6 (as in SD's VAE training): the latents stay close to deterministic codes, so
    reconstructions are good; normalization happens later in `lct encode`.
    """
    out_dir = Path(out_dir)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # diffusers initializes weights from the global RNG; fixed for reproducibility
    n, h, w, c = images.shape
    vae = build_tiny_vae(c, h, widths).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    t0, loss_log = time.time(), []
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=g).numpy()
        x = to_model_space(images[np.sort(idx)])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)  # reparameterized sample
        rec = vae.decode(z).sample
        loss = torch.nn.functional.mse_loss(rec, x) + kl_weight * post.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_log.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            print(f"train-vae: step {step + 1}/{steps} loss {np.mean(loss_log[-50:]):.5f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr)
    vae.eval()
    sub = images[np.linspace(0, n - 1, min(eval_images, n)).astype(int)]
    report = {**reconstruction_error(vae, sub), "steps": steps, "batch_size": batch_size, "lr": lr,
              "kl_weight": kl_weight, "seed": seed, "widths": list(widths), "train_seconds": time.time() - t0,
              "final_loss": float(np.mean(loss_log[-20:])) if loss_log else None,
              "latent_shape": [4, h // 2 ** (len(widths) - 1), w // 2 ** (len(widths) - 1)]}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(str(tmp))
    (tmp / "reconstruction.json").write_text(json.dumps(report, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return report


# ----------------------------------------------------------------------------- codecs


class PixelCodec:
    """Identity codec of a pixel dataset: uint8 NHWC <-> [-1, 1] NCHW."""

    def __init__(self, latent_shape: tuple[int, int, int], to_uint8_rule: str = "round"):
        self.latent_shape = tuple(latent_shape)
        self.kind, self.to_uint8_rule = "pixels", to_uint8_rule

    def encode(self, images: np.ndarray) -> torch.Tensor:
        return to_model_space(np.asarray(images))

    def decode(self, z: torch.Tensor) -> np.ndarray:
        return to_uint8(z, self.to_uint8_rule)


# VAE decoding in evaluation: fp32 (the authors' scoring, the default) or bf16 autocast (faster on GPUs;
# changes decoded pixels by about a level, so its FIDs are keyed and labelled apart).
DECODE_PRECISIONS = ("fp32", "bf16")


class VAECodec:
    """uint8 NHWC -> posterior mean -> normalized latents, and back (batched)."""

    def __init__(self, vae: torch.nn.Module, normalizer: LatentNormalizer, latent_shape: tuple[int, int, int],
                 device: str | torch.device = "cpu", batch_size: int = 64, decode_precision: str = "fp32",
                 to_uint8_rule: str = "round"):
        self.to_uint8_rule = to_uint8_rule
        if decode_precision not in DECODE_PRECISIONS:
            raise VAEError(f"decode precision {decode_precision!r}; choose one of {DECODE_PRECISIONS}")
        self.vae, self.normalizer, self.latent_shape = vae, normalizer, tuple(latent_shape)
        self.device, self.batch_size, self.kind = torch.device(device), batch_size, "latents"
        self.decode_precision = decode_precision

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        out = [encode_mean(self.vae, to_model_space(images[i : i + self.batch_size]).to(self.device)).cpu()
               for i in range(0, len(images), self.batch_size)]
        return self.normalizer.normalize(torch.cat(out))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> np.ndarray:
        out = []
        # Its own batch: the evaluation's 250 images at 256x256 in fp32 need ~53 GB (lct.infra.memory).
        step = fit_batch(f"decode_{self.decode_precision}", self.batch_size, self.device, 8 * self.latent_shape[-1])
        for i in range(0, len(z), step):
            raw = self.normalizer.denormalize(z[i : i + step].to(self.device))
            # bf16: the decoder under autocast, its output back in float32 before the uint8 rounding
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.decode_precision == "bf16"):
                x = self.vae.decode(raw).sample
            out.append(to_uint8(x.float(), self.to_uint8_rule))
        return np.concatenate(out) if out else np.zeros((0,), np.uint8)


def resolve_vae_dir(meta: dict[str, Any], where: Path) -> Path:
    """The VAE folder recorded in latents.json: as written (relative to the cwd), else its absolute form."""
    for key in ("vae", "vae_abs"):
        if meta.get(key) and (Path(meta[key]) / "config.json").is_file():
            return Path(meta[key])
    raise VAEError(f"{where}: the VAE it records ({meta.get('vae')!r}) is not there; pass vae_dir= / --vae, "
                   f"or run `snakemake fetch_weights` (paper) / `lct train-vae` (demo)")


def load_codec(data_path: str | Path, vae_dir: str | Path | None = None, device: str | torch.device = "cpu",
               batch_size: int = 64, decode_precision: str = "fp32", to_uint8_rule: str = "round"
               ) -> PixelCodec | VAECodec:
    """The codec of a training-data dir: a latents dir (VAE from latents.json or `vae_dir`) or a pixel dir."""
    data_path = Path(data_path)
    if (data_path / "latents.json").is_file() or (data_path / "latents.npy").is_file():
        meta_file = data_path / "latents.json"
        if not meta_file.is_file() or not (data_path / "norm.npz").is_file():
            raise VAEError(f"{data_path}: latents.json or norm.npz missing; rerun `lct encode --out {data_path}`")
        meta = json.loads(meta_file.read_text())
        vdir = Path(vae_dir) if vae_dir else resolve_vae_dir(meta, meta_file)
        norm = LatentNormalizer.load(data_path / "norm.npz")
        return VAECodec(load_vae(vdir, device), norm, tuple(meta["latent_shape"]), device, batch_size, decode_precision,
                        to_uint8_rule)
    if (data_path / "images.npy").is_file():
        n, h, w, c = np.load(data_path / "images.npy", mmap_mode="r").shape
        return PixelCodec((c, h, w), to_uint8_rule)
    raise VAEError(f"{data_path} is neither a latents dir (latents.json) nor a dataset dir (images.npy)")


def codec_fingerprint(data_path: str | Path, vae_dir: str | Path | None = None) -> dict[str, Any]:
    """What decides how a latent becomes an image: sha256 of the VAE's files and of norm.npz (latents),
    or the pixel shape. Part of every sample / evaluation cache key."""
    from lct.files.download import file_digest

    data_path = Path(data_path)
    if (data_path / "latents.json").is_file():
        meta_file = data_path / "latents.json"
        vdir = Path(vae_dir) if vae_dir else resolve_vae_dir(json.loads(meta_file.read_text()), meta_file)
        files = sorted(f for f in vdir.iterdir() if f.is_file() and f.suffix in (".json", ".safetensors", ".bin"))
        return {"vae": {f.name: file_digest(f, "sha256") for f in files},
                "norm": file_digest(data_path / "norm.npz", "sha256")}
    if (data_path / "images.npy").is_file():
        return {"pixels": list(np.load(data_path / "images.npy", mmap_mode="r").shape[1:])}
    raise VAEError(f"{data_path} is neither a latents dir (latents.json) nor a dataset dir (images.npy)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lct train-vae", description="train the tiny demo AutoencoderKL")
    ap.add_argument("--data", required=True, help="dataset dir with images.npy")
    ap.add_argument("--out", required=True, help="output folder (save_pretrained + reconstruction.json)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    f = Path(a.data) / "images.npy"
    if not f.is_file():
        print(f"lct train-vae: {f} is missing; run `lct prepare-data --out {a.data}` first", file=sys.stderr)
        return 1
    rep = train_tiny_vae(np.load(f), a.out, a.steps, a.batch_size, a.lr, a.kl_weight, a.seed)
    print(json.dumps({k: rep[k] for k in ("mse", "psnr_db", "train_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
