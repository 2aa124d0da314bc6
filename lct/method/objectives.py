"""Training objectives as objects (edm `training/loss.py` style).

`__call__(net, x0, noise, step, generator=None)` returns the unreduced per-sample loss [B] and a
dict of values worth logging (floats, or 0-d device tensors read only at logging time); the training loop takes the mean and calls backward. All
randomness comes from `generator` (default: a CPU generator seeded from (train.seed, step)), so
a resumed run repeats the same stream.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from lct.method import schedules as S
from lct.infra.device import to_device
from lct.method.losses import make_distance, squared_norm
from lct.method.ot import ot_pair
from lct.method.steps import TargetNetwork, rank_seed, shared_rng, step_generator  # noqa: F401 (re-exported)
from lct.method.trajectory import TrajectoryObjective

if TYPE_CHECKING:
    from lct.config import ExperimentConfig


class ConsistencyObjective:
    """Consistency training, iCT / sLCT (eq. 4, plus eq. 9 when loss.diffusion_loss)."""

    def __init__(self, cfg: "ExperimentConfig", total_steps: int, distance_net=None):
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.distance = make_distance(cfg.loss.distance, distance_net)  # E-LatentLPIPS: its network (lct.weights.fetch)

    def __call__(self, net: nn.Module, x0: torch.Tensor, noise: torch.Tensor, step: int,
                 generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1),
                 perm: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """x0, noise: the GLOBAL batch [B, ...]; `shard` = (rank, world): this process trains on rows
        [rank B/world, (rank+1) B/world). Every random draw, the OT plan and the diffusion-loss
        normalisation are taken over the global batch, so W ranks at B/W are the run of one
        process at B (only the network passes are split). `perm`: the batch's OT pairing when the
        caller solved it already (the loop does, one step ahead: lct.run.batches); else solved here."""
        sched, lcfg = self.cfg.schedule, self.cfg.loss
        gen = generator if generator is not None else step_generator(self.cfg.train.seed, step)
        b, device, dtype = x0.shape[0], x0.device, x0.dtype  # b: the global batch here
        d = x0[0].numel()
        rank, world = shard
        local = slice(rank * (b // world), (rank + 1) * (b // world))

        # Discretization N(k) of the curriculum (eq. 10) and its ascending Karras grid t_1 < ... < t_N.
        n = S.num_timesteps(step, self.total_steps, sched)
        sigmas = S.karras_sigmas(n, sched.sigma_min, sched.sigma_max, sched.rho)

        # Sample the pair index i ~ p(i) (discrete lognormal of iCT, or uniform); 0-based here.
        probs = S.index_probs(sigmas, sched)
        i = torch.multinomial(probs, b, replacement=True, generator=gen)
        t_lo, t_hi = sigmas[i], sigmas[i + 1]  # (t_i, t_{i+1}), float64 [B]

        # Minibatch OT: re-pair the noise z with the data x0 by the exact plan (paper section 3.3).
        ot_time = 0.0
        if lcfg.ot:
            if perm is None:
                t0 = time.perf_counter()
                perm = ot_pair(x0, noise, lcfg.ot_group)
                ot_time = time.perf_counter() - t0
            noise = noise[perm]

        # Diffusion-loss pairs (eq. 9): 1-based index i <= int(N r), counted over the global batch.
        sel = (i + 1) <= int(n * lcfg.diffusion_r)
        n_sel = int(sel.sum())  # (host tensors: no device read)
        lam = S.loss_weighting(t_lo, t_hi, sched.weighting)  # lambda(t_i), eq. 11 (host, float64)
        # This process's share of the global batch (all of it in one process).
        if world > 1:
            x0, noise, i, t_lo, t_hi, sel, lam = (x0[local], noise[local], i[local], t_lo[local], t_hi[local],
                                                  sel[local], lam[local])
        # The step's per-sample draws reach the device in one non-blocking copy (lct.infra.device.to_device).
        t_lo_x, t_hi_x, lam_x, sel_x = to_device(torch.stack([t_lo, t_hi, lam, sel.double()]), device).to(dtype)
        sel_dev = sel_x > 0.5
        # The same x0 and the same z for both points of the pair.
        x_hi = x0 + t_hi_x.view(-1, 1, 1, 1) * noise  # x_{t_{i+1}}
        x_lo = x0 + t_lo_x.view(-1, 1, 1, 1) * noise  # x_{t_i}

        # Online (student) and target (teacher) passes share the dropout mask: same RNG seed; each rank
        # its own masks (its own samples), from (the step's shared draw, rank).
        dropout_seed = rank_seed(int(torch.randint(0, 2**62, (1,), generator=gen)), rank)
        with shared_rng(dropout_seed, device):
            f_student = net(x_hi, t_hi_x)  # f_theta(x_{t_{i+1}}, t_{i+1})
        with torch.no_grad(), shared_rng(dropout_seed, device):
            f_teacher = net(x_lo, t_lo_x)  # f_theta-(x_{t_i}, t_i), theta- = stopgrad(theta) (EMA 0)

        # lambda(t_i) d(f_student, f_teacher) with c from its schedule (eqs. 4, 6-8, 11).
        c = S.scale_c(self.cfg, step, self.total_steps, d)
        loss_ct = lam_x * self.distance(f_student, f_teacher, c, lcfg.reduction)
        loss = loss_ct

        # Diffusion loss at small timesteps (eq. 9) on the selected pairs of this share.
        loss_diff = diff_logged = torch.zeros_like(loss_ct)  # diff_logged: per selected sample, as the authors log it
        if lcfg.diffusion_loss and n_sel > 0:
            loss_diff, diff_logged = self._diffusion_loss(net, x0, x_lo, t_lo_x, t_hi_x, f_student, sel, sel_dev,
                                                          n_sel, b, loss_diff)
            loss = loss + lcfg.diffusion_weight * loss_diff

        # Device values stay tensors (no host sync here); the loop reads them every log_every steps.
        logs = {
            "N": float(n),
            "c": float(c),
            "loss_ct": loss_ct.detach().mean(),
            # the mean over the global batch's selected samples (the ranks' values are averaged when logged)
            "loss_diff": diff_logged.detach().sum() * world / max(n_sel, 1) if lcfg.diffusion_loss else 0.0,
            "diff_frac": n_sel / b,
            "ot_time_s": ot_time,
        }
        return loss, logs

    def _diffusion_loss(self, net: nn.Module, x0: torch.Tensor, x_lo: torch.Tensor, t_lo_x: torch.Tensor,
                        t_hi_x: torch.Tensor, f_student: torch.Tensor, sel: torch.Tensor, sel_dev: torch.Tensor,
                        n_sel: int, b: int, loss_diff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The diffusion term (eq. 9) per sample of this share (added into the zeros `loss_diff`), and the
        value logged per selected sample."""
        lcfg, device = self.cfg.loss, x0.device
        if lcfg.diffusion_variant == "paper":
            # ||f_theta(x_{t_i}, t_i) - x0||^2 with the *student* at t_i (the paper's intent), on the
            # selected samples only; squared norm summed (paper) or averaged as loss.reduction says.
            idx = sel.nonzero().squeeze(1)  # from the host mask: no device read
            if len(idx):
                idx = to_device(idx, device)
                f_small = net(x_lo[idx], t_lo_x[idx])
                loss_diff = loss_diff.index_put((idx,), squared_norm(f_small, x0[idx], lcfg.reduction))
            return loss_diff, loss_diff
        if lcfg.diffusion_variant == "as_coded":
            # Authors' code: student output at the larger sigma t_{i+1}, per-dim mean, weighted by
            # 1/t^2 + 1/sigma_data^2, averaged over the selected samples only (hence b / n_sel, both
            # global: the mean over this share and over the ranks gives the global average).
            w = 1.0 / t_hi_x**2 + 1.0 / self.cfg.schedule.sigma_data**2
            per = w * squared_norm(f_student, x0, "mean")
            diff_logged = torch.where(sel_dev, per, torch.zeros_like(per))
            return diff_logged * (b / n_sel), diff_logged
        raise ValueError(f"loss.diffusion_variant = {lcfg.diffusion_variant!r}; choose paper or as_coded")



