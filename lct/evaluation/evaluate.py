"""`lct evaluate` (FID / FD-digit, Precision, Recall of one experiment at one NFE) and `lct ref-stats`.

Samples are generated with per-image seeds, decoded in batches and streamed into the feature
extractors shard by shard; each finished shard's features are cached atomically under
`<out>.shards/`, so rerunning the same command resumes. Protocol (docs/METHOD.md section 4): the
authors saved samples and real images as JPEG and ran pytorch-fid, which clean-fid's
`legacy_pytorch` mode reproduces. With `--image-format jpeg` each image is round-tripped through an
in-memory JPEG at `--jpeg-quality` (default 75: PIL's default, which `torchvision.utils.save_image`
and `Image.save("x.jpg")` use in the authors' sampling scripts) before feature extraction.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from lct.files.download import sha256_file
from lct.infra.device import pick_device  # noqa: F401 (also lct.report.figures' import)
from lct.infra.suites import SUITES  # torch-free: lct.report.tables reads it in the light env

IMAGE_FORMATS = ("jpeg", "png")
DEFAULT_JPEG_QUALITY = 75


def encode_images(images: np.ndarray, image_format: str, quality: int = DEFAULT_JPEG_QUALITY) -> list[bytes]:
    """uint8 [B, H, W, C] -> encoded files (PNG lossless, JPEG at `quality`)."""
    from PIL import Image

    out = []
    for im in images:
        pil = Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
        buf = io.BytesIO()
        if image_format == "jpeg":
            pil.save(buf, format="JPEG", quality=quality)
        else:
            pil.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _jpeg_round_trip(im: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())))


def apply_image_format(images: np.ndarray, image_format: str, quality: int = DEFAULT_JPEG_QUALITY) -> np.ndarray:
    """What a metric reading saved files would see: JPEG round trip (threads: PIL releases the GIL while
    coding), or the images unchanged (PNG)."""
    if image_format == "png":
        return images
    if image_format != "jpeg":
        raise ValueError(f"--image-format {image_format!r}; choose one of {IMAGE_FORMATS}")
    from lct.evaluation.metrics import image_pool

    decoded = list(image_pool().map(lambda im: _jpeg_round_trip(im, quality), images))  # the job's CPUs
    return np.stack(decoded).reshape(images.shape)


class StageTimer:
    """Wall time per stage of an evaluation (sampling, decoding, jpeg_resize, features, statistics); on a GPU
    each stage ends with a synchronisation so its kernels are counted where they ran."""

    STAGES = ("sampling", "decoding", "jpeg_resize", "features", "statistics")

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.seconds = {s: 0.0 for s in self.STAGES}
        self.images = 0
        self.wall = 0.0  # elapsed time of the image stream; the CPU stage overlaps the device stages

    @contextlib.contextmanager
    def stage(self, name: str, sync: bool = True):
        """Time one stage; `sync=False` for CPU work on another thread (it must not wait for the device)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if sync and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - t0

    def report(self) -> dict[str, Any]:
        total = sum(self.seconds.values())
        per = {s: {"seconds": round(v, 3), "images_per_s": round(self.images / v, 2) if v > 0 and s != "statistics"
                   else None} for s, v in self.seconds.items()}
        return {"images": self.images, "total_seconds": round(total, 3), "wall_seconds": round(self.wall, 3),
                "stages": per}

    def line(self) -> str:
        return ", ".join(f"{s} {v:.1f}s" for s, v in self.seconds.items())


