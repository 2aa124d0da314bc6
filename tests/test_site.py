"""A site user's first day, as typed: a site file with only dataset paths, bad values refused by a
dry-run in one line naming the key, one cell planning one training, an unknown target, a placeholder
path refusing a real run, the report of a partial run, and the per-experiment walltime plan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def snakemake(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 180):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    env.pop("LCT_SITE_CONFIG", None) if "LCT_SITE_CONFIG" not in (env or {}) else None
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "workflow/Snakefile"),
                           "--directory", str(cwd), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def site(tmp_path) -> Path:
    """A site file with only the dataset paths (real folders), as a new site user writes it."""
    for d in ("celebahq", "ffhq"):
        (tmp_path / d).mkdir()
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"published": str(ROOT / "config/published_results.csv"), "datasets": {
        "celebahq256": {"source": {"path": str(tmp_path / "celebahq")}},
        "ffhq256": {"source": {"path": str(tmp_path / "ffhq")}},
        "lsun_church256": {"source": {"kind": "lmdb", "path": str(tmp_path / "ffhq"), "url": None}}}}))
    return path


def test_a_paths_only_site_file_dry_runs_all_tables(tmp_path, site):
    r = snakemake(["-n", "all_tables"], tmp_path, {"LCT_SITE_CONFIG": str(site)})
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    assert "required property" not in r.stderr and "warning: datasets" not in r.stderr, r.stderr[-2000:]
    # the same file given as --configfile after the target works too (an overlay on the paper config)
    r = snakemake(["-n", "all_tables", "--configfile", str(site)], tmp_path)
    assert r.returncode == 0 and "warning: datasets" not in r.stderr, r.stderr[-3000:]


BAD = [
    ({"defaults": {"train": {"lr": -0.0001}}}, "train.lr = -0.0001", "in (0, 1]"),
    ({"defaults": {"train": {"batch_size": 0}}}, "train.batch_size = 0", ">= 1"),
    ({"experiments": {"celebahq_slct": {"overrides": {"train": {"epochs": -5}}}}}, "train.epochs = -5", "> 0"),
    ({"defaults": {"train": {"ema_decays": [1.5]}}}, "train.ema_decays[0] = 1.5", "in [0, 1)"),
    ({"defaults": {"schedule": {"sigma_min": 100.0}}}, "schedule.sigma_max = 80.0 must be above", "sigma_min"),
    ({"experiments": {"cifar10_ict": {"overrides": {"network": {"dropout": 1.2}}}}}, "network.dropout = 1.2",
     "in [0, 1)"),
    ({"defaults": {"train": {"grad_clip": -1}}}, "train.grad_clip = -1", "> 0"),
    ({"defaults": {"sample": {"two_step_index": 641}}}, "sample.two_step_index = 641", "[0, 640]"),
    ({"site": {"max_runtime_h": 0}}, "site.max_runtime_h", "minimum"),
]


@pytest.mark.parametrize("overlay, key, allowed", BAD, ids=[b[1].split(" ")[0] for b in BAD])
def test_a_bad_value_is_refused_by_the_dry_run_in_one_line(tmp_path, overlay, key, allowed):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(overlay))
    r = snakemake(["-n", "all_tables", "--configfile", str(bad)], tmp_path)
    assert r.returncode != 0
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and key in err[0] and allowed in err[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 4, r.stderr


def test_one_cell_is_one_run_and_an_unknown_target_lists_the_targets(tmp_path):
    published = f"published={ROOT / 'config/published_results.csv'}"  # the run is in tmp_path, not the clone
    r = snakemake(["-n", "cell", "--config", "cell=celebahq_2c_huber", published], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train                    1" in r.stdout and "cells/celebahq_2c_huber.md" in r.stdout
    r = snakemake(["-n", "tabel2a"], tmp_path)
    assert r.returncode != 0 and r.stderr.strip().count("\n") <= 1, r.stderr
    assert "unknown target 'tabel2a'" in r.stderr and "all_tables" in r.stderr and "table2a" in r.stderr


def test_a_placeholder_path_warns_in_a_dry_run_and_refuses_a_real_run(tmp_path):
    target = "results/paper/data/celebahq256/images.npy"
    r = snakemake(["-n", target], tmp_path)
    assert r.returncode == 0 and "warning: datasets.celebahq256.source.path = /datasets/celebahq256" in r.stderr
    r = snakemake(["--cores", "1", target], tmp_path)
    assert r.returncode != 0 and "error: datasets.celebahq256.source.path" in r.stderr, r.stderr[-2000:]
    assert "config/site.yaml" in r.stderr and not (tmp_path / target).exists()
    assert not list((tmp_path / ".snakemake").glob("slurm_logs/**/*.log"))


def test_site_knobs_reach_the_jobs_from_the_file_or_the_environment(tmp_path, site):
    cfg = yaml.safe_load(site.read_text())
    cfg["site"] = {"gpu_model": "h100", "gpu_partition": "gpu-long", "cpu_partition": "cpu", "max_runtime_h": 24}
    site.write_text(yaml.safe_dump(cfg))
    r = snakemake(["-n", "results/paper/runs/cifar10_ict/final.pt"], tmp_path, {"LCT_SITE_CONFIG": str(site)})
    assert r.returncode == 0, r.stderr[-2000:]
    jobs = r.stdout.split("rule ")
    train = next(j for j in jobs if j.startswith("train:"))
    prep = next(j for j in jobs if j.startswith("prepare_data:"))
    assert "slurm_partition=gpu-long" in train and "gpu_model=h100" in train and "runtime=1440" in train, train
    assert "slurm_partition=cpu" in prep and "gpu_model" not in prep, prep
    r = snakemake(["-n", "results/paper/runs/cifar10_ict/final.pt"], tmp_path,
                  {"LCT_SITE_CONFIG": str(site), "LCT_GPU_MODEL": "a40", "LCT_MAX_RUNTIME_H": "12"})
    train = next(j for j in r.stdout.split("rule ") if j.startswith("train:"))
    assert "gpu_model=a40" in train and "runtime=720" in train, train


def test_lct_estimate_prints_hours_segments_and_retries_per_experiment():
    r = subprocess.run([sys.executable, "-m", "lct", "estimate"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items() if k != "LCT_SITE_CONFIG"})
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("| `cifar10_ict` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    gpu_h, wall_h, segments, runtime, retries = float(cells[1].replace(",", "")), float(cells[2]), int(cells[3]), \
        cells[4], int(cells[5])
    assert segments * 48 >= 1.5 * wall_h and runtime == "48 h" and retries == segments + 1, row
    assert abs(gpu_h / 4 - wall_h) < 1
