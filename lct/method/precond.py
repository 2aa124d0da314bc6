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


def _unet(unet: nn.Module, dtype: torch.dtype | None, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
    """F(x, c_noise), under bf16 autocast when `dtype` is set, returned in x's dtype (float32) so the
    preconditioning and every loss stay in float32 (a Cauchy c of 2e-4 is below bf16's resolution)."""
    if dtype is None:
        return unet(x, c_noise)
    with torch.autocast(x.device.type, dtype=dtype):
        return unet(x, c_noise).to(x.dtype)


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


# A distilled student is a consistency model (eq. 2) like a consistency-trained one.
MODELS = {"consistency": ConsistencyModel, "denoising": EDMDenoiser, "distillation": ConsistencyModel}


def build_model(cfg: "ExperimentConfig", img_resolution: int, in_channels: int) -> nn.Module:
    """The preconditioned network for cfg.objective around a UNet built from cfg.network."""
    if cfg.objective not in MODELS:
        raise ValueError(f"objective = {cfg.objective!r}; choose one of {sorted(MODELS)}")
    return MODELS[cfg.objective](build_unet(cfg.network, img_resolution, in_channels), cfg)
