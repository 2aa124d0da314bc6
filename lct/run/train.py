"""`lct train`: train one experiment into a run directory; rerun the same command to resume.

    lct train --config runs/<e>/experiment.yaml --data data/<ds>/latents/ --run-dir runs/<e>/ \
        [--set train.total_steps=1000 --set loss.distance=cauchy ...] [--device cpu|cuda]
    lct train ... --gpus 4          # several GPUs: starts `torchrun --standalone` with min(4, visible) ranks
    torchrun --nproc_per_node 4 -m lct.cli train ...    # the same, launched by hand

Contract with the workflow and the SLURM profile
------------------------------------------------
* Exit status: 0 = finished (``<run-dir>/final.pt`` exists; rerunning is a no-op);
  2 = bad command line, config, or dataset (nothing was done; the message names the key or path);
  3 = preempted: SIGTERM or SIGUSR1 arrived, a checkpoint was saved at the end of the current
  step, rerun the same command to resume (``EXIT_PREEMPTED``);
  4 = ``train.max_bad_steps`` consecutive non-finite losses; the last good checkpoint is kept;
  5 = another `lct train` holds the run directory (``<run-dir>/.lock`` names its host, PID and SLURM
  job); nothing was done.
* Exits 2 and 4 are deterministic: ``<run-dir>/FAILED.json`` records them with a digest of the config
  and the data files, and the same command under the same digest (a scheduler's retry) stops at once
  with the same exit and message; changed settings or rebuilt data train again.
* Resume: the newest complete ``checkpoints/ckpt-<step:08d>.pt`` is loaded (model, EMAs,
  optimizer, step, RNG state, data order). Every step re-seeds from (seed, rank, step), so an
  interrupted and resumed run ends with the same weights as an uninterrupted one (CPU, same
  world size). A checkpoint whose config differs from the command's (beyond logging/checkpoint
  cadence) is refused rather than silently mixed.
* SLURM: submit with ``--signal=USR1@300`` (or ``B:USR1@300`` when the batch script forwards it)
  so the job has time to save before the time limit; on exit 3 requeue the job or let Snakemake
  retry (``retries:`` in profiles/slurm): the retried command resumes. Under ``torchrun`` every
  rank agrees on the stopping step, rank 0 saves, all ranks exit 3 (torchrun itself then reports
  a failure status, 1, which a retry treats the same way). torchrun forwards SIGTERM to its workers
  and kills them ``SHUTDOWN_TIMEOUT_S`` later (its own default, 30 s, is too short for a 2.5 GB
  checkpoint on a slow shared file system; benchmarks/checkpoint.py measures the write).
* Settings changed (``--on-config-change supersede``, what the workflow passes): when the run
  directory holds state of another config, it is moved to ``superseded-<time>/`` (never deleted)
  and training starts afresh; the default ``error`` refuses instead.
* Only ``final.pt`` is a workflow output; ``checkpoints/`` stays undeclared so Snakemake never
  deletes it when a job fails. The last step is checkpointed too, so a job killed after writing
  ``final.pt`` (whose final.pt Snakemake then deletes) is redone in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lct.files import checkpoint as ckio
from lct.infra import distributed as ddist
from lct.config import BOOKKEEPING_KEYS, SAMPLING_KEYS, ConfigError, ExperimentConfig, load_experiment, save_experiment, validate
from lct.run.model import (EMA, build_model, compile_blocks, configure_fast_path, fast_path, load_checkpoint_model,  # noqa: F401
                       make_optimizer)  # (re-exported)
from lct.run.batches import BatchPipeline, DataOrder, step_seed  # noqa: F401 (DataOrder re-exported)
from lct.data.datasets import DataError
from lct.files.trainlog import Averager, JsonlLog, ProgressBar, plot_losses

EXIT_OK, EXIT_USAGE, EXIT_PREEMPTED, EXIT_BAD_STEPS, EXIT_BUSY = 0, 2, 3, 4, 5

# Stopping on SIGTERM under torchrun: the ranks finish the step, rank 0 writes the checkpoint (paper size
# 2.5 GB: weights, one EMA, RAdam's two moments), then all exit. Assumed worst write speed of a busy
# shared file system: 25 MB/s -> 100 s, plus a step; torchrun waits SHUTDOWN_TIMEOUT_S before SIGKILL, and
# the profile's --signal=TERM@300 leaves 60 s beyond it (tests/test_train.py checks the two agree).
ASSUMED_WRITE_MB_S = 25
SHUTDOWN_TIMEOUT_S = 240


FAILURE = "FAILED.json"  # a deterministic failure of this run dir: config, data and what went wrong


def inputs_digest(cfg: ExperimentConfig, data: str | Path, mode: str = "error") -> str:
    """What decides whether a failure repeats: the whole config, the data files' names, sizes and mtimes, and
    `--on-config-change` (a run refused for a changed config trains under `supersede`)."""
    import hashlib
    import json

    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(data).iterdir() if p.is_file())
    return hashlib.sha256(json.dumps([cfg.to_dict(), files, mode], sort_keys=True, default=str).encode()).hexdigest()


def previous_failure(run_dir: str | Path, digest: str) -> dict[str, Any] | None:
    import json

    f = Path(run_dir) / FAILURE
    try:
        rec = json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):
        return None
    return rec if rec and rec.get("inputs") == digest else None


def record_failure(run_dir: str | Path, code: int, message: str, digest: str) -> None:
    """Written by rank 0 on exit 2 (bad config or data) or 4 (non-finite losses): the same command with the
    same config and data fails the same way, so a retry stops in seconds instead of training again."""
    import json

    f = Path(run_dir) / FAILURE
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps({"exit": code, "message": message, "inputs": digest,
                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    tmp.replace(f)


def lock_run_dir(run_dir: str | Path) -> int | None:
    """An exclusive lock on <run_dir>/.lock held for the life of this process (and of torchrun, which
    inherits the descriptor through exec); None when another writer holds it. The file names the holder
    (host, PID, SLURM job id) for the message of the one refused."""
    import fcntl
    import os
    import socket

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.set_inheritable(fd, True)
    os.ftruncate(fd, 0)
    os.write(fd, f"host {socket.gethostname()} pid {os.getpid()} slurm_job {os.environ.get('SLURM_JOB_ID', '-')}\n"
             .encode())
    return fd

# Fields that may change between a checkpoint and the resuming command (cadence, not the math):
# lct.config.BOOKKEEPING_KEYS, the same set the workflow leaves out of the training rule's params, and how the
# model is sampled (lct.config.SAMPLING_KEYS: evaluation's business, given to `lct evaluate --sampling`).
RESUME_MAY_CHANGE = BOOKKEEPING_KEYS | SAMPLING_KEYS


class Preempted(Exception):
    """A stop signal arrived; a checkpoint was saved."""


class BadStepsError(RuntimeError):
    """Too many consecutive non-finite losses."""


# ----------------------------------------------------------------------------- configuration


def apply_sets(d: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML); unknown keys name the key."""
    import yaml

    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set loss.distance=cauchy")
        key, raw = item.split("=", 1)
        node = d
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                valid = sorted(node) if isinstance(node, dict) else []
                raise ConfigError(f"--set {key}: unknown key {part!r} under {where}; valid keys are {valid}")
            if i < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return d


