"""The training loop of `lct train` (lct.run.train is its command line): `train()` reads as the steps of
one run, set up -> resume -> announce -> compile -> the iterations -> finish, each a method of `Run`.

Every step re-seeds from (seed, rank, step) and the batch of a step is a function of (seed, step) alone
(lct.run.batches), so a resumed run ends with the weights of an uninterrupted one; one host read per
step (the NaN guard and the stop signal together); checkpoints land atomically (lct.files.checkpoint).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lct.config import ConfigError, ExperimentConfig, reads_teacher, save_experiment
from lct.files import checkpoint as ckio
from lct.files.trainlog import Averager, JsonlLog, ProgressBar, plot_losses
from lct.infra import distributed as ddist
from lct.run.batches import BatchPipeline, DataOrder, step_seed
from lct.run.model import (EMA, build_model, compile_blocks, configure_fast_path, fast_path, load_checkpoint_model,
                           init_from_teacher, load_teacher, make_optimizer, with_teacher_digest)
from lct.run.rundir import config_diff


class Preempted(Exception):
    """A stop signal arrived; a checkpoint was saved."""


class BadStepsError(RuntimeError):
    """Too many consecutive non-finite losses."""


def total_steps_for(cfg: ExperimentConfig, num_images: int) -> int:
    """Optimizer steps the run takes: train.total_steps, or from train.epochs by train.length_rule
    (lct.config.run_length)."""
    from lct.config import run_length

    return int(run_length(cfg, num_images)["steps"])


def schedule_steps_for(cfg: ExperimentConfig, num_images: int) -> int:
    """K of the schedules (curriculum, c): equal to the steps run, except under length_rule authors_loop."""
    from lct.config import run_length

    return int(run_length(cfg, num_images)["iterations"])


def make_objective(cfg: ExperimentConfig, total_steps: int, resources: str | None = None,
                   teacher: torch.nn.Module | None = None):
    """The loss object (lct.method.objectives); a seam where tests wrap the objective. A learned distance gets its
    network from the weights layer here (`resources`: the folder of `lct fetch-weights`)."""
    from lct.method.objectives import build_objective

    distance_net = None
    if cfg.loss.distance == "elatentlpips":
        import functools

        from lct.weights.fetch import load_elatentlpips

        distance_net = functools.partial(load_elatentlpips, Path(resources) / "elatentlpips" if resources else None)
    return build_objective(cfg, total_steps, distance_net, teacher)


@contextlib.contextmanager
def _stop_signals():
    """Record SIGTERM / SIGUSR1 instead of dying; the loop checkpoints at the end of the step."""
    received: list[int] = []
    old = {}
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        try:
            old[sig] = signal.signal(sig, lambda s, _f: received.append(s))
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield received
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def _fork_rng(device: torch.device):
    """Scope for seeded global RNG use, restoring the caller's RNG state afterwards."""
    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def _peak_mem_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(cfg: ExperimentConfig, data_path: str | Path, run_dir: str | Path, *,
          device: str | None = None, quiet: bool = False, resources: str | None = None,
          teacher: str | Path | torch.nn.Module | None = None) -> torch.nn.Module:
    """Train (or resume) one experiment; returns the online model (unwrapped). Raises Preempted,
    BadStepsError, ConfigError. `teacher`: the teacher's final.pt (or a denoiser module) of objective
    distillation."""
    run_dir = Path(run_dir)
    dinfo = ddist.init(device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        _set_determinism(cfg.train.deterministic)
        if cfg.train.batch_size % dinfo.world_size:
            raise ConfigError(f"train.batch_size = {cfg.train.batch_size} is not divisible by the world size "
                              f"{dinfo.world_size}")
        if (run_dir / "final.pt").is_file():
            if dinfo.is_main and not quiet:
                print(f"lct train: {run_dir / 'final.pt'} exists; nothing to do", file=sys.stderr)
            return load_checkpoint_model(run_dir / "final.pt", "online", dinfo.device)[0]
        run = Run(cfg, data_path, run_dir, dinfo, resources, teacher)
        run.resume()
        run.announce()
        run.compile_and_attach()
        run.iterate(quiet)
        run.finish()
        return run.model
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        ddist.shutdown()


def _set_determinism(on: bool) -> None:
    if on:  # bit-identical reruns on a GPU too (slower); cuBLAS needs its workspace setting
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def load_split(cfg: ExperimentConfig, data_path: str | Path) -> tuple[torch.Tensor, dict[str, Any], int]:
    """The training tensor (the split, then its mirror images with train.flip_copies), its info, and the
    split's size (the schedules count epochs of the split, x 2 with its mirrors)."""
    from lct.data.datasets import load_flip_copies, load_training_data

    t = cfg.train
    data, info = load_training_data(data_path)
    if t.num_images is not None:  # the training split: the first N images (datasets.<d>.train_split)
        if t.num_images > data.shape[0]:
            raise ConfigError(f"train.num_images = {t.num_images} but {data_path} holds {data.shape[0]} images; "
                              f"lower datasets.<dataset>.train_split.count or prepare the full dataset")
        data = data[: t.num_images]
        info = {**info, "split": f"first {t.num_images} of {info['shape'][0]}"}
    split_n = data.shape[0]
    if t.flip_copies:  # the split, then its mirror images encoded as images (the authors' church256_flip)
        data = torch.cat([data, load_flip_copies(data_path, data)])
        info = {**info, "split": f"{info.get('split', f'all {split_n}')} and their {split_n} mirror images"}
    return data, info, split_n


class Run:
    """One run between its steps: data, model, EMAs, optimizer, objective and the bad-step counters."""

    def __init__(self, cfg: ExperimentConfig, data_path: str | Path, run_dir: Path, dinfo, resources: str | None,
                 teacher: str | Path | torch.nn.Module | None) -> None:
        """Set up: data (the split on the device when it fits), the seeded model, the teacher of a
        distillation, the fast path, EMAs, optimizer, objective and data order."""
        t = cfg.train
        self.run_dir, self.dinfo = run_dir, dinfo
        self.dev, self.rank, self.world = dinfo.device, dinfo.rank, dinfo.world_size
        data, info, split_n = load_split(cfg, data_path)
        self.n, self.shape = data.shape[0], list(data.shape)
        if self.dev.type == "cuda" and data.numel() * 4 <= 8 << 30:
            data = data.to(self.dev)  # encoded latents fit on the GPU: no host-to-device copy per step
        self.data, self.split_n = data, split_n
        self.total = total_steps_for(cfg, split_n)
        with _fork_rng(self.dev):  # weights depend on train.seed only, identical on every rank
            torch.manual_seed(t.seed)
            self.model = build_model(cfg, self.shape[2], self.shape[1]).to(self.dev)
        self.teacher_net = None
        if reads_teacher(cfg):  # distillation, CTM with the teacher's solver
            if not isinstance(teacher, torch.nn.Module) and cfg.distill.teacher_sha256 is None:
                cfg = with_teacher_digest(cfg, teacher)
            self.teacher_net = load_teacher(cfg, teacher, self.shape, self.dev)
            if cfg.distill.init_from_teacher:  # CM / LCM / CTM: the student starts as the teacher's UNet
                init_from_teacher(self.model, self.teacher_net)
        self.cfg = cfg
        # The fast path's memory format first, so the EMA copies (clones keep strides) match the weights'
        # layout and the EMA's foreach update stays on its fast path under channels_last.
        self.fast = fast_path(cfg, self.dev)
        configure_fast_path(self.model, self.fast, self.dev)
        self.ema = EMA(self.model, t.ema_decays)
        self.opt = make_optimizer(cfg, [p for p in self.model.parameters() if p.requires_grad])
        self.objective = make_objective(cfg, schedule_steps_for(cfg, split_n), resources, self.teacher_net)
        self.order = DataOrder(self.n, t.seed, t.batch_size, self.rank, self.world)
        self.data_meta = {"path": str(data_path), "shape": self.shape, "info": ckio.plain(info)}
        self.log = JsonlLog(run_dir / "log.jsonl")
        self.start, self.bad_total, self.bad_run, self.bad_since_halving = 0, 0, 0, 0
        self.latest, self.state = None, None

    def resume(self) -> None:
        """The newest checkpoint that loads (damaged ones are moved aside by rank 0 and named), if its
        config is this run's: weights, EMAs, optimizer, step, bad-step counters, RNG."""
        self.latest, state = ckio.load_latest(self.run_dir, move_damaged=self.dinfo.is_main,
                                              say=lambda m: print(m, file=sys.stderr, flush=True))
        self.state = state
        if self.latest is None:
            return
        diff = config_diff(state["config"], self.cfg.to_dict())
        if diff:
            raise ConfigError(f"{self.latest} was trained with a different config ({'; '.join(diff)}); "
                              f"use a new --run-dir or delete {self.run_dir / 'checkpoints'}")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.start = int(state["step"])
        self.bad_total = int(state["bad_steps"]["total"])
        self.bad_run = int(state["bad_steps"]["consecutive"])
        self.bad_since_halving = int(state["bad_steps"].get("since_lr_halving", 0))
        if self.rank == 0:
            ckio.set_rng_state(state["rng"], self.dev)

    def announce(self) -> None:
        """Rank 0: the run's config beside it, the log cut at the resumed step, and where it starts (printed
        under --quiet too: the job log says where a run resumed)."""
        if not self.dinfo.is_main:
            return
        from lct.config import run_length

        cfg, t = self.cfg, self.cfg.train
        save_experiment(cfg, self.run_dir / "config.yaml")
        self.log.truncate_after(self.start)
        stages = (run_length(cfg, self.split_n) or {}).get("curriculum")
        if stages:
            print("lct train: curriculum (eq. 10): " + ", ".join(
                f"N={c['N']} from iteration {c['from_iteration']}" for c in stages), file=sys.stderr)
        where = f"resuming at step {self.start} from {self.latest}" if self.latest else "starting"
        print(f"lct train: {cfg.name}: {self.n} images {self.shape[1:]}, {self.total} steps of {t.batch_size} "
              f"({self.world} process(es), {self.dev}{', deterministic algorithms' if t.deterministic else ''}); "
              f"{where}", file=sys.stderr, flush=True)

    def compile_and_attach(self) -> None:
        """The teacher's fast path, distillation's target theta- (a copy of the online weights), the compiled
        network (per block: gradients ready block by block, so the averaging overlaps the backward; the
        online and target passes share it) and, under several ranks, the fixed-bucket gradient averager
        (not DDP, whose re-packed buckets would make a resumed run differ from an uninterrupted one)."""
        fast, objective = self.fast, self.objective
        twice = getattr(objective, "backward_twice", False)  # CTM's adaptive balance (compile_blocks)
        if self.teacher_net is not None:
            configure_fast_path(self.teacher_net, fast, self.dev)
        if hasattr(objective, "attach"):
            objective.attach(self.model)
            if fast["compile"] and objective.target is not None:
                compile_blocks(objective.target, backward_twice=twice)
            if self.state is not None:
                objective.load_state_dict(self.state.get("objective") or {})
        self.net = compile_blocks(self.model, backward_twice=twice) if fast["compile"] else self.model
        self.averager = ddist.GradientAverager(list(self.model.parameters()), self.world) if self.world > 1 else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.max_norm = self.cfg.train.grad_clip if self.cfg.train.grad_clip is not None else float("inf")

    def check_finite(self, step: int) -> None:
        """The weights and every EMA are finite before anything is saved (one host read): a file that a
        table would cite never holds inf or NaN. Every rank checks its identical copy, so all raise."""
        named = [(f"model.{n}", v) for n, v in self.model.state_dict().items()]
        named += [(f"ema[{k}].{n}", v) for k, sh in self.ema.state_dict().items() for n, v in sh.items()]
        named = [(n, v) for n, v in named if v.is_floating_point()]
        ok = torch.stack([torch.isfinite(v).all() for _, v in named])
        if not bool(ok.all()):
            bad = [n for (n, _), good in zip(named, ok.tolist()) if not good]
            raise BadStepsError(f"non-finite weights at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                                f"nothing saved; the last good checkpoint is {ckio.latest_checkpoint(self.run_dir) or 'none'}. "
                                "Lower train.lr, set train.grad_clip, or check train.ema_decays and the data.")

    def save(self, step: int) -> None:
        """A resumable checkpoint (rank 0; every rank waits until the file is complete)."""
        self.check_finite(step)
        if self.dinfo.is_main:
            obj = self.objective
            ckio.save_atomic({
                "kind": "checkpoint", "config": self.cfg.to_dict(), "step": step, "model": self.model.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(), "rng": ckio.rng_state(self.dev),
                "objective": obj.state_dict() if hasattr(obj, "state_dict") else {},
                "data": {**self.data_meta, **self.order.state(step)}, "world_size": self.world,
                "bad_steps": {"total": self.bad_total, "consecutive": self.bad_run,
                              "since_lr_halving": self.bad_since_halving}},
                ckio.ckpt_path(self.run_dir, step))
            ckio.prune(self.run_dir, self.cfg.train.keep_checkpoints)
        ddist.barrier()  # no rank leaves (e.g. on preemption) before the file is complete

    def forward_backward(self, step: int, b) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Loss, gradient norm (device tensors) and logs of the GLOBAL batch `b` (lct.run.batches: every rank
        holds the same, seeded by (seed, step) alone, and the objective trains on its shard, so W ranks at
        B/W are the run of one process at B; the OT plan is taken over the global batch, as on the
        authors' one GPU). Backward always runs, so every rank averages its gradients and a non-finite
        loss shows up in the norm on every rank."""
        with _fork_rng(self.dev):  # dropout and any module randomness: also from (seed, rank, step)
            torch.manual_seed(step_seed(self.cfg.train.seed, self.rank, step, stream=1))
            per_sample, logs = self.objective(self.net, b.x0, b.noise, step, generator=b.generator,
                                              shard=(self.rank, self.world),
                                              **({"perm": b.perm} if b.perm is not None else {}))
            loss = per_sample.float().mean()
            loss.backward()
            if self.averager is not None:
                self.averager.finish()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)  # no sync: a tensor
        return loss.detach(), grad_norm, {**logs, "ot_solve_s": b.ot_solve_s, "ot_wait_s": b.ot_wait_s}

    def update(self) -> None:
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update(self.model)
        if hasattr(self.objective, "after_update"):
            self.objective.after_update(self.model)  # distillation: theta- <- mu theta- + (1 - mu) theta
        self.bad_run = 0

    def skip(self, step: int) -> None:
        """A non-finite loss or gradient: no update; the authors' nan_count (more than N skipped steps ->
        lr / 2, counted from zero again); a stop after train.max_bad_steps in a row."""
        t = self.cfg.train
        self.opt.zero_grad(set_to_none=True)
        self.bad_total, self.bad_run, self.bad_since_halving = self.bad_total + 1, self.bad_run + 1, self.bad_since_halving + 1
        if t.nan_lr_halving is not None and self.bad_since_halving > t.nan_lr_halving:
            for g in self.opt.param_groups:
                g["lr"] /= 2
            self.bad_since_halving = 0
            if self.dinfo.is_main:
                lr = self.opt.param_groups[0]["lr"]
                print(f"lct train: {t.nan_lr_halving + 1} non-finite steps since the last halving at step {step}: "
                      f"lr halved to {lr:g}", file=sys.stderr, flush=True)
                self.log.write({"step": step + 1, "event": "lr_halved", "lr": lr, "bad_steps": self.bad_total,
                                "time": time.time()})
        if self.bad_run >= t.max_bad_steps:
            last = ckio.latest_checkpoint(self.run_dir)
            raise BadStepsError(
                f"{self.bad_run} consecutive non-finite losses or gradients at step {step} "
                f"(train.max_bad_steps = {t.max_bad_steps}); the last good checkpoint is "
                f"{last or 'none'}. Lower train.lr, set train.grad_clip, or check the data.")

    def iterate(self, quiet: bool) -> None:
        """The steps from `start` to `total`: one host read each (the NaN guard and the stop signal, read
        together and all-reduced first under several ranks, so every rank agrees on both); logs every
        train.log_every; snapshots; checkpoints; on a stop signal a checkpoint and Preempted."""
        t = self.cfg.train
        bar = ProgressBar(self.start, self.total, enabled=self.dinfo.is_main and not quiet)
        self._window, self._t_window, self._steps_window = Averager(), time.perf_counter(), 0
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        self.model.train()
        pairs_ot = self.cfg.objective == "consistency" and self.cfg.loss.ot
        memory_format = torch.channels_last if self.fast["channels_last"] else torch.contiguous_format
        with _stop_signals() as stop, BatchPipeline(self.data, self.order, t.seed, self.total, self.dev, ot=pairs_ot,
                                                    ot_group=self.cfg.loss.ot_group, rank=self.rank, world=self.world,
                                                    memory_format=memory_format) as batches:
            for step in range(self.start, self.total):
                loss, grad_norm, logs = self.forward_backward(step, batches.get(step))
                bad, stopping = ddist.any_flags(~(torch.isfinite(loss) & torch.isfinite(grad_norm)), bool(stop))
                if bad:
                    self.skip(step)
                else:
                    self.update()
                    self._window.add({**logs, "loss": loss, "grad_norm": grad_norm})
                self._steps_window += 1
                done = step + 1
                if done % t.log_every == 0 or done == self.total:
                    self.write_log(done, bar)
                if t.snapshot_every and done % t.snapshot_every == 0 and self.dinfo.is_main:
                    ckio.save_atomic({"kind": "snapshot", "config": self.cfg.to_dict(), "step": done,
                                      "ema": self.ema.state_dict(), "data": self.data_meta},
                                     ckio.snapshot_path(self.run_dir, done))
                if (done % t.checkpoint_every == 0 or stopping) and done < self.total:
                    self.save(done)
                if stopping and done < self.total:
                    bar.close()
                    raise Preempted(f"signal {stop[0] if stop else '(other rank)'}: checkpoint saved at "
                                    f"step {done}; rerun the same command to resume")
        bar.close()

    def write_log(self, done: int, bar) -> None:
        """The window's means (device values are read here only), throughput and memory, into log.jsonl."""
        t = self.cfg.train
        rec = ddist.mean_scalars(self._window.pop(), self.dev)
        elapsed = time.perf_counter() - self._t_window
        rec.update(step=done, epoch=done * t.batch_size / self.n, lr=self.opt.param_groups[0]["lr"],
                   images_per_s=self._steps_window * t.batch_size / max(elapsed, 1e-9),
                   bad_steps=self.bad_total, peak_mem_mb=_peak_mem_mb(self.dev), time=time.time())
        if self.dinfo.is_main:
            self.log.write({"step": done, **{k: v for k, v in rec.items() if k != "step"}})
        bar.update(rec, self._steps_window)
        self._t_window, self._steps_window = time.perf_counter(), 0

    def finish(self) -> None:
        """A resumable checkpoint at the last step too (if the job dies after final.pt is written but before
        the workflow records success, Snakemake deletes final.pt and the retry only rewrites it from
        here), then final.pt and the loss plot."""
        if self.start < self.total:
            self.save(self.total)
        self.check_finite(self.total)
        if self.dinfo.is_main:
            ckio.save_atomic({"kind": "final", "config": self.cfg.to_dict(), "step": self.total,
                              "model": self.model.state_dict(), "ema": self.ema.state_dict(), "data": self.data_meta},
                             self.run_dir / "final.pt")
            plot_losses(self.log.read(), self.run_dir / "loss.png", title=self.cfg.name)
        ddist.barrier()
