"""`lct ref-stats` and what both commands share: the metric suite's extractors and their weights'
fingerprint, the reference statistics of a dataset's images, and the authors' pytorch-fid statistics
files (pickled .npy, read with an allow-list)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lct.evaluation.images import DEFAULT_JPEG_QUALITY, IMAGE_FORMATS, apply_image_format
from lct.files.download import sha256_file  # noqa: F401
from lct.infra.device import pick_device
from lct.infra.suites import SUITES  # torch-free: lct.report.tables reads it in the light env


def build_suite(feature: str, modes: list[str] | None, resources: str | Path | None, device: torch.device,
                recall_feature: str | None = None) -> tuple[dict[str, Any], dict[str, str], str]:
    """Extractors {name: FeatureExtractor}, fd modes {mode: extractor name}, recall extractor name."""
    from lct.evaluation.metrics import build_feature

    if feature not in SUITES:
        raise ValueError(f"--feature {feature!r}; choose one of {sorted(SUITES)}")
    suite = SUITES[feature]
    fd = dict(suite["fd"])
    if modes:
        unknown = [m for m in modes if m not in fd]
        if unknown:
            raise ValueError(f"--fid-modes {unknown} not available for --feature {feature}; choose from {sorted(fd)}")
        fd = {m: fd[m] for m in modes}
    rec = recall_feature or suite["recall"]
    names = sorted(set(fd.values()) | {rec})
    return {n: build_feature(n, resources, device) for n in names}, fd, rec


def extractor_fingerprint(name: str, resources: str | Path | None) -> dict[str, Any]:
    """The weight files behind a feature extractor, by their MANIFEST.json sha256 (fetch-weights)."""
    from lct.weights.fetch import MANIFEST

    manifest = Path(resources) / MANIFEST if resources else None
    if manifest is None or not manifest.is_file():
        return {"name": name}
    files = json.loads(manifest.read_text())["files"]
    return {"name": name, "files": {k: v["sha256"] for k, v in sorted(files.items()) if v.get("asset") == name}}


def _atomic_savez(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _atomic_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


# --- reference statistics ----------------------------------------------------------------------

def compute_ref_stats(images: np.ndarray, feature: str, resources: str | Path | None, device: torch.device,
                      image_format: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY, batch_size: int = 250,
                      recall_num: int = 200_000, modes: list[str] | None = None,
                      recall_feature: str | None = None) -> dict[str, Any]:
    """mu / sigma per Frechet mode over all `images`, and the Recall features of the first
    `recall_num` images in dataset order (pr50k3_full: all real images up to 200,000), float16."""
    from lct.evaluation.metrics import feature_stats

    extractors, fd, rec = build_suite(feature, modes, resources, device, recall_feature)
    n = len(images)
    in_subset = np.arange(n) < recall_num
    feats: dict[str, list[np.ndarray]] = {name: [] for name in set(fd.values())}
    rec_feats: list[np.ndarray] = []
    for i in range(0, n, batch_size):
        batch = apply_image_format(np.asarray(images[i : i + batch_size]), image_format, quality)
        for name in feats:
            feats[name].append(extractors[name](batch))
        mask = in_subset[i : i + batch_size]
        if mask.any():
            rec_feats.append(feats[rec][-1][mask] if rec in feats else extractors[rec](batch[mask]))
    out: dict[str, Any] = {
        "feature": feature, "image_format": image_format, "jpeg_quality": quality, "num_images": n,
        "fd_modes": np.array(list(fd)), "recall_feature": rec, "recall_feats": np.concatenate(rec_feats).astype(np.float16),
    }
    for mode, name in fd.items():
        mu, sigma = feature_stats(np.concatenate(feats[name]))
        out[f"mu_{mode}"], out[f"sigma_{mode}"] = mu, sigma
    return out


def ref_stats_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lct ref-stats", description="reference feature statistics of a dataset's images")
    p.add_argument("--data", required=True, help="dataset dir with images.npy")
    p.add_argument("--feature", required=True, choices=sorted(SUITES))
    p.add_argument("--resources", default=None, help="folder of pretrained files (lct fetch-weights) / digit-classifier.pt")
    p.add_argument("--out", required=True, help="ref/<dataset>-<feature>.npz")
    p.add_argument("--fid-modes", nargs="+", default=None)
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpeg")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
    p.add_argument("--recall-num", type=int, default=200_000,
                   help="Recall uses the first N real images (pr50k3_full: 200,000)")
    p.add_argument("--recall-feature", default=None, help="override the suite's Recall extractor (e.g. inception_clean)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    path = Path(a.data) / "images.npy"
    if not path.is_file():
        raise SystemExit(f"lct ref-stats: {path} not found; run `lct prepare-data` first")
    images = np.load(path, mmap_mode="r")
    t0 = time.time()
    stats = compute_ref_stats(images, a.feature, a.resources, pick_device(a.device), a.image_format, a.jpeg_quality,
                              a.batch_size, a.recall_num, modes=a.fid_modes, recall_feature=a.recall_feature)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_savez(out, data=str(a.data), **stats)
    print(f"ref-stats {a.feature} of {stats['num_images']} images in {time.time() - t0:.1f}s -> {out}")
    return 0


# What a pickled statistics file may contain: numpy arrays, dtypes and scalars, and plain containers.
_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list"),
                   ("builtins", "tuple"), ("collections", "OrderedDict")}


def load_pickled_npy(path: str | Path) -> Any:
    """An ``.npy`` file; an object one (np.save of a dict) read through an allow-list unpickler: numpy arrays
    and plain containers only, so a crafted file cannot run code (`pickle.UnpicklingError` names what it tried)."""
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in _PICKLE_ALLOWED:
                raise pickle.UnpicklingError(f"{path}: refusing to load {module}.{name} (a statistics file holds "
                                             "numpy arrays and plain containers only)")
            return super().find_class(module, name)

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        if header(f)[2] == object:
            return Restricted(f, encoding="latin1").load()  # the pickle starts right after the header
    return np.load(path, allow_pickle=False)


def load_fid_reference(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a pytorch-fid statistics file: ``.npz`` with arrays ``mu`` and ``sigma`` (pytorch-fid's
    `save_fid_stats` format), or ``.npy`` holding that pair as a dict (as the authors' repository ships
    `celebahq_stat.npy`), unpickled through an allow-list (`load_pickled_npy`): no code runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID reference statistics {path} not found; set evaluation.fid_reference.<dataset> "
                                f"and run `snakemake fetch_weights`, or give a local path")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if not {"mu", "sigma"} <= set(z.files):
                raise ValueError(f"{path}: a pytorch-fid statistics file needs arrays 'mu' and 'sigma', has {z.files}")
            mu, sigma = z["mu"], z["sigma"]
    elif path.suffix == ".npy":
        obj = np.asarray(load_pickled_npy(path), dtype=object)
        if obj.dtype == object and obj.ndim == 0 and isinstance(obj.item(), dict):
            d = obj.item()
            mu, sigma = np.asarray(d["mu"]), np.asarray(d["sigma"])
        else:
            raise ValueError(f"{path}: expected a dict {{'mu', 'sigma'}} saved with np.save")
    else:
        raise ValueError(f"{path}: FID reference statistics must be .npz (mu, sigma) or .npy (dict)")
    mu, sigma = np.asarray(mu, np.float64).reshape(-1), np.asarray(sigma, np.float64)
    if sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{path}: sigma has shape {sigma.shape}, expected ({mu.size}, {mu.size})")
    return mu, sigma


def check_reference(ref: dict[str, Any], modes: list[str], source: str | Path) -> None:
    """Before any sample is drawn: every statistic the evaluation uses is finite and of matching shape."""
    for mode in modes:
        mu, sigma = ref.get(f"mu_{mode}"), ref.get(f"sigma_{mode}")
        if mu is None or sigma is None:
            raise SystemExit(f"lct evaluate: {source} has no statistics for mode {mode!r}")
        mu, sigma = np.asarray(mu), np.asarray(sigma)
        if sigma.shape != (mu.size, mu.size):
            raise SystemExit(f"lct evaluate: {source}: sigma_{mode} has shape {sigma.shape}, mu_{mode} {mu.shape}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise SystemExit(f"lct evaluate: {source}: mu_{mode} / sigma_{mode} hold non-finite values; rebuild the "
                             "reference statistics (`lct ref-stats`, or fetch the file again)")
    feats = ref.get("recall_feats")
    if feats is not None and not np.isfinite(np.asarray(feats, np.float32)).all():
        raise SystemExit(f"lct evaluate: {source}: recall_feats hold non-finite values; rebuild them (`lct ref-stats`)")


def load_ref(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} not found; run `lct ref-stats --data data/<ds> --out {path}`")
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}
