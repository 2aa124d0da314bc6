"""`lct sample` on CPU: per-image seeds (batch-size invariance), resumable shards, decoded images,
and errors before any work."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lct.run import sample as S
from lct.run import train as T
from test_train import make_dataset, make_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    data = make_dataset(root, n=16)
    cfg = make_experiment(root, preset="ilct", total_steps=4, batch_size=4, checkpoint_every=100, log_every=4)
    run = root / "run"
    assert T.main(["--config", str(cfg), "--data", str(data), "--run-dir", str(run), "--quiet"]) == 0
    return root, data, run / "final.pt"


def _run(ckpt, out, *extra):
    return S.main(["--checkpoint", str(ckpt), "--ema", "0.99", "--seeds", "3-12", "--shard-size", "4",
                   "--out", str(out), "--quiet", *extra])


def _load_all(out):
    seeds, samples = [], []
    for f in sorted(out.glob("shard-*.npz")):
        with np.load(f) as z:
            seeds += z["seeds"].tolist()
            samples.append(z["samples"])
    return seeds, np.concatenate(samples)


@pytest.mark.parametrize("nfe", [1, 2])
def test_image_k_same_for_batch_sizes_1_and_7(trained, nfe):
    root, data, ckpt = trained
    a, b = root / f"b1-{nfe}", root / f"b7-{nfe}"
    assert _run(ckpt, a, "--batch-size", "1", "--nfe", str(nfe), "--decode", "--data", str(data)) == 0
    assert _run(ckpt, b, "--batch-size", "7", "--nfe", str(nfe), "--decode", "--data", str(data)) == 0
    sa, ia = _load_all(a)
    sb, ib = _load_all(b)
    assert sa == sb == list(range(3, 13))
    assert ia.dtype == np.uint8 and ia.shape == (10, 8, 8, 1)
    np.testing.assert_array_equal(ia, ib)  # decoded images: identical
    assert len({im.tobytes() for im in ia}) == 10  # different seeds, different images
    # Latents (model space) agree to float rounding: CPU kernels block the batch differently.
    la, lb = root / f"l1-{nfe}", root / f"l7-{nfe}"
    assert _run(ckpt, la, "--batch-size", "1", "--nfe", str(nfe)) == 0
    assert _run(ckpt, lb, "--batch-size", "7", "--nfe", str(nfe)) == 0
    za, zb = _load_all(la)[1], _load_all(lb)[1]
    assert za.dtype == np.float32 and za.shape == (10, 1, 8, 8)
    np.testing.assert_allclose(za, zb, rtol=0, atol=1e-5)


def test_shards_resume_and_png(trained):
    root, data, ckpt = trained
    out = root / "resume"
    assert _run(ckpt, out) == 0
    shards = sorted(p.name for p in out.glob("shard-*.npz"))
    assert shards == ["shard-000003.npz", "shard-000007.npz", "shard-000011.npz"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    ref = _load_all(out)[1]
    (out / "shard-000007.npz").unlink()  # as if killed before this shard was written
    assert _run(ckpt, out) == 0
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.npz")}
    assert after["shard-000003.npz"] == before["shard-000003.npz"]  # finished shards are skipped
    np.testing.assert_array_equal(_load_all(out)[1], ref)
    meta = json.loads((out / "sampling.json").read_text())
    assert meta["nfe"] == 1 and meta["seeds"] == [3, 12] and meta["step"] == 4
    # other parameters into the same dir are refused rather than mixed
    assert _run(ckpt, out, "--nfe", "2") == 2

    png = root / "png"
    assert _run(ckpt, png, "--format", "png", "--data", str(data), "--batch-size", "3") == 0
    files = sorted(p.name for p in png.glob("*.png"))
    assert files == [f"{s:06d}.png" for s in range(3, 13)]
    decoded = _load_all(root / "b7-1")[1]
    np.testing.assert_array_equal(np.asarray(Image.open(png / "000005.png")), decoded[2, ..., 0])


def test_iter_samples_streams_uint8(trained):
    from lct.data.vae import load_codec

    _, data, ckpt = trained
    model, cfg, _ = T.load_checkpoint_model(ckpt, "0.99")
    batches = list(S.iter_samples(model, cfg, load_codec(data), [0, 1, 2, 3, 4], 1, "cpu", 2))
    assert [b.shape for b in batches] == [(2, 8, 8, 1), (2, 8, 8, 1), (1, 8, 8, 1)]
    assert all(b.dtype == np.uint8 for b in batches)


def test_bad_arguments(trained, capsys):
    root, data, ckpt = trained
    assert S.main(["--checkpoint", str(root / "nope.pt"), "--out", str(root / "x")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert S.main(["--checkpoint", str(ckpt), "--out", str(root / "x"), "--seeds", "5-2"]) == 2
    assert "5-2" in capsys.readouterr().err
    assert S.main(["--checkpoint", str(ckpt), "--out", str(root / "x"), "--decode"]) == 2
    assert "--data" in capsys.readouterr().err
    assert S.main(["--checkpoint", str(ckpt), "--out", str(root / "x"), "--ema", "0.5"]) == 2
    assert "0.5" in capsys.readouterr().err
    assert not (root / "x").exists()
    assert S.parse_seeds("0-3,7,9-10") == [0, 1, 2, 3, 7, 9, 10]
