"""Profiles the Snakemake way: dry-runs need no profile; the site profile holds only site settings and
each clone's own workflow profile gives the per-rule resources; setup never replaces what it did not make."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def run(cmd: list[str], cwd: Path, home: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAKEMAKE_", "XDG_CONFIG"))}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def clone(dest: Path) -> Path:
    """A copy of the working tree (what `git clone` of this commit gives), without results."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", "results", ".snakemake", "resources",
                                                               "__pycache__", "*.egg-info", ".pytest_cache"))
    return dest


@pytest.mark.parametrize("args", [["-n", "all_tables"], ["-n", "--configfile=config/demo.yaml", "all"], ["--profile", "profiles/demo", "-n", "all"], ["--lint"]])
def test_dry_runs_and_lint_need_no_profile(tmp_path, args):
    home = tmp_path / "home"
    home.mkdir()
    r = run([sys.executable, "-m", "snakemake", *args], ROOT, home)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Lints for" not in r.stdout


def test_two_clones_share_one_site_profile_and_keep_their_own_resources(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    a, b = clone(tmp_path / "a"), clone(tmp_path / "b")
    wp = b / "workflow/profiles/default/config.yaml"
    prof = yaml.safe_load(wp.read_text())
    prof["set-resources"]["train"]["gpu"] = 2
    wp.write_text(yaml.safe_dump(prof))
    env_setup = ["bash", "envs/setup.sh"]
    r = run(env_setup, a, home)
    assert r.returncode == 0 and "installed the site profile" in r.stdout, r.stdout
    site = home / ".config/snakemake/slurm"
    assert (site / "config.yaml").read_text() == (ROOT / "profiles/slurm/config.yaml").read_text()
    assert "set-resources" not in yaml.safe_load((site / "config.yaml").read_text())  # site settings only
    r = run(env_setup, b, home)
    assert r.returncode == 0 and "exists (left as is) and names the SLURM executor" in r.stdout, r.stdout
    for repo, gpus in ((a, 4), (b, 2)):
        r = run([sys.executable, "-m", "snakemake", "--profile", "slurm", "-n", "--printshellcmds", "table2b"], repo, home)
        assert r.returncode == 0, r.stdout[-3000:]
        assert f"--gpus {gpus} " in r.stdout, (repo, r.stdout[-3000:])
        assert "results/paper/tables/table2b.csv" in r.stdout


def test_setup_never_replaces_a_profile_it_did_not_make(tmp_path):
    home = tmp_path / "home"
    own = home / ".config/snakemake/slurm"
    own.mkdir(parents=True)
    (own / "config.yaml").write_text("executor: slurm\n# my site\n")
    r = run(["bash", "envs/setup.sh"], ROOT, home)
    # never overwritten; what it lacks is named, with the line to add
    assert r.returncode == 0 and "exists and is left as is; it lacks" in r.stdout, r.stdout
    assert "slurm-status-command: squeue" in r.stdout and "executor: slurm (" not in r.stdout
    assert (own / "config.yaml").read_text() == "executor: slurm\n# my site\n"
    (own / "config.yaml").write_text("executor: cluster-generic\n")
    r = run(["bash", "envs/setup.sh"], ROOT, home)
    assert "executor: slurm (it has 'cluster-generic'" in r.stdout, r.stdout
    link = tmp_path / "home2/.config/snakemake/slurm"
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "elsewhere")
    r = run(["bash", "envs/setup.sh"], ROOT, tmp_path / "home2")
    assert r.returncode == 0 and link.is_symlink() and "left as is" in r.stdout


def test_deterministic_rules_are_not_retried_and_training_is():
    """`retries: 0` on the rules whose failures repeat (checksums, dataset sources, downloads); the
    resumable GPU rules (train, encode, evaluate, ...) keep the site profile's `retries`."""
    import re

    text = "\n".join(p.read_text() for p in sorted((ROOT / "workflow" / "rules").glob("*.smk")))
    blocks = dict(re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", text, flags=re.S | re.M))
    for rule in ("fetch_weights", "download_data", "prepare_data"):
        assert re.search(r"^\s+retries: 0\b", blocks[rule], flags=re.M), rule
    for rule in ("encode", "evaluate", "evaluate_snapshots", "ref_stats"):
        assert "retries:" not in blocks[rule], rule
    # training: as many attempts as its job segments need, from lct estimate and the site's walltime
    assert re.search(r"^\s+retries: R\.train_retries\(\)", blocks["train"], flags=re.M)
    site = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert site["retries"] >= 1
