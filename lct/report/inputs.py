"""What the report reads: a workflow config or the slice of it one table or figure needs (the
workflow's table_config / figure_config rules write the slices), and output prefixes."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_workflow_config(config: str | Path | dict[str, Any]) -> dict[str, Any]:
    """The workflow config (or a slice of it) as a dict: a dict is returned as is, a path is read as YAML."""
    if isinstance(config, dict):
        return config
    import yaml

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"workflow config {path} not found (the workflow writes results/<name>/configs/"
                                f"tables/<table>.yaml and configs/figures/<figure>.yaml)")
    return yaml.safe_load(path.read_text())


def strip_ext(p: str) -> str:
    """Accept `tables/table2a` or `tables/table2a.csv` (Snakemake outputs name files)."""
    path = Path(p)
    return str(path.with_suffix("")) if path.suffix in (".csv", ".md", ".tex", ".png", ".pdf") else p
