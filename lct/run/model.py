"""The model side of a run, shared by training and everything that reads its weights: building the
preconditioned UNet from a config, the evaluation EMAs, the optimizer, and loading weights from a
checkpoint. `lct sample`, `lct evaluate`, `lct stats` and the figures import this module, not the
training loop (lct/run/loop.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lct.files import checkpoint as ckio
from lct.config import ConfigError, ExperimentConfig, reads_teacher


def build_model(cfg: ExperimentConfig, img_resolution: int, in_channels: int) -> torch.nn.Module:
    """f_theta of eq. 2 (consistency) or the EDM denoiser (denoising) around the configured UNet."""
    from lct.method.precond import build_model as _build

    return _build(cfg, img_resolution, in_channels)


class EMA:
    """Evaluation EMAs of the online weights, keyed by the decay as a string ("0.99993")."""

    def __init__(self, model: torch.nn.Module, decays: list[float]) -> None:
        self.decays = {f"{d}": float(d) for d in decays}
        self.shadows = {k: {n: t.detach().clone() for n, t in model.state_dict().items()} for k in self.decays}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        sd = model.state_dict()
        for k, decay in self.decays.items():
            sh = self.shadows[k]
            floats = [n for n, t in sh.items() if t.is_floating_point()]
            torch._foreach_lerp_([sh[n] for n in floats], [sd[n].detach() for n in floats], 1.0 - decay)
            for n, t in sh.items():
                if not t.is_floating_point():
                    t.copy_(sd[n])

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return self.shadows

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        missing = sorted(set(self.decays) - set(state))
        if missing:
            raise ConfigError(f"checkpoint lacks EMA(s) {missing}; it holds {sorted(state)}")
        for k in self.decays:
            for n, t in self.shadows[k].items():
                t.copy_(state[k][n])


def make_optimizer(cfg: ExperimentConfig, params) -> torch.optim.Optimizer:
    t = cfg.train
    opt = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}[t.optimizer]
    # foreach: one multi-tensor kernel per update over all parameters (the same math as the loop form)
    return opt(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, foreach=True)


def load_checkpoint_model(path: str | Path, ema: str | None = "0.99993", device: str | torch.device = "cpu"
                          ) -> tuple[torch.nn.Module, ExperimentConfig, dict[str, Any]]:
    """(model in eval mode, config, info) from final.pt, a ckpt-*.pt or a snapshot.

    `ema` is a decay string as written in the config ("0.99993"), "online" for the raw weights, or None for
    the run's first train.ema_decays entry.
    info: {"step", "ema", "path", "data": {"path", "shape", ...}}.
    """
    state = ckio.load(path)
    cfg = ExperimentConfig.from_dict(state["config"], where=f"{path} config")
    if ema is None:  # the run's first evaluation EMA (train.ema_decays[0])
        ema = f"{float(cfg.train.ema_decays[0])}" if cfg.train.ema_decays else "online"
    if ema == "online":
        if "model" not in state:
            raise ConfigError(f"{path} holds only EMA weights {sorted(state['ema'])}; pass --ema one of them")
        weights = state["model"]
    else:
        key = f"{float(ema)}" if ema.replace(".", "", 1).isdigit() else ema
        if key not in state.get("ema", {}):
            raise ConfigError(f"{path}: no EMA {ema!r}; it holds {sorted(state.get('ema', {}))} and 'online'")
        weights = state["ema"][key]
    shape = state["data"]["shape"]
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, shape[2], shape[1])
    model.load_state_dict(weights)
    model.to(device).eval().requires_grad_(False)
    info = {"step": int(state["step"]), "ema": ema, "path": str(path), "data": state["data"]}
    return model, cfg, info


def fast_path(cfg: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    """Which parts of the fast path are on: each train switch, or (None / "auto") on with CUDA."""
    t, cuda = cfg.train, device.type == "cuda"

    def pick(v: bool | None) -> bool:
        return cuda if v is None else bool(v)

    precision = ("bf16" if cuda else "fp32") if t.precision == "auto" else t.precision
    return {"precision": precision, "compile": pick(t.compile), "tf32": pick(t.tf32),
            "channels_last": pick(t.channels_last)}


def compile_blocks(model: torch.nn.Module, backward_twice: bool = False, **compile_kwargs: Any) -> torch.nn.Module:
    """torch.compile each residual block of `model` on its own (regional compilation), in place.

    Why not torch.compile(model): a whole-model graph has ONE backward node, so every parameter's
    gradient becomes ready only when the whole backward has finished, and the bucket all-reduces of
    lct.infra.distributed.GradientAverager wait for the end of the backward instead of overlapping it. One
    compiled region per block gives one backward node per block: gradients become ready block by
    block from the output back, and the late blocks' buckets are averaged while the early blocks'
    backward computes. Blocks of the same shape share their compiled code, so compiling takes less
    time too. The module keeps its type and state_dict keys (no `_orig_mod.` prefix).

    `backward_twice`: the objective runs a backward through these blocks with retain_graph before the step's
    backward (CTM's adaptive balance, lct.method.trajectory.dsm_balance); AOTAutograd's donated buffers forbid
    that, so they are turned off (process-wide: a little more memory in the compiled backward)."""
    import torch._dynamo
    import torch._functorch.config

    if backward_twice:
        torch._functorch.config.donated_buffer = False

    from lct.method.nn.unet import ResBlock

    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    # Every block runs the same code (ResBlock.forward) with its own shapes and switches, so Dynamo compiles
    # it once per variant: above its recompile limit (8 by default) the remaining blocks would silently run
    # eager (the paper UNet has 44 blocks: 15 compiled). Allow one variant per block, plus the other
    # modules' margin, for the online and target copies alike.
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 2 * len(blocks) + 8)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, cfg.recompile_limit * 4)
    for m in blocks:
        m.compile(**compile_kwargs)
    return model


def configure_fast_path(model: torch.nn.Module, fast: dict[str, Any], device: torch.device) -> None:
    """bf16 autocast around the UNet only (its output is cast back to float32 before the
    preconditioning and the losses), TF32 for the float32 parts, channels_last weights."""
    model.autocast_dtype = torch.bfloat16 if fast["precision"] == "bf16" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = fast["tf32"]
        torch.backends.cudnn.allow_tf32 = fast["tf32"]
    if fast["channels_last"]:
        model.to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- the teacher of a distillation


def with_teacher_digest(cfg: ExperimentConfig, teacher: str | Path | None) -> ExperimentConfig:
    """A run with a teacher (reads_teacher): the config with distill.teacher_sha256 = the --teacher file's sha256,
    so a retrained teacher is a changed config (resume refuses, --on-config-change supersede starts afresh)."""
    if not reads_teacher(cfg):
        if teacher is not None:
            raise ConfigError(f"--teacher {teacher}: experiment {cfg.name!r} has objective {cfg.objective!r}"
                              + (" with ctm.solver self" if cfg.objective == "trajectory" else "")
                              + "; only distillation and CTM with ctm.solver teacher read a teacher")
        return cfg
    if teacher is None:
        raise ConfigError(f"experiment {cfg.name!r} has objective {cfg.objective}: give its teacher with "
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
    """The frozen teacher denoiser of distillation or CTM: its distill.teacher_ema weights, checked to be
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
        diff = [f"network.{k}: {theirs[k]!r} (teacher) vs {ours[k]!r}" for k in ours
                if k not in ("dropout", "s_conditioning") and ours[k] != theirs.get(k)]
        if diff:
            raise ConfigError(f"experiment {cfg.name!r}: distill.init_from_teacher needs the teacher's network, but "
                              f"{'; '.join(diff)}; match the network or set distill.init_from_teacher: false")
    return model


def init_from_teacher(model: torch.nn.Module, teacher: torch.nn.Module) -> None:
    """CM / LCM / CTM: the student's UNet starts as the teacher's. A CTM student's s-embedding (absent from the
    teacher) keeps its zero-initialised output, so the student starts as the teacher's denoiser for every s."""
    missing, unexpected = model.unet.load_state_dict(teacher.unet.state_dict(), strict=False)
    extra = [k for k in missing if not k.startswith("map_s_layer")]
    if extra or unexpected:
        raise ConfigError(f"the teacher's UNet does not fit the student's: missing {extra}, unexpected {unexpected}; "
                          "match the network or set distill.init_from_teacher: false")
