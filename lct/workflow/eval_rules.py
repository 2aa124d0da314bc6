"""The evaluation stage's rule helpers: `lct evaluate` / `lct ref-stats` flags and inputs, and the two_step_sweep."""

from __future__ import annotations

from typing import Any

from lct.workflow.config import canonical, sweep_slice
from lct.workflow.base import _fail


class EvalRules:
    """Rules' methods of this stage (mixed into lct.workflow.rules.Rules; `self` is the Rules)."""

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
        checkpoint's: editing them re-scores, never retrains (lct.config.SAMPLING_KEYS). A sampler setting newer
        than finished evaluations is left out at its neutral value (lct.config.ADDED_SAMPLING): no re-scoring."""
        from lct.config import ADDED_SAMPLING

        items = self.experiments[experiment].to_dict()["sample"].items()
        return " ".join(f"--sampling {k}={v}" for k, v in items
                        if not (f"sample.{k}" in ADDED_SAMPLING and v == ADDED_SAMPLING[f"sample.{k}"]))

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
