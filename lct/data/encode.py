"""`lct encode`: encode a dataset once into VAE latents, in shards, resumably.

Each shard of `--shard-size` images is encoded in batches and written atomically to
``<out>/shards/shard-<i:05d>.npy``; a rerun skips the shards already there. When all exist they are
concatenated into ``latents.npy`` (float32 [N, 4, h, w], raw VAE space), the normalization
statistics are fitted into ``norm.npz`` and ``latents.json`` is written last (it marks completion),
then the shards are removed.

``--flip-count C`` also encodes the horizontal mirror images of the first C images, as images (a
VAE is not mirror-equivariant, so mirroring latents would not do), into ``latents_flip.npy``: the
authors' church256_flip training set is the split and these. Row r of the encode is image r for
r < N and the mirror of image r - N after that; its posterior draw is seeded by (seed, r).

What is stored (``--posterior``): ``sample``, one draw z = mean + std * eps of q(z|x) per image, as
the authors' preprocessing wrote its latents (`latent_dist.sample()`, docs/METHOD.md section 4), or
``mean``, the posterior mean. A sample's eps comes from a generator seeded by (``--seed``, image
index), so a rerun, a resumed encode or another batch size writes the very same latents. The
posterior std is not stored per element; its average is recorded in latents.json
(``posterior_std_mean``) so its size relative to the data is visible.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lct.data.vae import NORMALIZATIONS, LatentNormalizer, VAEError, load_vae, to_model_space


def _shard_path(out: Path, i: int) -> Path:
    return out / "shards" / f"shard-{i:05d}.npy"


POSTERIORS = ("sample", "mean")


def posterior_eps(shape: tuple[int, ...], seed: int, first_index: int) -> torch.Tensor:
    """eps [B, *shape[1:]] for images first_index .. first_index + B - 1; image i's draw depends on (seed, i) only."""
    return torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(seed * 1_000_003 + first_index + j))
                        for j in range(shape[0])])


FLIP_FILE = "latents_flip.npy"


def _flip_latents(out: Path, flip_count: int) -> np.ndarray | None:
    return np.load(out / FLIP_FILE, mmap_mode="r") if flip_count else None


def image_rows(images: np.ndarray, a: int, b: int) -> np.ndarray:
    """uint8 NHWC rows a..b-1 of the encode: image r for r < N, the mirror of image r - N after that."""
    n = len(images)
    parts = [np.asarray(images[a : min(b, n)])] if a < n else []
    if b > n:
        parts.append(np.ascontiguousarray(np.asarray(images[max(a, n) - n : b - n])[:, :, ::-1]))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _finished(out: Path, plan: dict[str, Any], normalization: str, stats_count: int | None = None
              ) -> dict[str, Any] | None:
    """latents.json of a completed encode of the same VAE, data and posterior (norm refitted if the mode changed)."""
    f = out / "latents.json"
    if not (f.is_file() and (out / "latents.npy").is_file()):
        return None
    meta = json.loads(f.read_text())
    if (meta.get("vae_abs"), meta.get("data_abs"), meta.get("count"), meta.get("posterior", "mean"),
            meta.get("posterior_seed"), meta.get("flip_count", 0)) != (
            plan["vae"], plan["data"], plan["count"], plan["posterior"], plan["seed"], plan["flip_count"]):
        return None
    if plan["flip_count"] and not (out / FLIP_FILE).is_file():
        return None
    if (meta.get("normalization"), meta.get("stats_count")) != (normalization, stats_count) or \
            not (out / "norm.npz").is_file():
        norm = LatentNormalizer.fit(np.load(out / "latents.npy", mmap_mode="r"), normalization, count=stats_count,
                                    extra=_flip_latents(out, plan["flip_count"]))
        norm.save(out / "norm.npz")
        meta.update(normalization=normalization, scale=norm.scale, target_std=norm.target_std, stats_count=stats_count)
        tmp = out / "latents.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(f)
    return meta


def _encode_shards(vae, images: np.ndarray, out: Path, rows: int, shard_size: int, batch_size: int, device,
                   posterior: str, seed: int) -> tuple[list[int], float]:
    """Encode the shards not yet on disk (each written atomically); the indices encoded here and the sum
    of their posterior stds (for latents.json)."""
    num_shards = (rows + shard_size - 1) // shard_size
    encoded, std_sum = [], 0.0
    for i in range(num_shards):
        if _shard_path(out, i).is_file():
            continue  # finished by an earlier (interrupted) run
        lo, hi = i * shard_size, min(rows, (i + 1) * shard_size)
        means, stds = [], []
        for b in range(lo, hi, batch_size):
            post = vae.encode(to_model_space(image_rows(images, b, min(hi, b + batch_size))).to(device)).latent_dist
            z = post.mean.float().cpu()
            if posterior == "sample":  # z = mean + std * eps, eps seeded per image (the authors' latent_dist.sample())
                z = z + post.std.float().cpu() * posterior_eps(tuple(z.shape), seed, b)
            means.append(z.numpy())
            stds.append(float(post.std.float().mean()) * len(means[-1]))
        tmp = _shard_path(out, i).with_suffix(".tmp.npy")
        np.save(tmp, np.concatenate(means))
        tmp.replace(_shard_path(out, i))
        encoded.append(i)
        std_sum += sum(stds)
        print(f"encode: shard {i + 1}/{num_shards} ({hi - lo} images)", file=sys.stderr)
    return encoded, std_sum


