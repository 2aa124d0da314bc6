"""Minibatch OT coupling: a permutation at the assignment optimum."""

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from lct.method.ot import ot_pair


@pytest.mark.parametrize("b,seed", [(2, 0), (7, 1), (16, 2), (32, 3)])
def test_ot_pair_is_optimal_permutation(b, seed):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, 4, 4, 4, generator=g) * 0.5
    z = torch.randn(b, 4, 4, 4, generator=g)
    perm = ot_pair(x0, z)
    assert perm.dtype == torch.long and sorted(perm.tolist()) == list(range(b))
    cost = torch.cdist(x0.flatten(1).double(), z.flatten(1).double()).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    ours = cost[np.arange(b), perm.numpy()].sum()
    assert ours == pytest.approx(cost[rows, cols].sum(), rel=1e-9)
    identity = cost[np.arange(b), np.arange(b)].sum()
    assert ours <= identity + 1e-9


def test_ot_pair_recovers_shuffled_pairs():
    # Noise that is a tiny perturbation of a shuffled copy of the data must be paired back exactly.
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(12, 8, generator=g)
    shuffle = torch.randperm(12, generator=g)
    z = x0[shuffle] + 1e-3 * torch.randn(12, 8, generator=g)
    perm = ot_pair(x0, z)
    torch.testing.assert_close(z[perm], x0, atol=1e-2, rtol=0)


def test_ot_pair_batch_mismatch():
    with pytest.raises(ValueError, match="batch sizes"):
        ot_pair(torch.zeros(3, 2), torch.zeros(4, 2))


def test_ot_pair_is_pots_emd_plan_on_the_same_cost():
    """The permutation read from the plan equals POT's `ot.emd` plan on the normalized squared-L2 cost."""
    import numpy as np
    import ot

    g = torch.Generator().manual_seed(3)
    x0, z = torch.randn(64, 4, 8, 8, generator=g), torch.randn(64, 4, 8, 8, generator=g)
    cost = torch.cdist(x0.flatten(1).double(), z.flatten(1).double()).square().numpy()
    plan = ot.emd(np.full(64, 1 / 64), np.full(64, 1 / 64), cost / cost.max())
    assert (ot_pair(x0, z).numpy() == plan.argmax(axis=1)).all()
