"""Samplers: the 2-step sigma, per-image seeds, NFE accounting, CM Algorithm 1."""

import math

import pytest
import torch
from torch import nn

from lct.config import resolve_experiment
from lct.method.precond import build_model
from lct.method.samplers import (StackedRandomGenerator, edm_sampler, edm_steps_for_nfe, generate, multistep_sigmas,
                          sample_consistency, two_step_sigmas)


def _cfg(preset="slct", **net):
    return resolve_experiment(preset, {"network": {"size": "tiny", **net}, "train": {"total_steps": 10}})


class Counting(nn.Module):
    """A fixed denoiser x0_hat = x / (1 + sigma^2) that counts its calls and records sigmas."""

    def __init__(self):
        super().__init__()
        self.calls, self.sigmas = 0, []

    def forward(self, x, sigma):
        self.calls += 1
        self.sigmas.append(float(sigma[0]))
        return x / (1 + sigma.view(-1, 1, 1, 1) ** 2)


def test_two_step_sigma():
    s = two_step_sigmas(_cfg())
    assert s[0] == 80.0
    assert math.isclose(s[1], 0.5285640302978319, rel_tol=1e-6)  # docs/METHOD.md 4: about 0.5286
    assert round(s[1], 4) == 0.5286


def test_multistep_sigmas():
    cfg = _cfg()
    assert multistep_sigmas(cfg, 1) == [80.0]
    s4 = multistep_sigmas(cfg, 4)
    assert len(s4) == 4 and s4[0] == 80.0 and all(a > b for a, b in zip(s4, s4[1:])) and s4[-1] > 0.002


def test_stacked_generator_per_image():
    a = StackedRandomGenerator("cpu", [3, 4, 5]).randn((3, 2, 4, 4))
    b = StackedRandomGenerator("cpu", [5]).randn((1, 2, 4, 4))
    torch.testing.assert_close(a[2], b[0], rtol=0, atol=0)


def test_generate_is_batch_size_invariant():
    cfg = _cfg()
    torch.manual_seed(0)
    net = build_model(cfg, 8, 4)
    with torch.no_grad():
        net.unet.out_conv.weight.normal_(0, 0.1)  # a non-trivial network
    for nfe in (1, 2):
        big = generate(net, cfg, (4, 8, 8), seeds=range(6), nfe=nfe, device="cpu", batch_size=6)
        small = generate(net, cfg, (4, 8, 8), seeds=range(4, 6), nfe=nfe, device="cpu", batch_size=1)
        assert big.shape == (6, 4, 8, 8)
        torch.testing.assert_close(big[4:], small, rtol=1e-5, atol=1e-5)
    assert net.training  # mode restored


def test_sample_consistency_algorithm_1():
    net = Counting()
    noise = torch.randn(2, 1, 2, 2)
    out = sample_consistency(net, noise, [80.0, 0.5], 0.002, StackedRandomGenerator("cpu", [0, 1]))
    assert net.calls == 2 and net.sigmas == [80.0, 0.5]
    x1 = noise * 80 / (1 + 80**2)
    z = StackedRandomGenerator("cpu", [0, 1])  # the re-noising draws come from the per-image generators
    expect = (x1 + math.sqrt(0.25 - 0.002**2) * z.randn((2, 1, 2, 2))) / 1.25
    torch.testing.assert_close(out, expect)


@pytest.mark.parametrize("nfe", [1, 2, 5, 249, 250])
def test_edm_sampler_nfe(nfe):
    """Exactly nfe network calls, and every step has nonzero length (no zero-length last step)."""
    steps, heun_last = edm_steps_for_nfe(nfe)
    net = Counting()
    edm_sampler(net, torch.randn(1, 1, 2, 2), steps, _cfg("ldm_ve"), heun_last=heun_last)
    assert net.calls == nfe
    distinct = sorted(set(net.sigmas), reverse=True)
    # Heun evaluates at both ends of each step: the distinct sigmas are the grid points visited.
    assert len(distinct) == steps + (1 if heun_last else 0), (nfe, len(distinct))
    assert distinct[0] == pytest.approx(80.0)
    assert nfe == 1 or distinct[-1] == pytest.approx(0.002)  # nfe 1: one Euler step from 80 to 0
    if nfe == 250:
        assert steps == 125 and len(distinct) == 126  # 125 real Heun steps, sigma_max .. sigma_min


def test_edm_sampler_recovers_gaussian_data():
    # For data N(0, s_d^2) the exact denoiser is x s_d^2 / (s^2 + s_d^2); the ODE maps N(0, 80^2) to N(0, s_d^2).
    sd = 0.5

    class Exact(nn.Module):
        def forward(self, x, sigma):
            return x * sd**2 / (sigma.view(-1, 1, 1, 1) ** 2 + sd**2)

    noise = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x = edm_sampler(Exact(), noise, 200, _cfg("ldm_ve"))
    torch.testing.assert_close(x, noise * sd * 80 / math.sqrt(80**2 + sd**2), rtol=1e-3, atol=0)
    # generate dispatches the denoising objective to the EDM sampler
    cfg = _cfg("ldm_ve")
    out = generate(Exact(), cfg, (1, 1, 1), seeds=range(3), nfe=35, device="cpu")
    assert out.shape == (3, 1, 1, 1)
