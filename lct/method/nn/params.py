"""`lct unet-params`: trainable (and total) parameter counts of a UNet size for each norm layer.

Kept out of `lct.method.nn.unet` so the network module holds only the network. The paper size on
32x32x4 gives the counts measured from the authors' code (docs/METHOD.md section 4): 151,325,956
trainable with GroupNorm, 165,468,676 with LayerNorm, 158,355,972 with RMSNorm and with NsLN.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from torch import nn

from lct.method.nn.norms import NORMS, norm_scale_parameters
from lct.method.nn.unet import UNET_SIZES, build_unet


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def main(argv: list[str] | None = None) -> int:
    """Print the parameter count of a UNet size for each norm."""
    from lct.config import NetworkConfig

    ap = argparse.ArgumentParser(prog="lct unet-params", description=main.__doc__)
    ap.add_argument("--size", default="paper", choices=sorted(UNET_SIZES), help="UNet size (default: paper)")
    ap.add_argument("--resolution", type=int, default=32, help="latent resolution (default 32 = 256px / 8)")
    ap.add_argument("--channels", type=int, default=4, help="input channels (default 4, SD-VAE latents)")
    args = ap.parse_args(argv)
    print(f"UNet size {args.size!r} on {args.channels}x{args.resolution}x{args.resolution}")
    print(f"{'norm':10s} {'trainable':>14s} {'norm scale params':>18s}")
    with torch.device("meta"):  # shapes only: no memory, no init cost
        for norm in NORMS:
            net = build_unet(dataclasses.replace(NetworkConfig(size=args.size), norm=norm), args.resolution, args.channels)
            print(f"{norm:10s} {count_parameters(net):>14,d} {norm_scale_parameters(net):>18,d}")
    return 0
