"""One host synchronisation per training step (issue: the first GPU-hours).

CUDA's sync debug mode does not exist on the CPU, so this test stands in for it: a TorchDispatchMode
follows which tensors live "on the device" (the data, the model's weights and buffers, and everything
computed from them or sent there by lct.infra.device.to_device) and counts, per step,

* host reads of device tensors (`.item()`, `bool()`, `.tolist()`, `nonzero`, ...): each waits for the GPU;
* implicit transfers: an op that mixes a device tensor with a host tensor of more than one element
  (on CUDA that host tensor needed a `.to(device)`, whose pageable copy synchronises the stream).

Running N and 2N steps and subtracting removes the set-up and the end of the run; what is left per
step must be exactly one (the NaN guard and stop flag, read together). A negative control adds one
host read to the objective and must be caught.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary
from test_train import make_dataset

import lct.run.train as T

from lct.run import loop as L
from lct.config import ExperimentConfig, resolve_experiment

HOST_READS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select", "unique_dim",
              "_unique2", "unique_consecutive", "repeat_interleave"}


class DeviceTracker(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.device_side = WeakIdKeyDictionary()  # tensor -> True, by identity (tensors' == is elementwise)
        self.reads: list[str] = []
        self.implicit: list[str] = []

    def mark(self, tensors) -> None:
        for t in tensors:
            self.device_side[t] = True

    def _on_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and (t in self.device_side or (t._base is not None and t._base in self.device_side))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        on_dev = [self._on_device(a) for a in tensors]
        name = func.overloadpacket.__name__
        out = func(*args, **kwargs)
        if name == "_to_copy" and kwargs.get("non_blocking"):
            device = True  # lct.infra.device.to_device: a queued copy to the device
        else:
            device = any(on_dev)
            if name in HOST_READS and device:
                self.reads.append(name)
            host_mixed = [a for a, d in zip(tensors, on_dev) if not d and a.numel() > 1]
            if device and host_mixed:
                self.implicit.append(f"{name}{[tuple(a.shape) for a in host_mixed]}")
        if device:
            self.mark(a for a in tree_flatten(out)[0] if isinstance(a, torch.Tensor))
            if name.endswith("_"):  # in place: the written tensor is (still) on the device
                self.mark(tensors[:1])
        return out


def _cfg(preset: str = "slct", **over) -> ExperimentConfig:
    """The tiny UNet with dropout 0.3, OT and the diffusion loss on (the paper's training step), eager fp32."""
    d = {"network": {"size": "tiny", "dropout": 0.3},
         "loss": {"ot": True, "diffusion_loss": True, "diffusion_variant": "as_coded", "diffusion_r": 0.5},
         "train": {"batch_size": 8, "total_steps": 2, "checkpoint_every": 10_000, "log_every": 10_000,
                   "ema_decays": [0.999], "precision": "fp32", "compile": False, "channels_last": False}}
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    if preset != "slct":
        d.pop("loss")
    return resolve_experiment(preset, d, name="sync", dataset="mnist8")


def _count(tmp_path, monkeypatch, cfg: ExperimentConfig, steps: int, extra_read: bool = False) -> DeviceTracker:
    data_dir = make_dataset(tmp_path / f"data{steps}{extra_read}", n=32)
    tracker = DeviceTracker()
    build = T.build_model
    import lct.data.datasets

    real_load = lct.data.datasets.load_training_data

    def load_data(path):
        data, info = real_load(path)
        tracker.mark([data])
        return data, info

    def build_model(*a, **k):
        model = build(*a, **k)
        tracker.mark(list(model.parameters()) + list(model.buffers()))
        return model

    with monkeypatch.context() as m:  # undone after this run (the next run wraps the originals)
        m.setattr(lct.data.datasets, "load_training_data", load_data)
        m.setattr(L, "build_model", build_model)
        if extra_read:  # negative control: one host read of the batch added to every step
            make = L.make_objective

            def with_read(*a, **k):
                obj = make(*a, **k)

                def call(net, x0, *rest, **kw):
                    float(x0.abs().max())
                    return obj(net, x0, *rest, **kw)

                return call

            m.setattr(L, "make_objective", with_read)
        cfg = ExperimentConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "total_steps": steps}})
        with tracker:
            T.train(cfg, data_dir, tmp_path / f"run{steps}{extra_read}", device="cpu", quiet=True)
    return tracker


def _per_step(tmp_path, monkeypatch, cfg, extra_read=False):
    a = _count(tmp_path, monkeypatch, cfg, 3, extra_read)
    b = _count(tmp_path, monkeypatch, cfg, 6, extra_read)
    reads = (len(b.reads) - len(a.reads)) / 3
    implicit = b.implicit[len(a.implicit):] if len(b.implicit) > len(a.implicit) else []
    return reads, (len(b.implicit) - len(a.implicit)) / 3, implicit, b.reads


@pytest.mark.parametrize("variant", ["as_coded", "paper"])
def test_one_host_read_per_step_consistency(tmp_path, monkeypatch, variant):
    """sLCT with OT, dropout and the diffusion loss: exactly one host read per step, no implicit copy."""
    reads, implicit, which, names = _per_step(tmp_path, monkeypatch, _cfg(loss__diffusion_variant=variant))
    assert implicit == 0, f"implicit host-to-device copies per step: {which}"
    assert reads == 1, f"{reads} host reads per step ({names})"


def test_one_host_read_per_step_denoising(tmp_path, monkeypatch):
    cfg = _cfg("ldm_ve")
    reads, implicit, which, names = _per_step(tmp_path, monkeypatch, cfg)
    assert implicit == 0, which
    assert reads == 1, names


def test_an_added_host_read_is_caught(tmp_path, monkeypatch):
    """The negative control: one more `float(tensor)` on the batch per step is seen."""
    reads, implicit, _, names = _per_step(tmp_path, monkeypatch, _cfg(), extra_read=True)
    assert reads == 2, names


def test_an_implicit_copy_is_caught():
    """A host tensor of a step mixed into device work (a missing to_device) is seen."""
    tracker = DeviceTracker()
    x = torch.randn(4, 3)
    tracker.mark([x])
    with tracker:
        t = torch.rand(4, dtype=torch.float64)  # drawn on the host
        _ = x * t.to(torch.float32).view(-1, 1)  # `.to(dtype)` on the host, never sent: CUDA would copy here
        from lct.infra.device import to_device

        _ = x * to_device(t, torch.device("cpu")).to(torch.float32).view(-1, 1)  # the queued copy: fine
    assert len(tracker.implicit) == 1
