"""The SLURM path for real: tests/slurm/cluster.sh's single-node scheduler runs the jobs.

Skipped when no scheduler answers (`scontrol ping`). Every snakemake call runs under a
subprocess timeout so a hang fails the test. The workflow is the tiny tests/slurm/Snakefile
(rules train / evaluate / local table; STAND-IN commands, see that file) driven through the
UNCHANGED profiles/slurm with the user's command `snakemake --profile slurm ...`; the
test-cluster overrides are environment variables (SBATCH_ACCOUNT / SBATCH_PARTITION) and
command-line flags only.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"
SNAKEFILE = "tests/slurm/Snakefile"


def _scheduler_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (subprocess.SubprocessError, OSError):
        return False
    return "UP" in out


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not _scheduler_up(), reason="no SLURM scheduler answers (tests/slurm/cluster.sh start)")]


@pytest.fixture(scope="module", autouse=True)
def bare_profile_name():
    """`--profile slurm` resolves in ~/.config/snakemake/ (envs/setup.sh links it); make sure it does."""
    link = Path.home() / ".config" / "snakemake" / "slurm"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(PROFILE)
    assert (link / "config.yaml").read_text() == (PROFILE / "config.yaml").read_text(), \
        f"{link} is not this checkout's profiles/slurm"


def _snakemake(args: list[str], timeout: float, env_extra: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "SBATCH_ACCOUNT": "lct_ci", "SBATCH_PARTITION": "gpu", **(env_extra or {})}
    cmd = ["snakemake", "--profile", "slurm", "-s", SNAKEFILE,
           "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5", "--verbose", *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    took = time.monotonic() - t0
    print(f"\n$ {' '.join(cmd)}\n  took {took:.1f} s, rc {proc.returncode}")
    for line in proc.stderr.splitlines():
        if "sbatch call:" in line:
            print("  " + re.sub(r" --wrap=.*", " --wrap=...", line.strip()))
    return proc, took


def _job_ids(log: str) -> list[str]:
    return re.findall(r"submitted with SLURM jobid (\d+)", log)


def _sacct(jobid: str) -> dict:
    """State, allocated TRES and account of a job, from accounting (slurmdbd)."""
    for _ in range(30):  # slurmdbd records finished jobs a moment later
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", jobid, "-o", "State,AllocTRES,Account,Partition,NTasks"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        if out and not out.startswith(("PENDING", "RUNNING")):
            state, tres, account, partition, ntasks = out.splitlines()[0].split("|")
            return {"state": state, "tres": tres, "account": account, "partition": partition}
        time.sleep(1)
    raise AssertionError(f"sacct has no finished record of job {jobid}")


def _starts(run_dir: Path) -> list[dict]:
    return [e for e in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if e["event"] == "start"]


def _profile_train_resources(**changes) -> list[str]:
    """--set-resources for the drills: the profile's own train entry with `changes` applied
    (a --set-resources given on the command line REPLACES the profile's whole set-resources)."""
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    rules = {**prof["set-resources"], "train": {**prof["set-resources"]["train"], **changes}}
    return ["--set-resources", *(f"{r}:{k}={v}" for r, res in rules.items() for k, v in res.items())]


def test_workflow_runs_through_sbatch_and_matches_local_run(tmp_path):
    out = tmp_path / "slurm"
    proc, took = _snakemake(["--config", f"out={out}", "steps=4", "step_seconds=0.1"], timeout=150)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ids = _job_ids(proc.stderr)
    assert len(ids) == 3, ids  # train + 2 x evaluate; the local `table` and `all` are not submitted
    calls = [l for l in proc.stderr.splitlines() if "sbatch call:" in l]
    train_call = next(c for c in calls if "rule_train_" in c)
    assert "--gpus=a100:4" in train_call and "--ntasks" not in train_call
    acct = [_sacct(j) for j in ids]
    assert all(a["state"] == "COMPLETED" and a["account"] == "lct_ci" and a["partition"] == "gpu" for a in acct), acct
    assert sorted(re.search(r"gres/gpu=(\d+)", a["tres"]).group(1) for a in acct) == ["1", "1", "4"], acct
    start = _starts(out / "runs" / "mini")[0]
    # one SLURM task holding 4 GPUs; torchrun inside started 4 workers
    assert (start["slurm_ntasks"], start["world_size"], start["cuda_visible_devices"]) == ("1", 4, "0,1,2,3"), start
    local = tmp_path / "local"
    lp = subprocess.run(["snakemake", "-s", SNAKEFILE, "--cores", "2", "--config", f"out={local}", "steps=4",
                         "step_seconds=0.1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert lp.returncode == 0, lp.stderr[-3000:]
    assert (out / "tables/table.csv").read_text() == (local / "tables/table.csv").read_text()


def test_timeout_is_resubmitted_and_resumes_from_checkpoint(tmp_path):
    out = tmp_path / "timeout"
    # 1-minute limit, no early signal: the job really hits its time limit (100 steps x 1 s)
    proc, took = _snakemake(["--config", f"out={out}", "nfe=1", "steps=100", "step_seconds=1",
                             *_profile_train_resources(runtime=1, slurm_extra="''")], timeout=270)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ids = _job_ids(proc.stderr)
    first, second = _sacct(ids[0]), _sacct(ids[1])
    assert first["state"] == "TIMEOUT" and second["state"] == "COMPLETED", (first, second)
    starts = _starts(out / "runs" / "mini")
    assert [s["slurm_job_id"] for s in starts] == ids[:2]
    assert starts[0]["step"] == 0 and starts[1]["step"] >= 50, starts  # resumed, not from step 0
    print(f"  timeout drill: resumed at step {starts[1]['step']} of 100, {took:.1f} s")


def test_scancel_is_noticed_and_run_ends(tmp_path):
    out = tmp_path / "cancel"
    env = dict(os.environ, SBATCH_ACCOUNT="lct_ci", SBATCH_PARTITION="gpu")
    cmd = ["snakemake", "--profile", "slurm", "-s", SNAKEFILE, "--retries", "0",
           "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5",
           "--config", f"out={out}", "nfe=1", "steps=120", "step_seconds=1"]
    t0 = time.monotonic()
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = out / "runs" / "mini" / "log.jsonl"
        for _ in range(60):
            if log.exists():
                break
            time.sleep(0.5)
        jobid = _starts(out / "runs" / "mini")[0]["slurm_job_id"]
        subprocess.run(["scancel", jobid], check=True, timeout=30)
        text, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    took = time.monotonic() - t0
    print(f"\n  scancel drill: run ended {took:.1f} s after start, rc {run.returncode}")
    assert run.returncode != 0
    assert re.search(rf"{jobid}.*CANCELLED|CANCELLED.*{jobid}", text) or "CANCELLED" in text, text[-3000:]
    assert _sacct(jobid)["state"].startswith("CANCELLED")


@pytest.mark.parametrize("var,value,message", [
    ("SBATCH_ACCOUNT", "no_such_account", r"account no_such_account appears to be invalid"),
    ("SBATCH_PARTITION", "no_such_partition", r"sbatch: error: invalid partition specified: no_such_partition"),
])
def test_wrong_account_or_partition_fails_at_once(tmp_path, var, value, message):
    proc, took = _snakemake(["--config", f"out={tmp_path / 'x'}", "nfe=1"], timeout=90, env_extra={var: value})
    assert proc.returncode != 0
    assert re.search(message, proc.stderr + proc.stdout), (proc.stderr + proc.stdout)[-3000:]
    assert took < 60
    print(f"  wrong {var}: failed after {took:.1f} s")
