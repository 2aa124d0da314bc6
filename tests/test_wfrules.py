"""lct.workflow.rules: what the rules ask of the workflow config, as plain Python (the workflow's commands are
checked end to end by tests/test_workflow.py; here each answer on its own)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from lct.workflow.rules import Rules, WorkflowConfigError, alternation

ROOT = Path(__file__).resolve().parents[1]


class Input(SimpleNamespace):
    def keys(self):
        return vars(self).keys()


@pytest.fixture(scope="module")
def paper():
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


@pytest.fixture(scope="module")
def demo():
    return yaml.safe_load((ROOT / "config/demo.yaml").read_text())


def w(**kw):
    return SimpleNamespace(**kw)


def test_paths_follow_the_config_name_and_resources(paper, demo):
    r = Rules(paper)
    assert r.final_path("celebahq_slct") == "results/paper/runs/celebahq_slct/final.pt"
    assert r.training_data_dir("celebahq256") == "results/paper/data/celebahq256/latents"
    assert r.training_data_dir("cifar10") == "results/paper/data/cifar10"  # pixels: the dataset dir
    assert r.vae_dir("sd-vae-ft-ema") == "resources/sd-vae-ft-ema"
    assert Rules(demo).vae_dir("tiny-mnist") == "results/demo/resources/tiny-mnist"
    assert r.ref_path("ffhq256") == "results/paper/ref/ffhq256-inception.npz"
    # The E-LatentLPIPS cell trains on the latents x 0.18215 alone (the authors' script): a variant folder
    # of the same latents; every other cell on the dataset's standardized ones.
    assert r.experiment_data_dir("celebahq_2c_elatentlpips") == "results/paper/data/celebahq256/latents-sd_scale"
    assert r.train_inputs(w(experiment="celebahq_2c_elatentlpips"))["data"].endswith("latents-sd_scale/norm.npz")
    assert r.experiment_data_dir("celebahq_slct") == "results/paper/data/celebahq256/latents"
    assert r.evaluate_inputs(w(experiment="celebahq_slct"))["data"].endswith("celebahq256/latents/latents.npy")


def test_command_arguments_of_the_paper_run(paper):
    r = Rules(paper)
    assert r.fetch_flags() == "--vae stabilityai/sd-vae-ft-ema --inception --vgg16 --elatentlpips"
    assert r.encode_args(w(dataset="celebahq256")) == (
        "--vae resources/sd-vae-ft-ema --normalization standardize --posterior sample --seed 0 --stats-count 27000")
    src = r.source_args(w(dataset="cifar10"))
    assert "--source url" in src and "--md5 c58f30108f718f92721af3b95e74349a" in src
    assert r.prepare_inputs(w(dataset="cifar10")) == ["results/paper/data/cifar10/download/cifar-10-python.tar.gz"]
    assert r.prepare_inputs(w(dataset="celebahq256")) == []  # a folder source: nothing to download
    ev = r.evaluate_args(w(experiment="celebahq_slct"))
    assert "--num-samples 50176 --ema 0.99993 --recall-k 3" in ev and "--fid-modes legacy_pytorch clean" in ev
    assert "--to-uint8 truncate" in ev  # the authors' scoring script
    assert "--fid-reference" not in ev
    assert r.ref_args().endswith("--recall-num 200000")


def test_a_distilled_student_reads_its_teacher(paper):
    r = Rules(paper)
    inputs = r.train_inputs(w(experiment="celebahq_cd_cauchy"))
    assert inputs["teacher"] == "results/paper/runs/celebahq_ldm/final.pt"
    assert r.train_extra_flags(w(experiment="celebahq_cd_cauchy")) == "--teacher results/paper/runs/celebahq_ldm/final.pt"
    ct = r.train_inputs(w(experiment="celebahq_slct"))
    assert "teacher" not in ct and r.train_extra_flags(w(experiment="celebahq_slct")) == ""
    assert "weights" in r.train_inputs(w(experiment="celebahq_2c_elatentlpips"))  # E-LatentLPIPS files first
    assert r.train_extra_flags(w(experiment="celebahq_2c_elatentlpips")) == "--resources resources"


def test_training_params_are_the_weight_settings_one_per_key(paper):
    """Bookkeeping (cadence, workers) is not a param, so editing it never plans a retraining; each weight
    setting is its own param, so Snakemake's reason names the keys that changed."""
    r = Rules(paper)
    params = r.settings_params()
    values = {str(fn(w(experiment="celebahq_slct"))) for fn in params.values()}
    assert "train.lr=0.0001" in values and 'loss.distance="cauchy"' in values
    assert not any(v.startswith(("train.checkpoint_every", "train.log_every", "train.num_workers",
                                 "train.keep_checkpoints", "name=")) for v in values)
    assert not any("results/" in v or "/datasets" in v for v in values)  # no paths
    cfg = copy.deepcopy(paper)
    cfg["defaults"]["train"]["checkpoint_every"] = 7
    cfg["defaults"]["train"]["log_every"] = 3
    assert {str(fn(w(experiment="celebahq_slct"))) for fn in Rules(cfg).settings_params().values()} == values
    cfg["experiments"]["celebahq_slct"]["overrides"]["train"]["lr"] = 2e-4
    changed = {str(fn(w(experiment="celebahq_slct"))) for fn in Rules(cfg).settings_params().values()} - values
    assert changed == {"train.lr=0.0002"}
    run = Rules(cfg).run_settings("celebahq_slct")
    assert run["train.checkpoint_every"] == 7 and run["train.log_every"] == 3 and "train.lr" not in run


