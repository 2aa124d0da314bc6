"""The SLURM path for real: tests/slurm/cluster.sh's single-node scheduler runs the jobs.

Skipped when no scheduler answers (`scontrol ping`). Every snakemake call runs under a
subprocess timeout so a hang fails the test. The end-to-end test runs the REAL workflow
(workflow/Snakefile, `lct` commands) on the tiny tests/configs/slurm-mini.yaml with the user's
command `snakemake --profile slurm table1a --configfile ...` and compares its table with the same
configuration run locally (profiles/local). The requeue (preemption) and time-limit drills run the
real `lct train` through the real workflow (tests/configs/slurm-drill.yaml). The scancel and wrong
account / partition drills drive the tiny tests/slurm/Snakefile (STAND-IN commands, see that file). Test-cluster overrides are environment
variables (SBATCH_ACCOUNT / SBATCH_PARTITION) and command-line flags only; profiles/slurm is
used unchanged.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm"  # the site profile
WORKFLOW_PROFILE = ROOT / "workflow" / "profiles" / "default"  # the per-rule resources
SNAKEFILE = "tests/slurm/Snakefile"  # the stand-in workflow of the drills
MINI = "tests/configs/slurm-mini.yaml"  # the real workflow's tiny configuration


def _scheduler_up() -> bool:
    if not shutil.which("scontrol"):
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10).stdout
    except (subprocess.SubprocessError, OSError):
        return False
    return "UP" in out


# CI (.ci/run sets LCT_REQUIRE_SLURM=1) fails when no scheduler answers; elsewhere the tests skip.
if not _scheduler_up() and os.environ.get("LCT_REQUIRE_SLURM") == "1":
    raise RuntimeError("LCT_REQUIRE_SLURM=1 but no SLURM scheduler answers (tests/slurm/cluster.sh start)")
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
        f"{link} is not this checkout's site profile (profiles/slurm); run envs/setup.sh"


def _snakemake(args: list[str], timeout: float, env_extra: dict | None = None,
               standin: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """`snakemake --profile slurm <args>` from the repository root; `standin`: the drills' Snakefile.
    First status check after 1 s (not the profile's 20 s) so the tests do not idle."""
    env = {**os.environ, "SBATCH_ACCOUNT": "lct_ci", "SBATCH_PARTITION": "gpu", **(env_extra or {})}
    # The stand-in Snakefile sits elsewhere, so name the workflow profile it borrows (the real one is found).
    stand = ["-s", SNAKEFILE, "--workflow-profile", str(WORKFLOW_PROFILE)] if standin else []
    cmd = ["snakemake", "--profile", "slurm", *args, *stand,
           "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5", "--verbose"]
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
    prof = yaml.safe_load((WORKFLOW_PROFILE / "config.yaml").read_text())
    rules = {**prof["set-resources"], "train": {**prof["set-resources"]["train"], **changes}}
    return ["--set-resources", *(f"{r}:{k}={v}" for r, res in rules.items() for k, v in res.items())]


def _profile_threads(value: int) -> list[str]:
    """--set-threads giving every rule of the profile `value` threads (replaces the profile's set-threads).

    On this 2-core test machine the profile's 8 / 32 threads are capped to 2 per job, and the
    4 torchrun ranks of `train` each run OMP_NUM_THREADS=2 (4 x 2 threads on 2 cores: ~10x slower).
    One thread per job (and per rank) in both runs also gives the SLURM and the local run the same
    floating-point reduction order, so their tables are identical, not merely close.
    """
    prof = yaml.safe_load((WORKFLOW_PROFILE / "config.yaml").read_text())
    return ["--set-threads", *(f"{r}={value}" for r in prof["set-threads"])]


def _submissions(log: str) -> dict[str, str]:
    """{SLURM job id: rule} from Snakemake's "submitted with SLURM jobid" lines."""
    return {j: r for j, r in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/", log)}


def test_real_workflow_runs_through_sbatch_and_matches_local_run():
    """The real workflow (lct commands) on tests/configs/slurm-mini.yaml: SLURM vs profiles/local."""
    cfg = yaml.safe_load((ROOT / MINI).read_text())
    name, local_name = cfg["name"], f"{cfg['name']}-local"
    for n in (name, local_name):  # fresh runs: these result names belong to this test
        shutil.rmtree(ROOT / "results" / n, ignore_errors=True)
    threads = _profile_threads(1)
    proc, took = _snakemake(["table1a", "--configfile", MINI, *threads], timeout=240, standin=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"  real workflow through SLURM: {took:.1f} s")

    # every non-local job of the DAG went through sbatch; the local rules ran on the submit host
    ran_remote = re.findall(r"^rule (\w+):", proc.stderr, flags=re.M)
    ran_local = set(re.findall(r"^localrule (\w+):", proc.stderr, flags=re.M))
    subs = _submissions(proc.stderr)
    assert sorted(subs.values()) == sorted(ran_remote), (subs, ran_remote)
    assert set(ran_remote) == {"prepare_data", "train_vae", "train_classifier", "ref_stats", "encode",
                               "train", "evaluate"}, ran_remote
    assert ran_local == {"experiment_config", "table_config", "table", "table1a"}, ran_local
    for jobid, rule in subs.items():
        acct = _sacct(jobid)
        assert (acct["state"], acct["account"], acct["partition"]) == ("COMPLETED", "lct_ci", "gpu"), (rule, acct)
        assert (ROOT / ".snakemake" / "slurm_logs" / f"rule_{rule}").is_dir()

    # GPU requests accepted; training: 4 GPUs in ONE task, torchrun inside ran 4 ranks
    calls = {re.search(r"--comment rule_(\w+?)_wildcards", c).group(1) if "_wildcards" in c
             else re.search(r"--comment rule_(\w+)", c).group(1): c
             for c in proc.stderr.splitlines() if "sbatch call:" in c}
    train_id = next(j for j, r in subs.items() if r == "train")
    assert "--gpus=a100:4" in calls["train"] and "--cpus-per-gpu=8" in calls["train"], calls["train"]
    assert "--ntasks" not in calls["train"] and "--signal=TERM@300" in calls["train"], calls["train"]
    assert "--gpus=a100:1" in calls["evaluate"], calls["evaluate"]
    assert "gres/gpu=4" in _sacct(train_id)["tres"]
    assert all(re.search(r"gres/gpu=1\b", _sacct(j)["tres"]) for j, r in subs.items()
               if r in ("train_vae", "encode", "train_classifier", "ref_stats", "evaluate"))
    steps = subprocess.run(["sacct", "-n", "-P", "-j", train_id, "-o", "JobID,NTasks"],
                           capture_output=True, text=True, timeout=30).stdout.split()
    assert steps and all(s.split("|")[1] in ("", "1") for s in steps), steps  # batch + one srun step, 1 task each
    run = ROOT / "results" / name / "runs" / "mini_slct"
    ckpts = sorted((run / "checkpoints").glob("ckpt-*.pt"))
    assert ckpts and torch.load(ckpts[-1], weights_only=True)["world_size"] == 4

    # the same configuration locally (profiles/local, 4 torchrun ranks on CPU, 1 thread per job)
    t0 = time.monotonic()
    local = subprocess.run(
        ["snakemake", "--profile", "profiles/local", "table1a", "--configfile", MINI,
         "--config", f"name={local_name}", f"resources_dir=results/{local_name}/resources",
         "--set-resources", "train:gpu=4", "train:mem_mb=8000", "--resources", "gpu=4", *threads],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert local.returncode == 0, local.stderr[-4000:]
    print(f"  same configuration locally: {time.monotonic() - t0:.1f} s")
    slurm_res, local_res = ROOT / "results" / name, ROOT / "results" / local_name
    assert _tensors_equal(slurm_res / "runs/mini_slct/final.pt", local_res / "runs/mini_slct/final.pt")
    assert (slurm_res / "data/mnist/latents/latents.npy").read_bytes() == \
        (local_res / "data/mnist/latents/latents.npy").read_bytes()
    table = (slurm_res / "tables" / "table1a.csv").read_text()
    assert "mini_slct,computed" in table
    assert _tensors_equal(slurm_res / "resources/digit-classifier.pt", local_res / "resources/digit-classifier.pt")
    assert table == (local_res / "tables" / "table1a.csv").read_text()


def _tensors_equal(a: Path, b: Path) -> bool:
    """Same tensors in two checkpoints (their metadata holds run-specific paths and times)."""
    def tensors(obj, pre=""):
        if isinstance(obj, dict):
            return {k: v for key, val in obj.items() for k, v in tensors(val, f"{pre}{key}.").items()}
        return {pre: obj} if isinstance(obj, torch.Tensor) else {}
    ta, tb = tensors(torch.load(a, weights_only=True)), tensors(torch.load(b, weights_only=True))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


DRILL = "tests/configs/slurm-drill.yaml"  # overlay: drill_requeue, drill_timeout on slurm-mini's data


def _real_drill(experiment: str, extra: list[str], overlays: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path, list[str]]:
    """Start `snakemake --profile slurm <the experiment's final.pt>` on the real workflow (slurm-mini + the
    drill overlay) in the background; returns the process, the run dir and the command."""
    run = ROOT / "results" / "slurm-mini" / "runs" / experiment
    shutil.rmtree(run, ignore_errors=True)
    env = {**os.environ, "SBATCH_ACCOUNT": "lct_ci", "SBATCH_PARTITION": "gpu"}
    cmd = ["snakemake", "--profile", "slurm", f"results/slurm-mini/runs/{experiment}/final.pt",
           "--configfile", MINI, DRILL, *overlays, *_profile_threads(1), *extra,
           "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True), run, cmd


def _running_train_job(experiment: str, timeout: float = 180) -> str:
    """The SLURM job id of the experiment's running train job (the plugin's --comment names the rule)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], capture_output=True, text=True,
                             timeout=30).stdout
        for line in out.splitlines():
            if f"rule_train_wildcards_{experiment}" in line:
                return line.split()[0]
        time.sleep(0.5)
    raise AssertionError(f"no running train job for {experiment} within {timeout} s")


def _sacct_history(jobid: str) -> list[str]:
    """Every state the job went through (sacct -D lists the instances of a requeued job)."""
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-j", jobid, "-o", "State"], capture_output=True,
                         text=True, timeout=30).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip()]


def test_requeued_training_job_resumes_and_ends_as_the_uninterrupted_run(tmp_path):
    """`scontrol requeue` (what PreemptMode=REQUEUE does to a job) of the real `lct train` job (4 torchrun
    ranks) after its first checkpoint: SIGTERM reaches the ranks, they save and exit; SLURM puts the same job
    id back in the queue; the plugin keeps waiting; the job starts again, resumes from that checkpoint, and
    its final.pt has exactly the tensors of an uninterrupted run of the same command."""
    from lct.files.checkpoint import list_checkpoints

    proc, run, cmd = _real_drill("drill_requeue", [])
    try:
        jobid = _running_train_job("drill_requeue")
        deadline = time.monotonic() + 180
        while not list_checkpoints(run):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the job ended"
            time.sleep(0.05)
        subprocess.run(["scontrol", "requeue", jobid], check=True, timeout=30)
        # SLURM holds a requeued batch job for about two minutes (Reason=BeginTime) once its processes have
        # ended; release it then (the hold is the scheduler's, not what this drill is about).
        for _ in range(120):
            state = subprocess.run(["squeue", "-h", "-j", jobid, "-o", "%T %r"], capture_output=True, text=True,
                                   timeout=30).stdout.split()
            if state[:2] == ["PENDING", "BeginTime"]:
                break
            time.sleep(0.5)
        subprocess.run(["scontrol", "update", f"jobid={jobid}", "StartTime=now"], check=True, timeout=30)
        text, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-4000:]
    history = _sacct_history(jobid)
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history
    log = (ROOT / "results/slurm-mini/logs/train/drill_requeue.log").read_text()
    resumed = re.search(r"resuming at step (\d+)", log)
    assert resumed and 10 <= int(resumed.group(1)) < 40, log[-3000:]
    print(f"\n  requeue drill: job {jobid} {' -> '.join(history)}, resumed at step {resumed.group(1)} of 40")

    # the uninterrupted run: the same lct train command (4 ranks, one thread each), locally
    cfg_path = ROOT / "results/slurm-mini/configs/drill_requeue.yaml"
    ref = subprocess.run(["lct", "train", "--config", str(cfg_path), "--data", "results/slurm-mini/data/mnist/latents",
                          "--run-dir", str(tmp_path / "ref"), "--gpus", "4", "--quiet"], cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert _tensors_equal(run / "final.pt", tmp_path / "ref" / "final.pt")


def test_a_failure_that_will_repeat_costs_one_training_attempt():
    """The real `lct train` job (4 ranks) diverges at once: exit 4 and runs/<e>/FAILED.json on the first
    attempt; each retry the rule's `retries` submits runs the same command, which stops on that record in
    seconds instead of training again (Snakemake clears a job's log before each attempt: the log holds the
    last attempt's refusal)."""
    proc, run, cmd = _real_drill("drill_diverge", [])
    text, _ = proc.communicate(timeout=400)
    assert proc.returncode != 0, text[-3000:]
    record = json.loads((run / "FAILED.json").read_text())
    assert record["exit"] == 4 and "non-finite" in record["message"]
    log = (ROOT / "results/slurm-mini/logs/train/drill_diverge.log").read_text()
    assert "would fail the same way" in log and "non-finite" in log, log[-3000:]
    jobs = re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", text)
    elapsed = [int(subprocess.run(["sacct", "-X", "-n", "-P", "-j", j, "-o", "ElapsedRaw"], capture_output=True,
                                  text=True, timeout=30).stdout.split()[0]) for j in jobs]
    print(f"\n  diverge drill: SLURM jobs {jobs}, elapsed {elapsed} s (the first trained, the retries stopped)")
    assert len(jobs) >= 2 and all(e < elapsed[0] for e in elapsed[1:]), (jobs, elapsed)
    assert not (run / "final.pt").exists()


def _drill_steps(seconds: float, default: int = 400) -> int:
    """Training steps that take `seconds` at the speed the requeue drill's job measured on this machine
    (its log.jsonl; batch 16), else `default`."""
    log = ROOT / "results/slurm-mini/runs/drill_requeue/log.jsonl"
    if not log.is_file():
        return default
    ips = json.loads(log.read_text().splitlines()[-1])["images_per_s"]
    return int(min(max(seconds * ips / 16, 150), 1500))


def test_time_limit_signal_checkpoints_and_the_retry_resumes(tmp_path):
    """The real `lct train` job (4 ranks) runs past a 1-minute time limit: SLURM's SIGTERM at the limit
    reaches the ranks, they save a checkpoint (the run has no other: checkpoint_every is 100,000) and exit
    within KillWait; the job ends TIMEOUT; the profile's `retries` resubmit it and it resumes there.

    Every attempt gets the same minute, so the run is sized to about 70 s of training at the speed the
    requeue drill measured: more than the ~45 s an attempt trains after its start-up, so the first one is
    cut by the limit, and few enough for the profile's retries to finish it. An attempt that trains to the
    end but overruns the limit while tearing down is TIMEOUT too, and Snakemake deletes its final.pt; the
    final-step checkpoint then lets the next attempt only rewrite it (the speed measured under load can
    differ, so both endings are accepted and named)."""
    steps = _drill_steps(70.0)
    overlay = tmp_path / "steps.yaml"
    overlay.write_text(yaml.safe_dump({"experiments": {"drill_timeout": {
        "dataset": "mnist", "preset": "slct",
        "overrides": {"train": {"total_steps": steps, "checkpoint_every": 100000, "log_every": 50}}}}}))
    # runtime 1 min, and no early --signal, so the job really reaches its limit
    proc, run, cmd = _real_drill("drill_timeout", _profile_train_resources(runtime=1, slurm_extra="''"),
                                 overlays=(str(overlay),))
    try:
        text, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text[-4000:]
    ids = [j for j, r in _submissions(text).items() if r == "train"]
    states = [_sacct(j)["state"] for j in ids]
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED", (ids, states)
    log = (ROOT / "results/slurm-mini/logs/train/drill_timeout.log").read_text()
    resumed = re.search(r"resuming at step (\d+)", log)
    assert resumed and 0 < int(resumed.group(1)) <= steps, log[-3000:]
    assert (run / "final.pt").is_file()
    how = "the limit's SIGTERM checkpoint" if int(resumed.group(1)) < steps else "the final-step checkpoint"
    print(f"\n  time-limit drill: jobs {ids} {states}, resumed at step {resumed.group(1)} of {steps} ({how})")


def test_scancel_is_noticed_and_run_ends(tmp_path):
    out = tmp_path / "cancel"
    env = dict(os.environ, SBATCH_ACCOUNT="lct_ci", SBATCH_PARTITION="gpu")
    cmd = ["snakemake", "--profile", "slurm", "-s", SNAKEFILE, "--workflow-profile", str(WORKFLOW_PROFILE),
           "--retries", "0",
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


def test_controller_job_runs_the_workflow_and_requeues_itself_near_its_limit():
    """profiles/slurm/controller.sbatch: Snakemake as a SLURM job (it submits the workflow's jobs from
    inside it); the SIGTERM that --signal=B:TERM@600 sends before the controller's limit (sent here with
    `scancel -b -s TERM`) stops Snakemake and requeues the controller, whose next run finishes the work."""
    name = "slurm-ctl"
    shutil.rmtree(ROOT / "results" / name, ignore_errors=True)
    target = f"results/{name}/resources/tiny-mnist"  # two jobs: prepare_data, then train_vae
    env = {**os.environ, "SBATCH_ACCOUNT": "lct_ci", "SBATCH_PARTITION": "gpu"}
    env.pop("LCT_SITE_CONFIG", None)
    jobid = subprocess.run(
        ["sbatch", "--parsable", "-p", "debug", "--time=30", "profiles/slurm/controller.sbatch", target,
         "--configfile", MINI, "--config", f"name={name}", f"resources_dir=results/{name}/resources",
         "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=30).stdout.strip().split(";")[0]
    log = ROOT / ".snakemake" / f"controller-{jobid}.log"

    def wait_for(text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            content = log.read_text() if log.exists() else ""
            if text in content:
                return content
            time.sleep(1)
        raise AssertionError(f"{text!r} not in {log} after {seconds} s:\n" + (log.read_text() if log.exists() else ""))

    t0 = time.monotonic()
    try:
        wait_for("has been submitted with SLURM jobid", 120)  # the controller submitted a workflow job
        subprocess.run(["scancel", "-b", "-s", "TERM", jobid], check=True, timeout=30)
        wait_for("requeued job", 120)
        # a requeued job is held cred_expire + 1 s before it starts again (tests/slurm/cluster.sh: 15 s)
        text = wait_for("run 1 on", 120)
        deadline = time.monotonic() + 240
        while f"{jobid} " in subprocess.run(["squeue", "-h", "-o", "%i "], capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(2)
        text = log.read_text()
    finally:
        subprocess.run(["scancel", jobid], capture_output=True, timeout=30)
    print(f"\n  controller drill: {time.monotonic() - t0:.0f} s, job {jobid}")
    assert "stopping Snakemake" in text and "snakemake exited with 0" in text, text[-3000:]
    assert (ROOT / target).is_dir(), text[-3000:]
