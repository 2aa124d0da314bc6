"""Typed experiment configuration: dataclasses, named presets, small overrides.

An experiment is a preset (`ilct`, `slct`, `slct_as_coded`, `ldm_ve`, ...) plus a nested dict
of overrides, e.g. ``{"loss": {"distance": "geman_mcclure"}}``, resolved under one of two
*readings* of the paper (`READINGS`): ``as_coded``, the authors' code that produced the published
numbers (docs/METHOD.md section 4), or ``paper_text``, the paper's equations as printed. Every
Table 2 row is a preset plus one override. The resolved config is written beside each run and inside every checkpoint.
Unknown keys and wrong types raise `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lct.config.checks import CHOICES, RANGES, ConfigError, _build, describe_range, validate  # noqa: F401


@dataclass
class NetworkConfig:
    size: str = "paper"  # Named UNet size in lct.method.nn.unet.UNET_SIZES; the fields below override it when set.
    model_channels: int | None = None  # Base channel count (paper: 128).
    channel_mult: list[int] | None = None  # Per-resolution channel multipliers (paper: 1, 2, 3, 4).
    num_blocks: int | None = None  # Residual blocks per resolution (paper: 4).
    attn_resolutions: list[int] | None = None  # Resolutions with self-attention (paper: 16, 8).
    channels_per_head: int | None = None  # Attention channels per head (paper: 64).
    dropout: float = 0.0  # Dropout probability in residual blocks (authors' code: 0).
    norm: str = "group"  # Norm layer: group, instance, layer, rms, nsln, nsgn, nsin (lct.method.nn.norms.NORMS).
    noise_conditioning: str = "cm"  # c_noise convention: "cm" = 250 ln t, "edm" = ln(t) / 4.
    s_conditioning: bool = False  # Also embed a second time s, the end of CTM's jump (objective trajectory needs it); off: the network is unchanged.


@dataclass
class ScheduleConfig:
    sigma_min: float = 0.002  # Smallest noise level t_min.
    sigma_max: float = 80.0  # Largest noise level t_max.
    sigma_data: float = 0.5  # Data standard deviation in c_skip, c_out, c_in (eq. 2).
    rho: float = 7.0  # Karras discretization exponent.
    curriculum: str = "exp"  # Discretization curriculum: "exp" (eq. 10), "sqrt" (CM), "fixed" (N = s1 + 1).
    s0: int = 10  # Initial number of discretization intervals.
    s1: int = 640  # Final number of discretization intervals.
    timestep_dist: str = "lognormal"  # Index distribution: "lognormal" (iCT) or "uniform".
    p_mean: float = -1.1  # Lognormal location of the index distribution.
    p_std: float = 2.0  # Lognormal scale of the index distribution.
    weighting: str = "icm"  # lambda(t_i): "icm" = 1 / (t_{i+1} - t_i), "uniform" = 1.


@dataclass
class LossConfig:
    distance: str = "pseudo_huber"  # Robust distance: l2, pseudo_huber, cauchy, geman_mcclure, elatentlpips.
    reduction: str = "sum"  # Squared norm inside the distance: "sum" over dims (paper) or "mean" (authors' code).
    c: str = "fixed"  # Scale c: "fixed" (c0), "adaptive" (eq. 11), "as_coded" (authors' code), "scaled" (the reading's).
    c0: float | None = None  # Fixed c; None means 0.00054 * sqrt(d) with d the data dimension.
    diffusion_loss: bool = False  # Add the diffusion loss at small timesteps (eq. 9).
    diffusion_r: float = 0.25  # Use it for indices i <= int(N r), counted from the smallest sigma.
    diffusion_weight: float = 1.0  # Weight of the diffusion loss in the sum.
    diffusion_variant: str = "paper"  # "paper": f(x_{t_i}, t_i) unweighted; "as_coded": larger sigma, 1/t^2 + 1/sigma_data^2.
    ot: bool = False  # Minibatch optimal-transport coupling of noise and data.
    ot_group: int | None = None  # Pair within consecutive groups of this many samples of the global batch (the authors' multi-GPU runs: each GPU's share); None: the whole batch.


@dataclass
class TrainConfig:
    batch_size: int = 128  # Global batch size (per-GPU batch times world size).
    total_steps: int | None = None  # Training length in iterations (one of total_steps, epochs).
    epochs: float | None = None  # Training length in epochs of the training set (paper: 1400 or 1800).
    num_images: int | None = None  # Training split: the first N images of the dataset (images.npy order = sorted file names); None = all.
    flip_copies: bool = False  # Also train on the split's horizontally mirrored images (encoded as images: the authors' church256_flip): 2 x num_images samples.
    optimizer: str = "radam"  # "radam" (paper) or "adam".
    lr: float = 1e-4  # Learning rate, constant.
    weight_decay: float = 1e-4  # Weight decay.
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Optimizer betas.
    grad_clip: float | None = None  # Clip the global gradient norm; None disables.
    ema_decays: list[float] = field(default_factory=lambda: [0.99993])  # Evaluation EMAs (teacher is EMA 0).
    # The fast path: each switch is None = on with CUDA, off elsewhere (the authors ran fp32, eager, NCHW).
    precision: str = "auto"  # UNet autocast: "bf16", "fp32", or "auto" (bf16 on CUDA); its output is float32.
    compile: bool | None = None  # torch.compile the UNet (online and target passes share it).
    tf32: bool | None = None  # TF32 matmuls / convolutions in the float32 parts.
    channels_last: bool | None = None  # channels_last memory format for the UNet and its inputs.
    deterministic: bool = False  # Deterministic algorithms (and cuBLAS's workspace setting): bit-identical GPU reruns, slower.
    seed: int = 0  # Seed; per-step streams derive from (seed, rank, step).
    checkpoint_every: int = 2000  # Save a resumable checkpoint every N steps.
    keep_checkpoints: int = 3  # Keep the last N resumable checkpoints.
    snapshot_every: int | None = None  # Save EMA weights every N steps for evaluation over training (Figure 3).
    log_every: int = 100  # Append to log.jsonl every N steps.
    max_bad_steps: int = 10  # Stop after this many consecutive non-finite losses.
    nan_lr_halving: int | None = None  # After more than N skipped non-finite steps (since the last halving), halve the lr (authors' nan_count); None: never.
    length_rule: str = "ceil"  # Epochs to iterations: "ceil" (K = steps = ceil(epochs N / B)) or "authors_loop" (K = (N // B) epochs for the schedules, (N // B) (epochs + 1) steps run, as train_cm_latent.py).
    num_workers: int = 0  # Data loader workers.


@dataclass
class SampleConfig:
    two_step_index: int = 420  # Second-step sigma: index of the two_step_grid-point Karras grid (ascending from 0 at sigma_max).
    two_step_grid: int = 641  # Points of the grid the second-step sigma is read from.
    diffusion_steps: int = 250  # NFE of the deterministic EDM sampler for the diffusion baseline.
    gamma: float = 0.0  # CTM's gamma-sampling (objective trajectory): 0 = deterministic long jumps, 1 = CM's multistep sampler.


@dataclass
class DistillConfig:
    teacher: str | None = None  # Teacher experiment (a workflow key); its final.pt is given as `lct train --teacher`.
    teacher_ema: str | None = None  # Teacher weights: an EMA decay of the teacher run, "online"; None = its first train.ema_decays.
    teacher_sha256: str | None = None  # Filled in by `lct train` from --teacher: another teacher file is another config.
    init_from_teacher: bool = True  # Start the student's UNet from the teacher's (CM and LCM do); needs the same network.
    num_timesteps: int = 18  # N of the fixed Karras grid t_1 < ... < t_N (CM's CD: 18).
    skip: int = 1  # k: one Heun step of the teacher from t_{n+k} to t_n (1 = CM's CD; > 1 = LCM's skipping step).
    target_ema: float = 0.95  # mu of the target network theta- <- mu theta- + (1 - mu) theta (CM: 0.95); 0 = stopgrad(theta).


@dataclass
class TrajectoryConfig:
    solver: str = "teacher"  # Heun solver of the soft-matching target: "teacher" (distill.teacher's denoiser) or "self" (the target network's own denoiser g(x, u, u): CTM without a pre-trained diffusion model).
    max_solver_steps: int | None = None  # Most Heun steps from t to u on the distill.num_timesteps grid (drawn uniformly from 1 .. this each iteration); None = the grid's intervals (u anywhere in [s, t)).
    dsm_weight: float = 1.0  # lambda_DSM: weight of the denoising score matching loss on g(x_t, t, t).
    dsm_balance: str = "adaptive"  # "adaptive": lambda_DSM times CTM's balance ||grad L_CTM|| / ||grad L_DSM|| at the UNet's last layer; "fixed": lambda_DSM alone.


@dataclass
class ExperimentConfig:
    name: str = "experiment"  # Experiment name (a key of `experiments` in the workflow config).
    dataset: str = ""  # Dataset name (a key of `datasets` in the workflow config).
    preset: str = "slct"  # The preset this experiment started from.
    objective: str = "consistency"  # "consistency" (iCT / sLCT), "denoising" (VE latent diffusion), "distillation" (CD) or "trajectory" (CTM).
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)  # read by objectives distillation and trajectory
    ctm: TrajectoryConfig = field(default_factory=TrajectoryConfig)  # read by objective: trajectory only

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "ExperimentConfig":
        return _build(cls, d, where)


# Presets. Each component of the paper is its own switch (docs/METHOD.md section 3).
_ILCT = {
    "objective": "consistency",
    "network": {"norm": "group"},
    "loss": {"distance": "pseudo_huber", "c": "fixed", "diffusion_loss": False, "ot": False},
}
_SLCT = {
    "objective": "consistency",
    "network": {"norm": "nsln"},
    "loss": {"distance": "cauchy", "c": "scaled", "diffusion_loss": True, "diffusion_r": 0.25, "ot": True},
}
# The authors' code (docs/METHOD.md section 4): mean-reduced distances, as-coded c schedule, diffusion
# loss at the larger sigma weighted by 1/t^2 + 1/sigma_data^2 with weight 5.
_SLCT_AS_CODED = copy.deepcopy(_SLCT)
_SLCT_AS_CODED["loss"].update(
    {"reduction": "mean", "c": "as_coded", "diffusion_variant": "as_coded", "diffusion_weight": 5.0}
)  # the same as `slct` under the as_coded reading, whatever the reading
_SLCT_AS_CODED.setdefault("train", {}).update({"length_rule": "authors_loop", "nan_lr_halving": 100})
_LDM_VE = {
    "objective": "denoising",
    "network": {"norm": "group", "noise_conditioning": "edm"},
    # EDM's loss sums the weighted squared error over dimensions, under either reading.
    "loss": {"distance": "l2", "reduction": "sum", "c": "fixed", "diffusion_loss": False, "ot": False},
}
# Consistency distillation (Song et al. 2023, Algorithm 2; beyond the paper): the student has the
# teacher's network (GroupNorm, EDM noise conditioning) and starts from its weights; CM's uniform
# index over an 18-point grid, uniform weighting, L2; `distill` holds the teacher and target settings.
_CD = {
    "objective": "distillation",
    "network": {"norm": "group", "noise_conditioning": "edm"},
    "schedule": {"timestep_dist": "uniform", "weighting": "uniform"},
    "loss": {"distance": "l2", "c": "fixed", "diffusion_loss": False, "ot": False},
}
# Consistency trajectory model (Kim et al. 2024, CTM; beyond the paper): G(x_t, t, s) with EDM
# preconditioning inside g and the s-embedding; soft consistency matching over CD's 18-point grid with
# the EMA target theta- (CTM: 0.999), DSM on g(x_t, t, t) with lambda_DSM 1, no GAN loss; the solver is
# the teacher's Heun (`ctm` preset) or the target's own denoiser (`ctm_self`, from scratch).
_CTM = {
    "objective": "trajectory",
    "network": {"norm": "group", "noise_conditioning": "edm", "s_conditioning": True},
    "loss": {"distance": "l2", "c": "fixed", "diffusion_loss": False, "ot": False},
    "distill": {"target_ema": 0.999},
    "ctm": {"solver": "teacher"},
}
_CTM_SELF = copy.deepcopy(_CTM)
_CTM_SELF["distill"].update({"init_from_teacher": False})
_CTM_SELF["ctm"].update({"solver": "self"})
PRESETS: dict[str, dict[str, Any]] = {
    "ilct": _ILCT,  # iCT in latent space: Pseudo-Huber, fixed c, GroupNorm, no OT, no diffusion loss.
    "slct": _SLCT,  # The paper's full method: Cauchy, diffusion loss r 0.25, OT, scaled c, NsLN.
    "slct_as_coded": _SLCT_AS_CODED,  # sLCT as the authors' code implements it.
    "ldm_ve": _LDM_VE,  # VE latent diffusion with the same UNet (EDM loss), Table 1 "LDM-8 dagger".
    "cd": _CD,  # Consistency distillation from a trained ldm_ve teacher (not in the paper; table_cd).
    "ctm": _CTM,  # CTM with a trained ldm_ve teacher's Heun solver (not in the paper; table_ctm).
    "ctm_self": _CTM_SELF,  # CTM without a teacher: its own EMA denoiser solves the ODE (not in the paper; table_ctm).
}


# Two readings of the paper, one set of experiments. A reading fills in how each component is
# computed; a preset or an override that names a value explicitly wins over it.
READINGS: dict[str, dict[str, Any]] = {
    # The paper's text: squared norms summed over dimensions, c of eq. 11, the diffusion loss of
    # eq. 9 as written (student at t_i, unweighted, weight 1).
    "paper_text": {
        "loss": {"reduction": "sum", "diffusion_variant": "paper", "diffusion_weight": 1.0},
        "scaled_c": "adaptive",
    },
    # The authors' code (quandao10/LCT, branch `ot`; docs/METHOD.md section 4), which produced the
    # published numbers: distances averaged over dimensions (the same c is sqrt(d) = 64 times
    # larger in sum terms at 32x32x4), c0 in the first curriculum stage then
    # exp(-1.15 ln(N-1) - 0.85), the diffusion loss at the larger sigma weighted by
    # 1/t^2 + 1/sigma_data^2, averaged over the selected samples and added with weight 5.
    "as_coded": {
        "loss": {"reduction": "mean", "diffusion_variant": "as_coded", "diffusion_weight": 5.0},
        "scaled_c": "as_coded",
        # their loop: K = (N // B) epochs sets the schedules, range(epochs + 1) passes run; NaN steps skipped
        # and the lr halved after more than 100 of them (train_cm_latent.py)
        "train": {"length_rule": "authors_loop", "nan_lr_halving": 100},
    },
}
DEFAULT_READING = "paper_text"  # the dataclass defaults; the workflow configs always name theirs


def resolve_experiment(
    preset: str,
    overrides: dict[str, Any] | None = None,
    *,
    name: str = "experiment",
    dataset: str = "",
    defaults: dict[str, Any] | None = None,
    reading: str = DEFAULT_READING,
) -> ExperimentConfig:
    """The reading's settings, then the preset, `defaults` (config-wide, e.g. the demo's tiny UNet)
    and `overrides`; finally ``loss.c: scaled`` becomes the reading's scaled c."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r} for experiment {name!r}; choose one of {sorted(PRESETS)}")
    if reading not in READINGS:
        raise ConfigError(f"reading = {reading!r} (experiment {name!r}); choose one of {sorted(READINGS)}")
    r = READINGS[reading]
    d: dict[str, Any] = {"name": name, "dataset": dataset, "preset": preset}
    d = merge(d, {k: v for k, v in r.items() if k != "scaled_c"})
    d = merge(d, PRESETS[preset])
    d = merge(d, defaults or {})
    d = merge(d, overrides or {})
    if (d.get("loss") or {}).get("c") == "scaled":
        d["loss"]["c"] = r["scaled_c"]
    return validate(ExperimentConfig.from_dict(d, where=f"experiment {name!r}"))


