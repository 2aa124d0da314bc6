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

from lct.infra.compat import ensure_torchvision
from lct.infra.memory import fit_batch

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


# --- Precision and Recall (Kynkaanniemi et al. 2019), as StyleGAN2-ADA's pr50k3_full ------------
# pr50k3_full: NVIDIA's VGG16 features stored in float16, all real images up to 200,000 against
# 50,000 generated, k = 3; pairwise Euclidean distances in row x column batches of 10,000, so
# 200K x 50K never sits in memory at once. A point's radius is the distance to its k-th nearest
# neighbour in its own set (itself excluded); Precision is the share of generated points inside
# some real radius, Recall the share of real points inside some generated radius.
PR50K3 = {"max_real": 200_000, "num_gen": 50_000, "k": 3, "row_batch": 10_000, "col_batch": 10_000}


def _distances(rows: torch.Tensor, cols: torch.Tensor, col_batch: int) -> torch.Tensor:
    """Euclidean distances [len(rows), len(cols)], column batch by column batch (torch.cdist)."""
    # float16 features as pr50k3_full keeps them; CPU cdist has no float16 kernel, so it computes
    # on the same float16 values in float32 there.
    dt = torch.float16 if rows.device.type == "cuda" else torch.float32
    rows = rows.to(dt)
    return torch.cat([torch.cdist(rows[None], c.to(dt)[None])[0] for c in cols.split(col_batch)], dim=1)


def knn_radii(feats: torch.Tensor, k: int = 3, row_batch: int = 10_000, col_batch: int = 10_000) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (self excluded) [N]."""
    out = []
    for rows in feats.split(row_batch):
        d = _distances(rows, feats, col_batch).float()
        out.append(d.kthvalue(k + 1, dim=1).values)  # the (k+1)-th smallest includes the point itself at 0
    return torch.cat(out)


def manifold_coverage(probes: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor,
                      row_batch: int = 10_000, col_batch: int = 10_000) -> float:
    """Share of `probes` inside at least one k-NN ball of `manifold`."""
    inside = 0
    for rows in probes.split(row_batch):
        d = _distances(rows, manifold, col_batch).float()
        inside += int((d <= radii[None]).any(dim=1).sum())
    return inside / max(len(probes), 1)


def precision_recall(
    real_feats: np.ndarray | torch.Tensor,
    fake_feats: np.ndarray | torch.Tensor,
    k: int = 3,
    row_batch: int = 10_000,
    col_batch: int = 10_000,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """Improved Precision and Recall with k-NN manifolds, computed as pr50k3_full does (see PR50K3).

    Features are rounded to float16 first, as StyleGAN2-ADA stores them; the sets may differ in size
    (all reals up to 200K against 50K generated).
    """
    real = torch.as_tensor(np.asarray(real_feats), device=device).to(torch.float16)
    fake = torch.as_tensor(np.asarray(fake_feats), device=device).to(torch.float16)
    if len(real) <= k or len(fake) <= k:
        raise ValueError(f"precision_recall needs more than k={k} points per set, got {len(real)} real, {len(fake)} fake")
    real_r = knn_radii(real, k, row_batch, col_batch)
    fake_r = knn_radii(fake, k, row_batch, col_batch)
    precision = manifold_coverage(fake, real, real_r, row_batch, col_batch)
    recall = manifold_coverage(real, fake, fake_r, row_batch, col_batch)
    return precision, recall


# --- Feature extractors ------------------------------------------------------------------------

@dataclass
class FeatureExtractor:
    """clean-fid-style extractor: `fn_resize` per HWC image, then `model_fn` on [B, 3, H, W] in [0, 255]."""

    name: str
    model_fn: Callable[[torch.Tensor], torch.Tensor]
    fn_resize: Callable[[np.ndarray], np.ndarray]
    device: torch.device

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B, H, W, C] (C = 1 or 3) -> float32 features [B, D]."""
        return self.embed(self.prepare(images))

    def prepare(self, images: np.ndarray) -> np.ndarray:
        """The CPU half: uint8 [B, H, W, C] -> float32 [B, 3, h, w] at the network's input size, resized
        per image by clean-fid's resizer (PIL / torch, both release the GIL) on a pool of the job's CPUs."""
        images = np.asarray(images)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected uint8 [B, H, W, C], got {images.dtype} {images.shape}")
        if images.shape[-1] == 1:  # clean-fid opens every file with .convert('RGB')
            images = np.repeat(images, 3, axis=-1)
        return np.stack(list(image_pool().map(lambda im: np.asarray(self.fn_resize(im), np.float32).transpose(2, 0, 1),
                                               images)))

    @torch.no_grad()
    def embed(self, batch: np.ndarray) -> np.ndarray:
        """The device half: `prepare`'s output -> float32 features [B, D], in sub-batches of what fits the
        card's free memory (lct.infra.memory)."""
        step = fit_batch("vgg16" if "vgg" in self.name else "inception", len(batch), self.device, batch.shape[-1])
        feats = [self.model_fn(torch.from_numpy(batch[i : i + step]).to(self.device)).detach().float().cpu()
                 for i in range(0, len(batch), step)]
        return torch.cat(feats).numpy()