def _concatenate(out: Path, num_shards: int, shard_size: int, n: int, flip_count: int) -> None:
    """The shards into latents.npy (rows < n) and latents_flip.npy (the mirror images' rows), memory-mapped,
    each to a temporary name, then renamed."""
    first = np.load(_shard_path(out, 0), mmap_mode="r")
    targets = [("latents.npy", 0, n)] + ([(FLIP_FILE, n, n + flip_count)] if flip_count else [])
    for name, a, b in targets:
        tmp = out / (name[:-4] + ".tmp.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(b - a, *first.shape[1:]))
        for i in range(num_shards):
            lo, hi = max(a, i * shard_size), min(b, (i + 1) * shard_size)
            if lo < hi:
                arr[lo - a : hi - a] = np.load(_shard_path(out, i), mmap_mode="r")[lo - i * shard_size : hi - i * shard_size]
        arr.flush()
        del arr
        tmp.replace(out / name)


@torch.no_grad()
def encode_dataset(data: str | Path, vae_dir: str | Path, out: str | Path, normalization: str = "standardize",
                   batch_size: int = 64, shard_size: int = 2048, device: str | None = None,
                   posterior: str = "mean", seed: int = 0, stats_count: int | None = None,
                   flip_count: int = 0) -> dict[str, Any]:
    """Encode ``data/images.npy`` with the VAE in `vae_dir` into `out` (and the mirror images of the first
    `flip_count` into latents_flip.npy); returns a summary.

    The summary's ``encoded_shards`` lists the shard indices encoded by THIS call (resume check).
    """
    data, out = Path(data), Path(out)
    if normalization not in NORMALIZATIONS:
        raise VAEError(f"--normalization {normalization!r}: choose one of {NORMALIZATIONS}")
    if posterior not in POSTERIORS:
        raise VAEError(f"--posterior {posterior!r}: choose one of {POSTERIORS}")
    img_file = data / "images.npy"
    if not img_file.is_file():
        raise VAEError(f"{img_file} is missing; run `lct prepare-data --out {data}` first")
    images = np.load(img_file, mmap_mode="r")
    n, h, w, c = images.shape
    if not 0 <= flip_count <= n:
        raise VAEError(f"--flip-count {flip_count}: {img_file} holds {n} images; check datasets.<name>.train_split.count")
    rows = n + flip_count
    from lct.infra.device import pick_device

    device = pick_device(device)
    vae = load_vae(vae_dir, device)
    if vae.config.in_channels != c:
        raise VAEError(f"VAE {vae_dir} takes {vae.config.in_channels} channels but {img_file} has {c}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)

    # Shards from a different run (other VAE, data or shard size) must not be mixed in.
    plan = {"vae": str(Path(vae_dir).resolve()), "data": str(data.resolve()), "count": n, "shard_size": shard_size,
            "posterior": posterior, "seed": seed if posterior == "sample" else None, "flip_count": flip_count}
    done = _finished(out, plan, normalization, stats_count)
    if done is not None:
        return {**done, "encoded_shards": []}
    plan_file = out / "shards" / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        raise VAEError(f"{out / 'shards'} holds shards of a different encode ({plan_file}); delete that folder")
    plan_file.write_text(json.dumps(plan))

    num_shards = (rows + shard_size - 1) // shard_size
    t0 = time.time()
    encoded, std_sum = _encode_shards(vae, images, out, rows, shard_size, batch_size, device, posterior, seed)
    _concatenate(out, num_shards, shard_size, n, flip_count)
    if not flip_count and (out / FLIP_FILE).exists():
        (out / FLIP_FILE).unlink()  # of an earlier encode with mirror images
    latents = np.load(out / "latents.npy", mmap_mode="r")
    shape = latents.shape
    norm = LatentNormalizer.fit(latents, normalization, count=stats_count, extra=_flip_latents(out, flip_count))
    norm.save(out / "norm.npz")
    prev = json.loads((out / "latents.json").read_text()) if (out / "latents.json").is_file() else {}
    meta = {
        "vae": str(vae_dir), "vae_abs": str(Path(vae_dir).resolve()), "data": str(data), "data_abs": str(data.resolve()), "count": n,
        "latent_shape": list(shape[1:]), "image_shape": [h, w, c], "posterior": posterior,
        "posterior_seed": plan["seed"],
        "normalization": normalization, "scale": norm.scale, "target_std": norm.target_std, "stats_count": stats_count,
        "flip_count": flip_count, "shard_size": shard_size, "num_shards": num_shards,
        "posterior_std_mean": (std_sum / max(1, sum(min(rows, (i + 1) * shard_size) - i * shard_size for i in encoded)))
        if encoded else prev.get("posterior_std_mean"),
        "raw_std": float(np.std(latents[: min(n, 4096)])), "encode_seconds": time.time() - t0,
    }
    jtmp = out / "latents.json.tmp"
    jtmp.write_text(json.dumps(meta, indent=2))
    jtmp.replace(out / "latents.json")
    shutil.rmtree(out / "shards")  # latents.npy now holds everything; the shards would double the disk use
    return {**meta, "encoded_shards": encoded}


def renormalize(src: str | Path, out: str | Path, normalization: str) -> dict[str, Any]:
    """Another normalization of encoded latents (experiments.<e>.latents): `out` gets a link to src's
    latents.npy, its latents.json with the new normalization, and norm.npz, written last (the workflow's
    output). The statistics come from the same training split (latents.json's stats_count)."""
    import os

    src, out = Path(src), Path(out)
    if src.is_file():  # the latents.npy itself
        src = src.parent
    if not (src / "latents.npy").is_file() or not (src / "latents.json").is_file():
        raise VAEError(f"{src}: latents.npy or latents.json missing; run `lct encode --out {src}` first")
    if normalization not in NORMALIZATIONS:
        raise VAEError(f"--renormalize {normalization!r}: choose one of {NORMALIZATIONS}")
    meta = json.loads((src / "latents.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    link = out / "latents.npy"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.relpath(src / "latents.npy", out), link)  # the same encoded latents, not a copy
    flips = meta.get("flip_count", 0)
    if flips:
        if (out / FLIP_FILE).is_symlink() or (out / FLIP_FILE).exists():
            (out / FLIP_FILE).unlink()
        os.symlink(os.path.relpath(src / FLIP_FILE, out), out / FLIP_FILE)
    norm = LatentNormalizer.fit(np.load(src / "latents.npy", mmap_mode="r"), normalization, count=meta.get("stats_count"),
                                extra=_flip_latents(src, flips))
    meta.update(normalization=normalization, scale=norm.scale, target_std=norm.target_std, variant_of=str(src))
    tmp = out / "latents.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(out / "latents.json")
    norm.save(out / "norm.npz")
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lct encode", description="encode a dataset into VAE latents (resumable)")
    ap.add_argument("--data", required=True,
                    help="dataset dir with images.npy (--renormalize: the encoded latents.npy or its folder)")
    ap.add_argument("--vae", default=None, help="local AutoencoderKL folder (required unless --renormalize)")
    ap.add_argument("--renormalize", default=None, choices=NORMALIZATIONS,
                    help="write only another normalization of already encoded latents into --out")
    ap.add_argument("--normalization", default="standardize", choices=NORMALIZATIONS)
    ap.add_argument("--out", required=True, help="latents dir")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--shard-size", type=int, default=2048)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--posterior", default="mean", choices=POSTERIORS,
                    help="sample: one seeded draw per image (the authors' latents); mean: the posterior mean")
    ap.add_argument("--stats-count", type=int, default=None,
                    help="normalization statistics over the first N latents (the training split; default: all)")
    ap.add_argument("--seed", type=int, default=0, help="--posterior sample: image i draws from seed (seed, i)")
    ap.add_argument("--flip-count", type=int, default=0,
                    help="also encode the mirror images of the first N images into latents_flip.npy (a training set "
                         "of the split and its mirrors; statistics over both)")
    a = ap.parse_args(argv)
    try:
        if a.renormalize:
            m = renormalize(a.data, a.out, a.renormalize)
            print(json.dumps({k: m[k] for k in ("count", "latent_shape", "normalization")}))
            return 0
        if not a.vae:
            ap.error("--vae is required (the AutoencoderKL folder), unless --renormalize")
        s = encode_dataset(a.data, a.vae, a.out, a.normalization, a.batch_size, a.shard_size, a.device,
                           a.posterior, a.seed, a.stats_count, a.flip_count)
    except VAEError as e:
        print(f"lct encode: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: s[k] for k in ("count", "latent_shape", "normalization", "encoded_shards")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
