"""Noise grids, preconditioning, curricula, timestep distributions, weightings and the scale c.

Pure functions named after the symbols of the paper (arXiv 2502.01441) and of iCT (Song &
Dhariwal 2024); see docs/METHOD.md sections 1-4. Grids are float64 and ascending
(t_1 = sigma_min < ... < t_N = sigma_max); index i in code is 0-based, so the pair
(t_i, t_{i+1}) of the paper is (sigmas[i], sigmas[i + 1]).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

# The discretization curricula are integer arithmetic, kept torch-free in lct.config.curriculum (the
# workflow's config writers import them without importing torch).
from lct.config.curriculum import (  # noqa: F401 (re-exported)
    _num_stages_exp,
    curriculum_stage,
    curriculum_stages,
    num_timesteps,
    num_timesteps_exp,
    num_timesteps_sqrt,
)

if TYPE_CHECKING:
    from lct.config import ExperimentConfig, ScheduleConfig

Tensorish = torch.Tensor | float


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) discretization, ascending, float64 [n]."""
    # t_i = (t_min^(1/rho) + (i-1)/(N-1) (t_max^(1/rho) - t_min^(1/rho)))^rho, i = 1..N (docs/METHOD.md 1)
    if n < 2:
        raise ValueError(f"karras_sigmas needs n >= 2 points, got {n}")
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (lo + ramp * (hi - lo)) ** rho


def c_skip(t: Tensorish, sigma_data: float = 0.5, sigma_min: float = 0.002) -> Tensorish:
    # c_skip(t) = sigma_data^2 / ((t - sigma_min)^2 + sigma_data^2)   (eq. 2)
    return sigma_data**2 / ((t - sigma_min) ** 2 + sigma_data**2)


def c_out(t: Tensorish, sigma_data: float = 0.5, sigma_min: float = 0.002) -> Tensorish:
    # c_out(t) = (t - sigma_min) sigma_data / sqrt(t^2 + sigma_data^2)   (eq. 2)
    return (t - sigma_min) * sigma_data / (t**2 + sigma_data**2) ** 0.5


def c_in(t: Tensorish, sigma_data: float = 0.5) -> Tensorish:
    # c_in(t) = 1 / sqrt(t^2 + sigma_data^2)   (eq. 2)
    return 1.0 / (t**2 + sigma_data**2) ** 0.5


def c_noise(t: torch.Tensor, convention: str = "cm") -> torch.Tensor:
    """Noise conditioning fed to the sinusoidal embedding."""
    if convention == "cm":
        return 250.0 * torch.log(t)  # consistency-models code: 1000 * 0.25 * ln t
    if convention == "edm":
        return 0.25 * torch.log(t)  # EDM: ln(t) / 4
    raise ValueError(f"network.noise_conditioning = {convention!r}; choose 'cm' or 'edm'")


def lognormal_index_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0,
                          skip: int = 1) -> torch.Tensor:
    """iCT discrete lognormal over the N-skip pairs (t_i, t_{i+skip}) of an ascending grid, float64 [N-skip]."""
    # p(i) ∝ erf((ln t_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((ln t_i - P_mean) / (sqrt 2 P_std))   (iCT)
    cdf = torch.erf((torch.log(sigmas.double()) - p_mean) / (math.sqrt(2.0) * p_std))
    p = cdf[skip:] - cdf[:-skip]
    return p / p.sum()


def uniform_index_probs(n: int, skip: int = 1) -> torch.Tensor:
    """Uniform distribution over the n - skip pairs (t_i, t_{i+skip}) of an n-point grid, float64 [n-skip]."""
    return torch.full((n - skip,), 1.0 / (n - skip), dtype=torch.float64)


def index_probs(sigmas: torch.Tensor, sched: "ScheduleConfig", skip: int = 1) -> torch.Tensor:
    """Index distribution named by schedule.timestep_dist over the pairs (t_i, t_{i+skip})."""
    if sched.timestep_dist == "lognormal":
        return lognormal_index_probs(sigmas, sched.p_mean, sched.p_std, skip)
    if sched.timestep_dist == "uniform":
        return uniform_index_probs(len(sigmas), skip)
    raise ValueError(f"schedule.timestep_dist = {sched.timestep_dist!r}; choose lognormal or uniform")


def loss_weighting(t_lo: torch.Tensor, t_hi: torch.Tensor, kind: str = "icm") -> torch.Tensor:
    """lambda(t_i) for the pair (t_i, t_{i+1})."""
    if kind == "icm":
        return 1.0 / (t_hi - t_lo)  # lambda(t_i) = 1 / (t_{i+1} - t_i)   (iCT)
    if kind == "uniform":
        return torch.ones_like(t_lo)  # lambda = 1 (CM)
    raise ValueError(f"schedule.weighting = {kind!r}; choose icm or uniform")


weighting = loss_weighting  # name used in docs/ARCHITECTURE.md


def c_fixed(d: int) -> float:
    # c0 = 0.00054 sqrt(d)   (iCT; eq. 7)
    return 0.00054 * math.sqrt(d)


def c_adaptive(n: int) -> float:
    # c = exp(-1.18 ln(N - 1) - 0.72)   (eq. 11)
    return math.exp(-1.18 * math.log(n - 1) - 0.72)


def c_as_coded(n: int, first_stage: bool, d: int) -> float:
    """The authors' code: c0 during the first curriculum stage, then exp(-1.15 ln(N - 1) - 0.85)."""
    if first_stage:
        return c_fixed(d)
    return math.exp(-1.15 * math.log(n - 1) - 0.85)  # docs/METHOD.md section 4


def scale_c(cfg: "ExperimentConfig", k: int, K: int, d: int) -> float:
    """The robust-loss scale c at iteration k of K for data dimension d (loss.c). Distillation and CTM have no
    curriculum: their N is distill.num_timesteps, and as_coded takes the after-first-stage branch."""
    kind = cfg.loss.c
    if kind == "fixed":
        return float(cfg.loss.c0) if cfg.loss.c0 is not None else c_fixed(d)
    distill = cfg.objective in ("distillation", "trajectory")  # a fixed grid, no curriculum
    n = cfg.distill.num_timesteps if distill else num_timesteps(k, K, cfg.schedule)
    if kind == "adaptive":
        return c_adaptive(n)
    if kind == "as_coded":
        return c_as_coded(n, (not distill) and curriculum_stage(k, K, cfg.schedule) == 0, d)
    raise ValueError(f"loss.c = {kind!r}; choose fixed, adaptive or as_coded")
