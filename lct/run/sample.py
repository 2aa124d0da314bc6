"""`lct sample`: generate samples with per-image seeds, resumable by shards.

    lct sample --checkpoint runs/<e>/final.pt --data data/<ds>/latents --ema 0.99993 --nfe 1 \
        --seeds 0-49999 --out samples/<e>-nfe1 [--batch-size 64] [--decode] [--format npy|png|jpeg]

Output (written atomically, rerunning skips what is finished):
  --format npy:   ``shard-<first seed:06d>.npz`` per `--shard-size` seeds, arrays ``seeds`` (int64 [n])
                  and ``samples``: latents float32 [n, C, H, W] in the model's normalized space, or,
                  with --decode, uint8 images [n, H, W, C].
  --format png|jpeg (implies --decode): one ``<seed:06d>.png|jpg`` per image.
  ``sampling.json``: checkpoint, EMA, NFE, seeds; a rerun with different parameters is refused.
Image k depends only on seed k (edm `StackedRandomGenerator`), whatever the batch size or shard.

For other commands (`lct evaluate`): ``iter_samples(model, cfg, codec, seeds, nfe, device, batch_size)``
streams uint8 image batches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

FORMATS = ("npy", "png", "jpeg")
_EXT = {"png": ".png", "jpeg": ".jpg"}


def parse_seeds(text: str) -> list[int]:
    """'0-49999' or '0,3,10-19' -> list of ints (ranges inclusive)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if lo < 0 or hi < lo:
                    raise ValueError
                seeds.extend(range(lo, hi + 1))
            elif part:
                seeds.append(int(part))
        except (TypeError, ValueError):
            raise ValueError(f"--seeds {text!r}: cannot parse {part!r}; use e.g. 0-49999 or 0,5,10-19") from None
    if not seeds:
        raise ValueError(f"--seeds {text!r}: no seeds")
    return seeds


