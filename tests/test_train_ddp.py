"""Two processes with the gloo backend on CPU (what `torchrun --nproc_per_node 2` sets up): per-rank
data shards and noise, all-reduced gradients, identical weights on both ranks."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from lct.checkpoint import load
from test_train import make_dataset, make_experiment, state_equal


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg_path: str, data: str, run: str, out: str) -> None:
    # The environment torchrun gives each process; lct.distributed joins the group from it.
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from lct.train import resolve_config, train

    model = train(resolve_config(cfg_path), data, run, device="cpu", quiet=True)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    data = make_dataset(tmp_path, n=32)
    # slct: OT on each rank's local batch and the diffusion loss's extra forward pass under DDP
    cfg = make_experiment(tmp_path, preset="slct", total_steps=6, batch_size=8, checkpoint_every=3, log_every=3)
    run = tmp_path / "run"
    ctx = mp.spawn(_worker, args=(2, _free_port(), str(cfg), str(data), str(run), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 180  # a collective mismatch deadlocks: fail instead of hanging
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two ranks did not finish in 180 s (deadlock in a collective?)")

    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert state_equal(w0, w1)
    final = load(run / "final.pt")
    assert state_equal(final["model"], w0)
    ckpt = load(run / "checkpoints" / "ckpt-00000003.pt")
    assert ckpt["world_size"] == 2 and ckpt["data"]["global_batch"] == 8
    assert not state_equal(ckpt["model"], w0)  # the weights did train