def run_settings_sets(path: str | Path | None) -> list[str]:
    """`--run-settings configs/<e>.run.yaml` (the workflow's bookkeeping: cadence, workers) as --set items;
    only lct.config.BOOKKEEPING_KEYS may appear there."""
    if not path or not Path(path).is_file():  # not written yet (lct train run by hand): the config's own
        return []
    import json

    import yaml

    d = yaml.safe_load(Path(path).read_text()) or {}
    bad = sorted(set(d) - set(BOOKKEEPING_KEYS))
    if bad:
        raise ConfigError(f"--run-settings {path}: {bad} change the weights; only {sorted(BOOKKEEPING_KEYS)} may be set there")
    return [f"{k}={json.dumps(v)}" for k, v in d.items() if k != "name"]


def resolve_config(config_path: str | Path, sets: list[str] | None = None) -> ExperimentConfig:
    """Load the experiment YAML, apply --set overrides, type-check and validate."""
    cfg = load_experiment(config_path)
    if sets:
        cfg = ExperimentConfig.from_dict(apply_sets(cfg.to_dict(), sets), where=f"{config_path} with --set")
    return validate(cfg)


def check_data_dir(path: str | Path) -> Path:
    """Fail before any work when the dataset dir is missing or holds neither format."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"--data {p}: no such directory; run `lct prepare-data` / `lct encode` first")
    if not (p / "latents.npy").is_file() and not (p / "images.npy").is_file():
        raise FileNotFoundError(f"--data {p}: holds neither latents.npy (from `lct encode`) nor images.npy "
                                f"(from `lct prepare-data`)")
    return p


def total_steps_for(cfg: ExperimentConfig, num_images: int) -> int:
    """Optimizer steps the run takes: train.total_steps, or from train.epochs by train.length_rule
    (lct.config.run_length)."""
    from lct.config import run_length

    return int(run_length(cfg, num_images)["steps"])


def schedule_steps_for(cfg: ExperimentConfig, num_images: int) -> int:
    """K of the schedules (curriculum, c): equal to the steps run, except under length_rule authors_loop."""
    from lct.config import run_length

    return int(run_length(cfg, num_images)["iterations"])


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """The weight settings that differ; a setting added since `a` was written (lct.config.ADDED_SETTINGS) at
    its neutral value is no difference."""
    from lct.config import MISSING, is_added_default

    out = []
    for k in sorted(set(a) | set(b)):
        key = f"{prefix}{k}"
        va, vb = a.get(k, MISSING), b.get(k, MISSING)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, key + ".")
        elif va != vb and key not in RESUME_MAY_CHANGE and not is_added_default(key, va, vb):
            out.append(f"{key}: {None if va is MISSING else va!r} -> {None if vb is MISSING else vb!r}")
    return out


# ----------------------------------------------------------------------------- objective, teacher, fast path


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


def with_teacher_digest(cfg: ExperimentConfig, teacher: str | Path | None) -> ExperimentConfig:
    """Objective distillation: the config with distill.teacher_sha256 = the --teacher file's sha256, so a
    retrained teacher is a changed config (resume refuses, --on-config-change supersede starts afresh)."""
    if cfg.objective != "distillation":
        if teacher is not None:
            raise ConfigError(f"--teacher {teacher}: experiment {cfg.name!r} has objective {cfg.objective!r}; "
                              "only objective distillation reads a teacher")
        return cfg
    if teacher is None:
        raise ConfigError(f"experiment {cfg.name!r} has objective distillation: give its teacher with "
                          f"--teacher runs/{cfg.distill.teacher or '<teacher experiment>'}/final.pt")
    if not Path(teacher).is_file():
        raise ConfigError(f"--teacher {teacher}: no such file; train the teacher experiment "
                          f"({cfg.distill.teacher or 'distill.teacher'}) first")
    from lct.files.download import sha256_file

    digest = sha256_file(teacher)
    if cfg.distill.teacher_sha256 not in (None, digest):
        raise ConfigError(f"--teacher {teacher} has sha256 {digest}, but distill.teacher_sha256 = "
                          f"{cfg.distill.teacher_sha256}; give the teacher this config was made for, or unset the key")
    d = cfg.to_dict()
    d["distill"]["teacher_sha256"] = digest
    return ExperimentConfig.from_dict(d, where=f"experiment {cfg.name!r}")


def load_teacher(cfg: ExperimentConfig, teacher: str | Path | torch.nn.Module, shape: list[int],
                 dev: torch.device) -> torch.nn.Module:
    """The frozen teacher denoiser of objective distillation: its distill.teacher_ema weights, checked to be
    a denoising run on data of this run's shape."""
    if isinstance(teacher, torch.nn.Module):  # tests: an analytic denoiser
        return teacher.to(dev).eval().requires_grad_(False)
    model, tcfg, info = load_checkpoint_model(teacher, cfg.distill.teacher_ema, dev)
    if tcfg.objective != "denoising":
        raise ConfigError(f"--teacher {teacher}: experiment {tcfg.name!r} has objective {tcfg.objective!r}; the "
                          "teacher of distillation is a denoising run (preset ldm_ve)")
    if list(info["data"]["shape"][1:]) != list(shape[1:]):
        raise ConfigError(f"--teacher {teacher} was trained on data of shape {info['data']['shape'][1:]}, this run's "
                          f"data is {shape[1:]}; distill from a teacher of the same dataset")
    if cfg.distill.init_from_teacher:
        ours, theirs = cfg.to_dict()["network"], tcfg.to_dict()["network"]
        diff = [f"network.{k}: {theirs[k]!r} (teacher) vs {ours[k]!r}" for k in ours if k != "dropout" and ours[k] != theirs[k]]
        if diff:
            raise ConfigError(f"experiment {cfg.name!r}: distill.init_from_teacher needs the teacher's network, but "
                              f"{'; '.join(diff)}; match the network or set distill.init_from_teacher: false")
    return model


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


