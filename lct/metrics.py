"""Frechet distance, Precision / Recall (k = 3) and the feature extractors they run on.

Feature extractors follow clean-fid's own pipeline exactly: each uint8 RGB image goes through
clean-fid's resizer for its mode (`cleanfid.resize.build_resizer`), then a batch of float
[0, 255] CHW tensors goes through the network's `model_fn`. So features computed here from
in-memory images equal clean-fid's `get_folder_features` on the same images saved losslessly
(tests/test_metrics.py checks this with `cleanfid.fid.compute_fid(custom_feat_extractor=...)`).

Pretrained weights are read from the resources folder written by `lct fetch-weights`; nothing
here downloads (compute nodes are offline).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lct._compat import ensure_torchvision

ensure_torchvision()  # clean-fid imports torchvision at module level
from cleanfid import fid as _cfid  # noqa: E402
from cleanfid import resize as _cresize  # noqa: E402


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), computed by clean-fid's implementation."""
    return float(_cfid.frechet_distance(np.asarray(mu1, np.float64), np.asarray(sigma1, np.float64),
                                        np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of features [N, D] (float64, as clean-fid computes them)."""
    feats = np.asarray(feats, np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


# --- Precision and Recall (Kynkaanniemi et al. 2019) -------------------------------------------

def _pairwise_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [len(a), len(b)], clamped at 0 (float32 cancellation)."""
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None]
    return d.clamp_min_(0.0)


def knn_radii(feats: torch.Tensor, k: int = 3, chunk: int = 4096) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in the same set (self excluded)."""
    out = []
    for i in range(0, len(feats), chunk):
        d = _pairwise_sq(feats[i : i + chunk], feats)
        # The (k+1)-th smallest includes the point itself at distance 0.
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def manifold_coverage(query: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, chunk: int = 4096) -> float:
    """Fraction of `query` points inside at least one k-NN hypersphere of `ref`."""
    inside = 0
    for i in range(0, len(query), chunk):
        d = _pairwise_sq(query[i : i + chunk], ref)
        inside += int((d <= ref_radii[None]).any(dim=1).sum())
    return inside / max(len(query), 1)


def precision_recall(
    real_feats: np.ndarray | torch.Tensor,
    fake_feats: np.ndarray | torch.Tensor,
    k: int = 3,
    chunk: int = 4096,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Improved Precision and Recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    Precision: share of fakes inside the real manifold; Recall: share of reals inside the fake
    manifold. Distances are computed `chunk` rows at a time, so 50K x 50K fits in memory.
    """
    real = torch.as_tensor(np.asarray(real_feats), dtype=torch.float32, device=device)
    fake = torch.as_tensor(np.asarray(fake_feats), dtype=torch.float32, device=device)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision_recall needs more than k={k} points per set, got {len(real)} real, {len(fake)} fake")
    real_r = knn_radii(real, k, chunk)
    fake_r = knn_radii(fake, k, chunk)
    precision = manifold_coverage(fake, real, real_r, chunk)
    recall = manifold_coverage(real, fake, fake_r, chunk)
    return precision, recall


# --- Feature extractors ------------------------------------------------------------------------

@dataclass
class FeatureExtractor:
    """clean-fid-style extractor: `fn_resize` per HWC image, then `model_fn` on [B, 3, H, W] in [0, 255]."""

    name: str
    model_fn: Callable[[torch.Tensor], torch.Tensor]
    fn_resize: Callable[[np.ndarray], np.ndarray]
    device: torch.device

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, C] (C = 1 or 3) -> float32 features [B, D]."""
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected uint8 [B, H, W, C], got {images.dtype} {images.shape}")
        if images.shape[-1] == 1:  # clean-fid opens every file with .convert('RGB')
            images = np.repeat(images, 3, axis=-1)
        batch = np.stack([np.asarray(self.fn_resize(im), np.float32).transpose(2, 0, 1) for im in images])
        feats = self.model_fn(torch.from_numpy(batch).to(self.device))
        return feats.detach().float().cpu().numpy()


# File names the upstreams give the pretrained extractors (lct.fetch.ASSETS places them).
WEIGHT_FILES = {
    "inception_clean": "inception-2015-12-05.pt",  # NVIDIA's TorchScript Inception (clean-fid `clean`)
    "inception_legacy": "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid's weights (`legacy_pytorch`)
    "vgg16": "vgg16-397923af.pth",  # torchvision ImageNet VGG16
}


def _require(resources: str | Path | None, name: str) -> Path:
    """The fetched weight file of asset `name` (lct.fetch.ASSETS); fails naming `snakemake fetch_weights`."""
    from lct.fetch import require

    if resources is None:
        raise ValueError(f"feature extractor {name!r} needs --resources (the folder of `lct fetch-weights`)")
    return Path(require(resources, name))


@contextlib.contextmanager
def _local_state_dict(path: Path):
    """Make clean-fid's `fid_inception_v3` read its weights from `path` instead of downloading."""
    from cleanfid import inception_pytorch

    original = inception_pytorch.load_state_dict_from_url
    inception_pytorch.load_state_dict_from_url = lambda *a, **k: torch.load(path, map_location="cpu", weights_only=True)
    try:
        yield
    finally:
        inception_pytorch.load_state_dict_from_url = original


