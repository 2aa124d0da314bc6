"""Figure 1 statistics: box_stats against numpy, lct stats data / td on tiny real inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lct.data.datasets import write_dataset
from lct.run.stats import box_stats, main as stats_main
from lct.data.vae import LatentNormalizer


@pytest.mark.parametrize("kind", ["normal", "cauchy", "ints"])
def test_box_stats_equal_numpy(kind):
    rng = np.random.default_rng(1)
    a = {"normal": rng.normal(size=(37, 11)), "cauchy": rng.standard_cauchy(5001),
         "ints": rng.integers(0, 5, 999).astype(float)}[kind]
    s = box_stats(a)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    assert (s["q1"], s["median"], s["q3"]) == (q1, med, q3)
    iqr = q3 - q1
    assert s["inner_fence_low"] == q1 - 1.5 * iqr and s["outer_fence_high"] == q3 + 3 * iqr
    assert s["count_beyond_inner"] == int(((a < q1 - 1.5 * iqr) | (a > q3 + 1.5 * iqr)).sum())
    assert s["count_above_outer"] == int((a > q3 + 3 * iqr).sum())
    assert s["min"] == a.min() and s["max"] == a.max() and s["n"] == a.size
    assert s["mean"] == pytest.approx(a.mean()) and s["std"] == pytest.approx(a.std())
    inside = a[(a >= q1 - 1.5 * iqr) & (a <= q3 + 1.5 * iqr)]
    assert s["whisker_low"] == inside.min() and s["whisker_high"] == inside.max()
    assert len(s["samples"]) == min(a.size, 2000) and set(s["samples"]) <= set(a.ravel().tolist())
    if kind == "cauchy":
        assert s["count_beyond_outer"] > 0  # heavy tails do produce far outliers


def _latents_dir(path, raw):
    path.mkdir(parents=True)
    np.save(path / "latents.npy", raw)
    LatentNormalizer.fit(raw, "standardize").save(path / "norm.npz")
    (path / "latents.json").write_text(json.dumps({"vae": "none", "latent_shape": list(raw.shape[1:])}))


def test_stats_data_cli(tmp_path):
    from lct.data.datasets import mnist_demo

    x, y = mnist_demo(32)
    write_dataset(tmp_path / "pix", x[:200], y[:200], {})
    raw = np.random.default_rng(0).standard_t(3, size=(50, 4, 8, 8)).astype(np.float32)  # heavy-tailed
    _latents_dir(tmp_path / "lat", raw)
    out = tmp_path / "stats" / "fig1_data.json"
    assert stats_main(["data", "--latents", str(tmp_path / "lat"), "--pixels", str(tmp_path / "pix"),
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    pix = x[:200].astype(np.float64) / 127.5 - 1
    assert res["pixel"]["median"] == np.percentile(pix, 50) and res["pixel"]["n"] == pix.size
    z = LatentNormalizer.fit(raw, "standardize").normalize(torch.from_numpy(raw)).numpy().astype(np.float64)
    assert res["latent"]["q3"] == pytest.approx(np.percentile(z, 75), rel=1e-6)
    assert res["latent"]["std"] == pytest.approx(0.5 * np.sqrt(49 / 50), rel=1e-3)  # per element std 0.5 with Bessel (50 latents)
    # --max-values: a seeded random subsample of the values
    assert stats_main(["data", "--latents", str(tmp_path / "lat"), "--pixels", str(tmp_path / "pix"),
                       "--max-values", "1000", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["latent"]["n"] == 1000


def test_stats_td_tiny_untrained_model(tmp_path):
    from lct.config import resolve_experiment
    from lct.method.precond import build_model
    from lct.method.schedules import karras_sigmas

    torch.set_num_threads(1)
    cfg = resolve_experiment("ilct", {"network": {"size": "tiny"}, "train": {"total_steps": 1}}, name="td")
    torch.manual_seed(0)
    model = build_model(cfg, 8, 4)
    raw = np.random.default_rng(0).normal(size=(40, 4, 8, 8)).astype(np.float32)
    _latents_dir(tmp_path / "lat", raw)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"config": cfg.to_dict(), "step": 1, "model": sd, "ema": {"0.99993": sd},
                "data": {"path": str(tmp_path / "lat"), "shape": [40, 4, 8, 8]}}, tmp_path / "final.pt")
    out = tmp_path / "td.json"
    assert stats_main(["td", "--checkpoint", str(tmp_path / "final.pt"), "--num-timesteps", "21",
                       "--num-samples", "6", "--batch-size", "3", "--seed", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["per_pair"]) == 20 and res["td"]["n"] == 20 * 6 * 4 * 8 * 8
    sig = karras_sigmas(21)
    assert res["sigmas"] == pytest.approx(sig.tolist()) and res["per_pair"][0]["t_lo"] == pytest.approx(0.002)

    # Recompute one pair by hand with the same x0 and z (same seeded draws as td_stats).
    from lct.data.datasets import load_training_data

    x, _ = load_training_data(tmp_path / "lat")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(40, generator=g)[:6]
    z = torch.randn(x[idx].shape, generator=g)
    model.eval()
    with torch.no_grad():
        i = 10
        t0, t1 = float(sig[i]), float(sig[i + 1])
        td = model(x[idx] + t1 * z, torch.full((6,), t1)) - model(x[idx] + t0 * z, torch.full((6,), t0))
    assert res["per_pair"][i]["median"] == pytest.approx(float(np.percentile(td.numpy().astype(np.float64), 50)),
                                                         abs=1e-5)
