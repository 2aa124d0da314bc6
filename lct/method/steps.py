"""What the objectives share: the per-step random streams (resumable, the same on every rank count) and the
EMA target network theta- of distillation and CTM (state of the objective, carried by checkpoints)."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn


def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for iteration `step` of a run with train.seed `seed` (resumable stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


def rank_seed(seed: int, rank: int) -> int:
    """The dropout seed of one rank for one step, from the step's shared draw `seed`: rank 0 keeps it
    (a one-process run is unchanged), rank r > 0 gets an independent stream of (seed, r). Each rank
    holds different samples, so each needs its own masks; its online and target passes still share one."""
    if rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> np.uint64(2))


@contextlib.contextmanager
def shared_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global RNG of `device` at `seed`, restoring it afterwards.

    Entering twice with the same seed makes two forward passes draw the same dropout mask.
    """
    cuda = device.type == "cuda"
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class TargetNetwork:
    """The target network theta- <- mu theta- + (1 - mu) theta with mu = distill.target_ema (0: theta- is the
    stopgrad of the online network, no copy). `attach` makes it, `after_update` moves it after each optimizer
    step, `state_dict` / `load_state_dict` carry it through checkpoints. Needs `self.cfg`."""

    target: nn.Module | None = None

    def attach(self, model: nn.Module) -> None:
        """Make theta- = theta (a frozen copy; the fast-path settings of `model` come with it; the
        loop compiles it as it compiles `model`, lct.run.model.compile_blocks)."""
        if self.cfg.distill.target_ema > 0:
            self.target = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def after_update(self, model: nn.Module) -> None:
        """theta- <- mu theta- + (1 - mu) theta, after each optimizer step (CM Algorithm 2)."""
        if self.target is None:
            return
        tgt, src = self.target.state_dict(), model.state_dict()
        floats = [k for k, v in tgt.items() if v.is_floating_point()]
        torch._foreach_lerp_([tgt[k] for k in floats], [src[k].detach() for k in floats],
                             1.0 - self.cfg.distill.target_ema)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {} if self.target is None else self.target.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.target is not None:
            self.target.load_state_dict(state)
