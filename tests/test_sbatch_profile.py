"""The sbatch lines profiles/slurm produces, recorded by a fake `sbatch` (no scheduler needed).

tests/slurm/fake/ holds fake sbatch/squeue/srun/sinfo/scontrol/sacctmgr/sacct put first on
PATH; the fake sbatch records its argv and runs the job script, so Snakemake submits the
training job, then the evaluation jobs that depend on it. The workflow is the tiny
tests/slurm/Snakefile, whose rules carry the real rule names (train, evaluate).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "slurm" / "fake"
PROFILE = ROOT / "profiles" / "slurm"
WORKFLOW_PROFILE = ROOT / "workflow" / "profiles" / "default"


def _flags(argv: list[str]) -> list[str]:
    """sbatch argv without the per-run parts (job name, log path, wrapped command, workdir)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--job-name", "--output", "-D"):
            skip = True
            continue
        if not a.startswith("--wrap="):
            out.append(a)
    return out


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> dict[str, list[str]]:
    tmp = tmp_path_factory.mktemp("fake-slurm")
    env = dict(os.environ, PATH=f"{FAKE}:{os.environ['PATH']}", FAKE_SLURM_DIR=str(tmp / "state"),
               SBATCH_ACCOUNT="lct_ci", SBATCH_PARTITION="gpu")
    cmd = [sys.executable, "-m", "snakemake", "-s", "tests/slurm/Snakefile", "--profile", str(PROFILE),
           "--workflow-profile", str(WORKFLOW_PROFILE), "--config", f"out={tmp / 'out'}", "nfe=1", "steps=2", "step_seconds=0",
           "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "1",
           "--slurm-logdir", str(tmp / "slurm_logs")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recorded = [json.loads(line) for line in (tmp / "state" / "sbatch.jsonl").read_text().splitlines()]
    by_rule = {}
    for argv in recorded:
        rule = argv[argv.index("--comment") + 1].split("_wildcards_")[0].removeprefix("rule_")
        by_rule[rule] = argv
    by_rule["_log"] = proc.stderr
    by_rule["_out"] = tmp / "out"
    return by_rule


@pytest.mark.slow
def test_training_job_asks_for_all_gpus_in_one_task(submissions):
    flags = _flags(submissions["train"])
    assert flags == ["--parsable", "--export=ALL", "--comment", "rule_train_wildcards_mini",
                     "-A", "lct_ci", "-p", "gpu", "-t", "2880", "--mem", "128000", "--requeue",
                     "--cpus-per-gpu=8", "--signal=TERM@300", "--gpus=a100:4"], flags
    # one task: no --ntasks / --ntasks-per-gpu (sbatch's default is one task); torchrun inside
    assert not any(f.startswith(("--ntasks", "-n")) for f in flags)
    log = [json.loads(x) for x in (submissions["_out"] / "runs/mini/log.jsonl").read_text().splitlines()]
    assert log[0]["world_size"] == 4 and log[0]["cuda_visible_devices"] == "0,1,2,3"


@pytest.mark.slow
def test_evaluation_job_asks_for_one_gpu(submissions):
    assert _flags(submissions["evaluate"]) == [
        "--parsable", "--export=ALL", "--comment", "rule_evaluate_wildcards_mini_1", "-A", "lct_ci",
        "-p", "gpu", "-t", "480", "--mem", "32000", "--requeue", "--cpus-per-gpu=8", "--gpus=a100:1"]


@pytest.mark.slow
def test_local_rules_are_not_submitted(submissions):
    assert set(k for k in submissions if not k.startswith("_")) == {"train", "evaluate"}
    assert (submissions["_out"] / "tables" / "table.csv").exists()


def test_profile_keeps_users_out_of_plugin_traps():
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue"  # sacct hangs without accounting / on scancel
    assert prof["retries"] >= 1  # TIMEOUT is only resubmitted through retries
    assert prof["slurm-requeue"] is True and prof["rerun-incomplete"] is True
    assert "set-resources" not in prof and "set-threads" not in prof  # per-rule: the workflow profile
    wprof = yaml.safe_load((WORKFLOW_PROFILE / "config.yaml").read_text())
    assert "default-resources" not in wprof  # would hide the site profile's account and partition
    for rule, res in wprof["set-resources"].items():
        assert "tasks" not in res, f"{rule}: `tasks` on a GPU rule makes one task per GPU"
        assert "--gres" not in str(res.get("slurm_extra", "")) and "--gpus" not in str(res.get("slurm_extra", ""))
    text = (PROFILE / "config.yaml").read_text().lower()
    assert "password" not in text and "token" not in text


def test_profile_dry_run_without_slurm_binaries(tmp_path):
    """`--profile profiles/slurm -n` works on a machine with no SLURM at all."""
    bin_dir = tmp_path / "bin"  # basic tools only, so no sbatch/squeue/sacct is found
    bin_dir.mkdir()
    for tool in ("which", "sh", "bash", "env"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}:{bin_dir}")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", "tests/slurm/Snakefile", "--profile",
                           str(PROFILE), "--workflow-profile", str(WORKFLOW_PROFILE), "-n",
                           "--config", f"out={tmp_path / 'out'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train" in proc.stdout and "evaluate" in proc.stdout