def reads_teacher(cfg: ExperimentConfig) -> bool:
    """Whether a run reads a teacher (`lct train --teacher`): distillation, and CTM with ctm.solver teacher."""
    return cfg.objective == "distillation" or (cfg.objective == "trajectory" and cfg.ctm.solver == "teacher")


def resolve_workflow_experiment(workflow_config: dict[str, Any], name: str) -> ExperimentConfig:
    """Experiment `name` of a workflow config (config/config.yaml): its preset and overrides, the
    config's `defaults` and its `reading`."""
    exps = workflow_config.get("experiments") or {}
    if name not in exps:
        raise ConfigError(f"experiments.{name}: not in the workflow config ({sorted(exps)})")
    e = exps[name]
    defaults = workflow_config.get("defaults") or {}
    split = ((workflow_config.get("datasets") or {}).get(e["dataset"]) or {}).get("train_split") or {}
    if split.get("count"):  # datasets.<d>.train_split: the first N images train (the authors' split)
        defaults = merge(defaults, {"train": {"num_images": int(split["count"])}})
    if split.get("flip"):  # ... and the encodings of their mirror images (the authors' church256_flip)
        defaults = merge(defaults, {"train": {"flip_copies": True}})
    overrides = e.get("overrides") or {}
    if e.get("teacher"):  # experiments.<e>.teacher: the teacher run of objective distillation
        overrides = merge(overrides, {"distill": {"teacher": e["teacher"]}})
    return resolve_experiment(e["preset"], overrides, name=name, dataset=e["dataset"],
                              defaults=defaults, reading=workflow_config.get("reading", DEFAULT_READING))


