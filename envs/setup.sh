#!/usr/bin/env bash
# Set up a fresh machine for the pipeline (idempotent; rerun any time):
#   1. the pinned requirements (envs/requirements.txt) and the `lct` package (editable) into the
#      active Python, skipped when already satisfied;
#   2. profiles/slurm linked to ~/.config/snakemake/slurm, where Snakemake looks up a bare profile
#      name, so `snakemake --profile slurm all_tables` works from the repository root.
# Conda instead of pip: `conda env create -n lct -f envs/environment.yaml && conda activate lct`
# first (from the repository root), then this script only links the profile.
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

# 2. The SLURM profile where `--profile slurm` finds it (never overwrite a user's own profile).
CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
mkdir -p "$CONFIG_HOME"
if [ -L "$CONFIG_HOME/slurm" ] || [ ! -e "$CONFIG_HOME/slurm" ]; then
    ln -sfn "$ROOT/profiles/slurm" "$CONFIG_HOME/slurm"
    echo "setup: $CONFIG_HOME/slurm -> $ROOT/profiles/slurm"
else
    echo "setup: $CONFIG_HOME/slurm exists and is not a link; left as is (use --profile profiles/slurm)" >&2
fi
echo "setup: done. Demo: snakemake --profile profiles/local --configfile config/demo.yaml all"