# ----------------------------------------------------------------------------- the loop


def train(cfg: ExperimentConfig, data_path: str | Path, run_dir: str | Path, *,
          device: str | None = None, quiet: bool = False, resources: str | None = None,
          teacher: str | Path | torch.nn.Module | None = None) -> torch.nn.Module:
    """Train (or resume) one experiment; returns the online model (unwrapped). Raises Preempted,
    BadStepsError, ConfigError. `teacher`: the teacher's final.pt (or a denoiser module) of objective
    distillation."""
    from lct.data.datasets import load_training_data

    run_dir = Path(run_dir)
    dinfo = ddist.init(device)
    dev, rank, world = dinfo.device, dinfo.rank, dinfo.world_size
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        t = cfg.train
        if t.deterministic:  # bit-identical reruns on a GPU too (slower); cuBLAS needs its workspace setting
            import os

            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if t.batch_size % world:
            raise ConfigError(f"train.batch_size = {t.batch_size} is not divisible by the world size {world}")
        if (run_dir / "final.pt").is_file():
            if dinfo.is_main and not quiet:
                print(f"lct train: {run_dir / 'final.pt'} exists; nothing to do", file=sys.stderr)
            return load_checkpoint_model(run_dir / "final.pt", "online", dev)[0]
        data, info = load_training_data(data_path)
        if t.num_images is not None:  # the training split: the first N images (datasets.<d>.train_split)
            if t.num_images > data.shape[0]:
                raise ConfigError(f"train.num_images = {t.num_images} but {data_path} holds {data.shape[0]} images; "
                                  f"lower datasets.<dataset>.train_split.count or prepare the full dataset")
            data = data[: t.num_images]
            info = {**info, "split": f"first {t.num_images} of {info['shape'][0]}"}
        split_n = data.shape[0]  # the schedules count epochs of the split (x 2 with its mirror images)
        if t.flip_copies:  # the split, then its mirror images encoded as images (the authors' church256_flip)
            from lct.data.datasets import load_flip_copies

            data = torch.cat([data, load_flip_copies(data_path, data)])
            info = {**info, "split": f"{info.get('split', f'all {split_n}')} and their {split_n} mirror images"}
        n, shape = data.shape[0], list(data.shape)
        if dev.type == "cuda" and data.numel() * 4 <= 8 << 30:
            data = data.to(dev)  # encoded latents fit on the GPU: no host-to-device copy per step
        total = total_steps_for(cfg, split_n)

        with _fork_rng(dev):  # weights depend on train.seed only, identical on every rank
            torch.manual_seed(t.seed)
            model = build_model(cfg, shape[2], shape[1]).to(dev)
        teacher_net = None
        if cfg.objective == "distillation":
            if not isinstance(teacher, torch.nn.Module) and cfg.distill.teacher_sha256 is None:
                cfg = with_teacher_digest(cfg, teacher)
            teacher_net = load_teacher(cfg, teacher, shape, dev)
            if cfg.distill.init_from_teacher:  # CM / LCM: the student starts as the teacher's UNet
                model.unet.load_state_dict(teacher_net.unet.state_dict())
        # The fast path's memory format first, so the EMA copies (clones keep strides) match the weights'
        # layout and the EMA's foreach update stays on its fast path under channels_last.
        fast = fast_path(cfg, dev)
        configure_fast_path(model, fast, dev)
        ema = EMA(model, t.ema_decays)
        opt = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        objective = make_objective(cfg, schedule_steps_for(cfg, split_n), resources, teacher_net)
        order = DataOrder(n, t.seed, t.batch_size, rank, world)
        data_meta = {"path": str(data_path), "shape": shape, "info": ckio.plain(info)}
        log = JsonlLog(run_dir / "log.jsonl")

        start, bad_total, bad_run, bad_since_halving = 0, 0, 0, 0
        # The newest checkpoint that loads; damaged ones are moved aside (by rank 0) and named in the log.
        latest, state = ckio.load_latest(run_dir, move_damaged=dinfo.is_main,
                                         say=lambda m: print(m, file=sys.stderr, flush=True))
        if latest is not None:
            diff = _config_diff(state["config"], cfg.to_dict())
            if diff:
                raise ConfigError(f"{latest} was trained with a different config ({'; '.join(diff)}); "
                                  f"use a new --run-dir or delete {run_dir / 'checkpoints'}")
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            start = int(state["step"])
            bad_total = int(state["bad_steps"]["total"])
            bad_run = int(state["bad_steps"]["consecutive"])
            bad_since_halving = int(state["bad_steps"].get("since_lr_halving", 0))
            if rank == 0:
                ckio.set_rng_state(state["rng"], dev)
        if dinfo.is_main:
            save_experiment(cfg, run_dir / "config.yaml")
            log.truncate_after(start)
            # Printed under --quiet too (it only hides the progress bar): the job log says where a run resumed.
            from lct.config import run_length

            stages = (run_length(cfg, split_n) or {}).get("curriculum")
            if stages:
                print("lct train: curriculum (eq. 10): " + ", ".join(
                    f"N={c['N']} from iteration {c['from_iteration']}" for c in stages), file=sys.stderr)
            print(f"lct train: {cfg.name}: {n} images {shape[1:]}, {total} steps of {t.batch_size} "
                  f"({world} process(es), {dev}{', deterministic algorithms' if t.deterministic else ''}); " + (f"resuming at step {start} from {latest}"
                                                        if latest else "starting"), file=sys.stderr, flush=True)

        if teacher_net is not None:
            configure_fast_path(teacher_net, fast, dev)
        if hasattr(objective, "attach"):  # distillation's EMA target theta- (a copy of the online weights)
            objective.attach(model)
            if fast["compile"] and objective.target is not None:
                compile_blocks(objective.target)
            if state is not None:
                objective.load_state_dict(state.get("objective") or {})
        # Compiled per block (compile_blocks: gradients ready block by block, so the averaging overlaps
        # the backward); the online and target passes share the compiled blocks.
        net: torch.nn.Module = compile_blocks(model) if fast["compile"] else model
        # Several ranks: gradients averaged in fixed buckets (ddist.GradientAverager, not DDP, whose
        # re-packed buckets would make a resumed run differ from an uninterrupted one).
        averager = ddist.GradientAverager(list(model.parameters()), world) if world > 1 else None
        params = [p for p in model.parameters() if p.requires_grad]
        max_norm = t.grad_clip if t.grad_clip is not None else float("inf")
        memory_format = torch.channels_last if fast["channels_last"] else torch.contiguous_format

        def check_finite(step: int) -> None:
            """The weights and every EMA are finite before anything is saved (one host read): a file that a
            table would cite never holds inf or NaN. Every rank checks its identical copy, so all raise."""
            named = [(f"model.{n}", v) for n, v in model.state_dict().items()]
            named += [(f"ema[{k}].{n}", v) for k, sh in ema.state_dict().items() for n, v in sh.items()]
            named = [(n, v) for n, v in named if v.is_floating_point()]
            ok = torch.stack([torch.isfinite(v).all() for _, v in named])
            if not bool(ok.all()):
                bad = [n for (n, _), good in zip(named, ok.tolist()) if not good]
                raise BadStepsError(f"non-finite weights at step {step} ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                                    f"nothing saved; the last good checkpoint is {ckio.latest_checkpoint(run_dir) or 'none'}. "
                                    "Lower train.lr, set train.grad_clip, or check train.ema_decays and the data.")

        def save(step: int) -> None:
            check_finite(step)
            if dinfo.is_main:
                ckio.save_atomic({
                    "kind": "checkpoint", "config": cfg.to_dict(), "step": step, "model": model.state_dict(),
                    "ema": ema.state_dict(), "optimizer": opt.state_dict(), "rng": ckio.rng_state(dev),
                    "objective": objective.state_dict() if hasattr(objective, "state_dict") else {},
                    "data": {**data_meta, **order.state(step)}, "world_size": world,
                    "bad_steps": {"total": bad_total, "consecutive": bad_run, "since_lr_halving": bad_since_halving}},
                    ckio.ckpt_path(run_dir, step))
                ckio.prune(run_dir, t.keep_checkpoints)
            ddist.barrier()  # no rank leaves (e.g. on preemption) before the file is complete

        def forward_backward(step: int, b) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
            """Loss, gradient norm (device tensors) and logs of the GLOBAL batch `b` (lct.run.batches: every rank
            holds the same, seeded by (seed, step) alone, and the objective trains on its shard, so W ranks at
            B/W are the run of one process at B; the OT plan is taken over the global batch, as on the
            authors' one GPU). Backward always runs, so every rank averages its gradients and a non-finite
            loss shows up in the norm on every rank."""
            with _fork_rng(dev):  # dropout and any module randomness: also from (seed, rank, step)
                torch.manual_seed(step_seed(t.seed, rank, step, stream=1))
                per_sample, logs = objective(net, b.x0, b.noise, step, generator=b.generator, shard=(rank, world),
                                             **({"perm": b.perm} if b.perm is not None else {}))
                loss = per_sample.float().mean()
                loss.backward()
                if averager is not None:
                    averager.finish()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)  # no sync: a tensor
            return loss.detach(), grad_norm, {**logs, "ot_solve_s": b.ot_solve_s, "ot_wait_s": b.ot_wait_s}

        def update() -> None:
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(model)
            if hasattr(objective, "after_update"):
                objective.after_update(model)  # distillation: theta- <- mu theta- + (1 - mu) theta

        bar = ProgressBar(start, total, enabled=dinfo.is_main and not quiet)
        window, t_window, steps_window = Averager(), time.perf_counter(), 0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        model.train()
        pairs_ot = cfg.objective == "consistency" and cfg.loss.ot
        with _stop_signals() as stop, BatchPipeline(data, order, t.seed, total, dev, ot=pairs_ot,
                                                    ot_group=cfg.loss.ot_group, rank=rank, world=world,
                                                    memory_format=memory_format) as batches:
            for step in range(start, total):
                loss, grad_norm, logs = forward_backward(step, batches.get(step))
                # The one host synchronisation of a step: the NaN guard and the stop signal, read together
                # (all-reduced first under several ranks, so every rank agrees on both).
                bad, stopping = ddist.any_flags(~(torch.isfinite(loss) & torch.isfinite(grad_norm)), bool(stop))
                if bad:
                    opt.zero_grad(set_to_none=True)  # skip the step
                    bad_total, bad_run, bad_since_halving = bad_total + 1, bad_run + 1, bad_since_halving + 1
                    if t.nan_lr_halving is not None and bad_since_halving > t.nan_lr_halving:
                        # the authors' nan_count block: more than N skipped steps -> lr / 2, count from zero
                        for g in opt.param_groups:
                            g["lr"] /= 2
                        bad_since_halving = 0
                        if dinfo.is_main:
                            print(f"lct train: {t.nan_lr_halving + 1} non-finite steps since the last halving at "
                                  f"step {step}: lr halved to {opt.param_groups[0]['lr']:g}", file=sys.stderr, flush=True)
                            log.write({"step": step + 1, "event": "lr_halved", "lr": opt.param_groups[0]["lr"],
                                       "bad_steps": bad_total, "time": time.time()})
                    if bad_run >= t.max_bad_steps:
                        last = ckio.latest_checkpoint(run_dir)
                        raise BadStepsError(
                            f"{bad_run} consecutive non-finite losses or gradients at step {step} "
                            f"(train.max_bad_steps = {t.max_bad_steps}); the last good checkpoint is "
                            f"{last or 'none'}. Lower train.lr, set train.grad_clip, or check the data.")
                else:
                    update()
                    bad_run = 0
                    window.add({**logs, "loss": loss, "grad_norm": grad_norm})
                steps_window += 1
                done = step + 1
                if done % t.log_every == 0 or done == total:
                    rec = ddist.mean_scalars(window.pop(), dev)  # device values are read here only
                    elapsed = time.perf_counter() - t_window
                    rec.update(step=done, epoch=done * t.batch_size / n, lr=opt.param_groups[0]["lr"],
                               images_per_s=steps_window * t.batch_size / max(elapsed, 1e-9),
                               bad_steps=bad_total, peak_mem_mb=_peak_mem_mb(dev), time=time.time())
                    if dinfo.is_main:
                        log.write({"step": done, **{k: v for k, v in rec.items() if k != "step"}})
                    bar.update(rec, steps_window)
                    t_window, steps_window = time.perf_counter(), 0
                if t.snapshot_every and done % t.snapshot_every == 0 and dinfo.is_main:
                    ckio.save_atomic({"kind": "snapshot", "config": cfg.to_dict(), "step": done,
                                      "ema": ema.state_dict(), "data": data_meta},
                                     ckio.snapshot_path(run_dir, done))
                if (done % t.checkpoint_every == 0 or stopping) and done < total:
                    save(done)
                if stopping and done < total:
                    bar.close()
                    raise Preempted(f"signal {stop[0] if stop else '(other rank)'}: checkpoint saved at "
                                    f"step {done}; rerun the same command to resume")
        bar.close()
        if start < total:
            # A resumable checkpoint at the last step too: if the job dies after final.pt is written but
            # before the workflow records success (a time limit hit while tearing down, a node failure),
            # Snakemake deletes final.pt and the retry only rewrites it from here.
            save(total)
        check_finite(total)
        if dinfo.is_main:
            ckio.save_atomic({"kind": "final", "config": cfg.to_dict(), "step": total, "model": model.state_dict(),
                              "ema": ema.state_dict(), "data": data_meta}, run_dir / "final.pt")
            plot_losses(log.read(), run_dir / "loss.png", title=cfg.name)
        ddist.barrier()
        return model
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        ddist.shutdown()


