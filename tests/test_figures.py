"""Each figure writes PNG + PDF from small inputs; curve values against closed forms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lct.report import figures

from lct.report import tables as report


def _written(paths, stem):
    assert [p.name for p in paths] == [f"{stem}.png", f"{stem}.pdf"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)


def test_robust_curves_match_closed_form_derivatives():
    r = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    c = 0.7
    cur = figures.robust_curves(r, c)
    d, g = cur["cauchy"]
    np.testing.assert_allclose(d, np.log1p(r**2 / (2 * c * c)))
    np.testing.assert_allclose(g, 2 * r / (2 * c * c + r**2))
    np.testing.assert_allclose(cur["pseudo_huber"][1], r / np.sqrt(r**2 + c * c))
    np.testing.assert_allclose(cur["geman_mcclure"][1], 16 * r * c * c / (r**2 + 4 * c * c) ** 2)


def test_figure2(tmp_path):
    _written(figures.figure2(tmp_path / "fig2"), "fig2")


def test_figure1_from_lct_stats_json(tmp_path):
    from lct.run.stats import box_stats

    rng = np.random.default_rng(0)
    data = {"latent": box_stats(rng.standard_t(2, 4000)), "pixel": box_stats(rng.uniform(-1, 1, 4000)), "max_values": None}
    td = {"td": box_stats(rng.normal(size=3000)), "per_pair": [{"i": 0, **box_stats(rng.normal(size=10), plot_samples=0)}]}
    for name, obj in (("data.json", data), ("tdl.json", td), ("tdp.json", td)):
        (tmp_path / name).write_text(json.dumps(obj))
    paths = figures.figure1(tmp_path / "data.json", tmp_path / "tdl.json", tmp_path / "tdp.json", tmp_path / "f" / "fig1")
    _written(paths, "fig1")
    assert [lbl for lbl, _ in figures._find_box_stats(td)] == ["td"]  # per-pair boxes are not plotted
    entry = figures._bxp_entry("latent", data["latent"])
    assert entry["whislo"] == data["latent"]["whisker_low"] and len(entry["fliers"]) > 0
    assert np.all((entry["fliers"] < data["latent"]["inner_fence_low"]) | (entry["fliers"] > data["latent"]["inner_fence_high"]))
    with pytest.raises(ValueError, match="lct stats data"):
        figures.figure1({"nothing": 1}, None, None, tmp_path / "bad")


def test_c_curves_and_figure3(tmp_path):
    cur = figures.c_curves([11, 641], d=4096, s0=10)
    assert cur["fixed c0"][0] == pytest.approx(0.00054 * 64)
    assert cur["adaptive c (eq. 11)"][1] == pytest.approx(np.exp(-1.18 * np.log(640) - 0.72))
    assert cur["as-coded c"][0] == pytest.approx(0.00054 * 64)  # first stage: c0
    ev = tmp_path / "eval"
    for exp, base in (("e_adapt", 10.0), ("e_fixed", 14.0)):
        for step in (80, 160, 240):
            p = ev / exp / "snapshots" / f"ema-{step:08d}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"fid": {"frechet_digit": base - step / 100}, "recall": step / 400,
                                     "metric_name": "FD-digit"}))
    rows = figures.snapshot_evals(ev, "e_adapt")
    assert [r["step"] for r in rows] == [80, 160, 240]
    paths = figures.figure3({"adaptive c (eq. 11)": "e_adapt", "fixed c0": "e_fixed", "as-coded c": "e_none"}, ev,
                            tmp_path / "fig3", d=256, s0=2, s1=16)
    _written(paths, "fig3")


def test_tile_and_save_grid(tmp_path):
    imgs = np.arange(4 * 2 * 3 * 1, dtype=np.uint8).reshape(4, 2, 3, 1)
    t = figures.tile(imgs, 2)
    assert t.shape == (4, 6, 1)
    assert np.array_equal(t[:2, 3:], imgs[1]) and np.array_equal(t[2:, :3], imgs[2])
    with pytest.raises(ValueError, match="grid"):
        figures.tile(imgs, 3)
    rgb = np.random.default_rng(0).integers(0, 255, (16, 8, 8, 3), dtype=np.uint8)
    paths = figures.save_grid(rgb, 4, tmp_path / "g")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(paths[0])), figures.tile(rgb, 4))


def test_samples_cli_and_report_page(tmp_path):
    from test_evaluate import tiny_checkpoint  # noqa: E402 (tests dir is on sys.path under pytest)

    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    np.save(data / "images.npy", np.zeros((8, 28, 28, 1), np.uint8))
    ckpt = tiny_checkpoint(tmp_path / "runs" / "e" / "final.pt")
    res = tmp_path / "results"
    out = res / "figures" / "samples_e_nfe1"
    assert report.main(["samples", "--checkpoint", str(ckpt), "--data", str(data), "--nfe", "1", "--grid", "3",
                        "--ema", "0.99", "--device", "cpu", "--out", str(out)]) == 0
    from PIL import Image

    assert Image.open(out.with_suffix(".png")).size == (84, 84) and out.with_suffix(".pdf").is_file()
    assert report.main(["figure", "--figure", "fig2", "--out", str(res / "figures" / "fig2")]) == 0
    # the workflow's route: `lct sample --decode` into a dir, then a grid from that dir
    from lct.run.sample import main as sample_main

    sdir = tmp_path / "samples" / "e" / "nfe2"
    assert sample_main(["--checkpoint", str(ckpt), "--data", str(data), "--ema", "0.99", "--nfe", "2", "--seeds", "0-8",
                        "--decode", "--out", str(sdir), "--device", "cpu", "--quiet"]) == 0
    grid_png = res / "figures" / "samples" / "e_nfe2.png"
    assert report.main(["figure", "--figure", "grid", "--samples", str(sdir), "--grid", "3", "--out", str(grid_png)]) == 0
    assert Image.open(grid_png).size == (84, 84) and grid_png.with_suffix(".pdf").is_file()
    with pytest.raises(ValueError, match="a grid needs 16"):
        figures.grid_from_dir(sdir, 4, tmp_path / "x")
    (res / "tables").mkdir()
    (res / "tables" / "table2a.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    cfg = {"name": "demo", "evaluation": {"feature": "digit_classifier"}, "tables": {"table2a": {}, "table2b": {}},
           "figures": {"fig1": {}, "fig3": {}, "samples": {"experiments": ["e"], "nfe": [1, 2]}}}
    page = figures.report_page(cfg, res, res / "report.md")
    text = page.read_text()
    assert "| 1 | 2 |" in text and "table2b: not produced yet" in text
    assert "![fig2](figures/fig2.png)" in text and "![samples/e_nfe1](figures/samples_e_nfe1.png)" in text
    assert "![samples/e_nfe2](figures/samples/e_nfe2.png)" in text and "fig1.png).*" in text
    assert "### fig1" in text and "### fig3" in text
