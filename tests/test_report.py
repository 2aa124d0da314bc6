"""Tables beside the published numbers: layout, differences, missing cells, the demo's metric."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from lct.report import tables as report

PUBLISHED = Path(__file__).resolve().parents[1] / "config" / "published_results.csv"


def _eval(eval_dir: Path, exp: str, nfe: int, fid: dict, recall: float, name: str = "FID") -> None:
    p = eval_dir / exp / f"nfe{nfe}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"experiment": exp, "nfe": nfe, "fid": fid, "recall": recall, "precision": 0.5,
                             "metric_name": name, "num_samples": 100}))


PAPER_CFG = {
    "name": "paper",
    "evaluation": {"feature": "inception", "fid_modes": ["legacy_pytorch", "clean"]},
    "tables": {
        "table1a": {"published": "1a", "dataset": "celebahq256", "rows": [
            {"model": "LDM-8 (VE; same arch)", "experiment": "c_ldm", "nfe": 250},
            {"model": "iLCT", "experiment": "c_ilct", "nfe": 1},
            {"model": "iLCT", "experiment": "c_ilct", "nfe": 2},
            {"model": "Ours (sLCT)", "experiment": "c_slct", "nfe": 1},
            {"model": "Ours (sLCT)", "experiment": "c_slct", "nfe": 2}]},
        "table2a": {"published": "2a", "dataset": "celebahq256", "rows": [
            {"model": "iLCT", "experiment": "c_ilct", "nfe": 1},
            {"model": "+ Cauchy", "experiment": "c_cauchy", "nfe": 1}]},
    },
}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table_paper_layout_differences_and_missing(tmp_path):
    ev = tmp_path / "eval"
    _eval(ev, "c_ilct", 1, {"legacy_pytorch": 40.15, "clean": 41.0}, 0.10)
    _eval(ev, "c_slct", 2, {"legacy_pytorch": 6.5, "clean": 7.0}, 0.55)
    paths = report.make_table(PAPER_CFG, "table1a", PUBLISHED, ev, tmp_path / "tables" / "table1a")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"] and all(p.is_file() for p in paths)
    rows = _read_csv(paths[0])
    published_1a = [r for r in report.read_published(PUBLISHED) if r["table"] == "1a"]
    assert len(rows) == len(published_1a)  # every published row, nothing left out
    assert [r["model"] for r in rows] == [r["model"] for r in published_1a]  # the paper's order
    lit = [r for r in rows if r["status"] == "literature"]
    assert len(lit) == 11 and lit[0]["model"] == "WaveDiff" and lit[0]["fid_paper"] == "5.94" and lit[0]["fid_legacy_pytorch"] == ""
    ilct1 = next(r for r in rows if r["model"] == "iLCT" and r["nfe"] == "1")
    assert float(ilct1["fid_paper"]) == 37.15 and float(ilct1["fid_legacy_pytorch"]) == 40.15
    assert float(ilct1["fid_diff"]) == pytest.approx(3.0) and float(ilct1["recall_diff"]) == pytest.approx(-0.02)
    assert float(ilct1["fid_clean"]) == 41.0
    assert next(r for r in rows if r["model"] == "iLCT" and r["nfe"] == "2")["status"] == "not computed"
    assert {r["status"] for r in rows if r["model"] == "LDM-8 (VE; same arch)"} == {"not computed"}
    md = paths[1].read_text()
    assert "| latent_consistency | iLCT | 1 | 37.15 | 40.15 | +3.00 | 41.00 | 0.12 | 0.10 | -0.02 |" in md
    assert "| latent_consistency | iLCT | 2 | 16.84 | — | — | — | 0.24 | — | — |" in md
    assert "not computed" in md and "n/r" in md  # footnotes: missing cell, recall not reported (Score SDE)
    assert "FID legacy_pytorch (ours)" in md and "Δ FID" in md
    tex = paths[2].read_text()
    assert r"\begin{tabular}" in tex and r"$\Delta$ FID" in tex and "---" in tex and r"\toprule" in tex
    assert "legacy\\_pytorch" in tex


def test_table_from_yaml_path_and_cli(tmp_path):
    ev = tmp_path / "eval"
    _eval(ev, "c_cauchy", 1, {"legacy_pytorch": 12.0, "clean": 12.5}, 0.4)
    cfg_path = tmp_path / "config.resolved.yaml"
    cfg_path.write_text(yaml.safe_dump({**PAPER_CFG, "published": str(PUBLISHED)}))
    out = tmp_path / "tables" / "table2a"
    assert report.main(["table", "--table", "2a", "--workflow-config", str(cfg_path), "--eval-dir", str(ev),
                        "--out", str(out) + ".csv"]) == 0
    rows = _read_csv(out.with_suffix(".csv"))
    assert [r["model"] for r in rows] == ["iLCT", "+ Cauchy", "+ Diff", "+ OT", "+ Scaled c", "+ NsLN"]
    assert rows[1]["status"] == "computed" and float(rows[1]["fid_diff"]) == pytest.approx(12.0 - 13.02)
    assert rows[0]["status"] == "not computed" and rows[2]["status"] == "not configured"  # + Diff has no cell


def test_table_demo_metric_is_not_called_fid(tmp_path):
    cfg = {"evaluation": {"feature": "digit_classifier"}, "tables": {"table2c": {"published": "2c", "dataset": "mnist", "rows": [
        {"model": "L2", "experiment": "m_l2", "nfe": 1},
        {"model": "E-LatentLPIPS", "experiment": None, "reason": "weights unavailable offline", "nfe": 1},
        {"model": "Cauchy", "experiment": "m_slct", "nfe": 1}]}}}
    ev = tmp_path / "eval"
    _eval(ev, "m_l2", 1, {"frechet_digit": 3.25}, 0.3, name="FD-digit")
    paths = report.make_table(cfg, "table2c", PUBLISHED, ev, tmp_path / "table2c")
    md = paths[1].read_text()
    assert "FD-digit (ours)" in md and "FID (paper, not comparable)" in md and "Δ" not in md
    assert "| robust_loss | L2 | 1 | 50.40 | 3.25 | 0.04 | 0.30 |" in md
    assert "not run: weights unavailable offline" in md
    rows = _read_csv(paths[0])
    assert rows[0]["fid_diff"] == "" and rows[0]["metric_name"] == "FD-digit"
    assert [r["status"] for r in rows] == ["computed", "not run", "not configured", "not configured", "not computed"]


def test_table_beyond_the_paper_has_no_published_columns(tmp_path):
    """table_cd (published: null): our numbers only, its title in the caption, no paper or Δ columns."""
    cfg = {"name": "paper", "reading": "as_coded",
           "evaluation": {"feature": "inception", "fid_modes": ["legacy_pytorch", "clean"]},
           "tables": {"table_cd": {"published": None, "title": "CT vs CD in latent space (not in the paper)",
                                   "dataset": "celebahq256", "rows": [
                                       {"model": "iLCT", "experiment": "c_ilct", "nfe": 1},
                                       {"model": "CD, L2", "experiment": "c_cd", "nfe": 1},
                                       {"model": "CD, L2", "experiment": "c_cd", "nfe": 2}]}}}
    ev = tmp_path / "eval"
    _eval(ev, "c_cd", 1, {"legacy_pytorch": 9.5, "clean": 10.25}, 0.41)
    paths = report.make_table(cfg, "table_cd", "/nonexistent.csv", ev, tmp_path / "table_cd")
    md = paths[1].read_text()
    assert md.startswith("**CT vs CD in latent space (not in the paper) (celebahq256): BEYOND THE PAPER")
    assert "paper)" not in md.split("\n")[2] and "Δ" not in md
    assert "| CD, L2 | 1 | 9.50 | 10.25 | 0.41 |" in md and "| CD, L2 | 2 | — | — | — |" in md
    assert [r["status"] for r in _read_csv(paths[0])] == ["not computed", "computed", "not computed"]


def test_table_errors_name_the_key(tmp_path):
    with pytest.raises(KeyError, match="tables"):
        report.make_table(PAPER_CFG, "table9z", PUBLISHED, tmp_path, tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="configs/tables"):
        report.load_workflow_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("reading, says", [("as_coded", "produced the published numbers"),
                                           ("paper_text", "not expected to match")])
def test_caption_names_the_reading(tmp_path, reading, says):
    t = report.build_table({**PAPER_CFG, "reading": reading}, "table2a", PUBLISHED, tmp_path / "eval")
    assert f"reading {reading}" in t["caption"] and says in t["caption"]
    md = report.write_table(t, tmp_path / "t2a")[1].read_text()
    assert f"reading {reading}" in md


def test_torchvision_recall_fallback_is_marked_not_comparable(tmp_path):
    cfg = {**PAPER_CFG, "evaluation": {**PAPER_CFG["evaluation"], "recall_feature": "vgg16"}}
    t = report.build_table(cfg, "table2a", PUBLISHED, tmp_path / "eval")
    assert any("NOT comparable" in f and "vgg16" in f for f in t["footnotes"])
    t = report.build_table(PAPER_CFG, "table2a", PUBLISHED, tmp_path / "eval")
    assert any("pr50k3_full" in f for f in t["footnotes"]) and not any("NOT comparable" in f for f in t["footnotes"])
