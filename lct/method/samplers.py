"""Samplers: 1-step and multistep consistency sampling (CM Algorithm 1), the deterministic EDM
sampler, and `generate`, the single entry point. Per-image seeds make image k the same
whatever the batch size or the number of GPUs (edm `generate.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from lct.method.schedules import karras_sigmas

if TYPE_CHECKING:
    from lct.config import ExperimentConfig


class StackedRandomGenerator:
    """One torch.Generator per image, seeded by that image's seed; draws are stacked on dim 0."""

    def __init__(self, device: torch.device | str, seeds: Sequence[int]):
        self.device = torch.device(device)
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s) % (1 << 32)) for s in seeds]

    def randn(self, size: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[len(seeds), *size[1:]] standard normal; size[0] must equal the number of seeds."""
        if size[0] != len(self.generators):
            raise ValueError(f"StackedRandomGenerator: asked for {size[0]} rows, have {len(self.generators)} seeds")
        return torch.stack([torch.randn(size[1:], generator=g, device=self.device, dtype=dtype) for g in self.generators])


def two_step_sigmas(cfg: "ExperimentConfig") -> list[float]:
    """[sigma_max, sigma of index sample.two_step_index on the sample.two_step_grid-point grid].

    The grid is indexed from 0 at sigma_max (descending), as in the authors' code: index 420 of
    641 points is the ascending point 640 - 420 = 220, t = 0.52858 (docs/METHOD.md section 4).
    """
    s = cfg.schedule
    grid = karras_sigmas(cfg.sample.two_step_grid, s.sigma_min, s.sigma_max, s.rho).flip(0)  # descending
    if not 0 < cfg.sample.two_step_index < len(grid):
        raise ValueError(f"sample.two_step_index = {cfg.sample.two_step_index}; must be in 1..{len(grid) - 1}")
    return [float(s.sigma_max), float(grid[cfg.sample.two_step_index])]


def multistep_sigmas(cfg: "ExperimentConfig", nfe: int) -> list[float]:
    """Sigmas of an nfe-step consistency sampler: [80] for 1, two_step_sigmas for 2, otherwise the
    first nfe points of a descending (nfe + 1)-point Karras grid (the last, sigma_min, is dropped)."""
    s = cfg.schedule
    if nfe == 1:
        return [float(s.sigma_max)]
    if nfe == 2:
        return two_step_sigmas(cfg)
    grid = karras_sigmas(nfe + 1, s.sigma_min, s.sigma_max, s.rho).flip(0)
    return [float(v) for v in grid[:nfe]]


@torch.no_grad()
def sample_consistency(net: nn.Module, noise: torch.Tensor, sigmas: Sequence[float], sigma_min: float = 0.002,
                       rnd: StackedRandomGenerator | None = None) -> torch.Tensor:
    """Multistep consistency sampling (CM Algorithm 1). `noise` is N(0, I) [B, C, H, W].

    x = f(sigmas[0] z, sigmas[0]); then for each later sigma: x <- f(x + sqrt(sigma^2 - sigma_min^2) z', sigma).
    Fresh z' come from `rnd` (per-image seeds) when given, else from a generator seeded by 0.
    """
    b = noise.shape[0]
    x = net(noise * sigmas[0], torch.full((b,), sigmas[0], device=noise.device, dtype=noise.dtype))
    gen = None if rnd is not None else torch.Generator(device=noise.device).manual_seed(0)
    for s in sigmas[1:]:
        z = rnd.randn(noise.shape, noise.dtype) if rnd is not None else torch.randn(
            noise.shape, generator=gen, device=noise.device, dtype=noise.dtype)
        x = x + (s**2 - sigma_min**2) ** 0.5 * z  # re-noise to sigma s (CM Algorithm 1)
        x = net(x, torch.full((b,), s, device=noise.device, dtype=noise.dtype))
    return x


@torch.no_grad()
def sample_trajectory(net: nn.Module, noise: torch.Tensor, sigmas: Sequence[float], gamma: float = 0.0,
                      sigma_min: float = 0.002, rnd: StackedRandomGenerator | None = None) -> torch.Tensor:
    """CTM's gamma-sampling (Kim et al. 2024, sec. 5) of a trajectory model net(x, t, s) = G(x, t, s).

    Times t_0 = sigmas[0] > ... > t_{N-1}, then t_N = 0 (sigma_min). From x_{t_0} = t_0 z, each step jumps
    x <- G(x_{t_n}, t_n, sqrt(1 - gamma^2) t_{n+1}) and re-noises x_{t_{n+1}} = x + gamma t_{n+1} z' (none after
    the last jump). gamma = 0: deterministic long jumps along the ODE; gamma = 1: CM's multistep sampler
    (sample_consistency, whose re-noising has sqrt(t^2 - sigma_min^2) in place of t).
    """
    b, dev, dt = noise.shape[0], noise.device, noise.dtype
    ts = [float(v) for v in sigmas] + [sigma_min]
    gen = None if rnd is not None else torch.Generator(device=dev).manual_seed(0)
    x = noise * ts[0]
    for n, (t_cur, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        last = n == len(ts) - 2
        s = t_next if last else max((1.0 - gamma**2) ** 0.5 * t_next, sigma_min)  # G's end time; 0 is sigma_min
        x = net(x, torch.full((b,), t_cur, device=dev, dtype=dt), torch.full((b,), s, device=dev, dtype=dt))
        if not last and gamma > 0:
            z = rnd.randn(noise.shape, dt) if rnd is not None else torch.randn(noise.shape, generator=gen, device=dev, dtype=dt)
            x = x + gamma * t_next * z  # x_{t_{n+1}} = G(...) + gamma t_{n+1} z
    return x


@torch.no_grad()
def edm_sampler(net: nn.Module, noise: torch.Tensor, num_steps: int, cfg: "ExperimentConfig",
                heun_last: bool = False) -> torch.Tensor:
    """Deterministic EDM sampler (Karras et al. 2022, Algorithm 1, S_churn = 0), 2nd-order Heun.

    `num_steps` steps of nonzero length. With heun_last False the Karras grid has num_steps points
    and the last step goes from sigma_min to t = 0 by Euler, as in EDM: NFE = 2 num_steps - 1.
    With heun_last True the grid has num_steps + 1 points ending at sigma_min and every step is
    Heun: NFE = 2 num_steps (the sample is the state at sigma_min, as for the consistency model).
    """
    s = cfg.schedule
    b, dev, dt = noise.shape[0], noise.device, noise.dtype
    if heun_last:  # t_0 = sigma_max > ... > t_num_steps = sigma_min
        t = karras_sigmas(num_steps + 1, s.sigma_min, s.sigma_max, s.rho).flip(0).tolist()
    else:  # t_0 = sigma_max > ... > t_{num_steps-1} = sigma_min, then t = 0
        t = (karras_sigmas(num_steps, s.sigma_min, s.sigma_max, s.rho).flip(0).tolist() if num_steps > 1
             else [s.sigma_max]) + [0.0]
    x = noise.to(torch.float64) * t[0]
    for j in range(num_steps):
        t_cur, t_next = t[j], t[j + 1]
        d_cur = (x - net(x.to(dt), torch.full((b,), t_cur, device=dev, dtype=dt)).double()) / t_cur  # dx/dt
        x_next = x + (t_next - t_cur) * d_cur  # Euler step
        if t_next > 0:  # Heun correction
            d_next = (x_next - net(x_next.to(dt), torch.full((b,), t_next, device=dev, dtype=dt)).double()) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.to(dt)


def edm_steps_for_nfe(nfe: int) -> tuple[int, bool]:
    """(num_steps, heun_last) of edm_sampler giving exactly `nfe` network evaluations."""
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    return ((nfe + 1) // 2, False) if nfe % 2 else (nfe // 2, True)


@torch.no_grad()
def generate(net: nn.Module, cfg: "ExperimentConfig", shape: tuple[int, int, int], seeds: Sequence[int], nfe: int,
             device: torch.device | str, batch_size: int = 64) -> torch.Tensor:
    """Samples [len(seeds), C, H, W] (on CPU, in the model's normalized space) with `nfe` evaluations.

    consistency (and distillation): nfe 1 = one step from sigma_max; 2 = two_step_sigmas; more = a Karras sub-grid.
    trajectory (CTM): gamma-sampling (sample.gamma) over the consistency sampler's times, then to sigma_min.
    denoising: the deterministic EDM sampler with exactly nfe evaluations (edm_steps_for_nfe).
    Image k depends only on seeds[k] (initial noise and re-noising both drawn per image).
    """
    device = torch.device(device)
    was_training = net.training
    net.eval()
    out = []
    try:
        for start in range(0, len(seeds), batch_size):
            batch_seeds = list(seeds[start:start + batch_size])
            rnd = StackedRandomGenerator(device, batch_seeds)
            noise = rnd.randn((len(batch_seeds), *shape))
            if cfg.objective in ("consistency", "distillation"):  # a distilled student is a consistency model
                x = sample_consistency(net, noise, multistep_sigmas(cfg, nfe), cfg.schedule.sigma_min, rnd)
            elif cfg.objective == "trajectory":  # CTM: gamma-sampling over the same times
                x = sample_trajectory(net, noise, multistep_sigmas(cfg, nfe), cfg.sample.gamma, cfg.schedule.sigma_min, rnd)
            elif cfg.objective == "denoising":
                steps, heun_last = edm_steps_for_nfe(nfe)
                x = edm_sampler(net, noise, steps, cfg, heun_last=heun_last)
            else:
                raise ValueError(f"objective = {cfg.objective!r}; choose consistency, distillation, trajectory or denoising")
            out.append(x.cpu())
    finally:
        net.train(was_training)
    return torch.cat(out) if out else torch.empty((0, *shape))
