"""Consistency trajectory models (objective trajectory; beyond the paper) against the closed forms of
Gaussian data x0 ~ N(0, a^2 I): the PF-ODE map x_s = x_t sqrt((s^2 + a^2) / (t^2 + a^2)) and the denoiser
E[x0 | x_t] = x_t a^2 / (t^2 + a^2).

(a) soft matching is zero at the exact G and positive when G is perturbed; DSM's minimum is not zero but the
    conditional variance, which the EDM weight makes exactly 1 per dimension at the exact g, and a wrong g
    scores above it; (b) the Heun solver with the exact denoiser follows the exact map (second order);
(c) a tiny network trained a few hundred CPU steps on 2-D Gaussian data gets G(x, t, s) close to the exact
    map, with the teacher's solver and with its own; (d) gamma-sampling at gamma 1 is CM's multistep sampler,
    at gamma 0 with the exact G the exact ODE map at 1, 2 and 4 NFE. Also: the s-embedding switch leaves every
    existing network unchanged, and the config errors name the fix.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lct.config import ConfigError, resolve_experiment
from lct.method.nn.unet import UNet, UNET_SIZES
from lct.method.precond import TrajectoryModel, build_model
from lct.method.samplers import multistep_sigmas, sample_consistency, sample_trajectory
from lct.method.trajectory import TrajectoryObjective, descending_grid, heun_solve

A = 0.2  # std of the Gaussian data; schedule.sigma_data stays 0.5, so the preconditioning alone is wrong


def _col(t, x):
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)


def exact_map(x: torch.Tensor, t, s, a: float = A) -> torch.Tensor:
    """The PF-ODE of N(0, a^2 I) data from time t to time s."""
    t, s = _col(t, x), _col(s, x)
    return x * torch.sqrt((s**2 + a**2) / (t**2 + a**2))


def exact_denoiser(x: torch.Tensor, t, a: float = A) -> torch.Tensor:
    return a**2 / (_col(t, x) ** 2 + a**2) * x


class ExactTrajectory(nn.Module):
    """G(x, t, s) = the exact ODE map (s None or below sigma_min: sigma_min) and g(x, t, t) = E[x0 | x_t];
    `scale` != 1 perturbs the jump's data estimate g for s < t."""

    def __init__(self, sigma_min: float = 0.002, scale: float = 1.0):
        super().__init__()
        self.sigma_min, self.scale = sigma_min, scale

    def denoise(self, x, t):
        return exact_denoiser(x, t)

    def forward(self, x, t, s=None):
        s = _col(self.sigma_min if s is None else s, x).clamp(min=self.sigma_min)
        t = _col(t, x)
        G = exact_map(x, t, s)
        if self.scale == 1.0:
            return G
        g = (G - s / t * x) / (1 - s / t).clamp(min=1e-12)  # the g of the exact G, perturbed
        return torch.where(s < t, s / t * x + (1 - s / t) * self.scale * g, x)


class Teacher(nn.Module):
    def forward(self, x, t):
        return exact_denoiser(x, t)


def ctm_config(preset: str = "ctm", **over):
    base = {"network": {"size": "tiny"}, "train": {"total_steps": 10, "batch_size": 64},
            "loss": {"reduction": "mean"}, "distill": {"init_from_teacher": False},
            "ctm": {"dsm_balance": "fixed"}}  # lambda_DSM = 1 (the adaptive balance: its own test)
    for k, v in over.items():
        base.setdefault(k, {}).update(v)
    return resolve_experiment(preset, base, name="ctm", dataset="gauss", reading="as_coded")


def exact_solver(denoise, x, times):
    return exact_map(x, times[0], times[-1])


# --------------------------------------------------------------------------------------------- (a)

