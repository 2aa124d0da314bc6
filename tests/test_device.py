"""lct.infra.device: a job given GPUs that cannot see CUDA stops naming the node; the CPU only on purpose."""

from __future__ import annotations

import socket

import pytest
import torch

from lct.infra.device import DeviceError, granted_gpus, pick_device

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def test_granted_gpus_reads_the_scheduler():
    assert granted_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}) == "CUDA_VISIBLE_DEVICES=0,1"
    assert granted_gpus({"SLURM_GPUS_ON_NODE": "4"}) == "SLURM_GPUS_ON_NODE=4"
    assert granted_gpus({}) is None and granted_gpus({"SLURM_GPUS_ON_NODE": "0", "CUDA_VISIBLE_DEVICES": ""}) is None


def test_a_gpu_job_without_cuda_is_refused_and_the_cpu_is_chosen_on_purpose():
    with pytest.raises(DeviceError, match=f"given GPUs .*{socket.gethostname()}"):
        pick_device("auto", {"CUDA_VISIBLE_DEVICES": "0"})
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        pick_device("cuda", {})
    assert pick_device("auto", {}) == torch.device("cpu")  # no GPU asked for: the CPU
    assert pick_device("auto", {"CUDA_VISIBLE_DEVICES": "0", "LCT_DEVICE": "cpu"}) == torch.device("cpu")
    assert pick_device("cpu", {"CUDA_VISIBLE_DEVICES": "0"}) == torch.device("cpu")
