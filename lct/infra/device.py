"""Which device a command runs on, and the refusal when a job that was given GPUs cannot see CUDA.

`pick_device("auto")` is CUDA when visible, else the CPU, except inside a job that was granted GPUs
(SLURM_JOB_GPUS, SLURM_GPUS_ON_NODE or a non-empty CUDA_VISIBLE_DEVICES) where CUDA is not visible:
that is a broken node or a CPU build of PyTorch, and running a 50,000-sample evaluation on its CPU
would take days, so it stops at once naming the node. ``--device cpu`` (or LCT_DEVICE=cpu, which the
tests set on these GPU-less machines) runs on the CPU on purpose.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

import torch


class DeviceError(SystemExit):
    """Hardware asked for is not there; the message names the node and the fix (exits the command)."""


def granted_gpus(environ: Mapping[str, str] = os.environ) -> str | None:
    """How the scheduler gave this job GPUs (the variable and its value), or None."""
    for var in ("SLURM_JOB_GPUS", "SLURM_GPUS_ON_NODE", "CUDA_VISIBLE_DEVICES"):
        value = environ.get(var, "").strip()
        if var == "SLURM_GPUS_ON_NODE":
            if value.isdigit() and int(value) > 0:
                return f"{var}={value}"
        elif value and value not in ("-1", "NoDevFiles"):
            return f"{var}={value}"
    return None


def pick_device(name: str | None = "auto", environ: Mapping[str, str] = os.environ) -> torch.device:
    """`auto` (or None), `cpu`, `cuda`, `cuda:N`; $LCT_DEVICE replaces `auto`."""
    name = name or "auto"
    if name == "auto":
        name = environ.get("LCT_DEVICE") or "auto"
    if name == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if name == "auto" else name)
    host = socket.gethostname()
    if name != "auto":
        raise DeviceError(f"--device {name}: no CUDA device is visible on {host}; check the node's driver and "
                          "the job's GPU request, or pass --device cpu")
    granted = granted_gpus(environ)
    if granted:
        raise DeviceError(f"this job was given GPUs ({granted}) but CUDA is not visible on {host} (a broken node or "
                          "a CPU build of PyTorch); refusing to run on its CPU. LCT_DEVICE=cpu runs on the CPU on purpose")
    return torch.device("cpu")


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor's copy on `device` without a host synchronisation: through pinned memory, non-blocking.

    A plain `.to("cuda")` of pageable memory synchronises the stream before the copy (CUDA's rule for
    pageable transfers); a pinned source is queued like a kernel. The per-step draws of the objectives
    (timesteps, weights, masks, the OT permutation, the batch's indices) all come this way. On the CPU it
    is a copy (so the step's transfers are visible to tests/test_host_sync.py, which stands in for CUDA's
    sync debug mode there)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=True, copy=True)


def to_host_async(t: torch.Tensor) -> tuple[torch.Tensor, "torch.cuda.Event | None"]:
    """Start a device tensor's copy into pinned host memory; (the host tensor, an event to wait on before
    reading it, None on the CPU). The waiting is left to the reader (a worker thread), not the step."""
    if t.device.type != "cuda":
        return t.detach().clone(), None
    out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    out.copy_(t.detach(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return out, event


def job_cpus(environ: Mapping[str, str] = os.environ) -> int:
    """CPUs this process may use: its CPU affinity (SLURM confines a job to the cores it was given), else
    the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def use_job_cpus(ranks: int = 1, environ=os.environ) -> int:
    """Inside a SLURM job, give this process its share of the job's CPUs (torch's intra-op threads and
    the OMP/MKL/OpenBLAS variables that child libraries read): Snakemake sets them to the rule's
    `threads` (1 for GPU rules, whose CPUs come from cpus_per_gpu). Outside SLURM (a laptop, the demo,
    the tests) nothing changes. Returns the thread count in use."""
    if "SLURM_JOB_ID" not in environ:
        return torch.get_num_threads()
    n = max(1, job_cpus(environ) // max(1, ranks))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        environ[var] = str(n)
    torch.set_num_threads(n)
    return n
