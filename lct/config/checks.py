"""Reading and checking a config: dicts into the typed dataclasses (unknown keys and wrong types name the
dotted key), the allowed values of the string switches (`CHOICES`), the numeric ranges (`RANGES`) and the
relations between keys (`validate`)."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names the key and the fix."""


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__} {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}: {k}" if ":" not in where else f"{where}.{k}") for k, v in d.items()}
    return cls(**kwargs)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(tp: Any, v: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, v, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if v is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, v, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {v!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {v!r}")
        return [_coerce(inner, x, f"{key}[{i}]") for i, x in enumerate(v)]
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: expected true or false, got {v!r}")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key}: expected an integer, got {v!r}")
        return v
    if tp is float:
        if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
            return float(v)  # YAML 1.1 (PyYAML) reads `1e-4`, without a dot, as a string
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{key}: expected a string, got {v!r}")
        return v
    raise ConfigError(f"{key}: unsupported type {tp}")


# Allowed values of the string switches, checked by `validate`.
CHOICES: dict[str, set[str]] = {
    "objective": {"consistency", "denoising", "distillation", "trajectory"},
    "ctm.solver": {"teacher", "self"},
    "ctm.dsm_balance": {"adaptive", "fixed"},
    "network.norm": {"group", "instance", "layer", "rms", "nsln", "nsgn", "nsin"},
    "network.noise_conditioning": {"cm", "edm"},
    "schedule.curriculum": {"exp", "sqrt", "fixed"},
    "schedule.timestep_dist": {"lognormal", "uniform"},
    "schedule.weighting": {"icm", "uniform"},
    "loss.distance": {"l2", "pseudo_huber", "cauchy", "geman_mcclure", "elatentlpips"},
    "loss.reduction": {"sum", "mean"},
    "loss.c": {"fixed", "adaptive", "as_coded"},
    "loss.diffusion_variant": {"paper", "as_coded"},
    "train.length_rule": {"ceil", "authors_loop"},
    "train.optimizer": {"radam", "adam"},
    "train.precision": {"fp32", "bf16", "auto"},
}


# Numeric ranges, checked by `validate` (so by every workflow dry-run and by `lct train` itself):
# key -> (low, high, low inclusive, high inclusive); None = unbounded. Lists are checked item by item;
# None values (optional keys left unset) pass.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "network.model_channels": (1, None, True, False),
    "network.channel_mult": (1, None, True, False),
    "network.num_blocks": (1, None, True, False),
    "network.attn_resolutions": (1, None, True, False),
    "network.channels_per_head": (1, None, True, False),
    "network.dropout": (0.0, 1.0, True, False),
    "schedule.sigma_min": (0.0, None, False, False),
    "schedule.sigma_max": (0.0, None, False, False),
    "schedule.sigma_data": (0.0, None, False, False),
    "schedule.rho": (0.0, None, False, False),
    "schedule.s0": (1, None, True, False),
    "schedule.s1": (1, None, True, False),
    "schedule.p_std": (0.0, None, False, False),
    "loss.c0": (0.0, None, False, False),
    "loss.ot_group": (1, None, True, False),
    "loss.diffusion_r": (0.0, 1.0, False, True),
    "loss.diffusion_weight": (0.0, None, True, False),
    "train.batch_size": (1, None, True, False),
    "train.total_steps": (1, None, True, False),
    "train.epochs": (0.0, None, False, False),
    "train.num_images": (1, None, True, False),
    "train.lr": (0.0, 1.0, False, True),
    "train.weight_decay": (0.0, None, True, False),
    "train.betas": (0.0, 1.0, True, False),
    "train.grad_clip": (0.0, None, False, False),
    "train.ema_decays": (0.0, 1.0, True, False),
    "train.seed": (0, None, True, False),
    "train.checkpoint_every": (1, None, True, False),
    "train.keep_checkpoints": (1, None, True, False),
    "train.snapshot_every": (1, None, True, False),
    "train.log_every": (1, None, True, False),
    "train.max_bad_steps": (1, None, True, False),
    "train.nan_lr_halving": (1, None, True, False),
    "train.num_workers": (0, None, True, False),
    "sample.two_step_index": (0, None, True, False),
    "sample.two_step_grid": (2, None, True, False),
    "sample.diffusion_steps": (1, None, True, False),
    "distill.num_timesteps": (2, None, True, False),
    "distill.skip": (1, None, True, False),
    "distill.target_ema": (0.0, 1.0, True, False),
    "ctm.max_solver_steps": (1, None, True, False),
    "ctm.dsm_weight": (0.0, None, True, False),
    "sample.gamma": (0.0, 1.0, True, True),
}


def describe_range(lo: float | None, hi: float | None, lo_inc: bool, hi_inc: bool) -> str:
    """`> 0`, `in [0, 1)`, `>= 1`: the allowed range of `RANGES` in words."""
    if hi is None:
        return f"{'>=' if lo_inc else '>'} {lo:g}"
    return f"in {'[' if lo_inc else '('}{lo:g}, {hi:g}{']' if hi_inc else ')'}"


