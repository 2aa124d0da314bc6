"""Robust distances d(x, y) between consistency-model outputs, one value per sample.

Every distance is a function of the squared residual norm s = ||x - y||^2. With
``reduction="sum"`` s is summed over dimensions (the paper); with ``reduction="mean"`` it is
averaged (the authors' code, METHOD.md section 4), which is the same as the sum form with c
replaced by c * sqrt(d). All robust distances behave like s / (2 c^2) near zero (Pseudo-Huber:
s / (2 c)), which is what makes them comparable.
"""

from __future__ import annotations

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


def _load_elatentlpips(device: torch.device) -> torch.nn.Module:
    key = str(device)
    if key not in _LPIPS_CACHE:
        try:
            import elatentlpips  # optional extra: pip install elatentlpips
        except ImportError as e:
            raise ImportError(
                "loss.distance = 'elatentlpips' needs the optional package: `pip install elatentlpips` "
                "(or `pip install lct[lpips]`); its weights are downloaded at first use, so on a cluster "
                "run `lct fetch-weights --elatentlpips` (the fetch_weights rule) on a node with internet first"
            ) from e
        try:
            model = elatentlpips.ELatentLPIPS(encoder="sd15", augment="bg")  # "E": ensembled augmentation
        except Exception as e:  # weights missing offline
            raise RuntimeError(
                f"E-LatentLPIPS weights could not be loaded ({e}); run `lct fetch-weights --elatentlpips` "
                "(the fetch_weights rule) on a node with internet, then rerun"
            ) from e
        _LPIPS_CACHE[key] = model.to(device).eval().requires_grad_(False)
    return _LPIPS_CACHE[key]


def elatentlpips_distance(x: torch.Tensor, y: torch.Tensor, c: float = 0.0, reduction: str = "sum") -> torch.Tensor:
    """E-LatentLPIPS (Kang et al. 2024) on 4-channel SD latents, per sample [B]; c and reduction unused."""
    model = _load_elatentlpips(x.device)
    return model(x, y).reshape(x.shape[0])


# name -> distance(x, y, c, reduction) -> [B]
DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    **{name: _norm_distance(fn) for name, fn in ROBUST.items()},
    "elatentlpips": elatentlpips_distance,
}


def robust_distance(name: str, x: torch.Tensor, y: torch.Tensor, c: float, reduction: str = "sum") -> torch.Tensor:
    """d(x, y) per sample [B] for loss.distance `name`."""
    if name not in DISTANCES:
        raise ValueError(f"loss.distance = {name!r}; choose one of {sorted(DISTANCES)}")
    return DISTANCES[name](x, y, c, reduction)


distance = robust_distance  # name used in docs/ARCHITECTURE.md
