"""Discretization curricula N(k) of consistency training (eq. 10; CM's square-root schedule): integer
arithmetic without torch, so that the workflow's light config writers (lct.config.run_length) stay
fast. lct.method.schedules re-exports every name.
"""

from __future__ import annotations

import math
from typing import Protocol


class ScheduleConfig(Protocol):
    """What the curricula read of lct.config.ScheduleConfig (a structural type: this module imports no config)."""

    curriculum: str
    s0: int
    s1: int


def _num_stages_exp(s0: int, s1: int) -> int:
    return int(math.log2(math.floor(s1 / s0))) + 1


def num_timesteps_exp(k: int, K: int, s0: int = 10, s1: int = 640) -> int:
    """iCT exponential curriculum N(k) (eq. 10)."""
    # N(k) = min(s0 2^floor(k / K'), s1) + 1,  K' = floor(K / (log2 floor(s1 / s0) + 1))   (eq. 10)
    k_prime = max(K // _num_stages_exp(s0, s1), 1)
    return min(s0 * 2 ** (k // k_prime), s1) + 1


def num_timesteps_sqrt(k: int, K: int, s0: int = 2, s1: int = 150) -> int:
    """Original CM curriculum (Song et al. 2023, appendix C)."""
    # N(k) = ceil(sqrt(k/K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1
    k = min(k, K)  # steps past K (train.length_rule authors_loop runs one more epoch) stay at s1
    return int(math.ceil(math.sqrt(k / max(K, 1) * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)) + 1


def num_timesteps(k: int, K: int, sched: "ScheduleConfig") -> int:
    """N(k) for the configured curriculum (schedule.curriculum)."""
    if sched.curriculum == "exp":
        return num_timesteps_exp(k, K, sched.s0, sched.s1)
    if sched.curriculum == "sqrt":
        return num_timesteps_sqrt(k, K, sched.s0, sched.s1)
    if sched.curriculum == "fixed":
        return sched.s1 + 1
    raise ValueError(f"schedule.curriculum = {sched.curriculum!r}; choose exp, sqrt or fixed")


def curriculum_stage(k: int, K: int, sched: "ScheduleConfig") -> int:
    """0-based stage of the curriculum at iteration k (stage 0 = the first, N = s0 + 1)."""
    if sched.curriculum == "exp":
        k_prime = max(K // _num_stages_exp(sched.s0, sched.s1), 1)
        return min(k // k_prime, _num_stages_exp(sched.s0, sched.s1) - 1)
    # Other curricula have no discrete stages: stage 0 while N(k) equals its starting value.
    return 0 if num_timesteps(k, K, sched) == num_timesteps(0, K, sched) else 1


def curriculum_stages(K: int, sched: "ScheduleConfig") -> list[tuple[int, int]]:
    """(first iteration, N) of each stage of the exp curriculum (eq. 10) over K iterations."""
    if sched.curriculum != "exp":
        raise ValueError(f"schedule.curriculum = {sched.curriculum!r} has no discrete stages")
    k_prime = max(K // _num_stages_exp(sched.s0, sched.s1), 1)  # K' of eq. 10
    return [(j * k_prime, num_timesteps_exp(j * k_prime, K, sched.s0, sched.s1))
            for j in range(_num_stages_exp(sched.s0, sched.s1)) if j * k_prime < K]
