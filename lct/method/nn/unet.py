"""ADM UNet (Dhariwal & Nichol 2021) in the layout of EDM's DhariwalUNet, with a norm factory.

Written from the layout description (no code copied): a sinusoidal noise embedding mapped by a
two-layer MLP to 4 x model_channels; an encoder of `num_blocks` residual blocks per resolution
with a residual downsampling block between resolutions; a middle of two residual blocks (the
first with attention); a decoder of `num_blocks + 1` residual blocks per resolution fed by the
encoder skips, with residual upsampling blocks; then norm, SiLU, 3x3 conv. Residual blocks use
adaptive scale/shift from the embedding; the last conv of each block, the attention projection
and the output conv start at zero. As in EDM's DhariwalUNet (`resample_proj=False`), up/down
blocks resample their skip path without a 1x1 convolution: the paper size on 32x32x4 then has
151,325,956 trainable parameters with GroupNorm (tests/test_unet.py pins every norm). Every norm (network.norm) is built by `lct.method.nn.norms.make_norm`
with the activation's resolution, which LayerNorm-type norms need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lct.method.nn.norms import make_norm

if TYPE_CHECKING:
    from lct.config import NetworkConfig

UNET_SIZES: dict[str, dict[str, Any]] = {
    # The paper / authors' code (docs/METHOD.md section 4): ~151M parameters with GroupNorm on 32x32x4.
    "paper": dict(model_channels=128, channel_mult=[1, 2, 3, 4], num_blocks=4, attn_resolutions=[16, 8], channels_per_head=64),
    # A GPU-friendly mid size for quick experiments.
    "small": dict(model_channels=64, channel_mult=[1, 2, 2], num_blocks=2, attn_resolutions=[8], channels_per_head=64),
    # CPU demo and tests: a few hundred steps per minute at batch 32 on 8x8x4 or 32x32x1 (one core).
    # No attn_resolutions: attention only in the middle block, at the lowest resolution.
    "tiny": dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[], channels_per_head=32),
}


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


class NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of c_noise [B] -> [B, channels] (cos, sin; max period 10000)."""

    def __init__(self, channels: int, max_period: float = 10000.0):
        super().__init__()
        half = channels // 2
        self.register_buffer("freqs", max_period ** (-torch.arange(half, dtype=torch.float32) / half), persistent=False)

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = c_noise.float()[:, None] * self.freqs[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class ResBlock(nn.Module):
    """Residual block: norm-SiLU-conv, adaptive scale/shift, norm, SiLU, dropout, conv; optional up/down and attention."""

    def __init__(self, cin: int, cout: int, emb: int, res_in: int, res_out: int, norm: str, *,
                 up: bool = False, down: bool = False, attention: bool = False, channels_per_head: int = 64,
                 dropout: float = 0.0):
        super().__init__()
        self.up, self.down = up, down
        self.norm0 = make_norm(norm, cin, res_in)
        self.conv0 = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(emb, 2 * cout)
        self.norm1 = make_norm(norm, cout, res_out)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        # EDM's resample_proj=False (the authors' run): an up/down block resamples its skip path with
        # no 1x1 convolution; only a change of channel count gets one.
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.num_heads = max(cout // channels_per_head, 1) if attention else 0
        if attention:
            self.norm2 = make_norm(norm, cout, res_out)
            self.qkv = nn.Conv2d(cout, 3 * cout, 1)
            self.proj = _zero(nn.Conv2d(cout, cout, 1))

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2, mode="nearest")  # resample filter [1, 1]
        if self.down:
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # [B,Cin,r,r], [B,E] -> [B,Cout,r',r']
        orig = x
        x = self.conv0(self._resample(F.silu(self.norm0(x))))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        x = self.conv1(self.dropout(x))
        skip = self._resample(orig)
        x = x + (self.skip(skip) if self.skip is not None else skip)
        if self.num_heads:
            b, c, h, w = x.shape
            q, k, v = self.qkv(self.norm2(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
            a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
            x = x + self.proj(a.transpose(-1, -2).reshape(b, c, h, w))
        return x


class UNet(nn.Module):
    """ADM UNet: forward(x [B, C, H, W], c_noise [B]) -> [B, C, H, W]."""

    def __init__(self, img_resolution: int, in_channels: int, model_channels: int, channel_mult: list[int],
                 num_blocks: int, attn_resolutions: list[int], channels_per_head: int, dropout: float = 0.0,
                 norm: str = "group", s_conditioning: bool = False):
        super().__init__()
        emb = 4 * model_channels  # embedding width (paper: 512)
        kw = dict(norm=norm, channels_per_head=channels_per_head, dropout=dropout)
        self.map_noise = NoiseEmbedding(model_channels)
        self.map_layer0 = nn.Linear(model_channels, emb)
        self.map_layer1 = nn.Linear(emb, emb)
        # CTM's second time (the jump's end s; network.s_conditioning): its own two-layer MLP on the same
        # sinusoidal embedding, added to the noise embedding through a zero-initialised last layer, so the
        # network starts as the s-blind one (a student initialised from a denoiser is that denoiser for every s).
        # Off (every existing network): no extra module, the same parameters and outputs.
        self.map_s_layer0 = nn.Linear(model_channels, emb) if s_conditioning else None
        self.map_s_layer1 = _zero(nn.Linear(emb, emb)) if s_conditioning else None

        self.enc = nn.ModuleList()
        skips: list[int] = []
        cout = model_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cout = model_channels * mult
                self.enc.append(nn.Conv2d(in_channels, cout, 3, padding=1))
            else:
                self.enc.append(ResBlock(cout, cout, emb, res * 2, res, down=True, **kw))
            skips.append(cout)
            for _ in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc.append(ResBlock(cin, cout, emb, res, res, attention=res in attn_resolutions, **kw))
                skips.append(cout)

        self.dec = nn.ModuleList()
        takes_skip: list[bool] = []  # decoder block j concatenates the newest encoder activation first
        for level in reversed(range(len(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec.append(ResBlock(cout, cout, emb, res, res, attention=True, **kw))
                self.dec.append(ResBlock(cout, cout, emb, res, res, **kw))
                takes_skip += [False, False]
            else:
                self.dec.append(ResBlock(cout, cout, emb, res // 2, res, up=True, **kw))
                takes_skip.append(False)
            for _ in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * channel_mult[level]
                self.dec.append(ResBlock(cin, cout, emb, res, res, attention=res in attn_resolutions, **kw))
                takes_skip.append(True)
        self.dec_takes_skip = tuple(takes_skip)
        self.out_norm = make_norm(norm, cout, img_resolution)
        self.out_conv = _zero(nn.Conv2d(cout, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, c_noise_s: torch.Tensor | None = None) -> torch.Tensor:
        emb = F.silu(self.map_layer0(self.map_noise(c_noise)))
        emb = F.silu(self.map_layer1(emb))  # [B, 4 model_channels]
        if self.map_s_layer0 is not None:
            if c_noise_s is None:
                raise ValueError("this UNet has network.s_conditioning: give c_noise_s (the jump's end time)")
            emb = emb + self.map_s_layer1(F.silu(self.map_s_layer0(self.map_noise(c_noise_s))))
        elif c_noise_s is not None:
            raise ValueError("c_noise_s given to a UNet without network.s_conditioning")
        emb = emb.to(x.dtype)
        hs = []
        for block in self.enc:
            x = block(x) if isinstance(block, nn.Conv2d) else block(x, emb)
            hs.append(x)
        for block, takes_skip in zip(self.dec, self.dec_takes_skip):
            if takes_skip:
                x = torch.cat([x, hs.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


def unet_kwargs(net_cfg: "NetworkConfig") -> dict[str, Any]:
    """The named size (network.size) with the non-None fields of `net_cfg` overriding it."""
    if net_cfg.size not in UNET_SIZES:
        raise ValueError(f"network.size = {net_cfg.size!r}; choose one of {sorted(UNET_SIZES)}")
    kw = dict(UNET_SIZES[net_cfg.size])
    for key in ("model_channels", "channel_mult", "num_blocks", "attn_resolutions", "channels_per_head"):
        if getattr(net_cfg, key) is not None:
            kw[key] = getattr(net_cfg, key)
    kw.update(dropout=net_cfg.dropout, norm=net_cfg.norm, s_conditioning=net_cfg.s_conditioning)
    return kw


def build_unet(net_cfg: "NetworkConfig", img_resolution: int, in_channels: int) -> UNet:
    """The UNet for `net_cfg` on [B, in_channels, img_resolution, img_resolution] inputs."""
    kw = unet_kwargs(net_cfg)
    if img_resolution % (2 ** (len(kw["channel_mult"]) - 1)):
        raise ValueError(
            f"image resolution {img_resolution} is not divisible by 2^{len(kw['channel_mult']) - 1}; "
            "shorten network.channel_mult"
        )
    return UNet(img_resolution, in_channels, **kw)
