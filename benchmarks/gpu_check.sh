#!/usr/bin/env bash
# The GPU check: what only a GPU shows, in one run of at most ~8 minutes on one card.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # from the repository root, on a GPU node
#
# Prints: host synchronisations per training step (CUDA sync debug mode, 20 steps of the paper
# configuration through lct.run.train), peak memory per stage (benchmarks/memory.py), the three training
# rows and OT's share (benchmarks/train_step.py), a 5,000-image evaluation with per-stage times
# (benchmarks/evaluate.py) and the checkpoint write (benchmarks/checkpoint.py). JSON copies go to
# OUT_DIR (default: gpu_check/). Every network is the paper's architecture with random weights.
set -euo pipefail
out=${1:-gpu_check}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY' 2>&1 | tee "$out/device.txt"
import torch
print("device:", torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB,",
      "torch", torch.__version__, "CUDA", torch.version.cuda)
PY
echo "== host synchronisations per step (sync debug mode: warn), 20 steps, paper UNet, batch 128 =="
python - "$out" <<'PY' 2>&1 | tee "$out/syncs.txt"
import sys, tempfile, warnings
from pathlib import Path
import numpy as np, torch
from lct.config import resolve_experiment
from lct.run.train import train
from lct.data.vae import LatentNormalizer

tmp = Path(tempfile.mkdtemp())
d = tmp / "latents"; d.mkdir()
raw = np.random.default_rng(0).normal(size=(2048, 4, 32, 32)).astype(np.float32)
np.save(d / "latents.npy", raw); LatentNormalizer.fit(raw, "standardize").save(d / "norm.npz")
counts = {}
for steps in (10, 30):
    cfg = resolve_experiment("slct", {"train": {"total_steps": steps, "log_every": 1000, "checkpoint_every": 1000,
                                                "precision": "fp32", "compile": False}}, reading="as_coded", name="sync")
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        train(cfg, d, tmp / f"run{steps}", device="cuda", quiet=True)
    torch.cuda.set_sync_debug_mode(0)
    counts[steps] = [str(x.message).splitlines()[0] for x in w if "synchroniz" in str(x.message)]
per = (len(counts[30]) - len(counts[10])) / 20
print(f"synchronising calls per step: {per:.2f} (run of 30 steps: {len(counts[30])}, of 10: {len(counts[10])}; "
      f"set-up, final save and logging cancel out)")
PY
echo "== peak memory per stage =="
python benchmarks/memory.py --json "$out/memory.json"
echo "== training step: authors' settings, paper config, bf16 fast path; OT share; DDP on the visible GPUs =="
python benchmarks/train_step.py --steps 10 --ddp "$(python -c 'import torch; print(torch.cuda.device_count())')" \
    --json "$out/train_step.json"
echo "== evaluation: 5,000 images, per stage, projected to 50,000 against 30,000 reals =="
python benchmarks/evaluate.py --num 5000 --json "$out/evaluate.json"
echo "== checkpoint write (paper size) =="
python benchmarks/checkpoint.py --dir "${TMPDIR:-/tmp}"
