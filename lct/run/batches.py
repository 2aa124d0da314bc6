"""The training loop's batches, prepared one step ahead: data, noise and the minibatch-OT pairing.

Step k's global batch is a function of (train.seed, k) alone (DataOrder for the images, a
generator seeded from the step for the noise), so batch k + 1 can be made while step k trains without
changing a single number. What that buys:

* the OT assignment (an exact LP, POT's `emd`, on the host) of batch k + 1 is solved on a worker thread
  while step k runs on the device: its cost matrix is made on the device (lct.method.ot.ot_cost), copied to
  pinned host memory without waiting, and the worker waits for that copy, not the training step;
* under several ranks it is solved once, on rank 0, and the permutation is broadcast (a collective queued
  on the device, like the gradient all-reduce): every rank pairs the same global batch the same way;
* the indices, the permutation and the batch cross to the device through pinned memory, non-blocking.

The main thread waits only when one solve takes longer than one step; `Batch.ot_wait_s` logs that wait
and `Batch.ot_solve_s` the solve itself (paper, section 3.3: OT adds about 1% to a step).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from lct.infra.device import to_device, to_host_async
from lct.method.ot import ot_cost, solve_perm


def step_seed(seed: int, rank: int, step: int, stream: int = 0) -> int:
    """A 63-bit seed for (seed, rank, step, stream): each step's randomness, independent of history."""
    return int(np.random.SeedSequence([seed, rank, step, stream]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class DataOrder:
    """Epoch permutations laid end to end; global step s takes positions [s B, (s+1) B).

    Rank r takes its contiguous shard [r b, (r+1) b) of the global batch (b = B / world), so the
    data order is a function of (seed, step) alone and resumes from the step counter.
    """

    def __init__(self, num_images: int, seed: int, global_batch: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.seed, self.B = num_images, seed, global_batch
        self.b, self.rank = global_batch // world_size, rank
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(step_seed(self.seed, 0, epoch, stream=0xDA7A))
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def global_indices(self, step: int) -> torch.Tensor:
        """All B indices of global step `step` (rank r trains on rows [r b, (r+1) b) of them)."""
        return self._at(torch.arange(self.B, dtype=torch.long) + step * self.B)

    def indices(self, step: int) -> torch.Tensor:
        return self._at(torch.arange(self.b, dtype=torch.long) + step * self.B + self.rank * self.b)

    def _at(self, pos: torch.Tensor) -> torch.Tensor:
        epochs = pos // self.n
        out = torch.empty_like(pos)
        for e in epochs.unique().tolist():
            m = epochs == e
            out[m] = self.perm(e)[pos[m] % self.n]
        return out

    def state(self, step: int) -> dict[str, int]:
        return {"seed": self.seed, "epoch": step * self.B // self.n, "position": step * self.B % self.n,
                "global_batch": self.B}


class Batch(NamedTuple):
    x0: torch.Tensor  # the global batch [B, C, H, W] on the device
    noise: torch.Tensor  # z ~ N(0, I), same shape, before pairing
    generator: torch.Generator  # the objective's host generator of this step
    perm: torch.Tensor | None  # OT pairing: noise[perm] goes with x0 (None: no OT)
    ot_solve_s: float  # worker time of the solve (off the step's path)
    ot_wait_s: float  # time the step waited for it (on the path)


def _solve(cost: torch.Tensor, event, group: int | None = None) -> tuple[np.ndarray, float]:
    if event is not None:
        event.synchronize()  # the copy of this cost only (queued before the step that runs meanwhile)
    t0 = time.perf_counter()
    return solve_perm(cost.numpy(), group), time.perf_counter() - t0


class BatchPipeline:
    """`get(step)` returns step's Batch and starts step + 1's; use as a context manager (stops the worker)."""

    def __init__(self, data: torch.Tensor, order, seed: int, total: int, device: torch.device, *,
                 ot: bool = False, ot_group: int | None = None, rank: int = 0, world: int = 1,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.data, self.order, self.seed, self.total, self.dev = data, order, seed, total, device
        self.ot, self.ot_group, self.rank, self.world, self.memory_format = ot, ot_group, rank, world, memory_format
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lct-ot") if ot and rank == 0 else None
        self._pending: dict[int, tuple[torch.Tensor, torch.Tensor, Future | None]] = {}

    def __enter__(self) -> "BatchPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()

    def _prepare(self, step: int) -> tuple[torch.Tensor, torch.Tensor, Future | None]:
        idx = self.order.global_indices(step)
        if self.data.device == self.dev:  # latents held on the device: only the indices cross
            x0 = self.data[to_device(idx, self.dev)]
        else:
            x0 = to_device(self.data[idx], self.dev)
        gen = torch.Generator(self.dev).manual_seed(step_seed(self.seed, 0, step))
        # z ~ N(0, I): the values of torch.randn(x0.shape, generator=gen), drawn in the standard layout, so
        # they do not depend on the memory format.
        noise = x0.new_empty(x0.shape, dtype=torch.float32).normal_(generator=gen)
        x0 = x0.contiguous(memory_format=self.memory_format)
        noise = noise.contiguous(memory_format=self.memory_format)
        future = None
        if self._pool is not None:
            cost, event = to_host_async(ot_cost(x0, noise))
            future = self._pool.submit(_solve, cost, event, self.ot_group)
        return x0, noise, future

    def get(self, step: int) -> Batch:
        x0, noise, future = self._pending.pop(step, None) or self._prepare(step)
        if step + 1 < self.total:  # queue the next batch (and its solve) before waiting for this one's
            self._pending[step + 1] = self._prepare(step + 1)
        perm, solve_s, wait_s = None, 0.0, 0.0
        if self.ot:
            if future is not None:
                t0 = time.perf_counter()
                host_perm, solve_s = future.result()
                wait_s = time.perf_counter() - t0
                perm = to_device(torch.from_numpy(host_perm), self.dev)
            else:  # another rank solves
                perm = x0.new_empty((x0.shape[0],), dtype=torch.long)
            if self.world > 1:
                import torch.distributed as dist

                dist.broadcast(perm, src=0)  # rank 0's plan on every rank (queued, no host wait)
        gen_obj = torch.Generator().manual_seed(step_seed(self.seed, 0, step, stream=2))
        return Batch(x0, noise, gen_obj, perm, solve_s, wait_s)