@pytest.mark.parametrize("solver", ["teacher", "self"])
def test_soft_matching_is_zero_at_the_exact_G_and_positive_when_perturbed(solver):
    cfg = ctm_config("ctm" if solver == "teacher" else "ctm_self", loss={"distance": "l2"})
    obj = TrajectoryObjective(cfg, 10, teacher=Teacher() if solver == "teacher" else None)
    obj.target, obj.solve = ExactTrajectory(), exact_solver  # theta- = the exact G, the solver exact
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 4, 2, 2, generator=gen, dtype=torch.float64) * A
    z = torch.randn(256, 4, 2, 2, generator=gen, dtype=torch.float64)
    for step in range(3):
        obj.cfg.ctm.dsm_weight = 0.0
        loss, logs = obj(ExactTrajectory(), x0, z, step)
        assert float(loss.abs().max()) < 1e-20, float(loss.abs().max())
        loss, _ = obj(ExactTrajectory(scale=1.1), x0, z, step)
        assert float(loss.mean()) > 1e-6


def test_dsm_is_minimal_at_the_exact_denoiser():
    """E[lambda(sigma) ||g(x_sigma) - x0||^2 / d] = lambda(sigma) Var[x0 | x_sigma] = 1 at the exact g, when
    sigma_data is the data's std (the EDM weight is the inverse conditional variance); a wrong g scores more."""
    cfg = ctm_config(schedule={"sigma_data": A})
    obj = TrajectoryObjective(cfg, 10, teacher=Teacher())
    obj.target, obj.solve = ExactTrajectory(), exact_solver
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(4096, 4, 2, 2, generator=gen, dtype=torch.float64) * A
    z = torch.randn(4096, 4, 2, 2, generator=gen, dtype=torch.float64)
    _, logs = obj(ExactTrajectory(), x0, z, 0)
    assert abs(float(logs["loss_diff"]) - 1.0) < 0.05, float(logs["loss_diff"])  # 4096 samples: std ~0.01

    class Wrong(ExactTrajectory):
        def denoise(self, x, t):
            return 1.2 * exact_denoiser(x, t)

    _, logs_wrong = obj(Wrong(), x0, z, 0)
    assert float(logs_wrong["loss_diff"]) > float(logs["loss_diff"]) + 0.02


def test_adaptive_balance_is_the_ratio_of_the_gradient_norms_at_the_last_layer():
    """CTM's adaptive lambda_DSM = ||d L_CTM / d w|| / (||d L_DSM / d w|| + 1e-4) at the UNet's output convolution,
    detached (a device tensor, read by the loop only when it logs); the total loss is L_CTM + lambda L_DSM."""
    from lct.method.trajectory import dsm_balance

    cfg = ctm_config(ctm={"dsm_balance": "adaptive"})
    torch.manual_seed(0)
    net = build_model(cfg, 8, 4)
    for p in net.unet.out_conv.parameters():
        nn.init.normal_(p, std=0.05)
    obj = TrajectoryObjective(cfg, 10, teacher=Teacher())
    obj.attach(net)
    x0 = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(7)) * 0.5
    z = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    loss, logs = obj(net, x0, z, 3)
    lam = logs["lambda_dsm"]
    assert isinstance(lam, torch.Tensor) and not lam.requires_grad and float(lam) > 0
    torch.testing.assert_close(loss.mean(), logs["loss_ct"] + lam * logs["loss_diff"], rtol=1e-5, atol=1e-6)
    # the ratio by hand, from the two terms of the same step (same draws) with the fixed weight
    obj_f = TrajectoryObjective(ctm_config(), 10, teacher=Teacher())
    obj_f.target = obj.target
    l_ct, l_dsm = _terms(obj_f, net, x0, z)
    torch.testing.assert_close(l_ct.detach(), logs["loss_ct"])
    w = net.unet.out_conv.weight
    ref = torch.autograd.grad(l_ct, w, retain_graph=True)[0].norm() / (
        torch.autograd.grad(l_dsm, w, retain_graph=True)[0].norm() + 1e-4)
    torch.testing.assert_close(dsm_balance(net, l_ct, l_dsm), ref.detach())
    torch.testing.assert_close(lam, ref.detach(), rtol=1e-4, atol=1e-6)


