"""The fast training path changes no math: each switch on vs off, same seed, a few steps on CPU.

Exact where the operation is exact (TF32 has no effect on a CPU; the foreach optimizer and EMA are
always on), float32 round-off for channels_last and torch.compile, and a stated tolerance for bf16
autocast, whose UNet output is cast back to float32 before the preconditioning and every loss.
"""

from __future__ import annotations

import pytest
import torch

from lct.run import train as T

from lct.run import loop as L
from lct.config import resolve_experiment, save_experiment
from lct.method.precond import build_model
from test_train import make_dataset


def run(tmp_path, name: str, **switches) -> dict[str, torch.Tensor]:
    data = make_dataset(tmp_path, n=32) if not (tmp_path / "mnist8").exists() else tmp_path / "mnist8"
    tr = {"total_steps": 4, "batch_size": 8, "checkpoint_every": 100, "log_every": 2, "ema_decays": [0.9],
          "precision": "fp32", "compile": False, "tf32": False, "channels_last": False, **switches}
    cfg = resolve_experiment("slct", {"network": {"size": "tiny"}, "train": tr}, name=name, dataset="mnist8",
                             reading="as_coded")
    path = tmp_path / f"{name}.yaml"
    save_experiment(cfg, path)
    assert T.main(["--config", str(path), "--data", str(data), "--run-dir", str(tmp_path / name), "--quiet"]) == 0
    return torch.load(tmp_path / name / "final.pt", weights_only=True)["model"]


def rel_diff(a: dict, b: dict, init: dict) -> float:
    """max |a - b| relative to how far training moved the weights from their initial values."""
    num = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    den = max(float((a[k].float() - init[k].float()).abs().max()) for k in a)
    return num / den


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fast")
    torch.set_num_threads(1)
    ref = run(tmp, "ref")
    cfg = resolve_experiment("slct", {"network": {"size": "tiny"}, "train": {"total_steps": 4}}, reading="as_coded")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = build_model(cfg, 8, 1).state_dict()
    return tmp, ref, init


def test_tf32_is_exact_on_cpu(reference):
    tmp, ref, _ = reference
    got = run(tmp, "tf32", tf32=True)
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_channels_last_is_float32_roundoff(reference):
    tmp, ref, init = reference
    assert rel_diff(run(tmp, "cl", channels_last=True), ref, init) < 1e-4


def test_ema_copies_take_the_weights_memory_format(reference, monkeypatch):
    """The EMA copies are made after channels_last is set: every shadow has its weight's strides, so the
    foreach update does not fall back to per-tensor work."""
    tmp, _, _ = reference
    seen = []

    class Recording(T.EMA):
        def update(self, model):  # at the first update: the layout the training loop really uses
            if not seen:
                sd = model.state_dict()
                seen.append([(n, sh.stride() == sd[n].stride(), sd[n].dim() == 4 and sd[n].shape[1] > 1 and
                              sd[n].is_contiguous(memory_format=torch.channels_last) and not sd[n].is_contiguous())
                             for shadows in self.shadows.values() for n, sh in shadows.items()])
            super().update(model)

    monkeypatch.setattr(L, "EMA", Recording)
    run(tmp, "cl_ema", channels_last=True)
    assert seen and all(same for _, same, _ in seen[0])
    assert any(cl for n, _, cl in seen[0] if n.endswith("weight"))  # the weights were channels_last


def test_bf16_autocast_stays_within_its_tolerance(reference):
    """bf16 keeps 8 bits of mantissa: after 4 steps the weights differ from fp32 by a few percent of
    the distance training moved them, not more."""
    tmp, ref, init = reference
    d = rel_diff(run(tmp, "bf16", precision="bf16"), ref, init)
    assert 0 < d < 0.1, d


def test_bf16_unet_output_is_float32_before_the_preconditioning():
    cfg = resolve_experiment("slct", {"network": {"size": "tiny"}, "train": {"total_steps": 4}}, reading="as_coded")
    model = build_model(cfg, 8, 4)
    with torch.no_grad():
        model.unet.out_conv.weight.normal_()
    model.autocast_dtype = torch.bfloat16
    x = torch.randn(2, 4, 8, 8)
    out = model(x, torch.tensor([0.002, 1.0]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0], x[0])  # f(x, sigma_min) = x exactly: c_skip = 1, c_out = 0 in float32


@pytest.mark.slow
def test_torch_compile_is_float32_roundoff(reference, monkeypatch):
    """The compiled path (Dynamo graph capture, AOT autograd, one compiled region per residual block,
    lct.run.model.compile_blocks, shared by the online and target passes). On this CPU the aot_eager
    backend stands in for Inductor's code generation, which takes minutes here; the GPU benchmark
    (benchmarks/train_step.py) runs Inductor itself."""
    from lct.method.nn.unet import ResBlock

    calls = []
    real = torch.compile

    def compile_aot_eager(fn, **kw):
        calls.append(fn)
        return real(fn, backend="aot_eager", **kw)

    monkeypatch.setattr(torch, "compile", compile_aot_eager)
    tmp, ref, init = reference
    assert rel_diff(run(tmp, "compiled", compile=True), ref, init) < 1e-4
    blocks = sum(isinstance(m, ResBlock) for m in build_model(resolve_experiment("slct", {"network": {"size": "tiny"}, "train": {"total_steps": 4}}),
                                                               8, 1).modules())
    assert len(calls) == blocks  # one region per block, compiled once: the online and target passes share it
    assert all(getattr(fn, "__self__", None).__class__ is ResBlock for fn in calls)


def test_fast_path_defaults_follow_the_device():
    cfg = resolve_experiment("slct", {"train": {"total_steps": 4}})
    assert T.fast_path(cfg, torch.device("cpu")) == {"precision": "fp32", "compile": False, "tf32": False,
                                                     "channels_last": False}
    assert T.fast_path(cfg, torch.device("cuda")) == {"precision": "bf16", "compile": True, "tf32": True,
                                                      "channels_last": True}
    off = resolve_experiment("slct", {"train": {"total_steps": 4, "precision": "fp32", "compile": False}})
    assert T.fast_path(off, torch.device("cuda"))["precision"] == "fp32"


def test_deterministic_turns_on_deterministic_algorithms_for_the_run_only(reference, monkeypatch):
    tmp, ref, _ = reference
    seen = []
    real = T.EMA.update

    def update(self, model):
        seen.append(torch.are_deterministic_algorithms_enabled())
        real(self, model)

    monkeypatch.setattr(T.EMA, "update", update)
    got = run(tmp, "det", deterministic=True)
    assert seen and all(seen) and not torch.are_deterministic_algorithms_enabled()
    assert all(torch.equal(got[k], ref[k]) for k in ref)  # CPU kernels were deterministic already