def build_suite(feature: str, modes: list[str] | None, resources: str | Path | None, device: torch.device,
                recall_feature: str | None = None) -> tuple[dict[str, Any], dict[str, str], str]:
    """Extractors {name: FeatureExtractor}, fd modes {mode: extractor name}, recall extractor name."""
    from lct.evaluation.metrics import build_feature

    if feature not in SUITES:
        raise ValueError(f"--feature {feature!r}; choose one of {sorted(SUITES)}")
    suite = SUITES[feature]
    fd = dict(suite["fd"])
    if modes:
        unknown = [m for m in modes if m not in fd]
        if unknown:
            raise ValueError(f"--fid-modes {unknown} not available for --feature {feature}; choose from {sorted(fd)}")
        fd = {m: fd[m] for m in modes}
    rec = recall_feature or suite["recall"]
    names = sorted(set(fd.values()) | {rec})
    return {n: build_feature(n, resources, device) for n in names}, fd, rec


def extractor_fingerprint(name: str, resources: str | Path | None) -> dict[str, Any]:
    """The weight files behind a feature extractor, by their MANIFEST.json sha256 (fetch-weights)."""
    from lct.weights.fetch import MANIFEST

    manifest = Path(resources) / MANIFEST if resources else None
    if manifest is None or not manifest.is_file():
        return {"name": name}
    files = json.loads(manifest.read_text())["files"]
    return {"name": name, "files": {k: v["sha256"] for k, v in sorted(files.items()) if v.get("asset") == name}}


def _atomic_savez(path: Path, **arrays: Any) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _atomic_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)


# --- reference statistics ----------------------------------------------------------------------

def compute_ref_stats(images: np.ndarray, feature: str, resources: str | Path | None, device: torch.device,
                      image_format: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY, batch_size: int = 250,
                      recall_num: int = 200_000, modes: list[str] | None = None,
                      recall_feature: str | None = None) -> dict[str, Any]:
    """mu / sigma per Frechet mode over all `images`, and the Recall features of the first
    `recall_num` images in dataset order (pr50k3_full: all real images up to 200,000), float16."""
    from lct.evaluation.metrics import feature_stats

    extractors, fd, rec = build_suite(feature, modes, resources, device, recall_feature)
    n = len(images)
    in_subset = np.arange(n) < recall_num
    feats: dict[str, list[np.ndarray]] = {name: [] for name in set(fd.values())}
    rec_feats: list[np.ndarray] = []
    for i in range(0, n, batch_size):
        batch = apply_image_format(np.asarray(images[i : i + batch_size]), image_format, quality)
        for name in feats:
            feats[name].append(extractors[name](batch))
        mask = in_subset[i : i + batch_size]
        if mask.any():
            rec_feats.append(feats[rec][-1][mask] if rec in feats else extractors[rec](batch[mask]))
    out: dict[str, Any] = {
        "feature": feature, "image_format": image_format, "jpeg_quality": quality, "num_images": n,
        "fd_modes": np.array(list(fd)), "recall_feature": rec, "recall_feats": np.concatenate(rec_feats).astype(np.float16),
    }
    for mode, name in fd.items():
        mu, sigma = feature_stats(np.concatenate(feats[name]))
        out[f"mu_{mode}"], out[f"sigma_{mode}"] = mu, sigma
    return out


def ref_stats_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lct ref-stats", description="reference feature statistics of a dataset's images")
    p.add_argument("--data", required=True, help="dataset dir with images.npy")
    p.add_argument("--feature", required=True, choices=sorted(SUITES))
    p.add_argument("--resources", default=None, help="folder of pretrained files (lct fetch-weights) / digit-classifier.pt")
    p.add_argument("--out", required=True, help="ref/<dataset>-<feature>.npz")
    p.add_argument("--fid-modes", nargs="+", default=None)
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpeg")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
    p.add_argument("--recall-num", type=int, default=200_000,
                   help="Recall uses the first N real images (pr50k3_full: 200,000)")
    p.add_argument("--recall-feature", default=None, help="override the suite's Recall extractor (e.g. inception_clean)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    path = Path(a.data) / "images.npy"
    if not path.is_file():
        raise SystemExit(f"lct ref-stats: {path} not found; run `lct prepare-data` first")
    images = np.load(path, mmap_mode="r")
    t0 = time.time()
    stats = compute_ref_stats(images, a.feature, a.resources, pick_device(a.device), a.image_format, a.jpeg_quality,
                              a.batch_size, a.recall_num, modes=a.fid_modes, recall_feature=a.recall_feature)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_savez(out, data=str(a.data), **stats)
    print(f"ref-stats {a.feature} of {stats['num_images']} images in {time.time() - t0:.1f}s -> {out}")
    return 0


# What a pickled statistics file may contain: numpy arrays, dtypes and scalars, and plain containers.
_PICKLE_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                   ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                   ("numpy._core.multiarray", "scalar"), ("builtins", "dict"), ("builtins", "list"),
                   ("builtins", "tuple"), ("collections", "OrderedDict")}


