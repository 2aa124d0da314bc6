"""The demo's metric network: a small CNN digit classifier trained on the demo dataset's labels.

Inception weights cannot be fetched offline, so the demo scores samples with the penultimate
features (128-d) of this classifier: "FD-digit" (the Frechet distance in these features, never
called FID) and Recall. `lct train-classifier --data data/mnist/ --out resources/digit-classifier.pt`
writes the weights and, beside them, `digit-classifier.json` with the held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitClassifier(nn.Module):
    """conv-conv-pool-conv-pool, adaptive pool to 7x7, fc to `feature_dim`, fc to classes."""

    def __init__(self, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),  # any input resolution (MNIST 28, demo 32)
        )
        self.fc = nn.Linear(2 * width * 49, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 1, H, W] in [0, 1] -> penultimate features [B, feature_dim]."""
        return F.relu(self.fc(torch.flatten(self.body((x - 0.5) / 0.5), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, 1, H, W] in [0, 1] (channels averaged to gray)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255
    return x.mean(dim=-1, keepdim=True).permute(0, 3, 1, 2).contiguous()


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    steps: int = 600,
    batch_size: int = 128,
    holdout: float = 0.1,
    seed: int = 0,
    lr: float = 2e-3,
    width: int = 32,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train on all but a held-out share of (images, labels); return the model and its accuracy."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(images), generator=gen).numpy()
    n_val = max(1, int(round(len(images) * holdout)))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    x_all = _to_input(np.asarray(images))
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    num_classes = int(y_all.max()) + 1
    with torch.random.fork_rng(devices=[]):  # injected seed: the same weights on every run
        torch.manual_seed(seed)
        model = DigitClassifier(num_classes=num_classes, width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0 = time.time()
    model.train()
    for step in range(steps):
        idx = torch.from_numpy(train_idx)[torch.randint(len(train_idx), (batch_size,), generator=gen)]
        loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_all[val_idx[i : i + 1024]]).argmax(1) for i in range(0, n_val, 1024)])
    acc = float((pred == y_all[val_idx]).float().mean())
    info = {
        "heldout_accuracy": acc, "heldout_count": int(n_val), "train_count": int(len(train_idx)),
        "steps": steps, "batch_size": batch_size, "seed": seed, "final_loss": float(loss.detach()),
        "train_time_s": round(time.time() - t0, 2), "num_classes": num_classes, "width": width,
        "resolution": int(images.shape[1]),
    }
    return model, info


def save_classifier(model: DigitClassifier, info: dict[str, Any], out: str | Path) -> None:
    """Write weights (+ meta) to `out` and the info JSON beside it, each atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save({"state_dict": model.state_dict(), "meta": info}, tmp)
    tmp.replace(out)
    js = out.with_suffix(".json")
    tmp_js = js.with_name(js.name + ".tmp")
    tmp_js.write_text(json.dumps(info, indent=2) + "\n")
    tmp_js.replace(js)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[DigitClassifier, dict[str, Any]]:
    """Load a classifier written by `save_classifier`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"digit classifier {path} not found; run `lct train-classifier --data data/<ds>/ --out {path}`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["meta"]
    model = DigitClassifier(num_classes=int(meta["num_classes"]), width=int(meta["width"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device).eval(), meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lct train-classifier", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="dataset dir with images.npy and labels.npy")
    p.add_argument("--out", required=True, help="output .pt (a .json with the held-out accuracy is written beside it)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    data = Path(a.data)
    for f in ("images.npy", "labels.npy"):
        if not (data / f).is_file():
            raise SystemExit(f"lct train-classifier: {data / f} not found; the digit classifier needs a labelled dataset "
                             f"(run `lct prepare-data` for the demo dataset)")
    images = np.load(data / "images.npy")
    labels = np.load(data / "labels.npy")
    model, info = train_classifier(images, labels, steps=a.steps, batch_size=a.batch_size, seed=a.seed)
    info["data"] = str(data)
    save_classifier(model, info, a.out)
    print(f"digit classifier: held-out accuracy {info['heldout_accuracy']:.4f} on {info['heldout_count']} images -> {a.out}")
    return 0