def inception_clean(resources: str | Path | None, device: torch.device) -> FeatureExtractor:
    """clean-fid mode `clean`: TorchScript Inception (NVIDIA's port), PIL bicubic resize to 299."""
    from cleanfid.inception_torchscript import InceptionV3W

    path = _require(resources, "inception_clean")
    if path.name == WEIGHT_FILES["inception_clean"]:
        model = InceptionV3W(str(path.parent), download=False, resize_inside=False)
    else:  # same module, file under another name: InceptionV3W only takes a folder
        model = InceptionV3W.__new__(InceptionV3W)
        torch.nn.Module.__init__(model)
        model.base = torch.jit.load(str(path), map_location="cpu").eval()
        model.layers, model.resize_inside = model.base.layers, False
    model = model.to(device).eval()
    return FeatureExtractor("inception_clean", model, _cresize.build_resizer("clean"), device)


def inception_legacy(resources: str | Path | None, device: torch.device) -> FeatureExtractor:
    """clean-fid mode `legacy_pytorch` (= pytorch-fid): FID Inception, torch bilinear resize to 299."""
    from cleanfid.inception_pytorch import InceptionV3

    path = _require(resources, "inception_legacy")
    with _local_state_dict(path):
        model = InceptionV3(output_blocks=[3], resize_input=False).to(device).eval()

    def model_fn(x: torch.Tensor) -> torch.Tensor:  # as cleanfid.features.feature_extractor("pytorch_inception")
        return model(x / 255)[0].squeeze(-1).squeeze(-1)

    return FeatureExtractor("inception_legacy", model_fn, _cresize.build_resizer("legacy_pytorch"), device)


def vgg16(resources: str | Path | None, device: torch.device) -> FeatureExtractor:
    """VGG16 fc2 features (4096-d, after ReLU) for Recall, as in Kynkaanniemi et al. (2019).

    Deviation: torchvision's ImageNet VGG16 weights rather than NVIDIA's TorchScript port used
    by the StyleGAN metric suite; inputs resized to 224 (torch bilinear) and ImageNet-normalized.
    """
    tv = ensure_torchvision()
    path = _require(resources, "vgg16")
    net = tv.models.vgg16(weights=None)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net = net.to(device).eval()
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    fc2 = net.classifier[:5]  # fc1, ReLU, Dropout (eval: identity), fc2, ReLU

    def model_fn(x: torch.Tensor) -> torch.Tensor:
        x = (x / 255 - mean) / std
        return fc2(torch.flatten(net.avgpool(net.features(x)), 1))

    return FeatureExtractor("vgg16", model_fn, _cresize.make_resizer("PyTorch", False, "bilinear", (224, 224)), device)


def digit_classifier(resources: str | Path | None, device: torch.device, path: str | Path | None = None) -> FeatureExtractor:
    """Penultimate features of the demo's digit classifier (`lct train-classifier`)."""
    from lct.classifier import load_classifier

    if path is None:
        if resources is None:
            raise ValueError("digit_classifier needs --resources (the folder holding digit-classifier.pt)")
        path = Path(resources) / "digit-classifier.pt"
    model, meta = load_classifier(path, device)
    res = int(meta["resolution"])
    fn_resize = _cresize.make_resizer("PIL", False, "bicubic", (res, res))

    def model_fn(x: torch.Tensor) -> torch.Tensor:
        return model.features(x.mean(dim=1, keepdim=True) / 255)  # RGB-replicated gray -> one channel in [0, 1]

    return FeatureExtractor("digit_classifier", model_fn, fn_resize, device)


# name -> constructor(resources_dir, device)
FEATURES: dict[str, Callable[..., FeatureExtractor]] = {
    "inception_clean": inception_clean,
    "inception_legacy": inception_legacy,
    "vgg16": vgg16,
    "digit_classifier": digit_classifier,
}


def build_feature(name: str, resources: str | Path | None, device: torch.device) -> FeatureExtractor:
    """Construct a feature extractor by name (a key of FEATURES)."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(FEATURES)}")
    return FEATURES[name](resources, device)
