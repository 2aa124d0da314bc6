"""STAND-IN evaluation for the SLURM drills: a deterministic number from the trained
state and the NFE, so tables from a SLURM run and a local run can be compared exactly."""
import argparse
import json
import os
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--final", type=Path, required=True)
p.add_argument("--nfe", type=int, required=True)
p.add_argument("--out", type=Path, required=True)
a = p.parse_args()
final = json.loads(a.final.read_text())
res = {"experiment": final["experiment"], "nfe": a.nfe, "metric": final["value"] / a.nfe,
       "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
a.out.parent.mkdir(parents=True, exist_ok=True)
tmp = a.out.with_suffix(".tmp")
tmp.write_text(json.dumps(res))
os.replace(tmp, a.out)