def _terms(obj, net, x0, z):
    """L_CTM and L_DSM (means) of one step, as graphs (the objective with lambda_DSM 0, then 1)."""
    obj.cfg.ctm.dsm_weight = 0.0
    l_ct, _ = obj(net, x0, z, 3)
    obj.cfg.ctm.dsm_weight = 1.0
    both, _ = obj(net, x0, z, 3)
    return l_ct.mean(), both.mean() - l_ct.mean()


# --------------------------------------------------------------------------------------------- (b)

def test_heun_solver_with_the_exact_denoiser_follows_the_exact_map():
    """From sigma_max to sigma_min (the ODE shrinks x 400-fold, bending most around t ~ a): within 8% of the
    exact map over CM's 18-point grid (measured 7.3%), 2% over 35 points (1.7%); each halving of the steps cuts
    the error about 4x (second order: 4.3x, 4.1x)."""
    x = torch.randn(64, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 80.0

    def err(n_points: int) -> float:
        cfg = ctm_config(distill={"num_timesteps": n_points})
        grid = descending_grid(cfg)
        out = heun_solve(exact_denoiser, x, [g.expand(64) for g in grid])
        ref = exact_map(x, grid[0], grid[-1])
        return float((out - ref).norm() / ref.norm())

    e18, e35, e69 = err(18), err(35), err(69)
    assert e18 < 0.08 and e35 < 0.02, (e18, e35)
    assert 3.5 < e18 / e35 < 5.0 and 3.5 < e35 / e69 < 5.0, (e18, e35, e69)


# --------------------------------------------------------------------------------------------- (c)

class TinyNet(nn.Module):
    """F(x, c_noise, c_noise_s) for 2-D data shaped [B, 2, 1, 1]: an MLP on x and both noise embeddings."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 2 * 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))
        self.register_buffer("freqs", torch.arange(1, 9, dtype=torch.float32))

    def _emb(self, c):
        a = c.float()[:, None] * self.freqs
        return torch.cat([a.sin(), a.cos()], 1)

    def forward(self, x, c_noise, c_noise_s):
        h = torch.cat([x.flatten(1), self._emb(c_noise), self._emb(c_noise_s)], 1)
        return self.net(h).view_as(x)


def _train_tiny(solver: str, steps: int) -> tuple[TrajectoryModel, TrajectoryModel, torch.Tensor]:
    """A TinyNet CTM on a 20-point grid from t = 10, Adam 1e-2 decaying linearly to 1e-3, target EMA 0.9."""
    cfg = ctm_config("ctm" if solver == "teacher" else "ctm_self", distill={"num_timesteps": 20, "target_ema": 0.9},
                     schedule={"sigma_max": 10.0})
    torch.manual_seed(0)
    model = TrajectoryModel(TinyNet(), cfg)
    untrained = TrajectoryModel(TinyNet(), cfg)
    untrained.load_state_dict(model.state_dict())
    obj = TrajectoryObjective(cfg, steps, teacher=Teacher() if solver == "teacher" else None)
    obj.attach(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - 0.9 * k / steps)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x0 = torch.randn(512, 2, 1, 1, generator=gen) * A
        loss, _ = obj(model, x0, torch.randn(512, 2, 1, 1, generator=gen), step)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        decay.step()
        obj.after_update(model)
    return model, untrained, descending_grid(cfg).float()


def _jump_errors(model: nn.Module, grid: torch.Tensor) -> list[float]:
    """Relative RMS error of G(x_t, t, s) against the exact map, for six (t, s) pairs of the grid."""
    gen = torch.Generator().manual_seed(3)
    g = grid.tolist()
    errs = []
    for i, j in [(0, 19), (0, 8), (6, 19), (6, 12), (12, 19), (12, 16)]:
        t, s = g[i], g[j]
        x = torch.randn(512, 2, 1, 1, generator=gen) * math.sqrt(t**2 + A**2)
        with torch.no_grad():
            out = model(x, torch.full((512,), t), torch.full((512,), s))
        ref = exact_map(x, t, s)
        errs.append(float((out - ref).norm() / ref.norm()))
    return errs


def test_heun_error_of_the_tiny_grid():
    """The solver's own error on the 20-point grid of the tiny runs, sigma_max 10 to sigma_min: 2.5%. CTM
    learns the solver's map (the teacher's discretised ODE), so that is the floor of the next test; on a
    10-point grid it is 12%, and the trained jumps were 12-15% off the exact map there."""
    cfg = ctm_config(distill={"num_timesteps": 20}, schedule={"sigma_max": 10.0})
    g = descending_grid(cfg)
    x = torch.randn(512, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(6)) * 10
    out = heun_solve(exact_denoiser, x, [v.expand(512) for v in g])
    ref = exact_map(x, g[0], g[-1])
    assert 0.015 < float((out - ref).norm() / ref.norm()) < 0.035


@pytest.mark.parametrize("solver", ["teacher", "self"])
def test_a_tiny_ctm_learns_the_exact_jumps(solver):
    """400 CPU steps at batch 512 on 2-D N(0, 0.2^2 I) data. The one-step generator's jump sigma_max -> sigma_min
    within 10% (relative RMS) of the exact map (measured 7.1% with the teacher, 6.7% with its own solver; 89%
    untrained); every jump within 25% (the slowest to learn, t = 1.72 -> s = 0.163: 18% and 23%, 12.5% after
    1,200 steps); the mean error at most half the untrained network's (measured 7%, 8% against 17%)."""
    model, untrained, grid = _train_tiny(solver, 400)
    e, e0 = _jump_errors(model, grid), _jump_errors(untrained, grid)
    assert e[0] < 0.10 and max(e) < 0.25 and sum(e) < sum(e0) / 2, (e, e0)


