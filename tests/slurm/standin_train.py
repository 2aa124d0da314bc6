"""STAND-IN trainer for the SLURM drills (not the method): a deterministic 'training'
that saves a checkpoint after every step, resumes from the latest one, and on SIGTERM /
SIGUSR1 saves and exits 1 -- the contract `lct train` follows. Each start is logged to
<run-dir>/log.jsonl with the step it resumed at, the SLURM job id, task count and GPUs."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the old checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--step-seconds", type=float, default=0.0)
    a = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if rank != 0:  # torchrun workers other than rank 0 only report themselves
        return 0
    ckpt_dir = a.run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / "state.json"
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"step": 0, "value": 0.0}
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGUSR1, on_signal)
    with open(a.run_dir / "log.jsonl", "a") as log:
        log.write(json.dumps({
            "event": "start", "step": state["step"], "time": time.time(), "world_size": world,
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_ntasks": os.environ.get("SLURM_NTASKS"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }) + "\n")
        log.flush()
        while state["step"] < a.steps:
            if stop["signal"]:
                log.write(json.dumps({"event": "stopped", "signal": stop["signal"], "step": state["step"]}) + "\n")
                return 1
            time.sleep(a.step_seconds)
            state = {"step": state["step"] + 1, "value": state["value"] + 1.0 / (state["step"] + 1)}
            _write_json(ckpt, state)
            log.write(json.dumps({"event": "step", "step": state["step"]}) + "\n")
            log.flush()
    _write_json(a.run_dir / "final.json", {"experiment": a.run_dir.name, **state})
    return 0


if __name__ == "__main__":
    sys.exit(main())