def _in_range(v: float, lo: float | None, hi: float | None, lo_inc: bool, hi_inc: bool) -> bool:
    if not math.isfinite(v):
        return False
    if lo is not None and (v < lo or (v == lo and not lo_inc)):
        return False
    return not (hi is not None and (v > hi or (v == hi and not hi_inc)))


def _get(d: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def validate(cfg: Any) -> Any:
    """`cfg` (an lct.config.ExperimentConfig), returned when it passes. Check the string switches, the numeric ranges and the relations between keys; raise ConfigError
    naming the experiment, the key, the value and what is allowed."""
    d = cfg.to_dict()
    where = f"experiment {cfg.name!r}"
    for key, allowed in CHOICES.items():
        v = _get(d, key)
        if v not in allowed:
            raise ConfigError(f"{where}: {key} = {v!r}; choose one of {sorted(allowed)}")
    for key, (lo, hi, lo_inc, hi_inc) in RANGES.items():
        v = _get(d, key)
        for i, x in enumerate(v if isinstance(v, list) else [v]):
            if x is not None and not _in_range(float(x), lo, hi, lo_inc, hi_inc):
                at = f"{key}[{i}]" if isinstance(v, list) else key
                raise ConfigError(f"{where}: {at} = {x!r} is out of range; allowed: {describe_range(lo, hi, lo_inc, hi_inc)}")
    if (cfg.train.total_steps is None) == (cfg.train.epochs is None):
        raise ConfigError(
            f"{where}: set exactly one of train.total_steps and train.epochs "
            f"(got total_steps={cfg.train.total_steps}, epochs={cfg.train.epochs})"
        )
    s = cfg.schedule
    if s.sigma_max <= s.sigma_min:
        raise ConfigError(f"{where}: schedule.sigma_max = {s.sigma_max} must be above schedule.sigma_min = {s.sigma_min}")
    if s.s1 < s.s0:
        raise ConfigError(f"{where}: schedule.s1 = {s.s1} must be >= schedule.s0 = {s.s0}")
    if not cfg.train.ema_decays:
        raise ConfigError(f"{where}: train.ema_decays is empty; give at least one decay in [0, 1), e.g. [0.99993]")
    if len(cfg.train.betas) != 2:
        raise ConfigError(f"{where}: train.betas = {cfg.train.betas}; give two values in [0, 1), e.g. [0.9, 0.999]")
    og = cfg.loss.ot_group
    if og is not None and cfg.train.batch_size % og:
        raise ConfigError(f"{where}: loss.ot_group = {og} does not divide train.batch_size = {cfg.train.batch_size}; "
                          "give a divisor (the authors' runs: the per-GPU batch) or null for the whole batch")
    sm = cfg.sample
    if sm.two_step_index >= sm.two_step_grid:
        raise ConfigError(f"{where}: sample.two_step_index = {sm.two_step_index} is not an index of the "
                          f"{sm.two_step_grid}-point grid (sample.two_step_grid); allowed: in [0, {sm.two_step_grid - 1}]")
    dc = cfg.distill
    if cfg.objective == "distillation":
        if not 1 <= dc.skip < dc.num_timesteps:
            raise ConfigError(f"{where}: distill.skip = {dc.skip} must be in [1, distill.num_timesteps - 1 "
                              f"= {dc.num_timesteps - 1}]")
        if cfg.loss.diffusion_loss or cfg.loss.ot:
            raise ConfigError(f"{where}: loss.diffusion_loss and loss.ot are consistency-training "
                              "components; set them false for objective distillation")
    if cfg.objective == "trajectory":
        if not cfg.network.s_conditioning:
            raise ConfigError(f"{where}: objective trajectory jumps to a time s the network must see; set "
                              "network.s_conditioning: true (preset ctm or ctm_self)")
        if cfg.loss.diffusion_loss or cfg.loss.ot:
            raise ConfigError(f"{where}: loss.diffusion_loss and loss.ot are consistency-training components; set "
                              "them false for objective trajectory (its DSM term is ctm.dsm_weight)")
        ms = cfg.ctm.max_solver_steps
        if ms is not None and ms > dc.num_timesteps - 1:
            raise ConfigError(f"{where}: ctm.max_solver_steps = {ms} is more than the {dc.num_timesteps - 1} intervals "
                              "of the distill.num_timesteps grid; lower it or set null for all of them")
        if cfg.ctm.solver == "self" and dc.init_from_teacher:
            raise ConfigError(f"{where}: ctm.solver self trains without a teacher; set distill.init_from_teacher: false")
        if dc.target_ema <= 0:
            raise ConfigError(f"{where}: objective trajectory jumps with the EMA target network (stopgrad(theta) would "
                              "pass gradients through the outer jump); set distill.target_ema in (0, 1) (CTM: 0.999)")
    else:
        if cfg.network.s_conditioning:
            raise ConfigError(f"{where}: network.s_conditioning is for objective trajectory only; set it false")
        if cfg.sample.gamma != 0.0:
            raise ConfigError(f"{where}: sample.gamma = {cfg.sample.gamma} is CTM's gamma-sampling (objective "
                              f"trajectory); objective {cfg.objective} samples without it: remove the key")
    return cfg