class DenoisingObjective:
    """EDM denoising loss (Karras et al. 2022) for the VE latent diffusion baseline (Table 1)."""

    def __init__(self, cfg: "ExperimentConfig", total_steps: int | None = None, distance_net=None,
                 p_mean: float = -1.2, p_std: float = 1.2):
        self.cfg = cfg
        self.p_mean, self.p_std = p_mean, p_std  # EDM's lognormal sigma, not schedule.p_mean (that is iCT's)

    def __call__(self, net: nn.Module, x0: torch.Tensor, noise: torch.Tensor, step: int,
                 generator: torch.Generator | None = None,
                 shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, dict[str, float]]:
        """x0, noise: the global batch; this process trains on its `shard` = (rank, world) of it."""
        gen = generator if generator is not None else step_generator(self.cfg.train.seed, step)
        sd = self.cfg.schedule.sigma_data
        # ln sigma ~ N(P_mean, P_std^2)   (EDM), drawn for the global batch
        sigma = (torch.randn(x0.shape[0], generator=gen, dtype=torch.float64) * self.p_std + self.p_mean).exp()
        rank, world = shard
        if world > 1:
            local = slice(rank * (x0.shape[0] // world), (rank + 1) * (x0.shape[0] // world))
            x0, noise, sigma = x0[local], noise[local], sigma[local]
        sigma = to_device(sigma, x0.device).to(x0.dtype)
        s = sigma.view(-1, 1, 1, 1)
        denoised = net(x0 + s * noise, sigma)
        # lambda(sigma) ||D(x0 + sigma z, sigma) - x0||^2, lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2   (EDM)
        weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
        loss = weight * squared_norm(denoised, x0, self.cfg.loss.reduction)
        logs = {"N": 0.0, "c": 0.0, "loss_ct": 0.0, "loss_diff": loss.detach().mean(), "ot_time_s": 0.0}
        return loss, logs


class DistillationObjective(TargetNetwork):
    """Consistency distillation (Song et al. 2023, Algorithm 2; LCM's skipping step when k > 1).

    The teacher is a trained EDM denoiser D (objective denoising, its EMA weights, frozen); one Heun
    step of the probability-flow ODE dx/dt = (x - D(x, t)) / t from t_{n+k} to t_n gives x_hat_{t_n};
    the loss is lambda(t_n) d(f_theta(x_{t_{n+k}}, t_{n+k}), f_theta-(x_hat_{t_n}, t_n)) with d any robust
    distance of lct.method.losses and c from loss.c, and theta- an EMA of theta with decay distill.target_ema
    (0: theta- = stopgrad(theta), iCT's choice). The grid is fixed (distill.num_timesteps Karras points),
    the pair index comes from schedule.timestep_dist (CM: uniform) and the weighting from
    schedule.weighting (CM: uniform). The target network is state: `attach` makes it, `after_update`
    moves it, `state_dict` / `load_state_dict` carry it through checkpoints.
    """

    def __init__(self, cfg: "ExperimentConfig", total_steps: int, distance_net=None,
                 teacher: nn.Module | None = None):
        from lct.config import ConfigError

        if teacher is None:
            raise ConfigError(f"experiment {cfg.name!r}: objective distillation needs its teacher: "
                              f"lct train --teacher runs/{cfg.distill.teacher or '<teacher>'}/final.pt")
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.distance = make_distance(cfg.loss.distance, distance_net)
        self.teacher = teacher.eval().requires_grad_(False)
        dc, sc = cfg.distill, cfg.schedule
        self.sigmas = S.karras_sigmas(dc.num_timesteps, sc.sigma_min, sc.sigma_max, sc.rho)  # ascending, float64
        self.probs = S.index_probs(self.sigmas, sc, dc.skip)
        self.target: nn.Module | None = None  # theta- (None: stopgrad of the online network)

    @torch.no_grad()
    def heun_step(self, x_hi: torch.Tensor, t_hi: torch.Tensor, t_lo: torch.Tensor) -> torch.Tensor:
        """x_hat_{t_lo}: one Heun step of dx/dt = (x - D(x, t)) / t from t_hi to t_lo (EDM, Algorithm 1)."""
        th, tl = t_hi.view(-1, 1, 1, 1), t_lo.view(-1, 1, 1, 1)
        d_hi = (x_hi - self.teacher(x_hi, t_hi)) / th  # Euler slope at t_{n+k}
        x_euler = x_hi + (tl - th) * d_hi
        d_lo = (x_euler - self.teacher(x_euler, t_lo)) / tl  # slope at the Euler point (t_lo >= sigma_min > 0)
        return x_hi + (tl - th) * 0.5 * (d_hi + d_lo)  # trapezoidal correction

    def __call__(self, net: nn.Module, x0: torch.Tensor, noise: torch.Tensor, step: int,
                 generator: torch.Generator | None = None,
                 shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, dict[str, float]]:
        """x0, noise: the GLOBAL batch; the draws are global, the network passes use this `shard`."""
        dc, sched, lcfg = self.cfg.distill, self.cfg.schedule, self.cfg.loss
        gen = generator if generator is not None else step_generator(self.cfg.train.seed, step)
        b, device, dtype = x0.shape[0], x0.device, x0.dtype
        rank, world = shard
        n = torch.multinomial(self.probs, b, replacement=True, generator=gen)  # pair (t_n, t_{n+k}), 0-based
        t_lo, t_hi = self.sigmas[n], self.sigmas[n + dc.skip]
        lam = S.loss_weighting(t_lo, t_hi, sched.weighting)  # lambda(t_n), host float64
        if world > 1:
            local = slice(rank * (b // world), (rank + 1) * (b // world))
            x0, noise, t_lo, t_hi, lam = x0[local], noise[local], t_lo[local], t_hi[local], lam[local]
        t_lo_x, t_hi_x, lam_x = to_device(torch.stack([t_lo, t_hi, lam]), device).to(dtype)  # one async copy
        x_hi = x0 + t_hi_x.view(-1, 1, 1, 1) * noise  # x_{t_{n+k}} ~ N(x0, t_{n+k}^2 I)
        x_lo = self.heun_step(x_hi, t_hi_x, t_lo_x)  # the teacher's ODE step to t_n

        dropout_seed = rank_seed(int(torch.randint(0, 2**62, (1,), generator=gen)), rank)  # per rank, both passes
        with shared_rng(dropout_seed, device):
            f_student = net(x_hi, t_hi_x)  # f_theta(x_{t_{n+k}}, t_{n+k})
        with torch.no_grad(), shared_rng(dropout_seed, device):
            f_target = (net if self.target is None else self.target)(x_lo, t_lo_x)  # f_theta-(x_hat_{t_n}, t_n)

        c = S.scale_c(self.cfg, step, self.total_steps, x0[0].numel())
        loss = lam_x * self.distance(f_student, f_target, c, lcfg.reduction)  # CM's CD loss with a robust d
        logs = {"N": float(dc.num_timesteps), "c": float(c), "loss_ct": loss.detach().mean(), "loss_diff": 0.0,
                "ot_time_s": 0.0}
        return loss, logs


OBJECTIVES = {"consistency": ConsistencyObjective, "denoising": DenoisingObjective,
              "distillation": DistillationObjective, "trajectory": TrajectoryObjective}


def build_objective(cfg: "ExperimentConfig", total_steps: int, distance_net=None,
                    teacher: nn.Module | None = None):
    """The objective named by cfg.objective; `distance_net` the network of a learned distance (E-LatentLPIPS,
    from lct.weights.fetch.load_elatentlpips, or its loader); `teacher` the frozen denoiser of objectives distillation and trajectory."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"objective = {cfg.objective!r}; choose one of {sorted(OBJECTIVES)}")
    if cfg.objective in ("distillation", "trajectory"):
        return OBJECTIVES[cfg.objective](cfg, total_steps, distance_net, teacher)
    return OBJECTIVES[cfg.objective](cfg, total_steps, distance_net)
