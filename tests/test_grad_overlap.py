"""Gradient averaging overlaps the backward pass when the UNet is compiled (issue 22, item 6).

lct.infra.distributed.GradientAverager launches a bucket's all-reduce when the bucket's last gradient
is accumulated. Under torch.compile(model) the whole backward is ONE node of the autograd graph, so
no gradient is ready before all of the backward has run: nothing can overlap. lct.run.model.compile_blocks
compiles each residual block as its own region, so the backward is one node per block and gradients
become ready block by block. The test counts, at the start of every compiled backward node, how
many buckets the averager has already launched (a one-rank gloo group; the collective is real).
The aot_eager backend stands in for Inductor here: the graph split is AOT autograd's, the same for both.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.distributed as dist

from lct.infra import distributed as ddist
from lct.config import resolve_experiment
from lct.run.model import build_model, compile_blocks


@pytest.fixture()
def one_rank_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def compiled_backward_nodes(root) -> list:
    seen, stack, found = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if "CompiledFunction" in node.name():
            found.append(node)
        stack.extend(f for f, _ in node.next_functions)
    return found


def launched_at_each_compiled_node(mode: str) -> tuple[list[int], int, dict]:
    """Buckets already launched when each compiled backward node starts (second step: compiled), the
    number of buckets and the averaged gradients."""
    torch._dynamo.reset()  # compiled variants of other tests in this process count against Dynamo's limit
    torch.manual_seed(0)
    cfg = resolve_experiment("slct", {"network": {"size": "tiny"}, "train": {"total_steps": 4}})
    model = build_model(cfg, 8, 1)
    net = compile_blocks(model, backend="aot_eager") if mode == "blocks" else torch.compile(model, backend="aot_eager")
    averager = ddist.GradientAverager(list(model.parameters()), 1, bucket_mb=0.05)  # ~40 buckets on the tiny UNet
    x, sigma = torch.randn(4, 1, 8, 8), torch.rand(4) + 0.1
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        averager._reset()
        loss = net(x, sigma).square().mean()
        starts: list[int] = []
        for node in compiled_backward_nodes(loss.grad_fn):
            node.register_prehook(lambda grads: starts.append(len(averager._launched)))
        loss.backward()
        averager.finish()
    return starts, len(averager.buckets), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_compiled_blocks_let_the_bucket_all_reduces_overlap_the_backward(one_rank_group):
    starts, buckets, grads = launched_at_each_compiled_node("blocks")
    assert buckets > 10 and len(starts) > 5  # one backward node per residual block
    # When the first block's backward starts (the last compiled node to run), all buckets but the
    # ones holding the input conv and the noise embedding (used by every block) are on the wire.
    assert max(starts) >= buckets - 3
    assert starts == sorted(starts) and starts[len(starts) // 2] > 0  # buckets launch while blocks are still to go
    # Negative control: the whole-model graph is one backward node, which starts before any bucket.
    whole_starts, _, whole_grads = launched_at_each_compiled_node("whole")
    assert whole_starts == [0]
    for n, g in grads.items():  # the same gradients either way (float32 round-off)
        torch.testing.assert_close(g, whole_grads[n], rtol=1e-4, atol=1e-6)


def test_a_bucket_of_one_parameter_is_averaged_not_aliased(one_rank_group):
    """A one-parameter bucket (a parameter larger than bucket_mb) is sent as a copy: flattening one
    tensor would return a view of its .grad, which the write-back then copies onto itself."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    averager = ddist.GradientAverager(list(model.parameters()), 1, bucket_mb=1e-9)
    assert all(len(b) == 1 for b in averager.buckets)
    model(torch.randn(7, 6)).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    averager.finish()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=0, atol=0)


@pytest.mark.slow
def test_every_block_of_the_paper_unet_is_compiled():
    """The 44 residual blocks of the paper UNet share one code object (ResBlock.forward), which Dynamo
    compiles once per variant; at its default recompile limit (8) only 15 of them compiled and the rest
    ran eager without a word. compile_blocks raises the limit to the block count: 44 of 44."""
    from lct.method.nn.unet import ResBlock

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = resolve_experiment("slct", {"network": {"size": "paper"}, "train": {"total_steps": 4}})
    model = build_model(cfg, 32, 4)
    blocks = sum(isinstance(m, ResBlock) for m in model.modules())
    compile_blocks(model, backend="aot_eager")
    loss = model(torch.randn(2, 4, 32, 32), torch.rand(2) + 0.1).square().mean()
    assert blocks == 44 and len(compiled_backward_nodes(loss.grad_fn)) == blocks