# Settings that do not change the trained weights: the run's name, checkpoint / log / snapshot
# cadence, the non-finite guard, data-loader workers, and the fast-path switches that only change
# the order of float operations (compile, TF32, channels_last; `precision` does change the math
# and is not here). A resumed run may change them (lct.run.train), and the workflow's training rule
# leaves them out of its params, so editing them never plans a retraining (lct.workflow.rules).
BOOKKEEPING_KEYS = frozenset({
    "name", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "train.snapshot_every",
    "train.num_workers", "train.compile", "train.max_bad_steps", "train.tf32", "train.channels_last",
    "train.deterministic"})


def flat_settings(cfg: "ExperimentConfig | dict[str, Any]", prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf setting (lists stay values): {"train.lr": 0.0001, ...}."""
    d = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_settings(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Weight settings added to the code after runs were made with it, each with the value that reproduces
# those runs (its default). While an experiment holds that value, the key is left out of what decides a
# retraining: the workflow's experiment_config params (lct.workflow.rules) and lct train's comparison with a
# checkpoint's config. So adding a setting never retrains or re-scores a finished run; setting it does.
ADDED_SETTINGS: dict[str, Any] = {
    "train.flip_copies": False, "loss.ot_group": None,
    # objective trajectory (CTM): the s-embedding switch, its own section and its sampler
    "network.s_conditioning": False, "ctm.solver": "teacher", "ctm.max_solver_steps": None, "ctm.dsm_weight": 1.0,
    "ctm.dsm_balance": "adaptive",
}
# Sampler settings added likewise: at this value `--sampling` leaves them out of the evaluation commands
# (lct.workflow.eval_rules.sampling_args), so adding one re-scores no finished evaluation.
ADDED_SAMPLING: dict[str, Any] = {"sample.gamma": 0.0}


def is_added_default(key: str, *values: Any) -> bool:
    """True when `key` is an ADDED_SETTINGS key and every value is its neutral one or MISSING (a config
    written before the key existed)."""
    return key in ADDED_SETTINGS and all(v is MISSING or v == ADDED_SETTINGS[key] for v in values)


MISSING = object()  # a key absent from a config written by an older version


# How a trained model is sampled (the 2-NFE intermediate sigma, the baseline's steps): read by `lct
# evaluate` / `lct sample` from the workflow (--sampling), never a reason to retrain.
SAMPLING_KEYS = frozenset(f"sample.{f.name}" for f in dataclasses.fields(SampleConfig))


def weight_settings(cfg: "ExperimentConfig") -> dict[str, Any]:
    """The settings that change the trained weights: every leaf but BOOKKEEPING_KEYS and SAMPLING_KEYS."""
    return {k: v for k, v in flat_settings(cfg).items() if k not in BOOKKEEPING_KEYS | SAMPLING_KEYS}


def with_sampling(cfg: "ExperimentConfig", items: list[str], where: str = "--sampling") -> "ExperimentConfig":
    """`cfg` with sample.* set from ["two_step_index=440", ...] (the workflow's current values over those a
    checkpoint was trained with); only SampleConfig fields, range-checked."""
    if not items:
        return cfg
    import yaml

    d = cfg.to_dict()
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("sample.")
        if not sep or f"sample.{key}" not in SAMPLING_KEYS:
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE with KEY one of "
                              f"{sorted(k.removeprefix('sample.') for k in SAMPLING_KEYS)}")
        d["sample"][key] = yaml.safe_load(raw)
    return validate(ExperimentConfig.from_dict(d, where=f"{cfg.name} with {where}"))


def run_length(cfg: ExperimentConfig, num_images: int | None = None) -> dict[str, Any] | None:
    """Iterations K and the curriculum's stage boundaries of an experiment, when they follow from its config
    (train.total_steps, or train.epochs with train.num_images / `num_images`, the images before any mirrored
    copies); None when the data size is needed. With train.flip_copies an epoch is twice the split."""
    import math

    from lct.config import curriculum as S  # torch-free: the workflow's config writers call this

    t = cfg.train
    n = t.num_images or num_images
    if n and t.flip_copies:
        n = 2 * n
    if t.total_steps is not None:
        k_total = steps = int(t.total_steps)
    elif n and t.length_rule == "authors_loop":
        # train_cm_latent.py: total_training_steps = ceil(len // B) * epochs (the schedules' K); the loop
        # `for epoch in range(init_epoch, epochs + 1)` with drop_last runs epochs + 1 passes of len // B
        per_epoch = max(1, n // t.batch_size)
        k_total, steps = per_epoch * int(math.ceil(float(t.epochs))), per_epoch * (int(math.ceil(float(t.epochs))) + 1)
    elif n:
        k_total = steps = max(1, math.ceil(float(t.epochs) * n / t.batch_size))
    else:
        return None
    out: dict[str, Any] = {"images": n, "iterations": k_total, "steps": steps}
    if cfg.schedule.curriculum == "exp" and cfg.objective == "consistency":
        out["curriculum"] = [{"from_iteration": k, "N": nk} for k, nk in S.curriculum_stages(k_total, cfg.schedule)]
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `over` wins. Neither input is modified."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read a resolved experiment config (YAML or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".json":
        d = json.loads(text)
    else:
        import yaml

        d = yaml.safe_load(text)
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return ExperimentConfig.from_dict(d, where=str(path))


def save_experiment(cfg: ExperimentConfig, path: str | Path, note: str | None = None) -> None:
    """Write the resolved config atomically (temporary name, then rename), with the run length it
    implies (iterations, curriculum stages) as comments when the config alone determines it."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    header = ""
    length = run_length(cfg)
    if length is not None:
        mirrors = f" ({length['images'] // 2:,} and their mirror images)" if cfg.train.flip_copies and length["images"] else ""
        header = (f"# Derived (lct.config.run_length): {length['images'] or 'all'} training images{mirrors}, "
                  f"{length['iterations']:,} iterations")
        if length["steps"] != length["iterations"]:
            header += (f" (K of the schedules); {length['steps']:,} optimizer steps run "
                       f"(train.length_rule {cfg.train.length_rule})")
        if "curriculum" in length:
            header += "\n# Curriculum (eq. 10): " + ", ".join(
                f"N={c['N']} from {c['from_iteration']:,}" for c in length["curriculum"])
        header += "\n"
    if note:
        header += "".join(f"# {line}\n" for line in note.splitlines())
    tmp.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)
