"""The report stage's rule helpers: tables, figures, targets, and the captions of Snakemake's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from lct.workflow.config import canonical, figure_slice, paper_tables, report_caption, table_slice
from lct.workflow.base import _fail


class ReportRules:
    """Rules' methods of this stage (mixed into lct.workflow.rules.Rules; `self` is the Rules)."""

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