# --------------------------------------------------------------------------------------------- (d)

def test_gamma_one_is_the_multistep_consistency_sampler():
    cfg = ctm_config()
    torch.manual_seed(0)
    net = build_model(cfg, 8, 4).eval()
    for p in net.unet.parameters():  # a non-trivial network: random weights everywhere
        nn.init.normal_(p, std=0.05)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    for nfe in (2, 4):
        sig = multistep_sigmas(cfg, nfe)
        ctm = sample_trajectory(net, noise, sig, gamma=1.0, sigma_min=cfg.schedule.sigma_min)
        # CM's sampler re-noises by sqrt(t^2 - sigma_min^2) z; with sigma_min 0 there it is t z, as gamma 1
        cm0 = sample_consistency(net, noise, sig, sigma_min=0.0)
        torch.testing.assert_close(ctm, cm0, rtol=1e-5, atol=1e-5)
        cm = sample_consistency(net, noise, sig, sigma_min=cfg.schedule.sigma_min)
        assert float((ctm - cm).abs().max()) < 1e-3  # the sigma_min offset only
    ctm0 = sample_trajectory(net, noise, multistep_sigmas(cfg, 2), gamma=0.0, sigma_min=cfg.schedule.sigma_min)
    assert float((ctm0 - cm0).abs().max()) > 1e-3  # gamma 0 is another sampler


