"""The workflow: lint, format, dry-runs on the paper config, schema errors, a real tiny run with
an interrupt (SIGKILL mid-way, then `--rerun-incomplete` finishes without redoing completed jobs),
and a settings change that reruns only the experiment it touches."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Every test here starts Snakemake (several seconds each on a loaded 2-core machine).
pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def snakemake(args: list[str], cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run snakemake with a hard time limit; output (stdout + stderr) in .stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(SNAKEMAKE + args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry-run: rule -> number of jobs."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats"):
            in_table, counts = True, {}
            continue
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if in_table and m:
            counts[m.group(1)] = int(m.group(2))
        elif in_table and line.startswith("total"):
            in_table = False
    return counts


def config_copy(tmp_path: Path, name: str, edit=None) -> Path:
    """A copy of a config whose relative paths point into the repository (for --directory tmp)."""
    cfg = yaml.safe_load((ROOT / name).read_text())
    cfg["published"] = str(ROOT / cfg["published"])
    if edit is not None:
        edit(cfg)
    path = tmp_path / Path(name).name
    path.write_text(yaml.safe_dump(cfg))
    return path


def in_tmp(tmp_path: Path, configfile: Path, profile: str = "profiles/local") -> list[str]:
    """Arguments that run the repository's workflow with a fresh working directory (no outputs yet)."""
    return ["--snakefile", str(ROOT / "workflow/Snakefile"), "--directory", str(tmp_path),
            "--profile", str(ROOT / profile), "--configfile", str(configfile)]


def paper_experiments() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())["experiments"]


def test_lint_is_clean():
    for configfile in ([], ["--configfile", "config/demo.yaml"]):
        r = snakemake(["--lint", *configfile])
        assert r.returncode == 0 and "Lints for" not in r.stdout, r.stdout[-3000:]


