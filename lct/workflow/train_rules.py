"""The training stage's rule helpers: experiment configs and bookkeeping, training inputs and flags, and
what the site asks of every job (partitions, account, GPU model, walltime)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from lct.config import BOOKKEEPING_KEYS, flat_settings, is_added_default, weight_settings
from lct.workflow.base import NotATrigger


class TrainRules:
    """Rules' methods of this stage (mixed into lct.workflow.rules.Rules; `self` is the Rules)."""

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