@pytest.mark.parametrize("nfe", [1, 2, 4])
def test_gamma_zero_with_the_exact_G_is_the_exact_ode_map(nfe):
    cfg = ctm_config()
    noise = torch.randn(16, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    out = sample_trajectory(ExactTrajectory(), noise, multistep_sigmas(cfg, nfe), gamma=0.0,
                            sigma_min=cfg.schedule.sigma_min)
    ref = exact_map(noise * cfg.schedule.sigma_max, cfg.schedule.sigma_max, cfg.schedule.sigma_min)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------------------------- the switch

def test_the_s_embedding_switch_leaves_the_network_unchanged():
    """Off: the parameters of before (the paper size's count is pinned in test_unet) and the same outputs
    from the same weights; on: the same plus the s-MLP, whose zero last layer makes a fresh network s-blind."""
    kw = dict(UNET_SIZES["tiny"], img_resolution=8, in_channels=4)
    torch.manual_seed(0)
    off = UNet(**kw)
    torch.manual_seed(0)
    on = UNet(**kw, s_conditioning=True)
    extra = sorted(set(on.state_dict()) - set(off.state_dict()))
    assert extra and all(k.startswith("map_s_layer") for k in extra) and set(off.state_dict()) <= set(on.state_dict())
    for p in off.parameters():  # wake the zero-initialised convolutions so the outputs are non-trivial
        if p.ndim > 1 and p.abs().sum() == 0:
            nn.init.normal_(p, std=0.05)
    on.load_state_dict(off.state_dict(), strict=False)  # the shared weights; the s-MLP keeps its zero last layer
    x, c = torch.randn(2, 4, 8, 8), torch.tensor([0.3, -1.0])
    ref = off(x, c)
    assert float(ref.detach().abs().max()) > 0
    torch.testing.assert_close(on(x, c, torch.tensor([5.0, -7.0])), ref)
    with pytest.raises(ValueError, match="s_conditioning"):
        on(x, c)
    with pytest.raises(ValueError, match="s_conditioning"):
        off(x, c, c)


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="network.s_conditioning: true"):
        ctm_config(network={"s_conditioning": False})
    with pytest.raises(ConfigError, match="objective trajectory only"):
        resolve_experiment("slct", {"network": {"s_conditioning": True}, "train": {"total_steps": 1}})
    with pytest.raises(ConfigError, match="sample.gamma"):
        resolve_experiment("slct", {"sample": {"gamma": 0.5}, "train": {"total_steps": 1}})
    assert ctm_config(sample={"gamma": 0.5}).sample.gamma == 0.5
    with pytest.raises(ConfigError, match="init_from_teacher: false"):
        ctm_config("ctm_self", distill={"init_from_teacher": True})
    with pytest.raises(ConfigError, match="max_solver_steps"):
        ctm_config(distill={"num_timesteps": 8}, ctm={"max_solver_steps": 9})
    with pytest.raises(ConfigError, match="--teacher"):
        TrajectoryObjective(ctm_config(), 10, teacher=None)
    with pytest.raises(ConfigError, match="target_ema in"):  # refused by the dry-run, not by the GPU job
        ctm_config(distill={"target_ema": 0.0})


# --------------------------------------------------------------------------------------------- through lct train

@pytest.fixture(scope="module")
def ctm_runs(tmp_path_factory):
    """A tiny ldm_ve teacher trained 4 steps, and CTM configs of the same network (8-point grid)."""
    from test_train import make_dataset, make_experiment
    from test_train_resume import _cmd

    from lct.run import train as T

    root = tmp_path_factory.mktemp("ctm")
    data = make_dataset(root, n=48)
    tcfg = make_experiment(root, preset="ldm_ve", name="teacher", total_steps=4)
    assert T.main(_cmd(tcfg, data, root / "teacher")) == 0
    return root, data, root / "teacher" / "final.pt"


def _ctm_experiment(root, preset, name, **train):
    from lct.config import save_experiment

    tr = {"total_steps": 16, "batch_size": 8, "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 4,
          "ema_decays": [0.9]}
    tr.update(train)
    cfg = resolve_experiment(preset, {"network": {"size": "tiny"}, "train": tr, "distill": {"num_timesteps": 8}},
                             name=name, dataset="mnist8")
    path = root / f"{name}.yaml"
    save_experiment(cfg, path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["ctm", "ctm_self"])
