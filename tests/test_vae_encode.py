"""Tiny AutoencoderKL on the demo digits: round trip, normalization, resumable encode, codecs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lct.data import encode as enc
from lct.data.datasets import load_training_data, mnist_demo, write_dataset
from lct.data.vae import LatentNormalizer, VAEError, load_codec, load_vae, train_tiny_vae

N = 160  # a subset of the real digits keeps the test fast


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("demo")
    x, y = mnist_demo(32)
    idx = np.arange(0, 5000, 5000 // N)[:N]  # every class represented
    write_dataset(root / "mnist", x[idx], y[idx], {"dataset": "mnist-subset"})
    rep = train_tiny_vae(x[idx], root / "vae", steps=25, batch_size=16, widths=(16, 32, 32), eval_images=N)
    return root, rep


@pytest.mark.slow  # shares the tiny-VAE training fixture (~5 s of CPU)
def test_tiny_vae_saved_with_report(demo):
    root, rep = demo
    assert (root / "vae" / "config.json").is_file() and not (root / "vae.tmp").exists()
    saved = json.loads((root / "vae" / "reconstruction.json").read_text())
    assert saved["mse"] == pytest.approx(rep["mse"]) and np.isfinite(saved["psnr_db"])
    assert rep["latent_shape"] == [4, 8, 8]
    vae = load_vae(root / "vae")
    assert vae.config.in_channels == 1 and vae.config.latent_channels == 4


def test_load_vae_missing_names_fetch_weights(tmp_path):
    with pytest.raises(VAEError, match="fetch_weights"):
        load_vae(tmp_path / "sd-vae-ft-ema")


@pytest.mark.slow  # shares the tiny-VAE training fixture (~5 s of CPU)
def test_interrupted_encode_resumes_and_round_trips(demo, tmp_path, monkeypatch):
    root, rep = demo
    out = tmp_path / "latents"
    calls = {"n": 0}
    real = enc.to_model_space

    def flaky(images):  # dies in the 5th batch: shards 0 and 1 (2 batches each) are finished
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real(images)

    monkeypatch.setattr(enc, "to_model_space", flaky)
    with pytest.raises(KeyboardInterrupt):
        enc.encode_dataset(root / "mnist", root / "vae", out, "standardize", batch_size=20, shard_size=40)
    assert sorted(p.name for p in (out / "shards").glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    assert not (out / "latents.npy").exists()
    monkeypatch.setattr(enc, "to_model_space", real)
    s = enc.encode_dataset(root / "mnist", root / "vae", out, "standardize", batch_size=20, shard_size=40)
    assert s["encoded_shards"] == [2, 3]  # only the unfinished shards were encoded
    assert enc.encode_dataset(root / "mnist", root / "vae", out, "standardize")["encoded_shards"] == []

    # The resumed result equals an uninterrupted encode.
    fresh = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "fresh", "standardize", 32, 1000)
    assert fresh["encoded_shards"] == [0]
    np.testing.assert_allclose(np.load(out / "latents.npy"), np.load(tmp_path / "fresh" / "latents.npy"), atol=1e-5)

    # Normalized latents: per element mean 0, std 0.5 (authors' standardization).
    z, info = load_training_data(out)
    assert z.shape == (N, 4, 8, 8) and info["kind"] == "latents"
    assert z.mean(0).abs().max() < 1e-4
    assert torch.allclose(z.std(0, unbiased=True), torch.full((4, 8, 8), 0.5), atol=1e-3)

    # Round trip: decode(normalized latents) is within the VAE's own reconstruction error.
    codec = load_codec(out)
    assert codec.latent_shape == (4, 8, 8)
    images = np.load(root / "mnist" / "images.npy")
    rec = codec.decode(z)
    assert rec.dtype == np.uint8 and rec.shape == images.shape
    mse = float(((rec.astype(np.float64) - images) ** 2).mean()) / 127.5**2
    assert mse <= rep["mse"] * 1.01 + 1e-6
    torch.testing.assert_close(codec.encode(images), z, atol=1e-3, rtol=1e-3)

    # The recorded VAE path can be overridden when the folder moved.
    shutil.copytree(root / "vae", tmp_path / "moved-vae")
    assert load_codec(out, vae_dir=tmp_path / "moved-vae").latent_shape == (4, 8, 8)


def test_normalizers_invert_exactly():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(64, 4, 8, 8, generator=g) * 5 + 2
    for mode in ("sd_scale", "standardize"):
        norm = LatentNormalizer.fit(raw.numpy(), mode)
        z = norm.normalize(raw)
        torch.testing.assert_close(norm.denormalize(z), raw, atol=1e-5, rtol=1e-5)
    assert torch.allclose(LatentNormalizer.fit(raw.numpy(), "sd_scale").normalize(raw), raw * 0.18215)


def test_normalizer_file_round_trip(tmp_path):
    raw = np.random.default_rng(0).normal(size=(32, 4, 2, 2)).astype(np.float32)
    norm = LatentNormalizer.fit(raw, "standardize")
    norm.save(tmp_path / "norm.npz")
    back = LatentNormalizer.load(tmp_path / "norm.npz")
    assert back.mode == "standardize" and back.scale == 0.18215 and back.target_std == 0.5
    np.testing.assert_array_equal(back.mean, norm.mean)


@pytest.mark.slow  # shares the tiny-VAE training fixture (~5 s of CPU)
def test_pixel_codec_is_identity(demo):
    root, _ = demo
    codec = load_codec(root / "mnist")
    images = np.load(root / "mnist" / "images.npy")
    assert codec.latent_shape == (1, 32, 32)
    x = codec.encode(images)
    assert x.min() >= -1 and x.max() <= 1
    np.testing.assert_array_equal(codec.decode(x), images)


@pytest.mark.slow  # shares the tiny-VAE training fixture (~5 s of CPU)
def test_posterior_sample_is_seeded_per_image_and_survives_a_kill(demo, tmp_path, monkeypatch):
    """The authors' latents are posterior samples; here image i's draw depends on (seed, i) only, so a
    killed and rerun encode, or another batch or shard size, writes the very same latents."""
    root, _ = demo
    kw = dict(normalization="standardize", posterior="sample", seed=7)
    real = enc.to_model_space
    calls = {"n": 0}

    def flaky(images):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(images)

    monkeypatch.setattr(enc, "to_model_space", flaky)
    with pytest.raises(KeyboardInterrupt):
        enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "a", batch_size=20, shard_size=40, **kw)
    monkeypatch.setattr(enc, "to_model_space", real)
    s = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "a", batch_size=20, shard_size=40, **kw)
    assert s["encoded_shards"] == [1, 2, 3] and s["posterior"] == "sample" and s["posterior_seed"] == 7
    other = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "b", batch_size=64, shard_size=1000, **kw)
    a, b = np.load(tmp_path / "a" / "latents.npy"), np.load(tmp_path / "b" / "latents.npy")
    np.testing.assert_allclose(a, b, atol=1e-5)  # same draws whatever the batching
    mean = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "m", batch_size=64, posterior="mean")
    m = np.load(tmp_path / "m" / "latents.npy")
    assert mean["posterior"] == "mean" and np.abs(a - m).max() > 1e-3  # a sample, not the mean
    reseeded = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "c", batch_size=64, posterior="sample", seed=8)
    assert reseeded["posterior_seed"] == 8 and np.abs(np.load(tmp_path / "c" / "latents.npy") - a).max() > 1e-3
    # a finished encode with another posterior setting is not taken as done
    again = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "a", batch_size=64, posterior="mean")
    assert again["posterior"] == "mean"
    del other


@pytest.mark.slow  # shares the tiny-VAE training fixture (~5 s of CPU)
def test_bf16_decoding_is_opt_in_and_close(demo, tmp_path):
    """`--decode-precision bf16` (evaluation.decode_precision) decodes under bf16 autocast with the output in
    float32 before rounding: pixels move by about a level, never far; fp32 stays the default (the authors')."""
    root, _ = demo
    out = tmp_path / "latents"
    enc.encode_dataset(root / "mnist", root / "vae", out, "standardize", batch_size=20, shard_size=1000)
    z, _ = load_training_data(out)
    fp32 = load_codec(out, device="cpu", batch_size=20)
    bf16 = load_codec(out, device="cpu", batch_size=20, decode_precision="bf16")
    assert fp32.decode_precision == "fp32"
    a, b = fp32.decode(z).astype(int), bf16.decode(z).astype(int)
    diff = np.abs(a - b)
    assert 0 < diff.mean() < 2.0 and diff.max() <= 32, (diff.mean(), diff.max())
    with pytest.raises(VAEError, match="decode precision"):
        load_codec(out, device="cpu", decode_precision="fp16")


def test_normalization_statistics_over_the_training_split_with_bessel():
    """As the authors' extract_stat.py: torch.std_mean over the training split's latents (Bessel-corrected)."""
    import numpy as np
    import torch

    from lct.data.vae import SD_SCALE, LatentNormalizer

    raw = np.random.default_rng(0).normal(2.0, 3.0, size=(40, 4, 2, 2)).astype(np.float32)
    norm = LatentNormalizer.fit(raw, "standardize", chunk=7, count=30)
    std, mean = torch.std_mean(torch.from_numpy(raw[:30]).double() * SD_SCALE, dim=0)
    np.testing.assert_allclose(norm.mean, mean.numpy(), rtol=1e-6)
    np.testing.assert_allclose(norm.std, std.numpy(), rtol=1e-6)  # torch.std: unbiased (n - 1)
    assert not np.allclose(LatentNormalizer.fit(raw, "standardize").std, norm.std, rtol=1e-3)  # all 40 differ
    import pytest

    from lct.data.vae import VAEError

    with pytest.raises(VAEError, match="train_split.count"):
        LatentNormalizer.fit(raw, "standardize", count=41)


def test_to_uint8_truncates_as_the_authors_or_rounds():
    import numpy as np
    import pytest
    import torch

    from lct.data.vae import VAEError, to_uint8

    x = torch.tensor([-1.0, -0.999, 0.0, 0.004, 0.999, 1.0, 1.5]).view(1, 1, 1, 7)
    trunc = to_uint8(x, "truncate").ravel()
    assert trunc.tolist() == [0, 0, 127, 128, 254, 255, 255]  # floor((x + 1) / 2 * 255), clamped
    ref = ((x.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8).ravel().numpy()  # the authors' expression
    assert np.array_equal(trunc, ref)
    assert to_uint8(x, "round").ravel().tolist() == [0, 0, 128, 128, 255, 255, 255]
    with pytest.raises(VAEError, match="evaluation.to_uint8"):
        to_uint8(x, "floor")


def test_renormalize_links_the_same_latents_with_another_normalization(tmp_path):
    """experiments.<e>.latents: sd_scale (the authors' E-LatentLPIPS run) trains on the same encoded latents
    x 0.18215 alone; the variant folder links latents.npy and writes its own norm.npz."""
    import json

    import numpy as np
    import torch

    from lct.data.datasets import load_training_data
    from lct.data.encode import main as encode_main
    from lct.data.vae import SD_SCALE, LatentNormalizer

    src = tmp_path / "latents"
    src.mkdir()
    raw = np.random.default_rng(0).normal(1.0, 4.0, size=(20, 4, 4, 4)).astype(np.float32)
    np.save(src / "latents.npy", raw)
    LatentNormalizer.fit(raw, "standardize", count=15).save(src / "norm.npz")
    (src / "latents.json").write_text(json.dumps({"count": 20, "latent_shape": [4, 4, 4], "normalization": "standardize",
                                                  "stats_count": 15, "vae": "v"}))
    out = tmp_path / "latents-sd_scale"
    assert encode_main(["--renormalize", "sd_scale", "--data", str(src / "latents.npy"), "--out", str(out)]) == 0
    assert (out / "latents.npy").is_symlink() and json.loads((out / "latents.json").read_text())["normalization"] == "sd_scale"
    x, _ = load_training_data(out)
    torch.testing.assert_close(x, torch.from_numpy(raw) * SD_SCALE)
    std, _ = load_training_data(src)
    assert abs(float(std.std()) - 0.5) < 0.05  # the dataset's own: standardized to std 0.5


@pytest.mark.slow  # shares the tiny-VAE training fixture (~5 s of CPU)
def test_flip_count_encodes_the_mirror_images_and_fits_statistics_over_split_and_mirrors(demo, tmp_path):
    """datasets.<d>.train_split.flip (the authors' church256_flip: 120,000 images and their mirror images):
    `--flip-count C` encodes the mirrored images (not mirrored latents) into latents_flip.npy, leaves
    latents.npy the originals', and fits the statistics over the split and its mirrors; training reads both."""
    from lct.data.datasets import load_flip_copies

    root, _ = demo
    c = 50
    s = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "f", batch_size=16, shard_size=40,
                           posterior="mean", stats_count=c, flip_count=c)
    assert s["count"] == N and s["flip_count"] == c and s["num_shards"] == 6  # 210 rows in shards of 40
    lat, flip = np.load(tmp_path / "f" / "latents.npy"), np.load(tmp_path / "f" / enc.FLIP_FILE)
    assert lat.shape[0] == N and flip.shape[0] == c
    # the mirror images encoded as images: as an encode of a dataset of mirrored digits
    images = np.load(root / "mnist" / "images.npy")
    write_dataset(tmp_path / "mirrored", np.ascontiguousarray(images[:c, :, ::-1]), np.zeros(c, np.int64), {"dataset": "m"})
    enc.encode_dataset(tmp_path / "mirrored", root / "vae", tmp_path / "m", batch_size=16, posterior="mean")
    np.testing.assert_allclose(flip, np.load(tmp_path / "m" / "latents.npy"), atol=1e-5)
    assert np.abs(flip - lat[:c, :, :, ::-1]).max() > 1e-3  # not the mirrored latents (a VAE is not equivariant)
    plain = enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "p", batch_size=16, posterior="mean")
    np.testing.assert_allclose(lat, np.load(tmp_path / "p" / "latents.npy"), atol=1e-5)  # the originals unchanged
    del plain
    norm = LatentNormalizer.load(tmp_path / "f" / "norm.npz")
    both = np.concatenate([lat[:c], flip]).astype(np.float64) * 0.18215
    np.testing.assert_allclose(norm.mean, both.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.std, both.std(0, ddof=1), rtol=1e-4, atol=1e-6)
    x, _ = load_training_data(tmp_path / "f")
    mirrors = load_flip_copies(tmp_path / "f", x[:c])
    torch.testing.assert_close(mirrors, norm.normalize(torch.from_numpy(flip)))
    # a finished encode without mirrors is not taken as done, and a plain rerun removes the mirrors
    assert enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "p", batch_size=16, posterior="mean",
                              flip_count=c)["flip_count"] == c
    enc.encode_dataset(root / "mnist", root / "vae", tmp_path / "f", batch_size=16, posterior="mean", stats_count=c)
    assert not (tmp_path / "f" / enc.FLIP_FILE).exists()
    from lct.data.datasets import DataError

    with pytest.raises(DataError, match="flip-count"):
        load_flip_copies(tmp_path / "f", x[:c])
