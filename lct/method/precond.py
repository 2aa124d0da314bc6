"""Preconditioned networks: the consistency function f_theta (eq. 2) and the EDM denoiser.

Both wrap a raw UNet F(x, c_noise) and expose forward(x [B, C, H, W], sigma [B]) -> x0_hat.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from lct.method import schedules as S
from lct.method.nn.unet import build_unet

if TYPE_CHECKING:
    from lct.config import ExperimentConfig


def _unet(unet: nn.Module, dtype: torch.dtype | None, x: torch.Tensor, c_noise: torch.Tensor,
          c_noise_s: torch.Tensor | None = None) -> torch.Tensor:
    """F(x, c_noise) (or F(x, c_noise, c_noise_s), CTM), under bf16 autocast when `dtype` is set, returned in x's
    dtype (float32) so the preconditioning and every loss stay in float32 (a Cauchy c of 2e-4 is below bf16's
    resolution)."""
    args = (x, c_noise) if c_noise_s is None else (x, c_noise, c_noise_s)
    if dtype is None:
        return unet(*args)
    with torch.autocast(x.device.type, dtype=dtype):
        return unet(*args).to(x.dtype)


def _bcast(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """sigma as float32-or-x.dtype [B, 1, 1, 1]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, 1, 1, 1)


class ConsistencyModel(nn.Module):
    """f_theta(x, t) = c_skip(t) x + c_out(t) F_theta(c_in(t) x, c_noise(t))   (eq. 2)."""

    def __init__(self, unet: nn.Module, cfg: "ExperimentConfig"):
        super().__init__()
        self.unet = unet
        self.sigma_data = cfg.schedule.sigma_data
        self.sigma_min = cfg.schedule.sigma_min
        self.noise_conditioning = cfg.network.noise_conditioning
        self.autocast_dtype: torch.dtype | None = None  # set by the training loop (train.precision)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        t = _bcast(sigma, x)  # [B, 1, 1, 1]
        f = _unet(self.unet, self.autocast_dtype, S.c_in(t, self.sigma_data) * x,
                  S.c_noise(t.flatten(), self.noise_conditioning))
        # f_theta = c_skip x + c_out F   (eq. 2); exactly x at t = sigma_min (boundary condition)
        return S.c_skip(t, self.sigma_data, self.sigma_min) * x + S.c_out(t, self.sigma_data, self.sigma_min) * f


class EDMDenoiser(nn.Module):
    """EDM preconditioning (Karras et al. 2022, Table 1): D(x, s) = c_skip x + c_out F(c_in x, c_noise)."""

    def __init__(self, unet: nn.Module, cfg: "ExperimentConfig"):
        super().__init__()
        self.unet = unet
        self.sigma_data = cfg.schedule.sigma_data
        self.noise_conditioning = cfg.network.noise_conditioning
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        s = _bcast(sigma, x)
        sd = self.sigma_data
        c_skip = sd**2 / (s**2 + sd**2)  # EDM c_skip (sigma_min = 0)
        c_out = s * sd / (s**2 + sd**2).sqrt()
        f = _unet(self.unet, self.autocast_dtype, S.c_in(s, sd) * x, S.c_noise(s.flatten(), self.noise_conditioning))
        return c_skip * x + c_out * f


class TrajectoryModel(ConsistencyModel):
    """CTM's trajectory function (Kim et al. 2024, sec. 3): G(x_t, t, s) = (s/t) x_t + (1 - s/t) g(x_t, t, s) for
    s <= t, with g = c_skip(t) x + c_out(t) F(c_in(t) x, c_noise(t), c_noise(s)) in EDM's scalings (sigma_min 0),
    so G(x, t, t) = x, G(x, t, sigma_min) is the consistency function and g(x, t, t) a denoiser E[x0 | x_t].
    Time 0 is sigma_min (the network embeds ln s), as for the consistency models here and in CTM's code. Its
    attributes are ConsistencyModel's; only the function differs."""

    def g(self, x: torch.Tensor, t: torch.Tensor | float, s: torch.Tensor | float) -> torch.Tensor:
        """g(x_t, t, s): the network's data estimate for the jump t -> s."""
        t, s = _bcast(t, x), _bcast(s, x)
        sd, nc = self.sigma_data, self.noise_conditioning
        c_skip = sd**2 / (t**2 + sd**2)  # EDM c_skip, c_out (sigma_min = 0)
        c_out = t * sd / (t**2 + sd**2).sqrt()
        f = _unet(self.unet, self.autocast_dtype, S.c_in(t, sd) * x, S.c_noise(t.flatten(), nc), S.c_noise(s.flatten(), nc))
        return c_skip * x + c_out * f

    def denoise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """g(x_t, t, t), the denoiser D(x_t, t) that DSM trains (CTM sec. 4)."""
        return self.g(x, t, t)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, s: torch.Tensor | float | None = None) -> torch.Tensor:
        """G(x, sigma, s); s None (or below sigma_min) = sigma_min: the consistency function f(x, sigma)."""
        t = _bcast(sigma, x)
        s = _bcast(self.sigma_min if s is None else s, x).clamp(min=self.sigma_min)
        return s / t * x + (1 - s / t) * self.g(x, t, s)  # G = (s/t) x + (1 - s/t) g   (CTM sec. 3)


# A distilled student is a consistency model (eq. 2) like a consistency-trained one.
MODELS = {"consistency": ConsistencyModel, "denoising": EDMDenoiser, "distillation": ConsistencyModel,
          "trajectory": TrajectoryModel}


def build_model(cfg: "ExperimentConfig", img_resolution: int, in_channels: int) -> nn.Module:
    """The preconditioned network for cfg.objective around a UNet built from cfg.network."""
    if cfg.objective not in MODELS:
        raise ValueError(f"objective = {cfg.objective!r}; choose one of {sorted(MODELS)}")
    return MODELS[cfg.objective](build_unet(cfg.network, img_resolution, in_channels), cfg)
