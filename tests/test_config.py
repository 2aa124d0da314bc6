"""The typed experiment config: presets, overrides, validation messages, round trips."""

import pytest

from lct.config import (
    PRESETS,
    ConfigError,
    ExperimentConfig,
    load_experiment,
    resolve_experiment,
    save_experiment,
)

LEN = {"train": {"epochs": 1400}}


def test_presets_express_the_paper_components():
    ilct = resolve_experiment("ilct", LEN, name="a")
    slct = resolve_experiment("slct", LEN, name="b")
    assert (ilct.loss.distance, ilct.loss.c, ilct.loss.ot, ilct.loss.diffusion_loss, ilct.network.norm) == (
        "pseudo_huber", "fixed", False, False, "group")
    assert (slct.loss.distance, slct.loss.c, slct.loss.ot, slct.loss.diffusion_loss, slct.network.norm) == (
        "cauchy", "adaptive", True, True, "nsln")
    assert slct.loss.diffusion_r == 0.25
    coded = resolve_experiment("slct_as_coded", LEN, name="c")
    assert (coded.loss.reduction, coded.loss.c, coded.loss.diffusion_weight) == ("mean", "as_coded", 5.0)
    assert resolve_experiment("ldm_ve", LEN, name="d").objective == "denoising"
    # presets are not mutated by resolving with overrides
    resolve_experiment("slct", {"loss": {"distance": "l2"}, **LEN})
    assert PRESETS["slct"]["loss"]["distance"] == "cauchy"


def test_table2_row_is_preset_plus_one_override():
    row = resolve_experiment("slct", {"loss": {"distance": "geman_mcclure"}, **LEN}, name="gm")
    full = resolve_experiment("slct", LEN, name="gm")
    assert row.loss.distance == "geman_mcclure"
    assert {**row.to_dict(), "loss": None} == {**full.to_dict(), "loss": None}


def test_defaults_apply_before_overrides():
    cfg = resolve_experiment("slct", {"train": {"batch_size": 8}}, defaults={"train": {"batch_size": 32, "total_steps": 10}})
    assert cfg.train.batch_size == 8 and cfg.train.total_steps == 10


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss": {"distanc": "l2"}}, "unknown key(s) ['distanc']"),
        ({"loss": {"diffusion_r": "a"}}, "loss.diffusion_r: expected a number"),
        ({"loss": {"distance": "foo"}}, "loss.distance = 'foo'"),
        ({"network": {"norm": "batch"}}, "network.norm = 'batch'"),
        ({"train": {"total_steps": 5}}, "set exactly one of train.total_steps and train.epochs"),
        ({"loss": {"ot": "yes"}}, "loss.ot: expected true or false"),
        ({"loss": {"diffusion_r": 0.0}}, "loss.diffusion_r = 0.0"),
    ],
)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        resolve_experiment("slct", {**LEN, **overrides} if "train" not in overrides else
                           {"train": {"epochs": 1, **overrides["train"]}}, name="x")
    assert message in str(e.value)
    assert "experiment 'x'" in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'sclt'"):
        resolve_experiment("sclt", LEN, name="x")


def test_round_trip_yaml(tmp_path):
    cfg = resolve_experiment("slct", {"network": {"channel_mult": [1, 2]}, **LEN}, name="rt", dataset="mnist")
    save_experiment(cfg, tmp_path / "c.yaml")
    assert not list(tmp_path.glob("*.tmp"))
    back = load_experiment(tmp_path / "c.yaml")
    assert back == cfg
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_experiment(tmp_path / "nope.yaml")


