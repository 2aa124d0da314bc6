# Train stage: one job per distinct experiment (table cells naming the same experiment share it).


# The experiment's resolved config (preset < defaults < overrides), what `lct train` reads. Its params
# are the settings that change the weights, one per key, so it is rewritten (and the run retrained)
# only when one of them changes, and Snakemake's reason names those keys ("train.lr=...").
rule experiment_config:
    output:
        f"{RESULTS}/configs/{{experiment}}.yaml",
    log:
        f"{RESULTS}/logs/experiment_config/{{experiment}}.log",
    params:
        **R.settings_params(),
    run:
        write_experiment(R.experiment_json(wildcards), output[0], log[0])


# Only final.pt is declared: checkpoints/ stay undeclared so a failed or preempted job never loses
# them, and rerunning the same command resumes. Several GPUs: `lct train --gpus N` starts torchrun
# inside the one job. Only a rewritten configs/<e>.yaml (a weight setting changed) retrains. The
# bookkeeping (checkpoint / log / snapshot cadence, workers, ...) is no input: the workflow writes
# configs/<e>.run.yaml when it starts (onstart, lct.workflow.rules.Rules.write_run_settings) and `lct train
# --run-settings` reads it, so bookkeeping edits, moved data or a moved clone plan no retraining (no
# path but that constant one is a param). When a weight setting changed, `lct train
# --on-config-change supersede` moves the old state aside (runs/<e>/superseded-<time>/) and starts afresh.
# A distillation (experiments.<e>.teacher) also reads the teacher's final.pt; a retrained teacher changes
# distill.teacher_sha256, which lct train treats as a changed setting. Runtime per attempt and retries
# come from `lct estimate` and the site's maximum walltime (site.max_runtime_h), with 50% margin.
rule train:
    input:
        unpack(R.train_inputs),
    output:
        f"{RESULTS}/runs/{{experiment}}/final.pt",
    log:
        f"{RESULTS}/logs/train/{{experiment}}.log",
    retries: R.train_retries()
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
        gpu=0,  # the workflow profile sets the paper's 4; a site profile's --resources gpu caps it
        runtime=R.train_runtime,
    params:
        run_settings=R.run_settings_path,
        extra=R.train_extra_flags,
    shell:
        "python -m lct train --config {input.config} --run-settings {params.run_settings} --data $(dirname {input.data}) --run-dir $(dirname {output}) "
        "{params.extra} --gpus {resources.gpu} --on-config-change supersede --quiet >> {log} 2>&1"


# The demo's metric: a small digit classifier whose features replace Inception.
rule train_classifier:
    input:
        R.classifier_images,
    output:
        R.classifier_path(),
    log:
        f"{RESULTS}/logs/train_classifier.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        args=R.classifier_args,
    shell:
        "python -m lct train-classifier {params.args} --out {output} "
        "--threads {threads} > {log} 2>&1"
