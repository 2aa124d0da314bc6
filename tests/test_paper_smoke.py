"""The paper path end to end on a CPU before anyone spends a GPU-hour (issue: "the paper path runs").

config/config.yaml with the overlay tests/configs/paper-smoke.yaml: every real architecture (SD-VAE
at 256x256, the paper-size UNet, pytorch-fid's Inception, NVIDIA's metric-VGG16 interface,
E-LatentLPIPS) with random weights from the test-only fetch mode, eight real photographs from
skimage.data, two training steps per run, four samples per cell; Table 1a and Figure 1.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "camera", "moon"]

pytestmark = [pytest.mark.slow, pytest.mark.workflow]


def _photos(folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    for i, name in enumerate(PHOTOS):  # all at least 256 on the short side; prepare-data crops and resizes
        Image.fromarray(getattr(data, name)()).convert("RGB").save(folder / f"{i:02d}_{name}.png")
    return folder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoke")
    photos = _photos(tmp / "photos")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["published"] = str(ROOT / cfg["published"])
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    overlay = (ROOT / "tests/configs/paper-smoke.yaml").read_text()
    (tmp / "smoke.yaml").write_text(overlay.replace("PHOTOS_256", str(photos)).replace("PHOTOS_32", str(photos)))
    env = dict(os.environ, OMP_NUM_THREADS="2", LCT_ALLOW_RANDOM_WEIGHTS="1")  # the explicit opt-in
    log = tmp / "snakemake.log"
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow/Snakefile"),
                            "--directory", str(tmp), "--profile", str(ROOT / "profiles/local"), "--cores", "2",
                            "--configfile", str(tmp / "config.yaml"), str(tmp / "smoke.yaml"), "--", "table1a", "fig1"],
                           cwd=tmp, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=1200)
    assert r.returncode == 0, log.read_text()[-5000:]
    return tmp, tmp / "results/paper-smoke"


def test_table1a_and_figure1_from_the_real_architectures(smoke):
    tmp, out = smoke
    rows = list(csv.DictReader(open(out / "tables/table1a.csv")))
    ours = [r for r in rows if r["status"] not in ("literature",)]
    assert {(r["model"], r["nfe"].split()[0]) for r in ours if r["status"] == "computed"} == {
        ("iLCT", "1"), ("Ours (sLCT)", "2"), ("LDM-8 (VE; same arch)", "4")}
    assert "RANDOM WEIGHTS" in (out / "tables/table1a.md").read_text().splitlines()[0]
    for path in (out / "figures/fig1.png", out / "figures/fig1.pdf"):
        assert path.stat().st_size > 1000
    for exp, nfe in [("celebahq_ldm", 4), ("celebahq_ilct", 1), ("celebahq_slct", 2)]:
        ev = json.loads((out / f"eval/{exp}/nfe{nfe}.json").read_text())
        assert math.isfinite(ev["fid"]["legacy_pytorch"]) and ev["fid"]["legacy_pytorch"] >= 0
        assert 0 <= ev["recall"] <= 1 and ev["recall_feature"] == "vgg16_nvidia" and ev["image_format"] == "jpeg"
        assert ev["recall_real_count"] == len(PHOTOS)  # every real image (pr50k3_full: up to 200K)


def test_shapes_formats_and_the_authors_run(smoke):
    tmp, out = smoke
    # SD-VAE latents of 256x256 photographs: 4x32x32, standardized as the authors' code does
    lat = np.load(out / "data/celebahq256/latents/latents.npy", mmap_mode="r")
    assert lat.shape == (len(PHOTOS), 4, 32, 32)
    assert np.load(out / "data/cifar10/images.npy", mmap_mode="r").shape == (len(PHOTOS), 32, 32, 3)
    # the runs are the paper-size networks, resolved under the authors' reading
    slct = yaml.safe_load((out / "configs/celebahq_slct.yaml").read_text())
    assert (slct["loss"]["reduction"], slct["loss"]["c"], slct["loss"]["diffusion_variant"],
            slct["loss"]["diffusion_weight"], slct["network"]["norm"]) == ("mean", "as_coded", "as_coded", 5.0, "nsln")
    from lct.run.model import load_checkpoint_model

    for exp, params in [("celebahq_slct", 158_355_972), ("celebahq_ilct", 151_325_956), ("celebahq_ldm", 151_325_956)]:
        model, cfg, info = load_checkpoint_model(out / f"runs/{exp}/final.pt", "online", "cpu")
        assert sum(p.numel() for p in model.parameters()) == params and info["step"] == 2, exp
    # the authors' data: seeded posterior samples, and the training split (6 of the 8 photographs here)
    meta = json.loads((out / "data/celebahq256/latents/latents.json").read_text())
    assert meta["posterior"] == "sample" and meta["posterior_seed"] == 0
    assert slct["train"]["num_images"] == 6
    assert "first 6 of 8" in json.dumps(info["data"]) or info["data"]["shape"][0] == 6
    td = json.loads((out / "stats/td_celebahq_ilct.json").read_text())
    assert td["num_timesteps"] == 5 and td["kind"] == "latents"  # the overlay's count (the paper: 21)


def test_random_weights_are_refused_outside_the_smoke_configuration(smoke, monkeypatch):
    from lct.weights.fetch import MissingResource
    from lct.evaluation.metrics import build_feature
    from lct.data.vae import load_vae

    tmp, out = smoke
    res = out / "resources"
    manifest = json.loads((res / "MANIFEST.json").read_text())
    assert manifest["files"] and all(v.get("random") for v in manifest["files"].values())
    monkeypatch.delenv("LCT_ALLOW_RANDOM_WEIGHTS", raising=False)
    with pytest.raises(MissingResource, match="RANDOM"):
        load_vae(res / "sd-vae-ft-ema")
    with pytest.raises(MissingResource, match="RANDOM"):
        build_feature("inception_legacy", res, torch.device("cpu"))