def _peak_mem_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ----------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="lct train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="resolved experiment YAML (lct.config)")
    p.add_argument("--data", required=True, help="latents dir (lct encode) or dataset dir (images.npy)")
    p.add_argument("--run-dir", required=True, help="output dir: config.yaml, checkpoints/, log.jsonl, final.pt")
    p.add_argument("--run-settings", default=None,
                   help="YAML of bookkeeping keys (dotted: train.checkpoint_every, ...) applied over --config; the "
                        "workflow writes configs/<e>.run.yaml so that editing them never retrains")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.total_steps=100 (repeatable)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda (default: $LCT_DEVICE, else cuda when available); --gpus N or --device cuda "
                        "without a visible CUDA device is refused, --device cpu runs N CPU ranks on purpose")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the start / resume line is still printed)")
    p.add_argument("--gpus", type=int, default=None,
                   help="GPUs for this run: > 1 starts torchrun with min(N, visible GPUs) ranks (N gloo ranks on a "
                        "machine without CUDA); 0/1: one process")
    p.add_argument("--on-config-change", choices=["error", "supersede"], default="error",
                   help="the run dir holds state of another config: refuse (error) or move it aside and start "
                        "afresh (supersede)")
    p.add_argument("--resources", default=None,
                   help="folder of `lct fetch-weights` (read only by loss.distance elatentlpips)")
    p.add_argument("--teacher", default=None,
                   help="objective distillation: the teacher run's final.pt (a denoising run on the same data)")
    return p.parse_args(argv)


