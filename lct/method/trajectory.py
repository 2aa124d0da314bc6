"""Consistency trajectory models (CTM; Kim et al., ICLR 2024, arXiv 2310.02279; beyond the paper).

The model is lct.method.precond.TrajectoryModel, G(x_t, t, s) = (s/t) x_t + (1 - s/t) g(x_t, t, s). The
objective trains it by soft consistency matching against a Heun solver of the probability-flow ODE, plus
denoising score matching (DSM) on g(x_t, t, t); the GAN term of CTM is left out. Sampling is CTM's
gamma-sampling (lct.method.samplers.sample_trajectory). References are to the CTM paper's sections, unverified:
its text is not stored with this repository, so its equation numbers are not quoted (docs/CTM.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from lct.infra.device import to_device
from lct.method import schedules as S
from lct.method.losses import make_distance, squared_norm
from lct.method.steps import TargetNetwork, rank_seed, shared_rng, step_generator

if TYPE_CHECKING:
    from lct.config import ExperimentConfig

EDM_P_MEAN, EDM_P_STD = -1.2, 1.2  # DSM's noise levels: EDM's lognormal (as the denoising objective)


def descending_grid(cfg: "ExperimentConfig") -> torch.Tensor:
    """CTM's discrete times t_0 = sigma_max > ... > t_{N-1} = sigma_min: the Karras grid of distill.num_timesteps points."""
    sc = cfg.schedule
    return S.karras_sigmas(cfg.distill.num_timesteps, sc.sigma_min, sc.sigma_max, sc.rho).flip(0)


@torch.no_grad()
def heun_solve(denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
               times: list[torch.Tensor]) -> torch.Tensor:
    """Solver(x_t, t, u): Heun's method on dx/dt = (x - D(x, t)) / t through times[0] = t > times[1] > ... = u
    (each [B] or scalar, all > 0), one EDM Heun step per interval (CTM sec. 4, the teacher's solver)."""
    for t_cur, t_next in zip(times[:-1], times[1:]):
        tc, tn = t_cur.reshape(-1, 1, 1, 1), t_next.reshape(-1, 1, 1, 1)
        d_cur = (x - denoise(x, t_cur)) / tc  # the ODE's slope at t
        x_euler = x + (tn - tc) * d_cur
        d_next = (x_euler - denoise(x_euler, t_next)) / tn
        x = x + (tn - tc) * 0.5 * (d_cur + d_next)  # trapezoidal correction
    return x


def dsm_balance(net: nn.Module, loss_ctm: torch.Tensor, loss_dsm: torch.Tensor, world: int = 1) -> torch.Tensor:
    """CTM's adaptive weight (sec. 4.2, as VQGAN's): ||d L_CTM / d w|| / (||d L_DSM / d w|| + 1e-4), clamped to
    [0, 1e4] and detached, with w the network's last weight matrix (the UNet's output convolution). With several
    ranks the two gradients are averaged first, so W ranks weigh as one process over the global batch. A device
    tensor: no host read."""
    last = [p for p in net.parameters() if p.requires_grad and p.ndim > 1][-1]
    g = torch.stack([torch.autograd.grad(v, last, retain_graph=True)[0] for v in (loss_ctm, loss_dsm)])
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(g)
        g = g / world
    return (g[0].norm() / (g[1].norm() + 1e-4)).clamp(0.0, 1e4).detach()


