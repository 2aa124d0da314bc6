"""Minibatch optimal-transport coupling of noise and data (paper section 3, Pooladian et al. 2023).

The exact plan (POT ``ot.emd``) between the uniform empirical measures of a batch of data and a
batch of noise, under squared L2 on flattened samples with the cost normalized by its maximum
(as the authors' code does; scaling the cost does not change the optimal plan, it only keeps
the solver's numbers tame). With equal uniform weights the optimal plan is a permutation matrix
(a vertex of the Birkhoff polytope), so the plan is read out as a permutation.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from scipy.optimize import linear_sum_assignment


def ot_cost(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The normalized cost M / max(M), M_jk = ||x0_j - z_k||^2 (float64), on the batch's device: one
    B x B matrix to bring to the host for the solver instead of the two B x d batches (at B = 256 on
    32x32x4 latents: 0.5 MB instead of 16 MB)."""
    if x0.shape[0] != noise.shape[0]:
        raise ValueError(f"ot_pair: batch sizes differ ({x0.shape[0]} data vs {noise.shape[0]} noise)")
    a = x0.detach().flatten(1).double()
    z = noise.detach().flatten(1).double()
    cost = torch.cdist(a, z).square()  # M_jk = ||x0_j - z_k||^2 (a matrix product inside cdist at these sizes)
    return cost / cost.amax().clamp_min(1e-300)


def solve_perm(cost: np.ndarray, group: int | None = None) -> np.ndarray:
    """The optimal assignment of the exact plan (POT's `emd`) on a host cost matrix, as a permutation.
    `group`: pair only within consecutive blocks of this size (each block's own plan), as the authors'
    multi-GPU runs pair within each GPU's share; the result is block-diagonal."""
    b = cost.shape[0]
    if group is not None and group < b:
        if b % group:
            raise ValueError(f"OT group {group} does not divide the batch {b}")
        return np.concatenate([lo + solve_perm(cost[lo : lo + group, lo : lo + group]) for lo in range(0, b, group)])
    w = np.full(b, 1.0 / b)
    plan = ot.emd(w, w, np.ascontiguousarray(cost, dtype=np.float64))
    perm = plan.argmax(axis=1)
    if len(np.unique(perm)) != b:
        # Degenerate ties can give a non-vertex plan; the assignment solver gives the same optimum.
        perm = linear_sum_assignment(cost)[1]
    return perm.astype(np.int64)


def ot_pair(x0: torch.Tensor, noise: torch.Tensor, group: int | None = None) -> torch.Tensor:
    """Permutation perm [B] (int64, on x0's device) such that noise[perm] is OT-paired with x0 (within
    consecutive groups of `group` samples if given).

    Synchronous (the cost is read back at once): for tests, benchmarks and one-off calls. The training
    loop overlaps the same two halves with the previous step (lct.run.batches.BatchPipeline)."""
    perm = solve_perm(ot_cost(x0, noise).cpu().numpy(), group)
    return torch.as_tensor(perm, dtype=torch.long, device=x0.device)