def test_fid_reference_file_becomes_an_input_and_an_argument(paper):
    cfg = copy.deepcopy(paper)
    cfg["evaluation"]["fid_reference"] = {"celebahq256": {"url": "https://example.org/celebahq_stat.npy",
                                                          "sha256": "a" * 64}}
    r = Rules(cfg)
    path = r.fid_reference_file("celebahq256")
    assert path.startswith("resources/") and path in r.fid_reference_downloads()
    assert f"--fid-reference {path}" in r.evaluate_args(w(experiment="celebahq_slct"))
    assert r.evaluate_inputs(w(experiment="celebahq_slct"))["fid_reference"] == path
    assert "--fid-reference celebahq256 'https://example.org/celebahq_stat.npy'" in r.fetch_flags()


def test_targets_and_their_errors(paper, demo):
    r = Rules(paper)
    assert len(r.all_table_files(None)) == 21 and len(r.every_table_file(None)) == 27  # + table_cd, table_ctm
    with pytest.raises(WorkflowConfigError, match="needs --config cell="):
        r.cell_files(None)
    cfg = copy.deepcopy(paper)
    cfg["cell"] = "celebahq_2d_ln"  # one run: its result beside the published numbers, no whole table
    assert Rules(cfg).cell_files(None) == ["results/paper/cells/celebahq_2d_ln.json",
                                           "results/paper/cells/celebahq_2d_ln.md"]
    assert Rules(cfg).cell_inputs(w(experiment="celebahq_2d_ln"))["evals"] == [
        "results/paper/eval/celebahq_2d_ln/nfe1.json"]
    cfg["cell"] = "cifar10_ict"  # an experiment no table cites
    with pytest.raises(WorkflowConfigError, match="no table row names"):
        Rules(cfg).cell_files(None)
    mini = copy.deepcopy(demo)
    del mini["tables"]["table_cd"]
    with pytest.raises(WorkflowConfigError, match="no tables.table_cd"):
        Rules(mini).table_target("table_cd")(None)
    assert Rules(demo).metric_inputs() == ["results/demo/resources/digit-classifier.pt"]
    first = Rules(demo).config["figures"]["samples"]["experiments"][0]
    assert Rules(demo).sample_args(w(experiment=first)).startswith("--ema 0.95 --seeds 0-63 --sampling two_step_index=")


def test_alternation_matches_whole_names_only():
    import re

    pat = re.compile(f"^({alternation(['mnist', 'mnist_pixels'])})$")
    assert pat.match("mnist_pixels") and pat.match("mnist") and not pat.match("mnist_")
    assert not re.match(f"^({alternation([])})$", "")


def test_sampler_settings_rescore_and_never_retrain(paper):
    """sample.* (the 2-NFE index, ...) is how a model is sampled: it is not a weight setting (the training
    config's params ignore it) and reaches `lct evaluate` as --sampling, so an edit re-scores only."""
    import copy

    from lct.config import SAMPLING_KEYS, weight_settings

    edited = copy.deepcopy(paper)
    edited["experiments"]["celebahq_slct"].setdefault("overrides", {}).setdefault("sample", {})["two_step_index"] = 440
    a, b = Rules(paper), Rules(edited)
    assert weight_settings(a.experiments["celebahq_slct"]) == weight_settings(b.experiments["celebahq_slct"])
    assert not SAMPLING_KEYS & set(weight_settings(a.experiments["celebahq_slct"]))
    assert "--sampling two_step_index=420" in a.evaluate_args(w(experiment="celebahq_slct"))
    assert "--sampling two_step_index=440" in b.evaluate_args(w(experiment="celebahq_slct"))


