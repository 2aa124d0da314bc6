"""What a site sets, and the checks that keep a bad configuration off the queue.

The workflow's configuration is always the paper's (config/config.yaml), then the site file
(config/site.yaml, untracked, or the file named by $LCT_SITE_CONFIG), then each ``--configfile``
and ``--config`` on the command line as an overlay. A config marked ``standalone: true`` (the
demo, the test configs) replaces the paper's instead; it still takes the site file's ``site:``
section. ``site:`` holds what differs between clusters (GPU model, partitions, account, maximum
walltime); each also has an environment variable (`SITE_ENV`), which wins over the file.

Every check here raises `ConfigError` with one line naming the key and the fix; the Snakefile
prints it and exits (`exit_on_config_error`), so ``snakemake -n`` refuses a bad value in a few
lines, without a traceback, before anything is queued.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from lct.config import ConfigError

# site.<key> -> the environment variable that overrides it (sbatch's own SBATCH_ACCOUNT for the account).
SITE_ENV = {
    "gpu_model": "LCT_GPU_MODEL",
    "gpu_partition": "LCT_GPU_PARTITION",
    "cpu_partition": "LCT_CPU_PARTITION",
    "account": "SBATCH_ACCOUNT",
    "max_runtime_h": "LCT_MAX_RUNTIME_H",
}
SITE_DEFAULTS: dict[str, Any] = {"gpu_model": "a100", "gpu_partition": None, "cpu_partition": None, "account": None,
                                 "max_runtime_h": 48}
# Dataset paths shipped in config/config.yaml: placeholders until a site file names the real folder.
PLACEHOLDER_PREFIX = "/datasets/"


def site_file(repo_root: str | Path, environ: Mapping[str, str] = os.environ) -> Path | None:
    """$LCT_SITE_CONFIG, else config/site.yaml of this clone when it exists; None when there is none.
    A $LCT_SITE_CONFIG that does not exist is an error (it was asked for by name)."""
    named = environ.get("LCT_SITE_CONFIG")
    if named:
        if not Path(named).is_file():
            raise ConfigError(f"LCT_SITE_CONFIG={named}: no such file; copy config/site.example.yaml there, "
                              "or unset LCT_SITE_CONFIG")
        return Path(named)
    default = Path(repo_root) / "config" / "site.yaml"
    return default if default.is_file() else None


def site_settings(config: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The site's knobs: defaults < the config's `site:` section < environment variables."""
    out = dict(SITE_DEFAULTS)
    out.update({k: v for k, v in (config.get("site") or {}).items() if v is not None})
    for key, var in SITE_ENV.items():
        if environ.get(var):
            out[key] = environ[var]
    try:
        out["max_runtime_h"] = float(out["max_runtime_h"])
    except (TypeError, ValueError):
        raise ConfigError(f"site.max_runtime_h (or ${SITE_ENV['max_runtime_h']}) = {out['max_runtime_h']!r}: "
                          "give the site's maximum job walltime in hours, e.g. 48") from None
    if out["max_runtime_h"] < 1:
        raise ConfigError(f"site.max_runtime_h = {out['max_runtime_h']:g}: the maximum walltime must be at least 1 hour")
    return out


def check_schema(config: dict[str, Any], schema_path: str | Path) -> None:
    """Validate against config/schema.yaml; the first error as one line: the key path, the value, the rule."""
    import jsonschema
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    hint = ""
    if error.validator == "required" and not error.absolute_path:
        hint = (" (a partial config is an overlay on config/config.yaml; a complete one of its own needs "
                "`standalone: true`)")
    raise ConfigError(f"workflow config: {key}: {message}{hint}")


def exit_on_config_error(fn: Callable[[], Any]) -> Any:
    """Run a parse-time check; on ConfigError print its one line and exit 2 (no traceback)."""
    try:
        return fn()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def dataset_source_problem(name: str, dataset: dict[str, Any]) -> str | None:
    """Why `datasets.<name>.source` cannot be prepared as configured (the key to set), or None."""
    src = dataset["source"]
    kind = src["kind"]
    if kind in ("folder", "archive", "lmdb"):
        path = src.get("path")
        if not path:
            return f"datasets.{name}.source.path is not set: point it at your copy of {name} (config/site.yaml)"
        if not Path(path).exists():
            what = "a placeholder" if str(path).startswith(PLACEHOLDER_PREFIX) else "not found"
            return (f"datasets.{name}.source.path = {path} is {what}: set it to your copy of {name} in "
                    "config/site.yaml (see config/site.example.yaml)")
    if kind == "url" and not (src.get("sha256") or src.get("md5")):
        return (f"datasets.{name}.source.sha256 is not set: a download is used only with a checksum; set the "
                f"sha256 of a copy you trust in config/site.yaml, or use {{kind: lmdb, path: ...}}")
    return None


def report_source_problem(problem: str, warned: set[str], executing: bool) -> None:
    """A dataset source that cannot work: a real run stops at once (exit 2, the key to set); a dry-run,
    `--summary` or `--report` warns once per problem, so CI dry-runs of the paper configuration pass."""
    if executing:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    if problem not in warned:
        warned.add(problem)
        print(f"warning: {problem} (a real run refuses to start)", file=sys.stderr)


def cli_args(argv: list[str]) -> Any:
    """Snakemake's own parse of its command line (targets, --report), or None when it cannot be parsed."""
    try:
        from snakemake.cli import get_argument_parser

        args, _ = get_argument_parser().parse_known_args(argv)
        return args
    except (SystemExit, Exception):  # noqa: BLE001 - Snakemake parses its own command line; never fail here
        return None


def check_targets(argv: list[str], targets: list[str]) -> None:
    """An unknown target on the command line gets one line listing the targets (file paths pass through)."""
    args = cli_args(argv)
    for t in getattr(args, "targets", None) or []:
        t = str(t)
        if "/" in t or "." in t or t in targets:
            continue
        raise ConfigError(f"unknown target {t!r}; the targets are: {', '.join(targets)} "
                          "(or a file path under results/); e.g. `snakemake --profile slurm all_tables`")


def is_report_run(argv: list[str]) -> bool:
    """`snakemake --report ...`: the targets then list only what exists (lct.workflow.rules.Rules.report_mode)."""
    return bool(getattr(cli_args(argv), "report", None))
