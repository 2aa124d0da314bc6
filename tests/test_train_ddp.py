"""Two processes with the gloo backend on CPU (what `torchrun --nproc_per_node 2` sets up): per-rank
data shards and noise, all-reduced gradients, identical weights on both ranks."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from lct.files.checkpoint import load
from test_train import make_dataset, make_experiment, state_equal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_path: str, data: str, run: str, out: str,
            nan_step: int = -1) -> None:
    # The environment torchrun gives each process; lct.infra.distributed joins the group from it.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from lct.method import objectives as O
    from lct.run import train as T
    from lct.run import loop as L

    seeds: list[int] = []  # every dropout seed this rank's passes ran under, in order
    real_rng = O.shared_rng

    def recording_rng(seed, device):
        seeds.append(int(seed))
        return real_rng(seed, device)

    O.shared_rng = recording_rng

    if nan_step >= 0 and rank == 1:  # a non-finite loss on ONE rank only, at one step
        real = L.make_objective

        def make(cfg, total, resources=None, teacher=None):
            obj = real(cfg, total, resources, teacher)

            def call(net, x0, noise, step, **kw):
                loss, logs = obj(net, x0, noise, step, **kw)
                return (loss * float("nan") if step == nan_step else loss), logs
            return call
        L.make_objective = make
    model = T.train(T.resolve_config(cfg_path), data, run, device="cpu", quiet=True)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"seeds{rank}.txt"), "w") as f:
        f.write(" ".join(map(str, seeds)))


def _spawn(world: int, cfg, data, run, out, nan_step: int = -1) -> None:
    ctx = mp.spawn(_worker, args=(world, _free_port(), str(cfg), str(data), str(run), str(out), nan_step),
                   nprocs=world, join=False)
    deadline = time.monotonic() + 180  # a collective mismatch deadlocks: fail instead of hanging
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the {world} ranks did not finish in 180 s (deadlock in a collective?)")


@pytest.mark.slow
def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    data = make_dataset(tmp_path, n=32)
    # slct: OT on each rank's local batch and the diffusion loss's extra forward pass under DDP
    cfg = make_experiment(tmp_path, preset="slct", total_steps=6, batch_size=8, checkpoint_every=3, log_every=3)
    run = tmp_path / "run"
    _spawn(2, cfg, data, run, tmp_path)

    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert state_equal(w0, w1)
    final = load(run / "final.pt")
    assert state_equal(final["model"], w0)
    ckpt = load(run / "checkpoints" / "ckpt-00000003.pt")
    assert ckpt["world_size"] == 2 and ckpt["data"]["global_batch"] == 8
    assert not state_equal(ckpt["model"], w0)  # the weights did train


@pytest.mark.slow
def test_two_ranks_at_half_batch_are_the_run_of_one_process(tmp_path):
    """W ranks at B/W = one process at B: the same data, noise, timesteps and OT plan (taken over the
    global batch), the diffusion loss normalised over the global batch, gradients averaged. Only the
    order of floating-point sums differs (tolerance 1e-5 of the distance the weights moved)."""
    from lct.config import resolve_experiment
    from lct.method.precond import build_model

    data = make_dataset(tmp_path, n=32)
    cfg = make_experiment(tmp_path, preset="slct_as_coded", total_steps=5, batch_size=8, checkpoint_every=100,
                          log_every=5)
    (tmp_path / "two").mkdir()
    _spawn(2, cfg, data, tmp_path / "run2", tmp_path / "two")
    from lct.run import train as T
    from lct.run import loop as L

    torch.set_num_threads(1)
    one = T.train(T.resolve_config(cfg), data, tmp_path / "run1", device="cpu", quiet=True).state_dict()
    two = torch.load(tmp_path / "two" / "rank0.pt", weights_only=True)
    ref_cfg = resolve_experiment("slct_as_coded", {"network": {"size": "tiny"}, "train": {"total_steps": 5}})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = build_model(ref_cfg, 8, 1).state_dict()
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert moved > 0 and diff <= 1e-5 * moved + 1e-7, (diff, moved)


@pytest.mark.slow
def test_dropout_masks_differ_across_ranks_match_within_a_pair_and_resume_exactly(tmp_path):
    """dropout 0.3 (cifar10_ict's) under 2 gloo ranks: each rank draws its own masks (its own samples),
    the online and target passes of a rank share one, and a run resumed from a checkpoint ends with the
    weights of the uninterrupted run."""
    import shutil

    data = make_dataset(tmp_path, n=32)
    from lct.config import resolve_experiment, save_experiment

    cfg = tmp_path / "dropout.yaml"
    save_experiment(resolve_experiment("ilct", {"network": {"size": "tiny", "dropout": 0.3}, "train": {
        "total_steps": 4, "batch_size": 8, "checkpoint_every": 2, "keep_checkpoints": 3, "log_every": 2}},
        name="dropout", dataset="mnist8"), cfg)
    (tmp_path / "a").mkdir()
    _spawn(2, cfg, data, tmp_path / "run", tmp_path / "a")
    s0, s1 = ([int(x) for x in (tmp_path / "a" / f"seeds{r}.txt").read_text().split()] for r in (0, 1))
    assert len(s0) == len(s1) == 8  # 4 steps x (online, target)
    assert all(s0[k] == s0[k + 1] and s1[k] == s1[k + 1] for k in range(0, 8, 2))  # one mask per pair
    assert not set(s0) & set(s1)  # never rank 0's masks on rank 1
    # resume: keep only the step-2 checkpoint, rerun, end where the uninterrupted run ended
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "run", resumed)
    (resumed / "final.pt").unlink()
    for ckpt in (resumed / "checkpoints").glob("ckpt-*.pt"):
        if ckpt.name != "ckpt-00000002.pt":
            ckpt.unlink()
    (tmp_path / "b").mkdir()
    _spawn(2, cfg, data, resumed, tmp_path / "b")
    assert state_equal(load(resumed / "final.pt")["model"], load(tmp_path / "run" / "final.pt")["model"])
    s0b = [int(x) for x in (tmp_path / "b" / "seeds0.txt").read_text().split()]
    assert s0b == s0[4:]  # the resumed steps ran under the same masks


@pytest.mark.slow
def test_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    data = make_dataset(tmp_path, n=32)
    cfg = make_experiment(tmp_path, preset="slct", total_steps=5, batch_size=8, checkpoint_every=100, log_every=5)
    _spawn(2, cfg, data, tmp_path / "run", tmp_path, nan_step=2)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert state_equal(w0, w1)  # both ranks skipped the same step
    import json

    last = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()][-1]
    assert last["bad_steps"] == 1


@pytest.mark.slow
def test_sigterm_under_two_ranks_checkpoints_and_the_rerun_is_the_uninterrupted_run(tmp_path):
    """`lct train --gpus 2` (torchrun, 2 gloo ranks): SIGTERM to torchrun after the first checkpoint makes
    every rank stop at the same step, rank 0 save, all exit; the rerun resumes there and ends with EXACTLY the
    weights of an uninterrupted 2-rank run (fixed gradient buckets: lct.infra.distributed.GradientAverager)."""
    import signal
    import subprocess
    import sys

    from lct.files.checkpoint import list_checkpoints

    data = make_dataset(tmp_path, n=64)
    cfg = make_experiment(tmp_path, preset="slct", total_steps=30, batch_size=8, checkpoint_every=10,
                          keep_checkpoints=10, log_every=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cmd(run):
        return [sys.executable, "-m", "lct.cli", "train", "--config", str(cfg), "--data", str(data),
                "--run-dir", str(run), "--gpus", "2", "--quiet"]

    ref = subprocess.run(cmd(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    run = tmp_path / "stopped"
    proc = subprocess.Popen(cmd(run), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list_checkpoints(run):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to torchrun (lct train exec'd it), which forwards it to both ranks
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "preempted" in err, err[-3000:]
    stopped_at = list_checkpoints(run)[-1][0]
    assert 10 <= stopped_at < 30 and not (run / "final.pt").exists()
    again = subprocess.run(cmd(run), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and f"resuming at step {stopped_at}" in again.stderr, again.stderr[-3000:]
    a, b = load(tmp_path / "ref" / "final.pt"), load(run / "final.pt")
    assert state_equal(a["model"], b["model"]) and all(state_equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
