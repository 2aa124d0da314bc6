"""Robust distances d(x, y) between consistency-model outputs, one value per sample.

Every distance is a function of the squared residual norm s = ||x - y||^2. With
``reduction="sum"`` s is summed over dimensions (the paper); with ``reduction="mean"`` it is
averaged (the authors' code, docs/METHOD.md section 4), which is the same as the sum form with c
replaced by c * sqrt(d). All robust distances behave like s / (2 c^2) near zero (Pseudo-Huber:
s / (2 c)), which is what makes them comparable.
"""

from __future__ import annotations

from typing import Callable

import torch

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


class ELatentLPIPSDistance:
    """d(x, y) = E-LatentLPIPS(x, y) per sample [B] on 4-channel SD latents; c and reduction unused.

    Gradients flow to x and y (the network's own weights are frozen). The network comes from the weights
    layer (lct.weights.fetch.load_elatentlpips), given as a module or as a loader `device -> module` called on first
    use with the device of its inputs: this module reads no file.
    """

    def __init__(self, network: "torch.nn.Module | Callable[[torch.device], torch.nn.Module] | None"):
        self.network = network

    def __call__(self, x: torch.Tensor, y: torch.Tensor, c: float = 0.0, reduction: str = "sum") -> torch.Tensor:
        if self.network is None:
            raise FileNotFoundError("loss.distance = 'elatentlpips' needs its network: run `snakemake fetch_weights` "
                                    "(or `lct fetch-weights --elatentlpips --out <resources>`) and pass the folder "
                                    "(`lct train --resources <resources>`)")
        model = self.network if isinstance(self.network, torch.nn.Module) else self.network(x.device)
        return model(x, y, normalize=False, ensembling=False).reshape(x.shape[0])


def make_distance(name: str, network=None) -> Callable[..., torch.Tensor]:
    """distance(x, y, c, reduction) -> [B] for loss.distance `name`; `network`: E-LatentLPIPS's network or
    its loader (from lct.weights.fetch; the other distances are formulas)."""
    if name == "elatentlpips":
        return ELatentLPIPSDistance(network)
    if name not in DISTANCES:
        raise ValueError(f"loss.distance = {name!r}; choose one of {sorted(DISTANCES)}")
    return DISTANCES[name]


# name -> distance(x, y, c, reduction) -> [B]
DISTANCES: dict[str, Callable[..., torch.Tensor]] = {
    **{name: _norm_distance(fn) for name, fn in ROBUST.items()},
    "elatentlpips": ELatentLPIPSDistance(None),  # needs make_distance("elatentlpips", network) for its network
}


def robust_distance(name: str, x: torch.Tensor, y: torch.Tensor, c: float, reduction: str = "sum") -> torch.Tensor:
    """d(x, y) per sample [B] for loss.distance `name`."""
    if name not in DISTANCES:
        raise ValueError(f"loss.distance = {name!r}; choose one of {sorted(DISTANCES)}")
    return DISTANCES[name](x, y, c, reduction)


distance = robust_distance  # name used in docs/ARCHITECTURE.md
