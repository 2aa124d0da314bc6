"""The workflow configuration (config/config.yaml) as Python: cross-reference checks, the slices of
it each table and figure reads, and the light writers the workflow's local rules call.

The Snakefile validates the structure with config/schema.yaml; `check_references` then checks what a
schema cannot (every name a table, figure or dataset uses exists), naming the key. A table or figure
reads only its own slice (`table_slice`, `figure_slice`), written by a local rule whose parameter is
that slice: changing one experiment reruns it, its evaluations and the tables citing it, nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lct.config import ConfigError, ExperimentConfig, reads_teacher, resolve_workflow_experiment

# Top-level keys every slice carries (what captions and metric columns need).
_COMMON = ("name", "reading", "published", "random_weights_for_tests", "evaluation")


def check_references(config: dict[str, Any]) -> None:
    """Every dataset, VAE and experiment a table, figure, dataset or `cell` names must exist."""
    exps, dsets, vaes = config["experiments"], config["datasets"], config["vaes"]

    def fail(message: str) -> None:
        raise ConfigError(f"workflow config: {message}")

    for ds, d in dsets.items():
        if d["vae"] is not None and d["vae"] not in vaes:
            fail(f"datasets.{ds}.vae = {d['vae']!r} is not a key of `vaes` ({sorted(vaes)})")
    for v, d in vaes.items():
        if d["kind"] == "train" and d.get("dataset") not in dsets:
            fail(f"vaes.{v}.dataset = {d.get('dataset')!r} is not a key of `datasets`")
    for name, e in exps.items():
        if e["dataset"] not in dsets:
            fail(f"experiments.{name}.dataset = {e['dataset']!r} is not a key of `datasets` ({sorted(dsets)})")
    ev = config["evaluation"]
    clf = ev.get("classifier")
    if clf and clf["dataset"] not in dsets:
        fail(f"evaluation.classifier.dataset = {clf['dataset']!r} is not a key of `datasets`")
    for ds in ev.get("fid_reference") or {}:
        if ds not in dsets:
            fail(f"evaluation.fid_reference.{ds} is not a key of `datasets`")
    for t, table in config["tables"].items():
        for i, row in enumerate(table["rows"]):
            if row["experiment"] is not None and row["experiment"] not in exps:
                fail(f"tables.{t}.rows[{i}].experiment = {row['experiment']!r} is not a key of `experiments`")
    sweep = config.get("two_step_sweep") or {}
    for i, e in enumerate(sweep.get("experiments") or []):
        if e not in exps:
            fail(f"two_step_sweep.experiments[{i}] = {e!r} is not a key of `experiments`")
    figs = config["figures"]
    named: list[tuple[str, str]] = []
    if "fig1" in figs:
        f1 = figs["fig1"]
        named += [("fig1.latent_experiment", f1["latent_experiment"]), ("fig1.pixel_experiment", f1["pixel_experiment"])]
        for key in ("latent_dataset", "pixel_dataset"):
            if f1[key] not in dsets:
                fail(f"figures.fig1.{key} = {f1[key]!r} is not a key of `datasets`")
        if dsets[f1["latent_dataset"]]["vae"] is None:
            fail(f"figures.fig1.latent_dataset = {f1['latent_dataset']!r} has vae: null; it needs latents")
    if "fig3" in figs:
        named += [(f"fig3.experiments[{k!r}]", e) for k, e in figs["fig3"]["experiments"].items()]
    if "samples" in figs:
        named += [("samples.experiments", e) for e in figs["samples"]["experiments"]]
    for where, e in named:
        if e not in exps:
            fail(f"figures.{where} = {e!r} is not a key of `experiments`")
    if "cell" in config and config["cell"] not in exps:
        fail(f"--config cell={config['cell']!r} is not a key of `experiments` ({sorted(exps)})")


def resolve_all(config: dict[str, Any]) -> dict[str, ExperimentConfig]:
    """Every experiment resolved (reading < preset < defaults < overrides); errors name the experiment.
    A distillation or CTM-with-teacher experiment must name a denoising experiment of its dataset as `teacher`."""
    out = {}
    for name in config["experiments"]:
        try:
            out[name] = resolve_workflow_experiment(config, name)
        except ConfigError as e:
            raise ConfigError(f"workflow config: experiments.{name}: {_where_set(config, name, str(e))}") from None
    for name, cfg in out.items():
        teacher = config["experiments"][name].get("teacher")
        where = f"workflow config: experiments.{name}"
        if reads_teacher(cfg) and not teacher:
            raise ConfigError(f"{where}: objective {cfg.objective} needs `teacher: <a denoising experiment>` "
                              "(e.g. the dataset's ldm_ve run)" + (" or ctm.solver: self (preset ctm_self)"
                                                                   if cfg.objective == "trajectory" else ""))
        if teacher and not reads_teacher(cfg):
            raise ConfigError(f"{where}.teacher: only distillation (preset cd) and CTM with ctm.solver teacher "
                              "(preset ctm) read a teacher; remove the key")
        if teacher:
            if teacher not in out:
                raise ConfigError(f"{where}.teacher = {teacher!r} is not a key of `experiments`")
            if out[teacher].objective != "denoising":
                raise ConfigError(f"{where}.teacher = {teacher!r} has objective {out[teacher].objective!r}; the "
                                  "teacher must be a denoising run (preset ldm_ve)")
            if out[teacher].dataset != cfg.dataset:
                raise ConfigError(f"{where}.teacher = {teacher!r} trains on {out[teacher].dataset!r}, not "
                                  f"{cfg.dataset!r}; distill from a teacher of the same dataset")
    return out


def _where_set(config: dict[str, Any], name: str, message: str) -> str:
    """The resolver's message without its `experiment 'x': ` prefix, plus the config key that set the value."""
    import re

    message = message.removeprefix(f"experiment {name!r}: ")
    m = re.match(r"([a-z_]+(?:\.[a-z_0-9]+)+)(?:\[\d+\])? = ", message)
    if not m:
        return message
    path = m.group(1).split(".")

    def has(d: Any, keys: list[str]) -> bool:
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return False
            d = d[k]
        return True

    if has(config["experiments"][name].get("overrides") or {}, path):
        return f"{message} (set by experiments.{name}.overrides.{m.group(1)})"
    if has(config.get("defaults") or {}, path):
        return f"{message} (set by defaults.{m.group(1)})"
    return message


