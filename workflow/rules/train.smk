# Train stage: one job per distinct experiment (table cells naming the same experiment share it).


# The experiment's resolved config (preset < defaults < overrides), what `lct train` reads. Its params
# are the whole resolved config, so any edit rewrites the file (a local rule, instant); the training
# rule reads it as `ancient` and reruns only when a setting that changes the weights changed.
rule experiment_config:
    output:
        f"{RESULTS}/configs/{{experiment}}.yaml",
    log:
        f"{RESULTS}/logs/experiment_config/{{experiment}}.log",
    params:
        resolved=R.experiment_json,
    run:
        write_experiment(params.resolved, output[0], log[0])


# Only final.pt is declared: checkpoints/ stay undeclared so a failed or preempted job never loses
# them, and rerunning the same command resumes. Several GPUs: `lct train --gpus N` starts torchrun
# inside the one job. The params are the settings that change the weights, one per key ("train.lr=...");
# the config file and the weights marker are `ancient`, so bookkeeping edits (checkpoint/log cadence,
# workers, paths) and refetched weights plan no retraining. When a weight setting changed, `lct train
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
        **R.train_settings_params(),
        extra=R.train_extra_flags,
    shell:
        "python -m lct train --config {input.config} --data $(dirname {input.data}) --run-dir $(dirname {output}) "
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
