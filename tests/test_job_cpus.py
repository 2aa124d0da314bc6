"""The CPUs a GPU job was given reach its threads; outside SLURM nothing changes."""

import os

import torch

from lct.infra.device import job_cpus, use_job_cpus
from lct.infra.memory import fit_batch, stage_table


def test_outside_slurm_threads_unchanged():
    before = torch.get_num_threads()
    env = {}
    assert use_job_cpus(1, env) == before and env == {}


def test_inside_slurm_threads_from_the_allocation():
    before = torch.get_num_threads()
    env = {"SLURM_JOB_ID": "7", "OMP_NUM_THREADS": "1"}  # Snakemake's threads of a GPU rule
    try:
        n = use_job_cpus(1, env)
        assert n == job_cpus() == len(os.sched_getaffinity(0))
        assert env["OMP_NUM_THREADS"] == str(n) and torch.get_num_threads() == n
        assert use_job_cpus(2 * n, env) == 1  # never below one thread per rank
    finally:
        torch.set_num_threads(before)


def test_fit_batch_on_cpu_is_the_request_and_table_says_what_each_card_does():
    assert fit_batch("decode_fp32", 250, "cpu") == 250
    rows = {r["stage"]: r for r in stage_table(158_355_972, 128, 1, "fp32", 0.5)}
    dec = rows["decode_fp32, batch 250"]
    assert 40 < dec["gb"] < 64 and dec["40GB"].startswith("sub-batches of") and dec["80GB"] == "fits"
    assert rows["inception, batch 250"]["40GB"] == "fits"
    assert rows["train, 4 GPU(s), 32 per GPU (fp32)"]["40GB"] == "fits"
    ctm = rows["train CTM, 4 GPU(s), 32 per GPU (fp32)"]  # three graphs per sample and two more weight copies
    assert ctm["40GB"] == "fits" and 1.5 < ctm["gb"] / rows["train, 4 GPU(s), 32 per GPU (fp32)"]["gb"] < 3


def test_estimate_prints_memory_per_stage(capsys):
    from lct.workflow.estimate import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "| decode_fp32, batch 250 | 53.2 | sub-batches of 150 | fits |" in out
    assert "| train, 4 GPU(s), 32 per GPU" in out


def test_training_and_encoding_keep_their_threads():
    """A run on the cluster must equal the same run elsewhere bit for bit (CPU reductions depend on threads)."""
    from lct.cli import JOB_COMMANDS

    assert "train" not in JOB_COMMANDS and "encode" not in JOB_COMMANDS and "evaluate" in JOB_COMMANDS