def paper_tables(config: dict[str, Any]) -> list[str]:
    """The tables that reproduce the paper's (`published` names a table id); the others are beyond it."""
    return [t for t, d in config["tables"].items() if d.get("published")]


def _common(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in _COMMON if k in config}


def table_slice(config: dict[str, Any], table: str) -> dict[str, Any]:
    """What `lct report table` reads for one table: its rows and the evaluation protocol."""
    if table not in config["tables"]:
        raise ConfigError(f"workflow config: this config has no tables.{table} ({sorted(config['tables'])})")
    return {**_common(config), "tables": {table: config["tables"][table]}}


def sweep_slice(config: dict[str, Any]) -> dict[str, Any]:
    """What `lct sweep table` reads: the sweep, the tables naming its experiments, the evaluation protocol."""
    sweep = config.get("two_step_sweep")
    if not sweep:
        raise ConfigError("workflow config: the two_step_sweep target needs a `two_step_sweep` section "
                          "(num_samples, candidates, experiments; see config/config.yaml)")
    names = set(sweep["experiments"])
    tables = {k: t for k, t in config["tables"].items() if any(r["experiment"] in names for r in t["rows"])}
    return {**_common(config), "two_step_sweep": sweep, "tables": tables}


def figure_slice(config: dict[str, Any], figure: str) -> dict[str, Any]:
    """What a figure reads: its section, and for Figure 3 the experiments it resolves."""
    out = {**_common(config), "figures": {figure: config["figures"][figure]}}
    if figure == "fig3":
        names = set(config["figures"]["fig3"]["experiments"].values())
        out["experiments"] = {e: config["experiments"][e] for e in sorted(names)}
        out["datasets"] = {config["experiments"][e]["dataset"]: config["datasets"][config["experiments"][e]["dataset"]]
                           for e in names}
        out["defaults"] = config.get("defaults") or {}
    return out


def canonical(obj: Any) -> str:
    """Canonical JSON: a rule parameter that changes only when the content does."""
    return json.dumps(obj, sort_keys=True, default=str)