def test_snakefmt_check():
    r = subprocess.run([sys.executable, "-m", "snakefmt", "--check", "workflow/"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def reading_config(overlay: str | None) -> dict:
    """config/config.yaml, with an overlay applied as Snakemake does (recursive update)."""
    from snakemake.utils import update_config

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    if overlay:
        update_config(cfg, yaml.safe_load((ROOT / overlay).read_text()))
    return cfg


@pytest.mark.parametrize("overlay, reading", [(None, "as_coded"), ("config/paper_text.yaml", "paper_text")])
def test_paper_config_has_one_experiment_per_distinct_run(overlay, reading):
    from lct.config import resolve_workflow_experiment

    cfg = reading_config(overlay)
    assert cfg["reading"] == reading
    exps = cfg["experiments"]
    # Table 1: 9; Table 2: 4 + 2 + 4 + 3; the pixel iCT run (Figure 1); the other reading's c (Figure 3);
    # beyond the paper, table_cd's three distilled students and table_ctm's two trajectory models.
    assert len(exps) == 9 + 13 + 1 + 1 + 3 + 2 == 29
    resolved = {}
    for name in exps:
        d = resolve_workflow_experiment(cfg, name).to_dict()
        d.pop("name")
        resolved[name] = yaml.safe_dump(d, sort_keys=True)
    assert len(set(resolved.values())) == len(resolved), "two experiments describe the same training run"
    assert sum(1 for e in exps.values() if "snapshot_every" in (e.get("overrides") or {}).get("train", {})) == 3
    slct = resolve_workflow_experiment(cfg, "celebahq_slct")
    ilct = resolve_workflow_experiment(cfg, "celebahq_ilct")
    if reading == "as_coded":  # docs/METHOD.md section 4: what produced the published numbers
        assert (slct.loss.reduction, slct.loss.c, slct.loss.diffusion_variant, slct.loss.diffusion_weight,
                slct.network.norm) == ("mean", "as_coded", "as_coded", 5.0, "nsln")
        assert (ilct.loss.distance, ilct.loss.reduction, ilct.loss.c, ilct.network.norm) == (
            "pseudo_huber", "mean", "fixed", "group")
    else:
        assert (slct.loss.reduction, slct.loss.c, slct.loss.diffusion_variant) == ("sum", "adaptive", "paper")
    # Figure 3 compares three distinct c schedules under either reading.
    f3 = {resolve_workflow_experiment(cfg, e).loss.c for e in cfg["figures"]["fig3"]["experiments"].values()}
    assert f3 == {"fixed", "adaptive", "as_coded"}


def test_paper_text_dry_run_schedules_the_same_runs_under_its_own_name(tmp_path):
    args = in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml")) + [str(ROOT / "config/paper_text.yaml")]
    r = snakemake(args + ["--dry-run", "all"])
    assert r.returncode == 0, r.stdout[-3000:]
    assert job_counts(r.stdout).get("train") == 29
    assert "results/paper_text/runs/celebahq_slct/final.pt" in r.stdout and "results/paper/runs" not in r.stdout
    # the data stage is the paper run's (data_from: paper): downloads, latents and reference statistics once
    assert "results/paper/data/celebahq256/latents/latents.npy" in r.stdout
    assert "results/paper_text/data" not in r.stdout and "results/paper_text/ref" not in r.stdout


@pytest.mark.parametrize("profile", ["profiles/local", "profiles/slurm"])
def test_paper_dry_run_schedules_one_train_job_per_experiment(profile, tmp_path):
    if not (ROOT / profile / "config.yaml").is_file():
        pytest.skip(f"{profile}/config.yaml does not exist yet")
    r = snakemake(in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml"), profile) + ["--dry-run", "all"])
    assert r.returncode == 0, r.stdout[-3000:]
    counts = job_counts(r.stdout)
    assert counts.get("train") == len(paper_experiments()) == 29, counts
    # One evaluation per distinct (experiment, NFE) cell of the tables, not one per row.
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cells = {(row["experiment"], row["nfe"]) for t in cfg["tables"].values() for row in t["rows"]}
    assert counts.get("evaluate") == len(cells), counts
    assert counts.get("table") == 9 and counts.get("fetch_weights") == 1, counts  # the paper's 7 + table_cd, table_ctm


def test_demo_dry_run_builds_every_table_and_figure(tmp_path):
    r = snakemake(in_tmp(tmp_path, config_copy(tmp_path, "config/demo.yaml")) + ["--dry-run", "all"])
    assert r.returncode == 0, r.stdout[-3000:]
    counts = job_counts(r.stdout)
    demo = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    assert counts.get("train") == len(demo["experiments"]), counts
    for rule in ("train_vae", "train_classifier", "fig1_figure", "fig2_figure", "fig3_figure", "stats_td"):
        assert counts.get(rule, 0) >= 1, (rule, counts)
    assert counts.get("table") == 9 and "fetch_weights" not in counts, counts


def test_named_targets_resolve(tmp_path):
    targets = ["all_tables", "all_figures", "table_cd", "table_ctm", "table1a", "table1b", "table1c", "table2a", "table2b", "table2c",
               "table2d", "fig1", "fig2", "fig3", "samples", "fetch_weights"]
    r = snakemake(in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml")) + ["--dry-run", *targets])
    assert r.returncode == 0, r.stdout[-2000:]


def test_all_tables_is_the_papers_seven_and_table_cd_shares_the_teacher(tmp_path):
    """`all_tables` builds the paper's tables only; `table_cd` trains the teacher (Table 1a's LDM) once
    with the CT runs it shares with Table 1a, and one job per distilled student, after the teacher."""
    args = in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml"))
    r = snakemake(args + ["--dry-run", "all_tables"])
    assert r.returncode == 0, r.stdout[-2000:]
    assert job_counts(r.stdout).get("table") == 7 and "table_cd" not in r.stdout
    r = snakemake(args + ["--dry-run", "--printshellcmds", "table_cd"])
    assert r.returncode == 0, r.stdout[-2000:]
    counts = job_counts(r.stdout)
    assert counts.get("train") == 6 and counts.get("table") == 1, counts  # teacher, iLCT, sLCT, 3 students
    trains = set(re.findall(r"results/paper/runs/(\w+)/final.pt", r.stdout))
    assert trains == {"celebahq_ldm", "celebahq_ilct", "celebahq_slct", "celebahq_cd_l2", "celebahq_cd_huber",
                      "celebahq_cd_cauchy"}
    # each student's command reads the teacher's final.pt; the CT runs' commands read no teacher
    cmds = [ln for ln in r.stdout.splitlines() if "lct train --config" in ln]
    assert len(cmds) == 6
    for c in cmds:
        assert ("--teacher results/paper/runs/celebahq_ldm/final.pt" in c) == ("celebahq_cd_" in c), c


def test_table_ctm_trains_the_teacher_once_and_one_job_per_ctm_row(tmp_path):
    """`snakemake -n table_ctm` (paper config, no profile): the teacher once, the runs it shares with Table 1a
    and table_cd, one job per CTM model; only the teacher-solver CTM reads the teacher, after it."""
    args = in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml"))
    r = snakemake(args + ["--dry-run", "--printshellcmds", "table_ctm"])
    assert r.returncode == 0, r.stdout[-2000:]
    counts = job_counts(r.stdout)
    trains = set(re.findall(r"results/paper/runs/(\w+)/final.pt", r.stdout))
    assert trains == {"celebahq_ldm", "celebahq_slct", "celebahq_cd_l2", "celebahq_cd_huber", "celebahq_cd_cauchy",
                      "celebahq_ctm", "celebahq_ctm_self"}
    assert counts.get("train") == 7 and counts.get("table") == 1, counts
    cmds = [ln for ln in r.stdout.splitlines() if "lct train --config" in ln]
    teacher = "--teacher results/paper/runs/celebahq_ldm/final.pt"
    for c in cmds:
        name = re.search(r"configs/(\w+)\.yaml", c).group(1)
        assert (teacher in c) == (name.startswith("celebahq_cd_") or name == "celebahq_ctm"), c
    # 1, 2 and 4 NFE of each CTM model, each evaluated once
    for e in ("celebahq_ctm", "celebahq_ctm_self"):
        for k in (1, 2, 4):
            assert f"results/paper/eval/{e}/nfe{k}.json" in r.stdout
    r = snakemake(args + ["--dry-run", "all_tables"])
    assert "celebahq_ctm" not in r.stdout


def test_cell_target_trains_that_experiment_alone(tmp_path):
    args = in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml"))
    r = snakemake(args + ["--dry-run", "cell", "--config", "cell=celebahq_2c_geman_mcclure"])
    assert r.returncode == 0, r.stdout[-2000:]
    counts = job_counts(r.stdout)
    assert counts["train"] == 1 and counts["evaluate"] == 1 and "table" not in counts, counts
    assert "results/paper/cells/celebahq_2c_geman_mcclure.md" in r.stdout
    assert "runs/celebahq_2c_geman_mcclure/final.pt" in r.stdout and "tables/table2c.csv" not in r.stdout


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["datasets"]["mnist"].update(resolutoin=32), "resolutoin"),
    (lambda c: c["evaluation"].update(feature="fid_of_doom"), "fid_of_doom"),
    (lambda c: c["experiments"]["mnist_slct"].setdefault("overrides", {}).update(loss={"distanse": "l2"}), "distanse"),
    (lambda c: c["tables"]["table2a"]["rows"][0].update(experiment="no_such_run"), "no_such_run"),
])
def test_a_wrong_key_or_value_stops_the_workflow_naming_it(tmp_path, edit, named):
    r = snakemake(in_tmp(tmp_path, config_copy(tmp_path, "config/demo.yaml", edit)) + ["--dry-run", "all"])
    assert r.returncode != 0
    assert named in r.stdout, r.stdout[-2000:]


# ---- a real run on a tiny configuration ------------------------------------------------------


def _mini_args(configfile: Path) -> list[str]:
    return in_tmp(configfile.parent, configfile) + ["--cores", "2"]


@pytest.mark.slow
def test_tiny_run_killed_midway_resumes_without_redoing_completed_jobs(tmp_path):
    cfg = config_copy(tmp_path, "tests/demo-mini.yaml")
    out = tmp_path / "results/mini"
    done_marker = out / "data/mnist/latents/latents.npy"
    # 1. Start the run; SIGKILL the whole process group (a preempted node) once the data stage is done.
    first_log = tmp_path / "first-run.log"  # a file, not a pipe: a full pipe would stall Snakemake
    with first_log.open("w") as log:
        proc = subprocess.Popen(SNAKEMAKE + _mini_args(cfg) + ["all"], cwd=tmp_path, start_new_session=True,
                                stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 240
    try:
        # Snakemake records a job as complete only after all its outputs exist: wait for its log line.
        while "(Rule: encode)" not in first_log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert "(Rule: encode)" in first_log.read_text(), "the data stage did not finish within 4 minutes:\n" + \
            first_log.read_text()[-3000:]
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    completed = {p: p.stat().st_mtime_ns for p in [out / "data/mnist/images.npy", done_marker,
                                                   out / "data/mnist/latents/norm.npz"]}
    # 2. Rerun: the stale lock of the killed run is removed, incomplete jobs are redone.
    assert snakemake(_mini_args(cfg) + ["--unlock"], cwd=tmp_path).returncode == 0
    # (the report of the partial run: what exists, and its front page lists what is missing)
    r = snakemake(_mini_args(cfg) + ["--report", str(tmp_path / "partial.zip")], cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    import zipfile

    front = "".join(zipfile.ZipFile(tmp_path / "partial.zip").read(n).decode("utf-8", "replace")
                    for n in zipfile.ZipFile(tmp_path / "partial.zip").namelist() if n.endswith("report.html"))
    assert "What this run has so far" in front and "table1a.csv" in front, front[:2000]
    r = snakemake(_mini_args(cfg) + ["--rerun-incomplete", "all"], cwd=tmp_path, timeout=420)
    assert r.returncode == 0, first_log.read_text()[-2000:] + "\n----\n" + r.stdout[-4000:]
    assert killed, "the first run finished before it could be killed"
    for path, mtime in completed.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rebuilt although it was complete"
    for rule in ("prepare_data", "train_vae", "encode"):
        assert f"rule {rule}:" not in r.stdout, f"completed job {rule} was redone"
    # 3. Every output of the tiny DAG exists and the table holds the reproduced cells.
    for ext in ("csv", "md", "tex"):
        assert (out / f"tables/table1a.{ext}").stat().st_size > 0
    assert (out / "figures/fig2.png").is_file() and (out / "figures/fig2.pdf").is_file()
    for e in ("mini_ilct", "mini_slct"):
        assert (out / f"eval/{e}/nfe1.json").is_file()
        assert (out / f"runs/{e}/final.pt").is_file()
    assert (out / "configs/tables/table1a.yaml").is_file() and (out / "tables/table2a.csv").is_file()
    # Snakemake's own report: every table and figure, with its caption
    r = snakemake(_mini_args(cfg) + ["--report", str(tmp_path / "report.zip")], cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    import zipfile

    names = zipfile.ZipFile(tmp_path / "report.zip").namelist()
    for f in ("table1a.csv", "table2a.csv", "fig2.png"):
        assert any(n.endswith("/" + f) for n in names), (f, names[:50])
    html = "".join(zipfile.ZipFile(tmp_path / "report.zip").read(n).decode("utf-8", "replace")
                   for n in names if n.endswith((".html", ".js")))
    assert "Table 2a (CelebA-HQ, 1 NFE)" in html and "reading" in html
    # 4. Nothing left to do; bookkeeping never retrains: cadence and worker keys edited, the data moved
    #    behind a symlink, the whole working folder moved elsewhere.
    r = snakemake(_mini_args(cfg) + ["--dry-run", "all"], cwd=tmp_path)
    assert "Nothing to be done" in r.stdout, r.stdout[-2000:]
    book = yaml.safe_load(cfg.read_text())
    book["defaults"].setdefault("train", {}).update(checkpoint_every=7, keep_checkpoints=1, log_every=3,
                                                     num_workers=1, max_bad_steps=5, snapshot_every=50)
    cfg.write_text(yaml.safe_dump(book))
    elsewhere = tmp_path.parent / f"{tmp_path.name}-data"
    shutil.move(out / "data", elsewhere)
    (out / "data").symlink_to(elsewhere)
    moved = tmp_path.parent / f"{tmp_path.name}-moved"
    tmp_path.rename(moved)
    tmp_path, cfg, out = moved, moved / cfg.name, moved / "results/mini"
    r = snakemake(_mini_args(cfg) + ["all"], cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and "Nothing to be done" in r.stdout, r.stdout[-3000:]  # nothing retrains
    # then changing one experiment's weight setting reruns only that experiment, naming the key
    changed = yaml.safe_load(cfg.read_text())
    changed["experiments"]["mini_slct"]["overrides"] = {"loss": {"diffusion_r": 0.5}}
    cfg.write_text(yaml.safe_dump(changed))
    r = snakemake(_mini_args(cfg) + ["--dry-run", "all"], cwd=tmp_path)
    counts = {k: v for k, v in job_counts(r.stdout).items() if k != "total"}
    # exactly: that experiment's config, run and evaluation, and the one table citing it
    assert counts == {"experiment_config": 1, "train": 1, "evaluate": 1, "table": 1, "all": 1}, counts
    assert "runs/mini_slct/final.pt" in r.stdout and "runs/mini_ilct/final.pt" not in r.stdout
    assert "wildcards: table=table1a" in r.stdout and "wildcards: table=table2a" not in r.stdout
    # the reason names the key that changed (the config writer's params are one per weight setting)
    assert "before: 'loss.diffusion_r=0.25' now: 'loss.diffusion_r=0.5'" in r.stdout, r.stdout[-3000:]
    # run for real: only that run retrains, under the edited bookkeeping (configs/<e>.run.yaml, written
    # when the workflow starts and read by `lct train --run-settings`)
    r = snakemake(_mini_args(cfg) + ["all"], cwd=tmp_path, timeout=420)
    assert r.returncode == 0, r.stdout[-3000:]
    assert yaml.safe_load((out / "configs/mini_slct.run.yaml").read_text())["train.checkpoint_every"] == 7
    ckpts = sorted(p.name for p in (out / "runs/mini_slct/checkpoints").glob("ckpt-*.pt"))
    assert ckpts == ["ckpt-00000040.pt"], ckpts  # keep_checkpoints 1: only the last of 7, 14, ..., 35, 40


def test_paper_config_writes_the_split_and_iteration_count(tmp_path):
    """results/paper/configs/celebahq_slct.yaml: the as-coded loss, the 27,000-image split and K = 295,313."""
    args = in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml"))
    r = snakemake(args + ["--cores", "1", "results/paper/configs/celebahq_slct.yaml"])
    assert r.returncode == 0, r.stdout[-3000:]
    text = (tmp_path / "results/paper/configs/celebahq_slct.yaml").read_text()
    assert "27000 training images, 294,000 iterations (K of the schedules); 294,210 optimizer steps" in text
    assert "N=641 from 252,000" in text
    cfg = yaml.safe_load(text)
    assert cfg["train"]["num_images"] == 27000 and cfg["loss"]["diffusion_variant"] == "as_coded"


def test_fid_reference_file_is_fetched_with_its_checksum_and_used(tmp_path):
    sha = "ab" * 32

    def edit(c):
        c["evaluation"]["fid_reference"] = {"celebahq256": {"url": "https://example.org/celebahq_stat.npy",
                                                            "sha256": sha}}

    args = in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml", edit))
    r = snakemake(args + ["--dry-run", "--printshellcmds", "table2b"])
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"--fid-reference celebahq256 'https://example.org/celebahq_stat.npy' {sha}" in r.stdout
    assert "--fid-reference resources/fid_reference/celebahq256.npy" in r.stdout

    def no_sha(c):
        c["evaluation"]["fid_reference"] = {"celebahq256": {"url": "https://example.org/celebahq_stat.npy"}}

    r = snakemake(in_tmp(tmp_path, config_copy(tmp_path, "config/config.yaml", no_sha)) + ["--dry-run", "table2b"])
    assert r.returncode != 0 and "fid_reference" in r.stdout