STATE = ("checkpoints", "snapshots", "config.yaml", "log.jsonl", "loss.png", "FAILED.json")  # a run dir's resumable state


def supersede_if_changed(cfg: ExperimentConfig, run_dir: str | Path) -> Path | None:
    """When `run_dir` holds state of another config, move it to superseded-<time>/ (never deleted)."""
    run_dir = Path(run_dir)
    old_cfg = run_dir / "config.yaml"
    if not old_cfg.is_file():
        return None
    from lct.config import load_experiment

    if not _config_diff(load_experiment(old_cfg).to_dict(), cfg.to_dict()):
        return None
    dest = run_dir / time.strftime("superseded-%Y%m%d-%H%M%S")
    dest.mkdir()
    for name in STATE:
        if (run_dir / name).exists():
            (run_dir / name).rename(dest / name)
    return dest


def launch_torchrun(argv: list[str], gpus: int) -> None:
    """Replace this process by `torchrun --standalone --nproc_per_node N -m lct.cli train ...` (N > 1).

    exec, not a child: SIGTERM from SLURM reaches torchrun, which forwards it to every rank."""
    import os

    rest, skip = [], False
    for a in argv:  # the same command without --gpus
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            rest.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           f"--shutdown-timeout={SHUTDOWN_TIMEOUT_S}",
           "-m", "lct.cli", "train", *rest]
    print(f"lct train: {gpus} GPUs: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


def main(argv: list[str] | None = None) -> int:
    import os

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:  # everything that can be wrong with the command is checked before any work
        sets = run_settings_sets(args.run_settings) + args.set
        cfg = with_teacher_digest(resolve_config(args.config, sets), args.teacher)
        check_data_dir(args.data)
    except (ConfigError, FileNotFoundError) as e:
        print(f"lct train: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    args.device = args.device or os.environ.get("LCT_DEVICE") or None
    if "RANK" not in os.environ and not torch.cuda.is_available() and (
            args.device == "cuda" or ((args.gpus or 0) >= 1 and args.device != "cpu")):
        import socket

        print(f"lct train: error: {'--device cuda' if args.device == 'cuda' else f'--gpus {args.gpus}'} asked for "
              f"GPUs, but no CUDA device is visible on {socket.gethostname()} (CUDA_VISIBLE_DEVICES="
              f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); check the job's GPU request and the node's driver. "
              "(`--device cpu` or LCT_DEVICE=cpu trains CPU ranks on purpose, for tests.)", file=sys.stderr)
        return EXIT_USAGE
    lock = None
    if "RANK" not in os.environ:  # the launching process (torchrun's ranks skip this)
        lock = lock_run_dir(args.run_dir)
        if lock is None:  # one writer per run directory
            holder = (Path(args.run_dir) / ".lock").read_text().strip() or "another process"
            print(f"lct train: error: {args.run_dir} is being trained by {holder}; two writers would corrupt it. "
                  "Wait for it, or cancel that job (scancel) before rerunning; after `snakemake --unlock`, cancel "
                  "orphaned SLURM jobs first", file=sys.stderr)
            return EXIT_BUSY
        prev = previous_failure(args.run_dir, inputs_digest(cfg, args.data, args.on_config_change))
        if prev is not None:  # a retry of a failure that will repeat: seconds, not another queued attempt
            print(f"lct train: error: this run failed at {prev['time']} with exit {prev['exit']} under the same "
                  f"config and data: {prev['message']}\nIt would fail the same way. Fix the cause (settings or "
                  f"data), or remove {Path(args.run_dir) / FAILURE} to try again.", file=sys.stderr)
            os.close(lock)
            return int(prev["exit"])
    try:
        return _launch_and_train(args, argv, cfg)
    finally:
        if lock is not None:  # (under torchrun the exec'd launcher keeps it until the run ends)
            os.close(lock)


def _launch_and_train(args: argparse.Namespace, argv: list[str], cfg: ExperimentConfig) -> int:
    import os

    if "RANK" not in os.environ:
        if args.on_config_change == "supersede":
            moved = supersede_if_changed(cfg, args.run_dir)
            if moved is not None:
                print(f"lct train: settings changed; previous state moved to {moved}", file=sys.stderr)
        # GPUs: never more ranks than visible devices. No CUDA: the requested number of CPU ranks
        # (gloo), which is how a CPU node or the test cluster runs the multi-GPU path.
        n = min(args.gpus or 0, torch.cuda.device_count()) if torch.cuda.is_available() else (args.gpus or 0)
        if n > 1:
            launch_torchrun(argv, n)
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        train(cfg, args.data, args.run_dir, device=args.device, quiet=args.quiet, resources=args.resources,
              teacher=args.teacher)
    except Preempted as e:
        print(f"lct train: preempted: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except (BadStepsError, ConfigError, DataError) as e:  # deterministic: recorded, so a retry stops at once
        code = EXIT_BAD_STEPS if isinstance(e, BadStepsError) else EXIT_USAGE
        print(f"lct train: error: {e}", file=sys.stderr)
        if main_rank:
            record_failure(args.run_dir, code, str(e), inputs_digest(cfg, args.data, args.on_config_change))
        return code
    except OSError as e:  # disk full, quota, I/O: names the path; the last complete checkpoint is kept
        print(f"lct train: error: {e}", file=sys.stderr)
        return 1
    if main_rank:
        (Path(args.run_dir) / FAILURE).unlink(missing_ok=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