def write_yaml(content_json: str, path: str | Path, log: str | Path | None = None) -> None:
    """The local config-writing rules: canonical JSON (their params) -> YAML, temporary name then rename."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(json.loads(content_json), sort_keys=False))
    tmp.replace(path)
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        Path(log).write_text(f"wrote {path}\n")


def write_experiment(resolved_json: str, path: str | Path, log: str | Path | None = None) -> None:
    """The `experiment_config` rule: a resolved experiment (its params) -> YAML with its run length."""
    from lct.config import save_experiment

    from lct.config import BOOKKEEPING_KEYS

    keys = ", ".join(sorted(k for k in BOOKKEEPING_KEYS if k != "name"))
    save_experiment(ExperimentConfig.from_dict(json.loads(resolved_json)), path,
                    note=f"Bookkeeping ({keys}) may be newer in {Path(path).stem}.run.yaml beside this file, which\n"
                         "the workflow writes when it starts and passes as `lct train --run-settings`; editing it "
                         "never retrains.")
    if log:
        Path(log).write_text(f"wrote {path}\n")


# What each of the paper's tables and figures shows (for the captions of Snakemake's report).
PAPER_TARGETS = {
    "table1a": "Table 1a (CelebA-HQ 256): FID and Recall of iLCT and sLCT at 1 and 2 NFE, and of a VE latent "
               "diffusion model with the same UNet at 250 NFE, beside the literature.",
    "table1b": "Table 1b (LSUN Church 256): as Table 1a.",
    "table1c": "Table 1c (FFHQ 256): as Table 1a.",
    "table2a": "Table 2a (CelebA-HQ, 1 NFE): the paper's components (Cauchy loss, diffusion loss, OT coupling, "
               "scaled c, NsLN) added to iLCT one at a time.",
    "table2b": "Table 2b (CelebA-HQ, 1 NFE): the diffusion-loss threshold r.",
    "table2c": "Table 2c (CelebA-HQ, 1 NFE): the robust distance (L2, E-LatentLPIPS, Pseudo-Huber, "
               "Geman-McClure, Cauchy) with the rest of the method.",
    "table2d": "Table 2d (CelebA-HQ, 1 NFE): the norm layer of the UNet (GN, IN, LN, RMS, NsLN).",
    "table_cd": "Beyond the paper (not in arXiv 2502.01441): consistency training (iLCT, sLCT) against consistency "
                "distillation (Song et al. 2023, Algorithm 2) from the pipeline's own VE latent diffusion teacher, "
                "with L2, Pseudo-Huber and Cauchy distances, at 1 and 2 NFE, and the teacher at its sampler's NFE; "
                "the same data, network and evaluation as Table 1a.",
    "table_ctm": "Beyond the paper (not in arXiv 2502.01441): consistency trajectory models (Kim et al. 2024; soft "
                 "consistency matching and DSM, no GAN loss) with the teacher's Heun solver and with their own, at 1, "
                 "2 and 4 NFE by gamma-sampling, beside sLCT, the consistency-distillation students and the teacher; "
                 "the same data, network and evaluation as Table 1a.",
    "fig1": "Figure 1: box-and-whisker statistics of normalized latent vs pixel data (left) and of the "
            "temporal differences of a latent and a pixel iCT model (right); fences and outliers marked.",
    "fig2": "Figure 2: the robust losses and their derivatives against the residual.",
    "fig3": "Figure 3: the scale c against N, and FID / Recall over training for three choices of c.",
    "samples": "Figures 4-13: uncurated samples (1 and 2 NFE).",
}


def report_caption(config: dict[str, Any], target: str, experiment: str | None = None, nfe: int | None = None) -> str:
    """reStructuredText caption of one table, figure or sample grid in Snakemake's report: what the paper's
    shows, which runs and settings produced this one, and what this configuration cannot show."""
    lines = [PAPER_TARGETS.get(target, target), ""]
    reading = config.get("reading")
    lines.append(f"This reproduction: configuration ``{config.get('name')}``, reading ``{reading}`` "
                 + ("(the authors' code, which produced the published numbers)." if reading == "as_coded"
                    else "(the paper's equations as printed)." if reading == "paper_text" else "."))
    exps: list[str] = []
    if target in config.get("tables", {}):
        exps = [f"{r['model']}: ``{r['experiment']}`` at {r['nfe']} NFE" for r in config["tables"][target]["rows"]
                if r.get("experiment")]
    elif target == "fig1" and "fig1" in config.get("figures", {}):
        f1 = config["figures"]["fig1"]
        exps = [f"latent data ``{f1['latent_dataset']}``, pixel data ``{f1['pixel_dataset']}``",
                f"TD models ``{f1['latent_experiment']}`` and ``{f1['pixel_experiment']}`` at N = {f1['num_timesteps']}"]
    elif target == "fig3" and "fig3" in config.get("figures", {}):
        exps = [f"{label}: ``{e}``" for label, e in config["figures"]["fig3"]["experiments"].items()]
    elif target == "samples" and experiment:
        exps = [f"``{experiment}`` at {nfe} NFE, seeds 0..{config['figures']['samples']['grid'] ** 2 - 1}"]
    if exps:
        lines += ["", "Runs:", ""] + [f"- {e}" for e in exps]
    ev = config.get("evaluation") or {}
    if target.startswith("table") or target == "fig3":
        metric = "FID (clean-fid legacy_pytorch = pytorch-fid) and Recall (pr50k3_full)" \
            if ev.get("feature") == "inception" else f"Frechet distance and Recall in {ev.get('feature')} features (not FID)"
        lines += ["", f"Metric: {metric}, {ev.get('num_samples')} samples, EMA {ev.get('ema')}, "
                      f"{ev.get('image_format', 'jpeg')} images."]
    note = (config.get("report_notes") or {}).get(target)
    if note:
        lines += ["", f"**What this configuration cannot show:** {note}"]
    if config.get("random_weights_for_tests"):
        lines += ["", "**Smoke test with random weights: the numbers mean nothing.**"]
    return "\n".join(lines) + "\n"
