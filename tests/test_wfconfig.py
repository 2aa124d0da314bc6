"""lct.workflow.config: cross-reference checks naming the key, and the slices tables and figures read."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lct.config import ConfigError
from lct.workflow.config import check_references, figure_slice, resolve_all, table_slice

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def paper():
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def test_paper_and_demo_configs_check_and_resolve(paper):
    for cfg in (paper, yaml.safe_load((ROOT / "config/demo.yaml").read_text())):
        check_references(cfg)
        assert set(resolve_all(cfg)) == set(cfg["experiments"])


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["datasets"]["celebahq256"].update(vae="sd-vae"), "datasets.celebahq256.vae"),
    (lambda c: c["experiments"]["celebahq_slct"].update(dataset="celeba"), "experiments.celebahq_slct.dataset"),
    (lambda c: c["tables"]["table2b"]["rows"][1].update(experiment="nope"), "tables.table2b.rows[1].experiment"),
    (lambda c: c["figures"]["fig1"].update(pixel_dataset="svhn"), "figures.fig1.pixel_dataset"),
    (lambda c: c["figures"]["fig3"]["experiments"].update(x="nope"), "figures.fig3.experiments['x']"),
    (lambda c: c["figures"]["samples"]["experiments"].append("nope"), "figures.samples.experiments"),
    (lambda c: c.update(cell="nope"), "--config cell="),
    (lambda c: c["evaluation"].update(fid_reference={"cifar": {"path": "x.npz"}}), "evaluation.fid_reference.cifar"),
])
def test_a_broken_reference_names_its_key(paper, edit, named):
    cfg = copy.deepcopy(paper)
    edit(cfg)
    with pytest.raises(ConfigError) as e:
        check_references(cfg)
    assert named in str(e.value)


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["experiments"]["celebahq_cd_l2"].pop("teacher"), "needs `teacher:"),
    (lambda c: c["experiments"]["celebahq_cd_l2"].update(teacher="nope"), "teacher = 'nope' is not a key"),
    (lambda c: c["experiments"]["celebahq_cd_l2"].update(teacher="celebahq_ilct"), "must be a denoising run"),
    (lambda c: c["experiments"]["celebahq_cd_l2"].update(teacher="ffhq_ldm"), "of the same dataset"),
    (lambda c: c["experiments"]["celebahq_slct"].update(teacher="celebahq_ldm"), "only distillation"),
    # CTM: the teacher-solver preset needs one, the teacher-free one refuses one
    (lambda c: c["experiments"]["celebahq_ctm"].pop("teacher"), "or ctm.solver: self"),
    (lambda c: c["experiments"]["celebahq_ctm_self"].update(teacher="celebahq_ldm"), "ctm.solver teacher"),
])
def test_a_distillation_teacher_is_checked(paper, edit, named):
    cfg = copy.deepcopy(paper)
    edit(cfg)
    with pytest.raises(ConfigError, match="experiments.celebahq_") as e:
        resolve_all(cfg)
    assert named in str(e.value)
    assert resolve_all(paper)["celebahq_cd_cauchy"].distill.teacher == "celebahq_ldm"


def test_a_bad_override_names_the_experiment(paper):
    cfg = copy.deepcopy(paper)
    cfg["experiments"]["celebahq_2d_ln"]["overrides"]["network"]["nrom"] = "layer"
    with pytest.raises(ConfigError, match=r"experiments.celebahq_2d_ln.*nrom"):
        resolve_all(cfg)


def test_slices_hold_only_what_their_reader_needs(paper):
    t = table_slice(paper, "table2c")
    assert set(t["tables"]) == {"table2c"} and t["reading"] == "as_coded" and "experiments" not in t
    f3 = figure_slice(paper, "fig3")
    assert set(f3["experiments"]) == set(paper["figures"]["fig3"]["experiments"].values())
    assert set(f3["datasets"]) == {"celebahq256"}
    # a change to an experiment no table 2c row cites leaves the table 2c slice unchanged
    changed = copy.deepcopy(paper)
    changed["experiments"]["lsun_slct"]["overrides"]["train"]["epochs"] = 10
    assert table_slice(changed, "table2c") == t
    with pytest.raises(ConfigError, match="tables.table9"):
        table_slice(paper, "table9")