def test_ctm_resumes_bit_exactly_after_sigkill(ctm_runs, preset):
    """lct train of both CTM presets: SIGKILL after the first checkpoint and a rerun end with the uninterrupted
    run's weights, EMAs and target network; the teacher-solver run records its teacher, the other reads none."""
    import signal

    from test_train import state_equal
    from test_train_resume import _cmd, _start_and_interrupt

    from lct.files.checkpoint import list_checkpoints, load
    from lct.run import train as T

    root, data, teacher = ctm_runs
    cfg = _ctm_experiment(root, preset, preset)
    args = ["--teacher", str(teacher)] if preset == "ctm" else []
    assert T.main(_cmd(cfg, data, root / f"{preset}_ref") + args) == 0
    ref = load(root / f"{preset}_ref" / "final.pt")
    rc, err = _start_and_interrupt(cfg, data, root / f"{preset}_killed", signal.SIGKILL, extra=args)
    assert rc == -signal.SIGKILL, err
    assert not (root / f"{preset}_killed" / "final.pt").exists(), "the run finished before it was killed"
    assert load(list_checkpoints(root / f"{preset}_killed")[-1][1])["objective"], "the target is checkpointed"
    assert T.main(_cmd(cfg, data, root / f"{preset}_killed") + args) == 0
    final = load(root / f"{preset}_killed" / "final.pt")
    assert final["step"] == ref["step"] == 16
    assert state_equal(final["model"], ref["model"])
    assert all(state_equal(final["ema"][k], ref["ema"][k]) for k in ref["ema"])
    assert (final["config"]["distill"]["teacher_sha256"] is not None) == (preset == "ctm")
    if preset == "ctm_self":  # a teacher given to the teacher-free CTM is refused, naming why
        assert T.main(_cmd(cfg, data, root / "self_teacher") + ["--teacher", str(teacher)]) == T.EXIT_USAGE


def test_ctm_student_starts_as_the_teachers_denoiser_for_every_s(ctm_runs, tmp_path, monkeypatch):
    """A step that moves nothing (lr 0): the student's UNet is the teacher's plus the s-embedding, whose zero last
    layer makes g(x, t, s) the teacher's denoiser D(x, t) for every s."""
    from lct.run import loop as L
    from lct.run import train as T
    from lct.run.model import load_checkpoint_model

    root, data, teacher = ctm_runs
    monkeypatch.setattr(L, "make_optimizer", lambda cfg, params: torch.optim.SGD(params, lr=0.0))
    cfg = _ctm_experiment(tmp_path, "ctm", "ctm0", total_steps=1, weight_decay=0.0)
    model = T.train(T.resolve_config(cfg), data, tmp_path / "run", device="cpu", quiet=True, teacher=teacher).eval()
    tnet, _, _ = load_checkpoint_model(teacher, None, "cpu")
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0.1, 1.0, 5.0, 40.0])
    with torch.no_grad():
        ref = tnet.eval()(x, t)
        for s in (torch.full((4,), 0.002), t / 2, t):
            torch.testing.assert_close(model.g(x, t, s), ref)


def test_adaptive_balance_runs_under_the_compiled_fast_path():
    """With per-block compilation (the GPU default; aot_eager here), the balance's retained backward through the
    target's compiled blocks works (AOTAutograd's donated buffers turned off by compile_blocks(backward_twice))
    and the step's loss, balance and gradients are the eager ones."""
    import copy

    import torch._dynamo
    import torch._functorch.config as fc

    from lct.run.model import compile_blocks

    donated = fc.donated_buffer
    torch._dynamo.reset()
    try:
        cfg = ctm_config("ctm_self", ctm={"dsm_balance": "adaptive"}, distill={"num_timesteps": 6})
        torch.manual_seed(0)
        eager = build_model(cfg, 8, 4)
        compiled = copy.deepcopy(eager)
        x0 = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(9)) * 0.5
        z = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(10))
        out = []
        for net, comp in ((eager, False), (compiled, True)):
            obj = TrajectoryObjective(cfg, 10)
            obj.attach(net)
            if comp:
                assert obj.backward_twice
                # the balance's retained backward crosses the target's blocks only (the student's output
                # convolution is outside every block): compiling the target is what matters, and halves the time
                compile_blocks(obj.target, backward_twice=True, backend="aot_eager")
            loss, logs = obj(net, x0, z, 0)
            loss.mean().backward()
            out.append((loss.detach(), logs["lambda_dsm"], [p.grad.clone() for p in net.parameters() if p.grad is not None]))
        torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-4, atol=1e-5)
        for a, b in zip(out[1][2], out[0][2]):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    finally:
        fc.donated_buffer = donated
        torch._dynamo.reset()