def load_pickled_npy(path: str | Path) -> Any:
    """An ``.npy`` file; an object one (np.save of a dict) read through an allow-list unpickler: numpy arrays
    and plain containers only, so a crafted file cannot run code (`pickle.UnpicklingError` names what it tried)."""
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) not in _PICKLE_ALLOWED:
                raise pickle.UnpicklingError(f"{path}: refusing to load {module}.{name} (a statistics file holds "
                                             "numpy arrays and plain containers only)")
            return super().find_class(module, name)

    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        if header(f)[2] == object:
            return Restricted(f, encoding="latin1").load()  # the pickle starts right after the header
    return np.load(path, allow_pickle=False)


def load_fid_reference(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a pytorch-fid statistics file: ``.npz`` with arrays ``mu`` and ``sigma`` (pytorch-fid's
    `save_fid_stats` format), or ``.npy`` holding that pair as a dict (as the authors' repository ships
    `celebahq_stat.npy`), unpickled through an allow-list (`load_pickled_npy`): no code runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID reference statistics {path} not found; set evaluation.fid_reference.<dataset> "
                                f"and run `snakemake fetch_weights`, or give a local path")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if not {"mu", "sigma"} <= set(z.files):
                raise ValueError(f"{path}: a pytorch-fid statistics file needs arrays 'mu' and 'sigma', has {z.files}")
            mu, sigma = z["mu"], z["sigma"]
    elif path.suffix == ".npy":
        obj = np.asarray(load_pickled_npy(path), dtype=object)
        if obj.dtype == object and obj.ndim == 0 and isinstance(obj.item(), dict):
            d = obj.item()
            mu, sigma = np.asarray(d["mu"]), np.asarray(d["sigma"])
        else:
            raise ValueError(f"{path}: expected a dict {{'mu', 'sigma'}} saved with np.save")
    else:
        raise ValueError(f"{path}: FID reference statistics must be .npz (mu, sigma) or .npy (dict)")
    mu, sigma = np.asarray(mu, np.float64).reshape(-1), np.asarray(sigma, np.float64)
    if sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{path}: sigma has shape {sigma.shape}, expected ({mu.size}, {mu.size})")
    return mu, sigma


def check_reference(ref: dict[str, Any], modes: list[str], source: str | Path) -> None:
    """Before any sample is drawn: every statistic the evaluation uses is finite and of matching shape."""
    for mode in modes:
        mu, sigma = ref.get(f"mu_{mode}"), ref.get(f"sigma_{mode}")
        if mu is None or sigma is None:
            raise SystemExit(f"lct evaluate: {source} has no statistics for mode {mode!r}")
        mu, sigma = np.asarray(mu), np.asarray(sigma)
        if sigma.shape != (mu.size, mu.size):
            raise SystemExit(f"lct evaluate: {source}: sigma_{mode} has shape {sigma.shape}, mu_{mode} {mu.shape}")
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise SystemExit(f"lct evaluate: {source}: mu_{mode} / sigma_{mode} hold non-finite values; rebuild the "
                             "reference statistics (`lct ref-stats`, or fetch the file again)")
    feats = ref.get("recall_feats")
    if feats is not None and not np.isfinite(np.asarray(feats, np.float32)).all():
        raise SystemExit(f"lct evaluate: {source}: recall_feats hold non-finite values; rebuild them (`lct ref-stats`)")


