#!/usr/bin/env bash
# Set up a fresh machine for the pipeline (idempotent; rerun any time):
#   1. the pinned requirements (envs/requirements.txt) and the `lct` package (editable) into the
#      active Python, skipped when already satisfied;
#   2. the site profile profiles/slurm copied to ~/.config/snakemake/slurm (only where none exists),
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
#    account/partition from the environment, status command, requeue); per-rule resources come
#    from each clone's own workflow/profiles/default, so one copy serves every clone. Installed
#    only where none exists; a file or link this script did not make is never replaced.
CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}/snakemake"
SITE="$CONFIG_HOME/slurm"
MARK=".installed-by-lct-setup"
if [ -L "$SITE" ] && [ "$(basename "$(dirname "$(readlink "$SITE")")")/$(basename "$(readlink "$SITE")")" = "profiles/slurm" ] \
        && [ -f "$(readlink "$SITE")/config.yaml" ] && grep -q "snakemake-executor-plugin-slurm" "$(readlink "$SITE")/config.yaml"; then
    rm "$SITE"  # a link to one clone's profiles/slurm, made by an earlier version of this script
    echo "setup: replacing the link $SITE (earlier setup) by a copy"
fi
if [ ! -e "$SITE" ] && [ ! -L "$SITE" ]; then
    mkdir -p "$SITE"
    cp "$ROOT/profiles/slurm/config.yaml" "$SITE/config.yaml"
    echo "$ROOT/profiles/slurm/config.yaml" > "$SITE/$MARK"
    echo "setup: installed the site profile $SITE (a copy of profiles/slurm)"
elif [ -f "$SITE/$MARK" ] && [ ! -L "$SITE" ]; then
    if ! cmp -s "$ROOT/profiles/slurm/config.yaml" "$SITE/config.yaml"; then
        cp "$ROOT/profiles/slurm/config.yaml" "$SITE/config.yaml"
        echo "setup: updated the site profile $SITE (made by this script) from profiles/slurm"
    else
        echo "setup: site profile $SITE is current"
    fi
else
    echo "setup: $SITE exists and was not made by this script; left as is. Per-rule resources come from" \
         "this clone's workflow/profiles/default either way. To use this repository's site settings instead:" \
         "--profile profiles/slurm (or move $SITE away and rerun envs/setup.sh)" >&2
fi
echo "setup: done. Demo: snakemake --profile profiles/local --configfile config/demo.yaml all"
