"""Test-only: every pretrained file of the paper path, with random weights, in fetch-weights' layout.

`lct random-weights-for-tests --out DIR [--vae REPO --inception --vgg16 --elatentlpips]` writes, for each real architecture the
paper configuration runs, a file of the same format and architecture as the real download but with
random weights, so that the whole paper path (shapes, dtypes, file formats, hand-offs) can run
offline. MANIFEST.json marks each such file ``"random": true``; `lct.weights.fetch.require` refuses them
unless the environment sets ``LCT_ALLOW_RANDOM_WEIGHTS=1`` (only tests/test_paper_smoke.py does, for
the smoke configuration), so a real run can never score or train with them. Numbers computed with these files mean nothing.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

# The diffusers config of stabilityai/sd-vae-ft-ema (an AutoencoderKL; 83.7M parameters).
SD_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def write_sd_vae(folder: Path, seed: int = 0) -> list[Path]:
    """config.json + diffusion_pytorch_model.safetensors of a randomly initialised SD-VAE."""
    from lct.infra.compat import ensure_torchvision

    ensure_torchvision()
    from diffusers import AutoencoderKL

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(SD_VAE_CONFIG)
    vae.save_pretrained(str(folder), safe_serialization=True)
    return [folder / "config.json", folder / "diffusion_pytorch_model.safetensors"]


def write_inception_legacy(path: Path, seed: int = 0) -> list[Path]:
    """pytorch-fid's FID Inception state dict (clean-fid `legacy_pytorch`), random weights."""
    from lct.infra.compat import ensure_torchvision

    ensure_torchvision()
    from cleanfid import inception_pytorch

    torch.manual_seed(seed)
    net = _fid_inception_without_weights(inception_pytorch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return [path]


def _fid_inception_without_weights(inception_pytorch) -> torch.nn.Module:
    """clean-fid's own `fid_inception_v3` (the architecture), without its download and weight load."""
    original = (inception_pytorch.load_state_dict_from_url, torch.nn.Module.load_state_dict)
    inception_pytorch.load_state_dict_from_url = lambda *a, **k: None
    torch.nn.Module.load_state_dict = lambda self, *a, **k: None
    try:
        return inception_pytorch.fid_inception_v3()
    finally:
        inception_pytorch.load_state_dict_from_url, torch.nn.Module.load_state_dict = original


class _NvidiaVGG16Interface(torch.nn.Module):
    """The calling convention of NVIDIA's metric VGG16 (`vgg16.pt`): uint8-range NCHW images of any
    size in, resized to 224 and ImageNet-normalised inside, fc2 features (4096-d) out."""

    def __init__(self):
        super().__init__()
        from lct.infra.compat import ensure_torchvision

        tv = ensure_torchvision()
        vgg = tv.models.vgg16(weights=None)
        self.features = vgg.features
        self.avgpool = vgg.avgpool
        self.fc = vgg.classifier[:5]  # fc1, ReLU, Dropout (eval: identity), fc2, ReLU
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = torch.nn.functional.interpolate(img.float(), size=(224, 224), mode="area")
        x = (x / 255.0 - self.mean) / self.std
        return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))


def write_vgg16_nvidia(path: Path, seed: int = 0) -> list[Path]:
    """A TorchScript file with the interface of NVIDIA's `vgg16.pt` and random VGG16 weights."""
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(_NvidiaVGG16Interface().eval()).save(str(path))
    return [path]


def write_elatentlpips(ckpt_dir: Path, seed: int = 0) -> list[Path]:
    """The two files elatentlpips reads from ./ckpt (sd15): the latent VGG16-BN trunk and the full
    calibrated module, with random weights, in the package's own formats."""
    from lct.infra.compat import import_elatentlpips
    from lct.weights.fetch import ELATENTLPIPS_FILES

    elatentlpips = import_elatentlpips()
    from elatentlpips.vgg16 import LatentVGG16BN

    torch.manual_seed(seed)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    trunk_file, heads_file = (ckpt_dir / f for f in ELATENTLPIPS_FILES)
    torch.save({"state_dict": LatentVGG16BN(4).state_dict(), "best_acc1": 0.0}, trunk_file)
    with contextlib.chdir(ckpt_dir.parent):  # pretrained=False: trunk from ./ckpt, heads left random
        model = elatentlpips.ELatentLPIPS(pretrained=False, encoder="sd15", augment=None, verbose=False)
    torch.save(model.state_dict(), heads_file)
    return [trunk_file, heads_file]


def write_all(resources: Path, vae_repo: str | None, inception: bool, vgg16: bool, elatentlpips: bool) -> list[Path]:
    """Every requested asset with random weights, recorded in MANIFEST.json as random."""
    from lct.weights.fetch import ASSETS, record

    resources.mkdir(parents=True, exist_ok=True)
    written = []

    def rec(name: str, files: list[Path]) -> None:
        record(resources, name, [str(f.relative_to(resources)) for f in files], "random weights (tests only)",
               random=True)
        written.extend(files)

    if vae_repo:
        folder = vae_repo.split("/")[-1]
        rec(folder, write_sd_vae(resources / folder))
    if inception:
        rec("inception_legacy", write_inception_legacy(resources / ASSETS["inception_legacy"]["path"]))
    if vgg16:
        rec("vgg16_nvidia", write_vgg16_nvidia(resources / ASSETS["vgg16_nvidia"]["path"]))
    if elatentlpips:
        files = write_elatentlpips((resources / ASSETS["elatentlpips_head"]["path"]).parent)
        rec("elatentlpips_vgg", files[:1])
        rec("elatentlpips_head", files[1:])
    (resources / "RANDOM_WEIGHTS_FOR_TESTS").write_text(json.dumps([str(p) for p in written], indent=1))
    return written


def main(argv: list[str] | None = None) -> int:
    """`lct random-weights-for-tests`: what `lct fetch-weights` would download, with random weights (tests only;
    the workflow runs it for configs with random_weights_for_tests: true). Flags of fetch-weights that fetch
    nothing here (--fid-reference, --vgg16-torchvision, --repin) are accepted and ignored."""
    import argparse

    ap = argparse.ArgumentParser(prog="lct random-weights-for-tests", description=main.__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="resources folder (the layout of lct fetch-weights)")
    ap.add_argument("--vae", default=None, help="Hugging Face repo id of the VAE (its folder name is used)")
    ap.add_argument("--inception", action="store_true")
    ap.add_argument("--vgg16", action="store_true")
    ap.add_argument("--elatentlpips", action="store_true")
    a, ignored = ap.parse_known_args(argv)
    files = write_all(Path(a.out), a.vae, a.inception, a.vgg16, a.elatentlpips)
    print(f"random-weights-for-tests: {len(files)} files with RANDOM weights (tests only) under {a.out}"
          + (f"; ignored {ignored}" if ignored else ""))
    return 0
