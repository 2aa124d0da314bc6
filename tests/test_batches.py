"""lct.run.batches: the batches of the loop, made one step ahead, are the batches of (seed, step) alone."""

import torch

from lct.run.batches import BatchPipeline, DataOrder, step_seed
from lct.method.ot import ot_pair


def _data(n=40):
    return torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(1))


def test_prefetched_batches_equal_direct_ones_and_resume_anywhere():
    data, dev = _data(), torch.device("cpu")
    order = DataOrder(40, seed=7, global_batch=8)
    with BatchPipeline(data, order, 7, total=9, device=dev, ot=True) as pipe:
        run = [pipe.get(s) for s in range(9)]
    with BatchPipeline(data, order, 7, total=9, device=dev, ot=True) as pipe:  # resumed at step 5
        resumed = [pipe.get(s) for s in range(5, 9)]
    for s, b in enumerate(run):
        x0 = data[order.global_indices(s)]
        z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(step_seed(7, 0, s)))
        assert torch.equal(b.x0, x0) and torch.equal(b.noise, z)  # the noise of the loop before the pipeline
        assert torch.equal(b.perm, ot_pair(x0, z))  # POT's plan on the same cost
        assert b.ot_solve_s > 0 and b.ot_wait_s >= 0
    for a, b in zip(run[5:], resumed):
        assert torch.equal(a.x0, b.x0) and torch.equal(a.noise, b.noise) and torch.equal(a.perm, b.perm)
        assert torch.equal(torch.randint(0, 99, (5,), generator=a.generator),
                           torch.randint(0, 99, (5,), generator=b.generator))


def test_no_ot_no_worker():
    with BatchPipeline(_data(), DataOrder(40, 0, 8), 0, total=3, device=torch.device("cpu")) as pipe:
        assert pipe._pool is None and pipe.get(0).perm is None


def test_channels_last_batches_hold_the_same_values():
    data, order = _data(), DataOrder(40, seed=3, global_batch=8)
    with BatchPipeline(data, order, 3, 2, torch.device("cpu"), memory_format=torch.channels_last) as pipe:
        b = pipe.get(0)
    with BatchPipeline(data, order, 3, 2, torch.device("cpu")) as pipe:
        c = pipe.get(0)
    assert b.noise.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(b.noise, c.noise) and torch.equal(b.x0, c.x0)


def test_ot_within_groups_is_each_groups_own_plan():
    """loss.ot_group (the authors' FFHQ sLCT script: 2 GPUs x 128, OT within each GPU's 128): the plan
    is block-diagonal, each block POT's plan of its own samples, and the loop's pipeline gives the same."""
    import pytest

    from lct.config import ConfigError, resolve_experiment

    data, dev = _data(), torch.device("cpu")
    order = DataOrder(40, seed=3, global_batch=8)
    with BatchPipeline(data, order, 3, total=2, device=dev, ot=True, ot_group=4) as pipe:
        b = pipe.get(0)
    x0 = data[order.global_indices(0)]
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(step_seed(3, 0, 0)))
    blocks = torch.cat([ot_pair(x0[:4], z[:4]), 4 + ot_pair(x0[4:], z[4:])])
    assert torch.equal(b.perm, blocks) and torch.equal(ot_pair(x0, z, group=4), blocks)
    assert sorted(b.perm[:4].tolist()) == [0, 1, 2, 3]  # no sample paired across groups
    whole = ot_pair(x0, z)
    cost = lambda p: float(((x0 - z[p]) ** 2).sum())  # noqa: E731
    assert cost(whole) <= cost(blocks) + 1e-9  # the whole batch's plan is at least as good
    with pytest.raises(ConfigError, match="loss.ot_group = 48 does not divide train.batch_size = 128"):
        resolve_experiment("slct", {"loss": {"ot_group": 48}, "train": {"total_steps": 4}})
