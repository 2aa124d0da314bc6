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
import json
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from lct.evaluation.images import (DEFAULT_JPEG_QUALITY, IMAGE_FORMATS, StageTimer,  # noqa: F401 (re-exported)
                                   apply_image_format, encode_images)
from lct.evaluation.reference import (_atomic_json, _atomic_savez, build_suite, check_reference,  # noqa: F401
                                      compute_ref_stats, extractor_fingerprint, load_fid_reference, load_ref,
                                      ref_stats_main)
from lct.files.download import sha256_file
from lct.infra.device import pick_device  # noqa: F401 (also lct.report.figures' import)
from lct.infra.suites import SUITES

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    return p.parse_args(argv)


def checked_reference(a: argparse.Namespace) -> tuple[dict[str, Any], list[str], dict[str, Any] | None]:
    """The reference statistics, checked against the command (feature, image format, Recall features),
    the FID modes, and the authors' pytorch-fid statistics file in place of the legacy_pytorch ones."""
    ref = load_ref(a.ref)
    if ref.get("feature") != a.feature:
        raise SystemExit(f"lct evaluate: {a.ref} holds {ref.get('feature')!r} features, not --feature {a.feature}")
    if ref.get("image_format") != a.image_format:
        raise SystemExit(f"lct evaluate: {a.ref} was computed on {ref.get('image_format')} images but --image-format is "
                         f"{a.image_format}; use the same format for both (rerun `lct ref-stats --image-format ...`)")
    if a.recall_feature and a.recall_feature != str(ref["recall_feature"]):
        raise SystemExit(f"lct evaluate: {a.ref} holds {ref['recall_feature']!r} Recall features, not --recall-feature "
                         f"{a.recall_feature}; rerun `lct ref-stats --recall-feature {a.recall_feature}`")
    modes = a.fid_modes or [str(m) for m in ref["fd_modes"]]
    fid_reference = None
    if a.fid_reference:
        if "legacy_pytorch" not in modes:
            raise SystemExit("lct evaluate: --fid-reference holds pytorch-fid statistics, i.e. the legacy_pytorch mode; "
                             "add legacy_pytorch to --fid-modes")
        ref["mu_legacy_pytorch"], ref["sigma_legacy_pytorch"] = load_fid_reference(a.fid_reference)
        fid_reference = {"legacy_pytorch": {"file": str(a.fid_reference), "sha256": sha256_file(a.fid_reference)}}
    check_reference(ref, modes, a.fid_reference or a.ref)
    return ref, modes, fid_reference


def model_and_codec(a: argparse.Namespace, device: torch.device):
    """The checkpoint's weights and config (its sampler settings overridden by --sampling, then
    --sampling-file), and the codec that decodes its samples, checked to be of the trained shape."""
    from lct.config import ConfigError, with_sampling
    from lct.data.vae import load_codec
    from lct.run.model import load_checkpoint_model

    model, cfg, info = load_checkpoint_model(a.checkpoint, ema=a.ema, device=device)
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
    return model, cfg, info, codec


def main(argv: list[str] | None = None) -> int:
    from lct.data.vae import codec_fingerprint
    from lct.method.samplers import generate

    a = parse_args(argv)
    t0 = time.time()
    device = pick_device(a.device)
    ref, modes, fid_reference = checked_reference(a)
    extractors, fd, rec = build_suite(a.feature, modes, a.resources, device, str(ref["recall_feature"]))
    model, cfg, info, codec = model_and_codec(a, device)
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
    write_report(a, report, res, cache_dir)
    print(f"time per stage ({timer.images} images generated here): {timer.line()}")
    return 0


def write_report(a: argparse.Namespace, report: dict[str, Any], res: dict[str, Any], cache_dir: Path) -> None:
    """The eval JSON, written atomically, never with a non-finite metric; the shard cache removed after."""
    bad = {k: v for k, v in [*((f"fid.{m}", v) for m, v in res["fid"].items()), ("precision", res["precision"]),
                             ("recall", res["recall"])] if v is None or not np.isfinite(v)}
    if bad:  # never a NaN in a table: the run stops naming what produced it, and writes nothing
        raise SystemExit(f"lct evaluate: non-finite metrics {bad} from checkpoint {a.checkpoint} against reference "
                         f"{a.fid_reference or a.ref}; check both (a diverged model, or damaged statistics)")
    out = Path(a.out)
    _atomic_json(out, report)
    if not a.keep_shards:
        shutil.rmtree(cache_dir, ignore_errors=True)
    fids = ", ".join(f"{m} {v:.3f}" for m, v in res["fid"].items())
    print(f"{a.experiment} nfe{a.nfe}: {report['metric_name']} {fids}; precision {res['precision']:.3f} "
          f"recall {res['recall']:.3f} -> {out}")