def test_the_two_step_sweep_scores_each_candidate_then_evaluates_the_best(paper, demo):
    """two_step_sweep: one short evaluation per (experiment, candidate) with the candidate's index last
    (over the experiment's own), the pick by the tables' primary FID mode, the full evaluation at it."""
    r = Rules(paper)
    args = r.sweep_candidate_args(w(experiment="celebahq_slct", index="440"))
    assert "--num-samples 5000 " in args and args.endswith("--sampling two_step_index=440")
    assert "--sampling two_step_index=420" in args  # the experiment's own, overridden by the candidate's
    assert r.sweep_candidate_files(w(experiment="lsun_slct")) == [
        f"results/paper/eval/lsun_slct/sweep/index{i}.json" for i in (400, 420, 440, 460)]
    assert r.sweep_mode() == "legacy_pytorch"
    assert r.sweep_evaluate_inputs(w(experiment="ffhq_ilct"))["best"] == "results/paper/eval/ffhq_ilct/sweep/best.json"
    assert "--num-samples 50176 " in r.evaluate_args(w(experiment="ffhq_ilct"))  # the full count at the best
    inputs = r.sweep_table_inputs(w())
    assert len(inputs["evals"]) == 12 and inputs["config"].endswith("configs/tables/two_step_sweep.yaml")
    assert r.sweep_files(w()) == ["results/paper/tables/two_step_sweep.csv", "results/paper/tables/two_step_sweep.md"]
    bad = copy.deepcopy(paper)
    bad["two_step_sweep"]["candidates"] = [420, 641]
    with pytest.raises(WorkflowConfigError, match=r"two_step_sweep.candidates \[641\].*0 .. 640"):
        Rules(bad)
    none = copy.deepcopy(paper)
    del none["two_step_sweep"]
    with pytest.raises(WorkflowConfigError, match="no `two_step_sweep` section"):
        Rules(none).sweep_files(w())
    unknown = copy.deepcopy(paper)
    unknown["two_step_sweep"]["experiments"] = ["celebahq_slct", "nope"]
    with pytest.raises(Exception, match=r"two_step_sweep.experiments\[1\] = 'nope'"):
        Rules(unknown)


def test_a_setting_added_to_the_code_retrains_nothing_until_it_is_set(paper):
    """lct.config.ADDED_SETTINGS: a weight setting newer than finished runs, at the value those runs had, is
    no experiment_config param Snakemake records (so no rewritten config, no retraining, no re-scoring)
    and no difference for lct train; set to anything else it is both."""
    from snakemake.persistence import UNREPRESENTABLE, PersistenceBase

    from lct.run import train as T
    from lct.config import ADDED_SETTINGS, ExperimentConfig, flat_settings, weight_settings

    defaults = flat_settings(ExperimentConfig())
    for key, neutral in ADDED_SETTINGS.items():
        assert key in weight_settings(ExperimentConfig()) and defaults[key] == neutral  # old runs had the default
    r = Rules(paper)
    params = r.settings_params()
    serialize = lambda v: PersistenceBase._serialize_param_builtin(None, v)  # noqa: E731 (what Snakemake records)
    celeb, lsun = w(experiment="celebahq_slct"), w(experiment="lsun_slct")
    assert serialize(params["s_train_flip_copies"](celeb)) is UNREPRESENTABLE
    assert serialize(params["s_loss_ot_group"](celeb)) is UNREPRESENTABLE
    assert params["s_train_flip_copies"](lsun) == "train.flip_copies=true"  # set: a param, a retraining
    assert params["s_train_lr"](celeb) == "train.lr=0.0001"
    old = ExperimentConfig().to_dict()  # a checkpoint's config written before the keys existed
    del old["train"]["flip_copies"], old["loss"]["ot_group"]
    new = ExperimentConfig().to_dict()
    assert T._config_diff(old, new) == []
    new["train"]["flip_copies"] = True
    assert T._config_diff(old, new) == ["train.flip_copies: None -> True"]
    # the CTM settings: absent from a config of before, neutral in the new one, no difference
    old, new = ExperimentConfig().to_dict(), ExperimentConfig().to_dict()
    del old["ctm"], old["network"]["s_conditioning"]
    assert T._config_diff(old, new) == []


def test_a_sampler_setting_added_to_the_code_rescores_nothing_until_it_is_set(paper):
    """lct.config.ADDED_SAMPLING: sample.gamma (CTM) at 0 is left out of the evaluation commands of every
    experiment, so the commands of finished evaluations are those of before; a CTM run that sets it gets it."""
    from lct.config import ADDED_SAMPLING, ExperimentConfig, SAMPLING_KEYS, flat_settings

    defaults = flat_settings(ExperimentConfig())
    assert all(k in SAMPLING_KEYS and defaults[k] == v for k, v in ADDED_SAMPLING.items())
    r = Rules(paper)
    assert "gamma" not in r.sampling_args("celebahq_slct") and "two_step_index=420" in r.sampling_args("celebahq_slct")
    cfg = copy.deepcopy(paper)
    cfg["experiments"]["celebahq_ctm"].setdefault("overrides", {})["sample"] = {"gamma": 0.5}
    assert "--sampling gamma=0.5" in Rules(cfg).sampling_args("celebahq_ctm")
