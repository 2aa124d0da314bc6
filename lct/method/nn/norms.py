"""Normalization layers for the UNet and the factory `make_norm` (Table 2d).

- group: GroupNorm with 32 groups (ADM). For channels not divisible by 32 (tiny UNets) the group
  count is the largest divisor of `channels` that is <= min(32, channels // 4), so each group
  keeps at least 4 channels where possible.
- instance: InstanceNorm (one group per channel) with a per-channel affine.
- layer: LayerNorm over (C, H, W) jointly with a per-element affine [C, H, W].
- rms: RMSNorm over (C, H, W) with a per-element scale [C, H, W] (no centering, no bias), eps the
  dtype's machine epsilon (torch.nn.RMSNorm's default, as the authors build it).
- nsln: Non-scaling LayerNorm (eq. 12): LN over (C, H, W) with gamma fixed to 1 -- there is no
  scale parameter at all -- and a learned per-element bias [C, H, W] (authors' code, eps 1e-5).
- nsgn, nsin: the non-scaling GroupNorm / InstanceNorm the paper's conclusion proposes: the
  same normalization as group / instance with only a learned per-channel bias.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def num_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    """32 groups when possible; otherwise the largest divisor of channels <= channels // 4."""
    g = max(1, min(max_groups, channels // min_channels_per_group))
    while channels % g:
        g -= 1
    return g


class NonScalingLayerNorm(nn.Module):
    """x -> (x - mean) / sqrt(var + eps) + beta over (C, H, W); gamma = 1, not a parameter (eq. 12)."""

    def __init__(self, channels: int, resolution: int, eps: float = EPS):
        super().__init__()
        self.shape = (channels, resolution, resolution)
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(self.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, H, W]
        # y = (x - E[x]) / sqrt(Var[x] + eps) * 1 + beta   (eq. 12, gamma fixed to 1)
        # Bias added outside layer_norm so its dtype follows x under bf16 autocast on CPU.
        return F.layer_norm(x, self.shape, None, None, self.eps) + self.bias.to(x.dtype)  # eq. 12, gamma = 1


class NonScalingGroupNorm(nn.Module):
    """GroupNorm with no scale and a learned per-channel bias (instance norm when groups = C)."""

    def __init__(self, channels: int, groups: int, eps: float = EPS):
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, H, W]
        return F.group_norm(x, self.groups, None, None, self.eps) + self.bias.to(x.dtype).view(1, -1, 1, 1)


def _group(c: int, r: int) -> nn.Module:
    return nn.GroupNorm(num_groups(c), c, eps=EPS)


def _instance(c: int, r: int) -> nn.Module:
    return nn.GroupNorm(c, c, eps=EPS)  # GroupNorm with one channel per group = InstanceNorm + affine


def _layer(c: int, r: int) -> nn.Module:
    return nn.LayerNorm([c, r, r], eps=EPS)


def _rms(c: int, r: int) -> nn.Module:
    # eps=None: the input dtype's machine epsilon, as the authors' torch.nn.RMSNorm(...) without eps (Table 2d)
    return nn.RMSNorm([c, r, r], eps=None)


def _nsln(c: int, r: int) -> nn.Module:
    return NonScalingLayerNorm(c, r)


def _nsgn(c: int, r: int) -> nn.Module:
    return NonScalingGroupNorm(c, num_groups(c))


def _nsin(c: int, r: int) -> nn.Module:
    return NonScalingGroupNorm(c, c)


NORMS: dict[str, Callable[[int, int], nn.Module]] = {
    "group": _group,
    "instance": _instance,
    "layer": _layer,
    "rms": _rms,
    "nsln": _nsln,
    "nsgn": _nsgn,
    "nsin": _nsin,
}


def make_norm(name: str, channels: int, resolution: int) -> nn.Module:
    """Norm layer `name` (network.norm) for a [B, channels, resolution, resolution] activation."""
    if name not in NORMS:
        raise ValueError(f"network.norm = {name!r}; choose one of {sorted(NORMS)}")
    return NORMS[name](channels, resolution)


def norm_scale_parameters(module: nn.Module) -> int:
    """Number of trainable norm *scale* (gamma) parameters inside `module`."""
    total = 0
    for m in module.modules():
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
            total += m.weight.numel() if m.weight.requires_grad else 0
    return total
