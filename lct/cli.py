"""The `lct` console script: `lct <command> [options]`; `lct <command> --help` for each."""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line help). Each module defines `main(argv: list[str] | None) -> int | None`.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch-weights": ("lct.weights.fetch", "download every pretrained file the pipeline needs (login node)"),
    "random-weights-for-tests": ("lct.weights.random_weights", "TESTS ONLY: fetch-weights' files with random weights"),
    "prepare-data": ("lct.data.datasets", "download or import a dataset into images.npy"),
    "train-vae": ("lct.data.vae", "train the tiny demo AutoencoderKL"),
    "encode": ("lct.data.encode", "encode a dataset into normalized VAE latents"),
    "stats": ("lct.run.stats", "Figure 1 box-and-whisker statistics (data, td)"),
    "train": ("lct.run.train", "train one experiment (resumable; torchrun for several GPUs)"),
    "sample": ("lct.run.sample", "generate samples with per-image seeds"),
    "train-classifier": ("lct.evaluation.classifier", "train the demo's digit classifier (its metric features)"),
    "ref-stats": ("lct.evaluation.reference", "reference feature statistics of a dataset", "ref_stats_main"),
    "evaluate": ("lct.evaluation.evaluate", "FID / Recall of one (experiment, NFE)"),
    "report": ("lct.report.tables", "tables and figures beside the published numbers"),
    "sweep": ("lct.report.sweep", "the 2-NFE intermediate index by a short FID per candidate (best, table)"),
    "estimate": ("lct.workflow.estimate", "GPU-hours per target; per experiment hours, job segments and retries"),
    "unet-params": ("lct.method.nn.params", "parameter count of the paper UNet for each norm"),
}

# GPU jobs whose CPU work (resize and JPEG pools, the Frechet distance's matrix square root) uses the
# job's CPUs (workflow/profiles/default: cpus_per_gpu); their GPU numbers do not depend on the CPU thread
# count. Training and encoding keep Snakemake's threads: on a CPU the thread count changes float
# reduction order, and a run on the cluster must equal the same run anywhere (tests/test_slurm.py); their
# CPU side is the OT solve on its own worker thread.
JOB_COMMANDS = {"sample", "ref-stats", "evaluate"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        for name, (_, help_text, *_rest) in COMMANDS.items():
            print(f"  {name:18s} {help_text}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"lct: unknown command {cmd!r}; run `lct --help` for the list", file=sys.stderr)
        return 2
    module_name, _, *entry = COMMANDS[cmd]
    if cmd in JOB_COMMANDS:  # in a SLURM job: the job's CPUs, not Snakemake's threads = 1 of a GPU rule
        import os

        from lct.infra.device import use_job_cpus

        use_job_cpus(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    fn = getattr(importlib.import_module(module_name), entry[0] if entry else "main")
    rc = fn(rest)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
