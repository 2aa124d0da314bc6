"""Robust distances: gradcheck in float64 and their limits (docs/METHOD.md sections 2-4)."""

import math

import pytest
import torch

from lct.method.losses import DISTANCES, ROBUST, robust_distance, squared_norm


def _xy(b=3, shape=(2, 3, 3), scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((b, *shape), generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    y = (torch.randn((b, *shape), generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    return x, y


@pytest.mark.parametrize("name", sorted(ROBUST))
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_gradcheck(name, reduction):
    x, y = _xy()
    assert torch.autograd.gradcheck(lambda a, b: robust_distance(name, a, b, 0.05, reduction), (x, y))


def test_per_sample_shape_and_formulas():
    x, y = _xy(b=4)
    s = ((x - y) ** 2).flatten(1).sum(1)
    c = 0.03
    assert robust_distance("l2", x, y, c).shape == (4,)
    torch.testing.assert_close(robust_distance("pseudo_huber", x, y, c), torch.sqrt(s + c**2) - c)  # eq. 7
    torch.testing.assert_close(robust_distance("cauchy", x, y, c), torch.log(1 + s / (2 * c**2)))  # eq. 6
    torch.testing.assert_close(robust_distance("geman_mcclure", x, y, c), 2 * s / (s + 4 * c**2))  # eq. 8


def test_mean_forms_match_authors_code():
    # docs/METHOD.md 4: Cauchy = log(mean(r^2)/2 + c^2) - 2 log c; Huber = sqrt(mean(r^2) + c^2) - c.
    x, y = _xy(b=4)
    m = ((x - y) ** 2).flatten(1).mean(1)
    c = 0.02
    torch.testing.assert_close(robust_distance("cauchy", x, y, c, "mean"), torch.log(m / 2 + c**2) - 2 * math.log(c))
    torch.testing.assert_close(robust_distance("pseudo_huber", x, y, c, "mean"), torch.sqrt(m + c**2) - c)
    # With a sum, the equivalent c is sqrt(d) times larger.
    d = x[0].numel()
    torch.testing.assert_close(robust_distance("cauchy", x, y, c, "mean"), robust_distance("cauchy", x, y, c * math.sqrt(d), "sum"))


def test_small_residual_limits():
    c = 0.5
    x = torch.zeros(1, 10, dtype=torch.float64)
    y = torch.full((1, 10), 1e-4, dtype=torch.float64)
    s = float(squared_norm(x, y))
    assert math.isclose(float(robust_distance("cauchy", x, y, c)), s / (2 * c**2), rel_tol=1e-6)
    assert math.isclose(float(robust_distance("geman_mcclure", x, y, c)), s / (2 * c**2), rel_tol=1e-6)
    assert math.isclose(float(robust_distance("pseudo_huber", x, y, c)), s / (2 * c), rel_tol=1e-6)  # its stated scale
    assert math.isclose(float(robust_distance("l2", x, y, c)), s, rel_tol=1e-12)


def test_large_residual_limits():
    c = 0.1
    x = torch.zeros(3, 1, dtype=torch.float64)
    y = torch.tensor([[1e2], [1e4], [1e6]], dtype=torch.float64)
    cauchy = robust_distance("cauchy", x, y, c)
    # Cauchy grows like a logarithm: ln(r^2 / 2c^2), so +2 ln(100) per factor 100 in the residual.
    torch.testing.assert_close(cauchy.diff(), torch.full((2,), 2 * math.log(100.0), dtype=torch.float64), rtol=1e-6, atol=1e-6)
    # Geman-McClure saturates at 2; Pseudo-Huber becomes linear in |r|.
    gm = robust_distance("geman_mcclure", x, y, c)
    assert torch.all(gm < 2) and abs(float(gm[-1]) - 2) < 1e-12
    ph = robust_distance("pseudo_huber", x, y, c)
    torch.testing.assert_close(ph / y.squeeze(1), torch.ones(3, dtype=torch.float64), rtol=2e-3, atol=0)


def test_unknown_names_and_elatentlpips_error():
    x, y = _xy()
    with pytest.raises(ValueError, match="loss.distance"):
        robust_distance("huber2", x, y, 0.1)
    with pytest.raises(ValueError, match="loss.reduction"):
        robust_distance("l2", x, y, 0.1, "max")
    assert set(DISTANCES) == {"l2", "pseudo_huber", "cauchy", "geman_mcclure", "elatentlpips"}
    with pytest.raises(FileNotFoundError, match="fetch_weights"):  # no resources folder: says where weights come from
        robust_distance("elatentlpips", x.float(), y.float(), 0.0)


@pytest.mark.slow
def test_elatentlpips_training_step_reaches_the_unet(tmp_path, monkeypatch):
    """Table 2c's cell: one step of consistency training with the package's real E-LatentLPIPS network
    (random weights in the package's own file formats), the authors' settings, any working directory."""
    from lct.config import resolve_experiment
    from lct.weights.fetch import load_elatentlpips
    from lct.method.objectives import build_objective
    from lct.method.precond import build_model
    from lct.weights.random_weights import write_all

    res = tmp_path / "resources"
    write_all(res, None, inception=False, vgg16=False, elatentlpips=True)
    monkeypatch.setenv("LCT_ALLOW_RANDOM_WEIGHTS", "1")
    monkeypatch.chdir(tmp_path)  # not the weights folder: found through --resources, not ./ckpt
    cfg = resolve_experiment("slct", {"loss": {"distance": "elatentlpips"}, "network": {"size": "tiny"},
                                      "train": {"total_steps": 10}}, reading="as_coded")
    torch.manual_seed(0)
    net = build_model(cfg, 8, 4)
    with torch.no_grad():
        net.unet.out_conv.weight.normal_(0, 0.1)  # a zero-initialised output would block the gradient
    lpips = load_elatentlpips(res / "elatentlpips", "cpu")
    assert lpips.augment is None  # the authors: augment=None (no ensembling)
    assert not (tmp_path / "ckpt").exists()  # nothing written into the working directory
    obj = build_objective(cfg, 10, distance_net=lpips)
    x0 = torch.randn(4, 4, 8, 8)
    loss, logs = obj(net, x0, torch.randn_like(x0), step=3)
    assert loss.shape == (4,) and torch.isfinite(loss).all()
    loss.mean().backward()
    grads = [p.grad for p in net.unet.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in lpips.parameters())  # the metric network stays frozen
