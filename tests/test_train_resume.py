"""Interrupt and resume: a run killed (SIGKILL) or preempted (SIGUSR1) and rerun with the same
command ends with exactly the same weights as an uninterrupted run (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lct.run import train as T
from lct.files.checkpoint import list_checkpoints, load
from test_train import make_dataset, make_experiment, state_equal

TOTAL = 40


def _cmd(cfg: Path, data: Path, run: Path) -> list[str]:
    return ["--config", str(cfg), "--data", str(data), "--run-dir", str(run), "--quiet"]


def _start_and_interrupt(cfg: Path, data: Path, run: Path, sig: int, extra: list[str] = ()) -> tuple[int, str]:
    """Start `python -m lct.run.train` and send `sig` as soon as its first checkpoint exists."""
    proc = subprocess.Popen([sys.executable, "-m", "lct.run.train", *_cmd(cfg, data, run), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not list_checkpoints(run):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint appeared; stderr:\n{proc.communicate()[1].decode()}")
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (in-process); dropout on so the module RNG stream matters too."""
    root = tmp_path_factory.mktemp("resume")
    data = make_dataset(root, n=48)
    cfg = make_experiment(root, preset="slct", total_steps=TOTAL, checkpoint_every=5, keep_checkpoints=2,
                          log_every=10)
    # dropout > 0: the run must also replay the dropout masks after a resume
    text = cfg.read_text().replace("dropout: 0.0", "dropout: 0.1")
    assert "dropout: 0.1" in text
    cfg.write_text(text)
    run = root / "ref"
    assert T.main(_cmd(cfg, data, run)) == 0
    return root, cfg, data, load(run / "final.pt")


def _assert_same_final(final: dict, ref: dict) -> None:
    assert final["step"] == ref["step"] == TOTAL
    assert state_equal(final["model"], ref["model"])
    for k in ref["ema"]:
        assert state_equal(final["ema"][k], ref["ema"][k]), k


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted(reference):
    root, cfg, data, ref = reference
    run = root / "killed"
    rc, _ = _start_and_interrupt(cfg, data, run, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert not (run / "final.pt").exists(), "the run finished before it was killed; make it longer"
    resumed_from = list_checkpoints(run)[-1][0]
    assert 0 < resumed_from < TOTAL
    assert T.main(_cmd(cfg, data, run)) == 0
    _assert_same_final(load(run / "final.pt"), ref)
    # log.jsonl holds one line per logged step, without duplicates from the abandoned stretch
    steps = [int(ln.split(",")[0].split(":")[1]) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]


@pytest.mark.slow
def test_sigusr1_checkpoints_exits_3_and_resumes(reference):
    root, cfg, data, ref = reference
    run = root / "preempted"
    rc, err = _start_and_interrupt(cfg, data, run, signal.SIGUSR1)
    assert rc == T.EXIT_PREEMPTED, err
    assert "rerun the same command" in err
    assert not (run / "final.pt").exists()
    assert list_checkpoints(run)[-1][0] > 5  # saved at the end of the step the signal arrived in
    assert T.main(_cmd(cfg, data, run)) == 0
    _assert_same_final(load(run / "final.pt"), ref)


def test_resume_refuses_a_changed_config(reference, capsys):
    root, cfg, data, _ = reference
    run = root / "changed"
    assert T.main(_cmd(cfg, data, run) + ["--set", "train.total_steps=10", "--set", "train.checkpoint_every=2"]) == 0
    # a checkpoint of a run with another learning rate is not silently continued
    (run / "final.pt").unlink()
    assert T.main(_cmd(cfg, data, run) + ["--set", "train.total_steps=10", "--set", "train.lr=0.01"]) == 2
    assert "train.lr" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_a_checkpoint"])
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_previous_one_resumes(reference, damage, capsys):
    """A newest checkpoint that does not load (cut short by a full disk, overwritten, or some other file)
    is moved to checkpoints/damaged-<name>, named in the log, and training resumes from the one before,
    ending with the uninterrupted run's weights."""
    import shutil

    import torch

    root, cfg, data, ref = reference
    run = root / f"damaged-{damage}"
    shutil.copytree(root / "ref", run)
    (run / "final.pt").unlink()
    newest = list_checkpoints(run)[-1][1]  # ckpt-00000040 (the last step is checkpointed too)
    if damage == "truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(4096))
    else:
        torch.save({"hello": torch.zeros(1)}, newest)
    assert T.main(_cmd(cfg, data, run)) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} cannot be loaded" in err and "damaged-ckpt-00000040.pt" in err, err
    assert (run / "checkpoints" / f"damaged-{newest.name}").is_file()
    _assert_same_final(load(run / "final.pt"), ref)
