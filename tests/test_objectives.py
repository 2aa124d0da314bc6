"""Objectives: consistency training step (eq. 4, eq. 9) and the EDM denoising loss."""

import math

import torch
from torch import nn

from lct.method import schedules as S
from lct.config import resolve_experiment
from lct.method.objectives import ConsistencyObjective, DenoisingObjective, build_objective, shared_rng
from lct.method.precond import ConsistencyModel, EDMDenoiser, build_model


def _cfg(preset="slct", **loss):
    return resolve_experiment(preset, {"network": {"size": "tiny"}, "loss": loss, "train": {"total_steps": 700}})


def _batch(b=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, 8, generator=g) * 0.5, torch.randn(b, 4, 8, 8, generator=g)


class Recorder(nn.Module):
    """f(x, t) = x * w + t-dependent dropout; records inputs so the test can check the step."""

    def __init__(self, p=0.5):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.9))
        self.drop = nn.Dropout(p)
        self.calls = []

    def forward(self, x, sigma):
        self.calls.append((x.detach().clone(), sigma.detach().clone(), torch.is_grad_enabled()))
        return self.drop(torch.ones_like(x)) * x * self.w


def test_build_model_and_boundary_condition():
    cfg = _cfg()
    net = build_model(cfg, 8, 4)
    assert isinstance(net, ConsistencyModel)
    with torch.no_grad():
        net.unet.out_conv.weight.normal_()
    x = torch.randn(3, 4, 8, 8)
    torch.testing.assert_close(net(x, torch.full((3,), 0.002)), x)  # f(x, sigma_min) = x (eq. 2)
    assert isinstance(build_model(_cfg("ldm_ve"), 8, 4), EDMDenoiser)
    assert isinstance(build_objective(_cfg("ldm_ve"), 10), DenoisingObjective)


def test_consistency_step_pairs_and_shared_dropout():
    cfg = _cfg("ilct")
    obj = ConsistencyObjective(cfg, 700)
    net = Recorder()
    x0, z = _batch()
    loss, logs = obj(net, x0, z, step=0, generator=torch.Generator().manual_seed(1))
    (xs, ts, grad_s), (xt, tt, grad_t) = net.calls
    assert grad_s and not grad_t  # teacher under no_grad (stopgrad, EMA 0)
    sig = S.karras_sigmas(11)
    # t_hi is the next grid point above t_lo, and both points use the same x0 and z.
    lo_idx = (sig.float()[None, :] - tt[:, None]).abs().argmin(1)
    torch.testing.assert_close(ts, sig[lo_idx + 1].float())
    torch.testing.assert_close((xs - x0) / ts.view(-1, 1, 1, 1), z, atol=1e-4, rtol=0)  # float32 at t = 80
    torch.testing.assert_close((xt - x0) / tt.view(-1, 1, 1, 1), z, atol=1e-4, rtol=0)
    assert loss.shape == (8,) and logs["N"] == 11 and math.isclose(logs["c"], S.c_fixed(256))
    # Same dropout mask in both passes: with xs = xt the two outputs would be identical.
    with shared_rng(7, torch.device("cpu")):
        a = net.drop(torch.ones(1000))
    with shared_rng(7, torch.device("cpu")):
        b = net.drop(torch.ones(1000))
    assert torch.equal(a, b) and 0 < int((a == 0).sum()) < 1000
    loss.mean().backward()
    assert net.w.grad is not None and torch.isfinite(net.w.grad)


def test_dropout_mask_shared_in_objective():
    # With an identity-in-t network, the distance vanishes iff both passes use the same mask.
    class DropOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, x, sigma):
            return self.drop(torch.ones_like(x)) * self.scale

    cfg = _cfg("ilct")
    loss, _ = ConsistencyObjective(cfg, 700)(DropOnly(), *_batch(), step=3)
    assert float(loss.detach().abs().max()) == 0.0


def test_loss_matches_hand_computation_and_weighting():
    cfg = _cfg("ilct")
    net = Recorder(p=0.0)
    x0, z = _batch()
    loss, _ = ConsistencyObjective(cfg, 700)(net, x0, z, 0, torch.Generator().manual_seed(2))
    (xs, ts, _), (xt, tt, _) = net.calls
    c = S.c_fixed(256)
    s = ((xs - xt) * 0.9).flatten(1).square().sum(1)
    lam = 1 / (ts.double() - tt.double())
    torch.testing.assert_close(loss, (lam * (torch.sqrt(s + c * c) - c)).float(), rtol=1e-5, atol=1e-6)


