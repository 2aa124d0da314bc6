"""Process-group helpers: DDP only when `torchrun` (or a test) set RANK and WORLD_SIZE.

nanoGPT style: one process per GPU, `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
`MASTER_PORT` from the environment; gloo on CPU, nccl on CUDA. Without those variables every
helper here is a no-op for a single process, so the same command runs on a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str | None = None) -> DistInfo:
    """Join the process group if RANK/WORLD_SIZE are set; pick the device (CUDA when present)."""
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        dev = torch.device(device or ("cuda" if use_cuda else "cpu"))
        return DistInfo(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://",
                                rank=rank, world_size=world)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_flags(bad: torch.Tensor, stop: bool) -> tuple[bool, bool]:
    """(any rank's `bad` device flag, any rank's `stop`) with ONE host read: the training step's only
    synchronisation. The host flag is written on the device by a fill (no copy); several ranks all-reduce
    the pair first."""
    pair = torch.stack([bad.detach().float().reshape(()), bad.new_full((), float(stop), dtype=torch.float32)])
    if dist.is_initialized():
        dist.all_reduce(pair, op=dist.ReduceOp.MAX)
    code = int(pair[0] * 2 + pair[1])  # both flags in one read: 2 bad + stop
    return code >= 2, code % 2 == 1


def mean_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


class GradientAverager:
    """Average the gradients over the ranks in FIXED buckets, overlapped with the backward pass.

    Why not DistributedDataParallel: DDP re-packs its gradient buckets in gradient-ready order after
    its first iteration, so a run resumed from a checkpoint (whose first iteration packs them the
    initial way) sums each element over the ranks in another order than the uninterrupted run, and
    the two end with different weights. Here the buckets are fixed (reverse parameter order, about
    `bucket_mb` each) and launched strictly in bucket order as their gradients become ready, so a
    resumed multi-GPU run ends with exactly the weights of an uninterrupted one, and the collectives
    are issued in the same order on every rank even when the ranks' graphs differ.

    Usage per step: `loss.backward()` (hooks launch the complete buckets), then `finish()`.
    """

    def __init__(self, params: list[torch.nn.Parameter], world_size: int, bucket_mb: float = 25.0) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.world = world_size
        buckets: list[list[torch.nn.Parameter]] = [[]]
        size = 0
        for p in reversed(self.params):  # gradients become ready roughly from the output backwards
            if buckets[-1] and size + p.numel() * p.element_size() > bucket_mb * 2**20:
                buckets.append([])
                size = 0
            buckets[-1].append(p)
            size += p.numel() * p.element_size()
        self.buckets = buckets
        self._bucket_of = {id(p): i for i, b in enumerate(buckets) for p in b}
        self._reset()
        for p in self.params:
            p.register_post_accumulate_grad_hook(self._ready)

    def _reset(self) -> None:
        self._missing = [len(b) for b in self.buckets]
        self._launched: list[tuple[torch.Tensor, object]] = []

    def _ready(self, p: torch.nn.Parameter) -> None:
        self._missing[self._bucket_of[id(p)]] -= 1
        self._launch_ready()

    def _launch(self, i: int) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.buckets[i]]
        flat = torch.cat([g.reshape(-1) for g in grads])  # a copy even for a one-parameter bucket (never a view of .grad)
        self._launched.append((flat, dist.all_reduce(flat, async_op=True)))

    def _launch_ready(self) -> None:
        """Launch buckets in index order while the next one is complete (same order on every rank)."""
        while len(self._launched) < len(self.buckets) and self._missing[len(self._launched)] == 0:
            self._launch(len(self._launched))

    def finish(self) -> None:
        """Launch what is left (parameters without a gradient count as zeros), wait, write the means back."""
        while len(self._launched) < len(self.buckets):
            self._launch(len(self._launched))
        for (flat, work), bucket in zip(self._launched, self.buckets):
            work.wait()
            flat.div_(self.world)
            for p, g in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                if p.grad is None:
                    p.grad = g.view_as(p).clone()
                else:
                    p.grad.copy_(g)
        self._reset()