def iter_latents(model: torch.nn.Module, cfg, shape: Sequence[int], seeds: Sequence[int], nfe: int,
                 device: str | torch.device, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Samples in the model's space, float32 [b, C, H, W] on CPU, one batch of `batch_size` seeds at a time."""
    from lct.method.samplers import generate

    for i in range(0, len(seeds), batch_size):
        with torch.no_grad():
            yield generate(model, cfg, tuple(shape), list(seeds[i:i + batch_size]), nfe, device, batch_size)


def iter_samples(model: torch.nn.Module, cfg, codec, seeds: Sequence[int], nfe: int, device: str | torch.device,
                 batch_size: int = 64) -> Iterator[np.ndarray]:
    """uint8 images [b, H, W, C], batch by batch, for `seeds` in order (image k from seeds[k] only).

    `codec` is `lct.data.vae.load_codec(data)`: the VAE of a latent dataset, or the identity of a pixel
    dataset ([-1, 1] -> uint8); its `latent_shape` is the shape the model generates.
    """
    for z in iter_latents(model, cfg, codec.latent_shape, seeds, nfe, device, batch_size):
        yield codec.decode(z)


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _write_image(path: Path, img: np.ndarray, fmt: str, quality: int) -> None:
    from PIL import Image

    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    pil.save(tmp, format="JPEG" if fmt == "jpeg" else "PNG", **({"quality": quality} if fmt == "jpeg" else {}))
    tmp.replace(path)


def sample_to_dir(model: torch.nn.Module, cfg, shape: Sequence[int], seeds: list[int], nfe: int, out: Path,
                  device: str | torch.device, batch_size: int = 64, codec=None, fmt: str = "npy",
                  shard_size: int = 1000, jpeg_quality: int = 75, progress: bool = True) -> int:
    """Generate the missing shards / images under `out`; returns the number of images generated."""
    from tqdm import tqdm

    made = 0
    shards = [seeds[i:i + shard_size] for i in range(0, len(seeds), shard_size)]
    for shard in tqdm(shards, desc="shards", disable=not progress, unit="shard"):
        if fmt == "npy":
            path = out / f"shard-{shard[0]:06d}.npz"
            if path.is_file():
                with np.load(path) as f:
                    if f["seeds"].tolist() == list(shard):
                        continue
                raise RuntimeError(f"{path} holds other seeds (another --shard-size?); use a new --out")
            batches = list(iter_latents(model, cfg, shape, shard, nfe, device, batch_size))
            z = torch.cat(batches)
            samples = codec.decode(z) if codec is not None else z.numpy().astype(np.float32)
            _write_npz(path, seeds=np.asarray(shard, dtype=np.int64), samples=samples)
            made += len(shard)
        else:
            todo = [s for s in shard if not (out / f"{s:06d}{_EXT[fmt]}").is_file()]
            for i in range(0, len(todo), batch_size):
                part = todo[i:i + batch_size]
                for s, img in zip(part, next(iter_samples(model, cfg, codec, part, nfe, device, batch_size))):
                    _write_image(out / f"{s:06d}{_EXT[fmt]}", img, fmt, jpeg_quality)
            made += len(todo)
    return made


def _check_or_write_meta(out: Path, meta: dict[str, Any]) -> None:
    path = out / "sampling.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} -> {meta.get(k)!r}" for k in sorted(set(old) | set(meta)) if old.get(k) != meta.get(k)]
        if diff:
            raise ValueError(f"{path}: these samples were made with other parameters ({'; '.join(diff)}); "
                             f"use a new --out or delete {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1) + "\n")
    tmp.replace(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lct sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="final.pt, a ckpt-*.pt, a snapshot, or a run dir (its final.pt)")
    p.add_argument("--data", default=None, help="the training data dir: its VAE decodes samples (needed by --decode)")
    p.add_argument("--ema", default="0.99993", help="EMA decay as in train.ema_decays, or 'online'")
    p.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler setting over the checkpoint's (sample.two_step_index, ...; repeatable)")
    p.add_argument("--nfe", type=int, default=1, help="network evaluations: 1, 2 (CM) or e.g. 250 (diffusion)")
    p.add_argument("--seeds", default="0-49999", help="per-image seeds, e.g. 0-49999 or 0,5,10-19")
    p.add_argument("--out", required=True, help="output dir")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--decode", action="store_true", help="store uint8 images decoded by the dataset's VAE")
    p.add_argument("--format", choices=FORMATS, default="npy", help="npz shards, or one PNG / JPEG per image")
    p.add_argument("--shard-size", type=int, default=1000, help="seeds per resumable shard")
    p.add_argument("--jpeg-quality", type=int, default=75, help="JPEG quality (PIL's default, as the authors' saves)")
    p.add_argument("--vae", default=None, help="VAE dir, if not the one recorded in the data's latents.json")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    ckpt = Path(a.checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / "final.pt"
    decode = a.decode or a.format != "npy"
    try:  # the command is checked before any work
        seeds = parse_seeds(a.seeds)
        if not ckpt.is_file():
            raise FileNotFoundError(f"--checkpoint {ckpt}: no such file (has `lct train` finished?)")
        if decode and a.data is None:
            raise ValueError(f"--decode / --format {a.format} need --data <the training data dir> for its VAE")
        if a.data is not None and not Path(a.data).is_dir():
            raise FileNotFoundError(f"--data {a.data}: no such directory")
        if a.batch_size < 1 or a.shard_size < 1:
            raise ValueError("--batch-size and --shard-size must be >= 1")
    except (ValueError, FileNotFoundError) as e:
        print(f"lct sample: error: {e}", file=sys.stderr)
        return 2
    from lct.config import ConfigError
    from lct.run.model import load_checkpoint_model

    from lct.infra.device import pick_device

    device = pick_device(a.device)
    try:
        model, cfg, info = load_checkpoint_model(ckpt, a.ema, device)
        from lct.config import with_sampling

        cfg = with_sampling(cfg, a.sampling)
        shape = tuple(info["data"]["shape"][1:])
        codec = None
        if decode:
            from lct.data.vae import load_codec

            codec = load_codec(a.data, vae_dir=a.vae, device=device, batch_size=a.batch_size)
            if tuple(codec.latent_shape) != shape:
                raise ValueError(f"--data {a.data}: its samples have shape {tuple(codec.latent_shape)} but "
                                 f"{ckpt} was trained on {shape} ({info['data'].get('path')})")
        out = Path(a.out)
        from lct.files.download import file_digest

        meta = {"checkpoint": str(ckpt), "checkpoint_sha256": file_digest(ckpt, "sha256"), "step": info["step"],
                "ema": a.ema, "nfe": a.nfe, "sampling": cfg.to_dict()["sample"],
                "seeds": [seeds[0], seeds[-1]], "num_seeds": len(seeds), "format": a.format, "decode": decode,
                "shard_size": a.shard_size, "data": a.data, "shape": list(shape)}
        if a.format == "jpeg":
            meta["jpeg_quality"] = a.jpeg_quality
        if decode:
            from lct.data.vae import codec_fingerprint

            meta["codec"] = codec_fingerprint(a.data, a.vae)
        _check_or_write_meta(out, meta)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"lct sample: error: {e}", file=sys.stderr)
        return 2
    made = sample_to_dir(model, cfg, shape, seeds, a.nfe, out, device, a.batch_size, codec, a.format,
                         a.shard_size, a.jpeg_quality, progress=not a.quiet)
    if not a.quiet:
        print(f"lct sample: {made} new of {len(seeds)} samples in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