def test_diffusion_loss_threshold_and_no_nan():
    x0, z = _batch(16)
    # r small: int(N r) = 0 at N = 11 -> no index selected; the loss must stay finite.
    cfg = _cfg("slct", diffusion_r=0.05, ot=False)
    torch.manual_seed(0)
    net = build_model(cfg, 8, 4)
    for variant in ("paper", "as_coded"):
        cfg.loss.diffusion_variant = variant
        loss, logs = ConsistencyObjective(cfg, 700)(net, x0, z, 0)
        assert torch.isfinite(loss).all() and logs["loss_diff"] == 0.0
    # r = 1: every index is selected, and the paper variant adds ||f(x_{t_i}, t_i) - x0||^2.
    cfg = _cfg("slct", diffusion_r=1.0, ot=False)
    rec = Recorder(p=0.0)
    loss, logs = ConsistencyObjective(cfg, 700)(rec, x0, z, 0, torch.Generator().manual_seed(3))
    assert len(rec.calls) == 3 and rec.calls[2][2]  # a third, student pass at t_i with gradient
    xd, td, _ = rec.calls[2]
    torch.testing.assert_close(td, rec.calls[1][1])
    diff = ((xd * 0.9) - x0).flatten(1).square().sum(1)
    assert math.isclose(logs["loss_diff"], float(diff.mean()), rel_tol=1e-5)
    assert logs["diff_frac"] == 1.0


def test_diffusion_loss_selects_smallest_sigmas():
    cfg = _cfg("slct_as_coded", diffusion_r=0.25, ot=False)
    rec = Recorder(p=0.0)
    x0, z = _batch(64)
    loss, logs = ConsistencyObjective(cfg, 700)(rec, x0, z, 0, torch.Generator().manual_seed(4))
    ts = rec.calls[0][1]
    sig = S.karras_sigmas(11).float()
    selected = ts <= sig[2] + 1e-6  # 1-based pair index i <= int(11 * 0.25) = 2 -> t_{i+1} in {t_2, t_3}
    assert math.isclose(logs["diff_frac"], float(selected.float().mean()))
    assert 0 < logs["diff_frac"] < 1 and torch.isfinite(loss).all()


def test_ot_reorders_noise_and_logs_time():
    cfg = _cfg("slct", diffusion_loss=False)
    rec = Recorder(p=0.0)
    x0, z = _batch(16)
    _, logs = ConsistencyObjective(cfg, 700)(rec, x0, z, 0, torch.Generator().manual_seed(5))
    xs, ts, _ = rec.calls[0]
    used = (xs - x0) / ts.view(-1, 1, 1, 1)
    paired_cost = (used - x0).flatten(1).square().sum()
    assert paired_cost <= (z - x0).flatten(1).square().sum() + 1e-3  # OT never increases the batch cost
    match = torch.cdist(used.flatten(1), z.flatten(1)).argmin(1)  # each used noise is one of the z, once
    assert sorted(match.tolist()) == list(range(16))
    torch.testing.assert_close(used, z[match], atol=1e-4, rtol=0)
    assert logs["ot_time_s"] > 0


def test_same_step_same_loss():
    cfg = _cfg("slct")
    torch.manual_seed(0)
    net = build_model(cfg, 8, 4)
    x0, z = _batch()
    a, _ = ConsistencyObjective(cfg, 700)(net, x0, z, 5)
    b, _ = ConsistencyObjective(cfg, 700)(net, x0, z, 5)
    torch.testing.assert_close(a, b)


def test_denoising_objective():
    cfg = _cfg("ldm_ve")
    net = build_model(cfg, 8, 4)
    x0, z = _batch()
    loss, logs = DenoisingObjective(cfg)(net, x0, z, 0)
    assert loss.shape == (8,) and torch.isfinite(loss).all()
    loss.mean().backward()
    # With F = 0 at init, D = c_skip x; the EDM weighting makes the expected loss per dim about 1.
    x0 = torch.randn(4096, 1, 1, 1) * 0.5
    l, _ = DenoisingObjective(cfg)(lambda x, s: (0.25 / (s**2 + 0.25)).view(-1, 1, 1, 1) * x, x0, torch.randn_like(x0), 0)
    assert 0.9 < float(l.mean()) < 1.1


def test_as_coded_diffusion_log_is_the_mean_over_selected_samples():
    """The loss carries b / n_sel (the authors' mean over the selected samples inside a batch mean); the log
    is that mean itself, not b / n_sel times it (it was 4x too large at b = 8, n_sel = 2)."""
    cfg = _cfg("slct_as_coded", diffusion_r=0.25, ot=False)
    rec = Recorder(p=0.0)
    x0, z = _batch(64)
    loss, logs = ConsistencyObjective(cfg, 700)(rec, x0, z, 0, torch.Generator().manual_seed(4))
    xs, ts, _ = rec.calls[0]
    sel = ts <= S.karras_sigmas(11).float()[2] + 1e-6
    per = (1 / ts**2 + 1 / cfg.schedule.sigma_data**2) * ((xs * 0.9) - x0).flatten(1).square().mean(1)
    assert 0 < int(sel.sum()) < 64
    assert math.isclose(float(logs["loss_diff"]), float(per[sel].mean()), rel_tol=1e-5)


def test_given_perm_is_the_one_solved_here():
    """The loop hands the objective the OT plan it solved one step ahead (lct.run.batches); the loss is the one
    the objective gets by solving it itself."""
    from lct.method.ot import ot_pair

    cfg = _cfg("slct")
    torch.manual_seed(0)
    net = build_model(cfg, 8, 4)
    x0, z = _batch(16)
    a, _ = ConsistencyObjective(cfg, 700)(net, x0, z, 3)
    b, logs = ConsistencyObjective(cfg, 700)(net, x0, z, 3, perm=ot_pair(x0, z))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert logs["ot_time_s"] == 0.0  # solved by the caller