_POOL = None


def image_pool():
    """One thread pool per process for the per-image work of an evaluation (resize, JPEG), sized from the
    CPUs the job was given (lct.infra.device.job_cpus)."""
    global _POOL
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        from lct.infra.device import job_cpus

        _POOL = ThreadPoolExecutor(max_workers=job_cpus(), thread_name_prefix="lct-images")
    return _POOL


# File names the upstreams give the pretrained extractors (lct.weights.fetch.ASSETS places them).
WEIGHT_FILES = {
    "inception_clean": "inception-2015-12-05.pt",  # NVIDIA's TorchScript Inception (clean-fid `clean`)
    "inception_legacy": "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid's weights (`legacy_pytorch`)
    "vgg16": "vgg16-397923af.pth",  # torchvision ImageNet VGG16 (fallback)
    "vgg16_nvidia": "vgg16.pt",  # NVIDIA's metric VGG16 (StyleGAN2-ADA pr50k3_full)
}


def _require(resources: str | Path | None, name: str) -> Path:
    """The fetched weight file of asset `name` (lct.weights.fetch.ASSETS); fails naming `snakemake fetch_weights`."""
    from lct.weights.fetch import require

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
    """Fallback only (`evaluation.recall_feature: vgg16`): torchvision's ImageNet VGG16 fc2 features.

    Not the pr50k3_full network (that is `vgg16_nvidia`): a Recall computed with it is not
    comparable with the published Recall, and the tables say so.
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


def vgg16_nvidia(resources: str | Path | None, device: torch.device) -> FeatureExtractor:
    """NVIDIA's metric VGG16 (`vgg16.pt`, TorchScript) as StyleGAN2-ADA's pr50k3_full runs it: uint8
    NCHW images at their own resolution in (the network resizes and normalises inside),
    `return_features=True` -> 4096-d fc2 features."""
    path = _require(resources, "vgg16_nvidia")
    net = torch.jit.load(str(path), map_location="cpu").eval().to(device)  # a TorchScript archive

    def model_fn(x: torch.Tensor) -> torch.Tensor:  # float [0, 255] from FeatureExtractor -> uint8 as StyleGAN feeds it
        return net(x.round().clamp(0, 255).to(torch.uint8), return_features=True)

    return FeatureExtractor("vgg16_nvidia", model_fn, lambda im: im, device)


def digit_classifier(resources: str | Path | None, device: torch.device, path: str | Path | None = None) -> FeatureExtractor:
    """Penultimate features of the demo's digit classifier (`lct train-classifier`)."""
    from lct.evaluation.classifier import load_classifier

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
    "vgg16_nvidia": vgg16_nvidia,
    "digit_classifier": digit_classifier,
}


def build_feature(name: str, resources: str | Path | None, device: torch.device) -> FeatureExtractor:
    """Construct a feature extractor by name (a key of FEATURES)."""
    if name not in FEATURES:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(FEATURES)}")
    return FEATURES[name](resources, device)
