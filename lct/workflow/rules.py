"""What the workflow's rules ask of the workflow config: paths, input lists and command arguments.

workflow/rules/common.smk makes one ``R = Rules(config)``; the rules name its methods as input
functions and params (Snakemake passes ``wildcards``, and ``input`` / ``output`` where a method's
signature names them). The logic lives here as plain, tested Python (tests/test_wfrules.py);
common.smk keeps the output paths, the wildcard constraints and the target lists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lct.workflow.config import check_references, resolve_all
from lct.workflow.base import NotATrigger, WorkflowConfigError, _fail, alternation  # noqa: F401 (re-exported)
from lct.workflow.data_rules import DataRules
from lct.workflow.eval_rules import EvalRules
from lct.workflow.report_rules import ReportRules
from lct.workflow.train_rules import TrainRules
from lct.workflow.site import site_settings


class Rules(DataRules, TrainRules, EvalRules, ReportRules):
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