def test_two_readings_of_the_paper():
    """as_coded = the authors' code (docs/METHOD.md section 4); paper_text = the equations as printed."""
    coded = resolve_experiment("slct", LEN, name="s", reading="as_coded")
    text = resolve_experiment("slct", LEN, name="s", reading="paper_text")
    assert (coded.loss.reduction, coded.loss.c, coded.loss.diffusion_variant, coded.loss.diffusion_weight) == (
        "mean", "as_coded", "as_coded", 5.0)
    assert (text.loss.reduction, text.loss.c, text.loss.diffusion_variant, text.loss.diffusion_weight) == (
        "sum", "adaptive", "paper", 1.0)
    assert coded.network.norm == text.network.norm == "nsln"
    # their loop's length and NaN handling (train_cm_latent.py); the text states neither, so it keeps ours
    assert (coded.train.length_rule, coded.train.nan_lr_halving) == ("authors_loop", 100)
    assert (text.train.length_rule, text.train.nan_lr_halving) == ("ceil", None)
    # slct under the as_coded reading is exactly the explicit slct_as_coded preset
    explicit = resolve_experiment("slct_as_coded", LEN, name="s", reading="paper_text")
    assert {**coded.to_dict(), "preset": None} == {**explicit.to_dict(), "preset": None}
    # iLCT as coded: Pseudo-Huber, mean reduction, fixed c0, GroupNorm
    ilct = resolve_experiment("ilct", LEN, reading="as_coded")
    assert (ilct.loss.distance, ilct.loss.reduction, ilct.loss.c, ilct.network.norm) == (
        "pseudo_huber", "mean", "fixed", "group")
    # An explicit override wins over the reading; "scaled" follows it.
    mixed = resolve_experiment("ilct", {"loss": {"c": "scaled", "reduction": "sum"}, **LEN}, reading="as_coded")
    assert (mixed.loss.c, mixed.loss.reduction) == ("as_coded", "sum")
    # The diffusion baseline keeps EDM's summed loss under both readings.
    assert resolve_experiment("ldm_ve", LEN, reading="as_coded").loss.reduction == "sum"
    with pytest.raises(ConfigError, match="reading"):
        resolve_experiment("slct", LEN, reading="literal")


def test_every_schema_key_is_documented_in_config_readme():
    """Each key of config/schema.yaml (top level, datasets, sources, vaes, evaluation, site, figures) is
    named in config/README.md, in backticks."""
    import re
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    schema = yaml.safe_load((root / "config/schema.yaml").read_text())
    readme = (root / "config/README.md").read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)", readme)) | set(re.findall(r"`[a-z_0-9.]+\.([a-z_0-9]+)`", readme))

    def keys(node: dict, where: str):
        for name, sub in (node.get("properties") or {}).items():
            yield where + name, name
            if isinstance(sub, dict):
                yield from keys(sub, f"{where}{name}.")
                if isinstance(sub.get("additionalProperties"), dict):
                    yield from keys(sub["additionalProperties"], f"{where}{name}.<name>.")

    missing = sorted(path for path, name in keys(schema, "") if name not in documented)
    assert not missing, f"config/README.md does not name: {missing}"


def test_with_sampling_sets_only_sampler_keys():
    from lct.config import with_sampling

    cfg = resolve_experiment("slct", LEN, name="s", reading="as_coded")
    assert with_sampling(cfg, ["two_step_index=440", "sample.diffusion_steps=40"]).sample.two_step_index == 440
    assert with_sampling(cfg, []) is cfg
    with pytest.raises(ConfigError, match="two_step_index"):
        with_sampling(cfg, ["lr=1"])
    with pytest.raises(ConfigError):
        with_sampling(cfg, ["two_step_grid=1"])  # below its range (at least 2 grid points)


def test_authors_scripts_overlay():
    """config/authors_scripts.yaml: the scripts' FFHQ settings over the paper config, everything else the
    paper's; under the as_coded reading their loop's K = (70,000 // 256) x 1,400 = 382,200."""
    from pathlib import Path

    from lct.config import resolve_workflow_experiment, run_length
    from lct.workflow.estimate import load_config

    root = Path(__file__).resolve().parents[1]
    wf = load_config([str(root / "config/authors_scripts.yaml")], repo=root)
    slct, ilct = (resolve_workflow_experiment(wf, e) for e in ("ffhq_slct", "ffhq_ilct"))
    assert slct.train.batch_size == 256 and run_length(slct)["iterations"] == 382_200
    assert (ilct.train.batch_size, ilct.train.epochs, ilct.sample.two_step_index) == (224, 1050, 440)
    assert resolve_workflow_experiment(wf, "celebahq_slct").train.batch_size == 128  # untouched
    assert wf["name"] == "authors_scripts" and wf["data_from"] == "paper"