class TrajectoryObjective(TargetNetwork):
    """CTM's loss without the GAN term: L_CTM + lambda_DSM L_DSM (CTM sec. 4).

    Each iteration draws k (solver steps, one for the batch as CTM's code), then per sample t = t_n, u = t_{n+k}
    and s = t_m with n + k <= m on the descending grid (u uniform over [s, t): soft matching), and compares
        x_est    = G_sg(G_theta(x_t, t, s), s, 0)
        x_target = G_sg(G_sg(Solver(x_t, t, u), u, s), s, 0)
    in the loss's robust distance d (loss.distance, c from loss.c). sg is the EMA target network theta-
    (distill.target_ema; the gradient reaches theta through x_est's inner jump only). The solver is the
    teacher's Heun (ctm.solver teacher) or the target's own denoiser g_sg(., u', u') (ctm.solver self). DSM:
    lambda(sigma) ||g_theta(x_sigma, sigma, sigma) - x0||^2 with EDM's sigma and weight, added with ctm.dsm_weight
    times CTM's adaptive balance (ctm.dsm_balance adaptive, `dsm_balance`) or alone (fixed).
    """

    def __init__(self, cfg: "ExperimentConfig", total_steps: int, distance_net=None,
                 teacher: nn.Module | None = None):
        from lct.config import ConfigError

        if cfg.ctm.solver == "teacher" and teacher is None:
            raise ConfigError(f"experiment {cfg.name!r}: ctm.solver teacher needs the teacher: lct train --teacher "
                              f"runs/{cfg.distill.teacher or '<teacher>'}/final.pt (or ctm.solver: self)")
        self.cfg = cfg
        self.total_steps = int(total_steps)
        self.distance = make_distance(cfg.loss.distance, distance_net)
        self.teacher = None if cfg.ctm.solver == "self" else teacher.eval().requires_grad_(False)
        self.grid = descending_grid(cfg)  # float64, host
        n_int = len(self.grid) - 1
        self.max_k = cfg.ctm.max_solver_steps or n_int
        self.target: nn.Module | None = None
        self.solve = heun_solve  # a seam: tests put the exact ODE map here
        # the adaptive balance backpropagates through the target's (compiled) blocks before the step's backward
        self.backward_twice = cfg.ctm.dsm_balance == "adaptive"

    def draw_times(self, b: int, gen: torch.Generator) -> tuple[int, torch.Tensor, torch.Tensor]:
        """(k, n, m): k solver steps; per sample the index n of t (n + k <= N - 1) and m of s (n + k <= m <= N - 1)."""
        last = len(self.grid) - 1
        k = int(torch.randint(1, self.max_k + 1, (1,), generator=gen))
        n = torch.randint(0, last - k + 1, (b,), generator=gen)
        m = n + k + (torch.rand(b, generator=gen, dtype=torch.float64) * (last - n - k + 1)).long()
        return k, n, m.clamp(max=last)

    def __call__(self, net: nn.Module, x0: torch.Tensor, noise: torch.Tensor, step: int,
                 generator: torch.Generator | None = None,
                 shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, dict[str, float]]:
        """x0, noise: the GLOBAL batch; the draws are global, the network passes use this `shard`."""
        cfg, lcfg = self.cfg, self.cfg.loss
        gen = generator if generator is not None else step_generator(cfg.train.seed, step)
        b, device, dtype = x0.shape[0], x0.device, x0.dtype
        rank, world = shard
        k, n, m = self.draw_times(b, gen)
        path = torch.stack([self.grid[n + j] for j in range(k + 1)])  # [k+1, B]: t = t_n, ..., u = t_{n+k}
        s = self.grid[m]
        sigma = (torch.randn(b, generator=gen, dtype=torch.float64) * EDM_P_STD + EDM_P_MEAN).exp()  # DSM's sigma
        if world > 1:
            local = slice(rank * (b // world), (rank + 1) * (b // world))
            x0, noise, path, s, sigma = x0[local], noise[local], path[:, local], s[local], sigma[local]
        dev = to_device(torch.cat([path, s[None], sigma[None]]), device).to(dtype)  # one async copy
        path_x, s_x, sigma_x = dev[:-2], dev[-2], dev[-1]
        t_x, u_x = path_x[0], path_x[-1]
        x_t = x0 + t_x.view(-1, 1, 1, 1) * noise
        tgt = self.target
        s_min = torch.full_like(s_x, cfg.schedule.sigma_min)

        dropout_seed = rank_seed(int(torch.randint(0, 2**62, (1,), generator=gen)), rank)
        with shared_rng(dropout_seed, device):
            x_est = tgt(net(x_t, t_x, s_x), s_x, s_min)  # G_sg(G_theta(x_t, t, s), s, 0): grad through the inner jump
        with torch.no_grad(), shared_rng(dropout_seed, device):
            solver = self.teacher if self.teacher is not None else tgt.denoise
            x_u = self.solve(solver, x_t, list(path_x))  # Solver(x_t, t, u; phi)
            x_target = tgt(tgt(x_u, u_x, s_x), s_x, s_min)  # G_sg(G_sg(x_u, u, s), s, 0)

        c = S.scale_c(cfg, step, self.total_steps, x0[0].numel())
        loss_ctm = self.distance(x_est, x_target, c, lcfg.reduction)  # d(x_target, x_est), L_CTM (CTM sec. 4.1)

        # DSM on the diagonal s = t: lambda(sigma) ||g_theta(x0 + sigma z, sigma, sigma) - x0||^2 (CTM sec. 4.2, EDM weight)
        sd = cfg.schedule.sigma_data
        x_sigma = x0 + sigma_x.view(-1, 1, 1, 1) * noise
        weight = (sigma_x**2 + sd**2) / (sigma_x * sd) ** 2
        loss_dsm = weight * squared_norm(net.denoise(x_sigma, sigma_x), x0, lcfg.reduction)
        lam = cfg.ctm.dsm_weight
        if cfg.ctm.dsm_balance == "adaptive":
            lam = lam * dsm_balance(net, loss_ctm.mean(), loss_dsm.mean(), world)
        loss = loss_ctm + lam * loss_dsm  # L_CTM + lambda_DSM L_DSM (CTM sec. 4.2, without L_GAN)
        logs = {"N": float(cfg.distill.num_timesteps), "c": float(c), "loss_ct": loss_ctm.detach().mean(),
                "loss_diff": loss_dsm.detach().mean(), "lambda_dsm": lam, "solver_steps": float(k), "ot_time_s": 0.0}
        return loss, logs
