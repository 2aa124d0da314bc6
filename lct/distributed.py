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


def any_true(flag: bool | torch.Tensor, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank (keeps ranks in lock-step). A 0-d tensor flag is
    reduced on its device and read once: one host synchronisation in all."""
    if not dist.is_initialized():
        return bool(flag)
    if isinstance(flag, torch.Tensor):
        t = flag.detach().float().reshape(1).to(device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging)."""
    if not dist.is_initialized() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t /= dist.get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}