def load_ref(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} not found; run `lct ref-stats --data data/<ds> --out {path}`")
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].item() if z[k].ndim == 0 else z[k]) for k in z.files}


# --- evaluation ----------------------------------------------------------------------------------

def shard_features(images: Iterator[np.ndarray], extractors: dict[str, Any], image_format: str, quality: int,
                   export: tuple[Path, list[int]] | None = None, timer: StageTimer | None = None) -> dict[str, np.ndarray]:
    """Features of a stream of uint8 NHWC batches, after the image-format round trip; optionally export.

    Pipelined one batch deep: the CPU half of batch k (export, JPEG round trip, each extractor's resize:
    timed as stage "jpeg_resize") runs on a stager thread, its per-image work on the pool of the job's CPUs,
    while the main thread runs the device work: the feature networks on batch k-1 and the sampling and
    decoding of batch k+1 (the `images` iterator). The features and their order are those of the
    sequential loop.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    timer = timer or StageTimer()
    feats: dict[str, list[np.ndarray]] = {n: [] for n in extractors}
    t0 = time.perf_counter()

    def prepare(batch: np.ndarray, first: int) -> dict[str, np.ndarray]:
        with timer.stage("jpeg_resize", sync=False):
            if export is not None:
                folder, seeds = export
                ext = "jpg" if image_format == "jpeg" else "png"
                for b, s in zip(encode_images(batch, image_format, quality), seeds[first : first + len(batch)]):
                    (folder / f"{s:06d}.{ext}").write_bytes(b)
            seen = apply_image_format(batch, image_format, quality)
            return {n: ex.prepare(seen) for n, ex in extractors.items()}

    def embed(prepared: Future) -> None:
        ready = prepared.result()
        with timer.stage("features"):
            for n, ex in extractors.items():
                feats[n].append(ex.embed(ready[n]))

    done, pending = 0, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lct-stager") as stager:
        for batch in images:  # next(): sampling and decoding of this batch, beside the previous batch's CPU half
            prepared = stager.submit(prepare, batch, done)
            if pending is not None:
                embed(pending)
            pending = prepared
            done += len(batch)
            timer.images += len(batch)
        if pending is not None:
            embed(pending)
    timer.wall += time.perf_counter() - t0
    return {n: np.concatenate(v).astype(np.float32) for n, v in feats.items()}


def run_evaluation(images_for_seeds: Any, seeds: list[int], extractors: dict[str, Any], fd: dict[str, str], rec: str,
                   ref: dict[str, Any], cache_dir: Path, cache_key: dict[str, Any], image_format: str = "jpeg",
                   quality: int = DEFAULT_JPEG_QUALITY, shard_size: int = 5000, recall_k: int = 3,
                   export_dir: Path | None = None, device: torch.device | str = "cpu",
                   timer: StageTimer | None = None) -> dict[str, Any]:
    """Stream `images_for_seeds(seed_list) -> Iterator[uint8 NHWC]` shard by shard into the metrics
    (no image is written unless `export_dir` is given); `timer` collects the time per stage.

    Each shard's features are saved under `cache_dir` (atomically); a rerun with the same
    `cache_key` skips finished shards. Returns {"fid": {mode: fd}, "precision", "recall", ...}.
    """
    from lct.evaluation.metrics import feature_stats, frechet_distance, precision_recall

    timer = timer or StageTimer(device)
    meta_path = cache_dir / "meta.json"
    if cache_dir.exists() and (not meta_path.is_file() or json.loads(meta_path.read_text()) != cache_key):
        shutil.rmtree(cache_dir)  # features of another checkpoint / protocol: start over
    cache_dir.mkdir(parents=True, exist_ok=True)
    _atomic_json(meta_path, cache_key)
    if export_dir is not None:
        export_dir.mkdir(parents=True, exist_ok=True)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in extractors}
    for j, start in enumerate(range(0, len(seeds), shard_size)):
        shard_seeds = seeds[start : start + shard_size]
        path = cache_dir / f"shard-{j:05d}.npz"
        got = None
        if path.is_file():
            with np.load(path) as z:
                if "seeds" in z.files and z["seeds"].tolist() == list(shard_seeds):  # the very same images
                    got = {n: z[n] for n in extractors}
        if got is None:
            export = (export_dir, shard_seeds) if export_dir is not None else None
            got = shard_features(images_for_seeds(shard_seeds), extractors, image_format, quality, export, timer)
            if any(len(v) != len(shard_seeds) for v in got.values()):
                raise RuntimeError(f"shard {j}: sampler returned {len(next(iter(got.values())))} images for {len(shard_seeds)} seeds")
            _atomic_savez(path, seeds=np.asarray(shard_seeds, np.int64), **got)
        for n in extractors:
            parts[n].append(got[n])
    feats = {n: np.concatenate(v) for n, v in parts.items()}
    result: dict[str, Any] = {"fid": {}}
    stats_t0 = time.perf_counter()
    for mode, name in fd.items():
        if f"mu_{mode}" not in ref:
            raise KeyError(f"reference statistics have no mode {mode!r} (have {list(ref.get('fd_modes', []))}); recompute them with `lct ref-stats --fid-modes ...`")
        mu, sigma = feature_stats(feats[name])
        result["fid"][mode] = frechet_distance(mu, sigma, ref[f"mu_{mode}"], ref[f"sigma_{mode}"])
    real = ref["recall_feats"]  # all stored reals (pr50k3_full: up to 200K) against every generated image
    result["precision"], result["recall"] = precision_recall(real, feats[rec], k=recall_k, device=device)
    timer.seconds["statistics"] += time.perf_counter() - stats_t0
    result["timing"] = timer.report()
    result["recall_real_count"] = int(len(real))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lct evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="runs/<e>/final.pt or runs/<e>/snapshots/ema-<step>.pt")
    p.add_argument("--data", required=True, help="data/<ds>/latents (latent models) or data/<ds> (pixel models): decodes samples")
    p.add_argument("--experiment", required=True)
    p.add_argument("--nfe", type=int, required=True)
    p.add_argument("--num-samples", type=int, default=50000)
    p.add_argument("--ema", default="0.99993", help="EMA decay of the weights to evaluate, or 'online'")
    p.add_argument("--feature", required=True, choices=sorted(SUITES))
    p.add_argument("--ref", required=True, help="ref/<ds>-<feature>.npz from `lct ref-stats`")
    p.add_argument("--resources", default=None)
    p.add_argument("--out", required=True, help="eval/<e>/nfe<k>.json")
    p.add_argument("--fid-modes", nargs="+", default=None, help="subset of the reference's modes (default: all of them)")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="jpeg")
    p.add_argument("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
    p.add_argument("--export-dir", default=None, help="also save every image (as the metric saw it) here")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--shard-size", type=int, default=5000)
    p.add_argument("--seed-offset", type=int, default=0, help="image k uses seed offset + k")
    p.add_argument("--recall-k", type=int, default=3)
    p.add_argument("--recall-feature", default=None, help="must match the reference's (set by `lct ref-stats`)")
    p.add_argument("--fid-reference", default=None,
                   help="pytorch-fid statistics file (.npz mu/sigma or .npy dict): the legacy_pytorch FID is taken "
                        "against it instead of the dataset's own statistics (the authors' protocol)")
    p.add_argument("--keep-shards", action="store_true", help="keep the cached shard features after success")
    p.add_argument("--vae", default=None, help="VAE dir overriding the one named in <data>/latents.json")
    p.add_argument("--decode-precision", choices=["fp32", "bf16"], default="fp32",
                   help="VAE decoding: fp32 (the authors' scoring, default) or bf16 autocast (faster on GPUs; "
                        "changes pixels by about one level, so the FID is not the authors' protocol)")
    p.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE",
                   help="sampler setting over the checkpoint's (sample.two_step_index, two_step_grid, diffusion_steps); "
                        "the workflow passes the experiment's current values (repeatable)")
    p.add_argument("--sampling-file", default=None,
                   help="a JSON whose `sampling` mapping is applied after --sampling (`lct sweep best`'s chosen index)")
    p.add_argument("--to-uint8", choices=["round", "truncate"], default="round",
                   help="samples to 8-bit: round to the nearest level, or truncate as the authors' scoring script")
    p.add_argument("--device", default="auto")
    a = p.parse_args(argv)
    t0 = time.time()
    device = pick_device(a.device)
    ref = load_ref(a.ref)
    if ref.get("feature") != a.feature:
        raise SystemExit(f"lct evaluate: {a.ref} holds {ref.get('feature')!r} features, not --feature {a.feature}")
    if ref.get("image_format") != a.image_format:
        raise SystemExit(f"lct evaluate: {a.ref} was computed on {ref.get('image_format')} images but --image-format is "
                         f"{a.image_format}; use the same format for both (rerun `lct ref-stats --image-format ...`)")
    if a.recall_feature and a.recall_feature != str(ref["recall_feature"]):
        raise SystemExit(f"lct evaluate: {a.ref} holds {ref['recall_feature']!r} Recall features, not --recall-feature "
                         f"{a.recall_feature}; rerun `lct ref-stats --recall-feature {a.recall_feature}`")
    from lct.method.samplers import generate
    from lct.run.model import load_checkpoint_model
    from lct.data.vae import load_codec

    modes = a.fid_modes or [str(m) for m in ref["fd_modes"]]
    fid_reference = None
    if a.fid_reference:
        if "legacy_pytorch" not in modes:
            raise SystemExit("lct evaluate: --fid-reference holds pytorch-fid statistics, i.e. the legacy_pytorch mode; "
                             "add legacy_pytorch to --fid-modes")
        ref["mu_legacy_pytorch"], ref["sigma_legacy_pytorch"] = load_fid_reference(a.fid_reference)
        fid_reference = {"legacy_pytorch": {"file": str(a.fid_reference), "sha256": sha256_file(a.fid_reference)}}
    check_reference(ref, modes, a.fid_reference or a.ref)
    extractors, fd, rec = build_suite(a.feature, modes, a.resources, device, str(ref["recall_feature"]))
    model, cfg, info = load_checkpoint_model(a.checkpoint, ema=a.ema, device=device)
    from lct.config import ConfigError, with_sampling

    try:
        cfg = with_sampling(cfg, a.sampling)
        if a.sampling_file:
            chosen = (json.loads(Path(a.sampling_file).read_text()).get("sampling") or {})
            cfg = with_sampling(cfg, [f"{k}={v}" for k, v in chosen.items()], where=f"--sampling-file {a.sampling_file}")
    except ConfigError as e:
        raise SystemExit(f"lct evaluate: {e}")
    codec = load_codec(a.data, vae_dir=a.vae, device=device, batch_size=a.batch_size,
                       decode_precision=a.decode_precision, to_uint8_rule=a.to_uint8)
    trained = list((info.get("data") or {}).get("shape") or [])[1:] if isinstance(info, dict) else []
    if trained and list(codec.latent_shape) != trained:  # before a single sample is drawn
        raise SystemExit(f"lct evaluate: {a.checkpoint} was trained on data of shape {trained} but --data {a.data} "
                         f"decodes samples of shape {list(codec.latent_shape)}; give the dataset it was trained on")
    ckpt_sha = sha256_file(a.checkpoint)
    seeds = list(range(a.seed_offset, a.seed_offset + a.num_samples))

    timer = StageTimer(device)

    def images_for_seeds(s: list[int]) -> Iterator[np.ndarray]:
        """Sampling and decoding, batch by batch, each timed as its own stage (nothing is written)."""
        for i in range(0, len(s), a.batch_size):
            with timer.stage("sampling"):
                z = generate(model, cfg, tuple(codec.latent_shape), list(s[i:i + a.batch_size]), a.nfe, device,
                             a.batch_size)
            with timer.stage("decoding"):
                images = codec.decode(z)
            yield images

    out = Path(a.out)
    cache_dir = out.with_name(out.name + ".shards")
    from lct.data.vae import codec_fingerprint

    # Everything that changes an image or a feature: a rerun with any other setting never reuses shards.
    key = {"checkpoint_sha256": ckpt_sha, "ema": a.ema, "nfe": a.nfe, "seed_offset": a.seed_offset,
           "num_samples": a.num_samples, "shard_size": a.shard_size, "image_format": a.image_format,
           "jpeg_quality": a.jpeg_quality, "codec": codec_fingerprint(a.data, a.vae),
           "decode_precision": a.decode_precision, "to_uint8": a.to_uint8, "sampling": cfg.to_dict()["sample"],
           "extractors": {n: extractor_fingerprint(n, a.resources) for n in sorted(extractors)}}
    # (the FID reference enters only the final distance, not the cached features)
    res = run_evaluation(images_for_seeds, seeds, extractors, fd, rec, ref, cache_dir, key, a.image_format,
                         a.jpeg_quality, a.shard_size, a.recall_k, Path(a.export_dir) if a.export_dir else None, device,
                         timer)
    report = {
        "experiment": a.experiment, "nfe": a.nfe, "ema": a.ema, "num_samples": a.num_samples,
        "seeds": [seeds[0], seeds[-1]], "feature": a.feature, "image_format": a.image_format,
        "decode_precision": a.decode_precision, "to_uint8": a.to_uint8, "sampling": cfg.to_dict()["sample"],
        "jpeg_quality": a.jpeg_quality if a.image_format == "jpeg" else None,
        "fid": res["fid"], "metric_name": SUITES[a.feature]["metric_name"],
        "precision": res["precision"], "recall": res["recall"], "recall_k": a.recall_k,
        "recall_feature": rec, "recall_real_count": res["recall_real_count"],
        "checkpoint": str(a.checkpoint), "checkpoint_sha256": ckpt_sha, "step": info.get("step") if isinstance(info, dict) else None,
        "ref": str(a.ref), "ref_image_format": ref.get("image_format"), "device": str(device),
        "fid_reference": fid_reference or {m: {"images": int(ref.get("num_images", 0)),
                                                "image_format": ref.get("image_format")} for m in res["fid"]},
        "wall_time_s": round(time.time() - t0, 2), "timing": res["timing"],
    }
    bad = {k: v for k, v in [*((f"fid.{m}", v) for m, v in res["fid"].items()), ("precision", res["precision"]),
                             ("recall", res["recall"])] if v is None or not np.isfinite(v)}
    if bad:  # never a NaN in a table: the run stops naming what produced it, and writes nothing
        raise SystemExit(f"lct evaluate: non-finite metrics {bad} from checkpoint {a.checkpoint} against reference "
                         f"{a.fid_reference or a.ref}; check both (a diverged model, or damaged statistics)")
    _atomic_json(out, report)
    if not a.keep_shards:
        shutil.rmtree(cache_dir, ignore_errors=True)
    fids = ", ".join(f"{m} {v:.3f}" for m, v in res["fid"].items())
    print(f"{a.experiment} nfe{a.nfe}: {report['metric_name']} {fids}; precision {res['precision']:.3f} recall {res['recall']:.3f} -> {out}")
    print(f"time per stage ({timer.images} images generated here): {timer.line()}")
    return 0
