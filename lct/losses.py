"""Robust distances d(x, y) between consistency-model outputs, one value per sample.

Every distance is a function of the squared residual norm s = ||x - y||^2. With
``reduction="sum"`` s is summed over dimensions (the paper); with ``reduction="mean"`` it is
averaged (the authors' code, docs/METHOD.md section 4), which is the same as the sum form with c
replaced by c * sqrt(d). All robust distances behave like s / (2 c^2) near zero (Pseudo-Huber:
s / (2 c)), which is what makes them comparable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

_LPIPS_CACHE: dict[str, torch.nn.Module] = {}


def squared_norm(x: torch.Tensor, y: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """||x - y||^2 per sample [B]: sum (paper) or mean (authors' code) over non-batch dims."""
    r2 = (x - y).flatten(1).square()
    if reduction == "sum":
        return r2.sum(1)
    if reduction == "mean":
        return r2.mean(1)
    raise ValueError(f"loss.reduction = {reduction!r}; choose 'sum' (paper) or 'mean' (authors' code)")


def l2(s: torch.Tensor, c: float) -> torch.Tensor:
    # d = ||x - y||^2   (CM, squared L2; c unused)
    return s


def pseudo_huber(s: torch.Tensor, c: float) -> torch.Tensor:
    # d = sqrt(||x - y||^2 + c^2) - c   (eq. 7)
    return torch.sqrt(s + c * c) - c


def cauchy(s: torch.Tensor, c: float) -> torch.Tensor:
    # d = log(1 + ||x - y||^2 / (2 c^2))   (eq. 6)
    return torch.log1p(s / (2.0 * c * c))


def geman_mcclure(s: torch.Tensor, c: float) -> torch.Tensor:
    # d = 2 ||x - y||^2 / (||x - y||^2 + 4 c^2)   (eq. 8)
    return 2.0 * s / (s + 4.0 * c * c)


# Distances that are functions of the squared norm s.
ROBUST: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "l2": l2,
    "pseudo_huber": pseudo_huber,
    "cauchy": cauchy,
    "geman_mcclure": geman_mcclure,
}


def _norm_distance(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def dist(x: torch.Tensor, y: torch.Tensor, c: float, reduction: str = "sum") -> torch.Tensor:
        return fn(squared_norm(x, y, reduction), c)

    dist.__name__ = fn.__name__
    dist.__doc__ = f"{fn.__name__} of ||x - y||^2, per sample [B]."
    return dist


# E-LatentLPIPS as the authors ran it (docs/METHOD.md section 4): ELatentLPIPS(encoder="sd15",
# augment=None), called on the model's standardized latents with normalize=False, ensembling=False.
ELATENTLPIPS_FILES = ("sd15_latent_vgg16.pth.tar", "sd15_latest_vgg16_tuned.pth")  # trunk, calibrated heads


def load_elatentlpips(weights_dir: str | Path | None, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The package's E-LatentLPIPS network with the weights in `weights_dir`/ckpt (fetch-weights writes
    them to <resources>/elatentlpips/ckpt). The package reads ``./ckpt`` relative to the working
    directory, so it is constructed inside `weights_dir`; it never downloads here."""
    import contextlib

    key = f"{Path(weights_dir).resolve() if weights_dir else None}:{device}"
    if key in _LPIPS_CACHE:
        return _LPIPS_CACHE[key]
    try:
        from lct._compat import import_elatentlpips

        elatentlpips = import_elatentlpips()
    except ImportError as e:
        raise ImportError(
            "loss.distance = 'elatentlpips' needs the package elatentlpips (envs/requirements.txt: "
            "`pip install elatentlpips==0.2`)") from e
    hint = ("run `snakemake fetch_weights` (or `lct fetch-weights --elatentlpips --out <resources>`) on a machine "
            "with internet, then pass the resources folder (`lct train --resources <resources>`)")
    if weights_dir is None:
        raise FileNotFoundError(f"loss.distance = 'elatentlpips' needs its weights; {hint}")
    ckpt = Path(weights_dir) / "ckpt"
    missing = [str(ckpt / f) for f in ELATENTLPIPS_FILES if not (ckpt / f).is_file()]
    if missing:
        raise FileNotFoundError(f"E-LatentLPIPS weights missing: {', '.join(missing)}; {hint}")
    from lct.fetch import require

    for asset in ("elatentlpips_vgg", "elatentlpips_head"):  # sizes against MANIFEST.json; random refused
        require(Path(weights_dir).parent, asset)
    with contextlib.chdir(weights_dir):
        model = elatentlpips.ELatentLPIPS(encoder="sd15", augment=None, verbose=False)
    model = model.to(device).eval().requires_grad_(False)
    _LPIPS_CACHE[key] = model
    return model


class ELatentLPIPSDistance:
    """d(x, y) = E-LatentLPIPS(x, y) per sample [B] on 4-channel SD latents; c and reduction unused.

    Gradients flow to x and y (the network's own weights are frozen). Loaded on first use, on the
    device of its inputs.
    """

    def __init__(self, weights_dir: str | Path | None):
        self.weights_dir = weights_dir

    def __call__(self, x: torch.Tensor, y: torch.Tensor, c: float = 0.0, reduction: str = "sum") -> torch.Tensor:
        model = load_elatentlpips(self.weights_dir, x.device)
        return model(x, y, normalize=False, ensembling=False).reshape(x.shape[0])


def make_distance(name: str, resources: str | Path | None = None) -> Callable[..., torch.Tensor]:
    """distance(x, y, c, reduction) -> [B] for loss.distance `name`; `resources` is the folder of
    `lct fetch-weights` (only E-LatentLPIPS reads it)."""
    if name == "elatentlpips":
        return ELatentLPIPSDistance(Path(resources) / "elatentlpips" if resources else None)
    if name not in DISTANCES:
        raise ValueError(f"loss.distance = {name!r}; choose one of {sorted(DISTANCES)}")
    return DISTANCES[name]


# name -> distance(x, y, c, reduction) -> [B]
DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    **{name: _norm_distance(fn) for name, fn in ROBUST.items()},
    "elatentlpips": ELatentLPIPSDistance(None),  # needs make_distance("elatentlpips", resources) to find weights
}


def robust_distance(name: str, x: torch.Tensor, y: torch.Tensor, c: float, reduction: str = "sum") -> torch.Tensor:
    """d(x, y) per sample [B] for loss.distance `name`."""
    if name not in DISTANCES:
        raise ValueError(f"loss.distance = {name!r}; choose one of {sorted(DISTANCES)}")
    return DISTANCES[name](x, y, c, reduction)


distance = robust_distance  # name used in docs/ARCHITECTURE.md
