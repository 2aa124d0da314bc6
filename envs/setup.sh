#!/usr/bin/env bash
# Set up a fresh machine for the pipeline (idempotent; rerun any time):
#   1. the pinned requirements (envs/requirements.txt) and the `lct` package (editable) into the
#      active Python, skipped when already satisfied;
#   2. the site profile profiles/slurm copied to ~/.config/snakemake/slurm (only where none exists;
#      an existing one is never overwritten, only checked),
#      where Snakemake looks up a bare profile name, so `snakemake --profile slurm all_tables` works
#      from the root of any clone (per-rule resources: that clone's workflow/profiles/default).
# Conda instead of pip: `conda env create -n lct -f envs/environment.yaml && conda activate lct`
# first (from the repository root), then this script only installs the site profile.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"

# 1. Requirements: compare installed versions with the pins first, so a ready machine needs no network.
if "$PYTHON" - envs/requirements.txt <<'PY'
import re, sys
from importlib.metadata import PackageNotFoundError, version
bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have is None or have.split("+")[0] != want.split("+")[0]:
        bad.append(f"{name} {have} (want {want})")
if bad:
    print("setup: to install:", ", ".join(bad))
sys.exit(1 if bad else 0)
PY
then
    echo "setup: pinned requirements already installed"
else
    "$PYTHON" -m pip install -r envs/requirements.txt
fi

# -I: ignore the working directory, so only an installed `lct` counts.
if "$PYTHON" -I -c "import lct, pathlib, sys; sys.exit(0 if pathlib.Path(lct.__file__).resolve().parent == pathlib.Path('$ROOT/lct').resolve() else 1)" 2>/dev/null \
    && command -v lct >/dev/null; then
    echo "setup: lct already installed from $ROOT"
else
    "$PYTHON" -m pip install --no-deps -e "$ROOT"
fi

# 2. The site profile where `--profile slurm` finds it. It holds only site settings (executor,
#    status command, requeue); per-rule resources come from each clone's own
#    workflow/profiles/default, and partitions, account, GPU model and walltime from
#    config/site.yaml, so one copy serves every clone. Installed only where none exists: an
#    existing ~/.config/snakemake/slurm (yours, or an earlier copy) is never overwritten; it is
#    checked for the SLURM executor and the settings the pipeline relies on, and what is missing
#    is printed with the line to add.
CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
SITE="$CONFIG_HOME/slurm"
if [ ! -e "$SITE" ] && [ ! -L "$SITE" ]; then
    mkdir -p "$SITE"
    cp "$ROOT/profiles/slurm/config.yaml" "$SITE/config.yaml"
    echo "$ROOT/profiles/slurm/config.yaml" > "$SITE/.installed-by-lct-setup"
    echo "setup: installed the site profile $SITE (a copy of profiles/slurm)"
else
    "$PYTHON" - "$SITE" "$ROOT/profiles/slurm/config.yaml" <<'PY'
import sys
from pathlib import Path

import yaml

site, ours = Path(sys.argv[1]), yaml.safe_load(Path(sys.argv[2]).read_text())
cfg_file = site / "config.yaml"
try:
    have = yaml.safe_load(cfg_file.read_text()) or {}
except (OSError, yaml.YAMLError) as e:
    print(f"setup: {cfg_file} cannot be read as YAML ({e}); left as is. --profile profiles/slurm uses this "
          "repository's site settings", file=sys.stderr)
    sys.exit(0)
# What the pipeline relies on (docs/SLURM.md says why each is there).
needed = ["executor", "retries", "rerun-incomplete", "latency-wait", "rerun-triggers", "slurm-status-command",
          "slurm-init-seconds-before-status-checks", "slurm-requeue"]
problems = []
if have.get("executor") != "slurm":
    problems.append(f"executor: slurm (it has {have.get('executor')!r}; without it --profile slurm runs jobs locally)")
problems += [f"{k}: {ours[k]}" for k in needed if k != "executor" and k not in have]
if problems:
    print(f"setup: {site} exists and is left as is; it lacks what the pipeline relies on. Add to "
          f"{cfg_file}:\n" + "\n".join(f"    {p}" for p in problems) +
          "\n  or run with --profile profiles/slurm (this repository's site profile).", file=sys.stderr)
else:
    print(f"setup: site profile {site} exists (left as is) and names the SLURM executor and every setting "
          "the pipeline relies on")
PY
fi
echo "setup: done. Demo: snakemake --profile profiles/demo all"
