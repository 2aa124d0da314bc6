# Train stage: one job per distinct experiment (table cells naming the same experiment share it).


# The experiment's resolved config (preset < defaults < overrides). Its params are the resolved
# config itself, so with the `params` rerun trigger only an experiment whose settings changed
# gets a new file, and only it and its dependants rerun.
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
# inside the one job. When the experiment's settings changed, `lct train --on-config-change
# supersede` moves the old state aside (runs/<e>/superseded-<time>/, never deleted) and starts afresh.
# Consistency distillation (experiments.<e>.teacher) also reads the teacher's final.pt; a retrained
# teacher changes distill.teacher_sha256, which lct train treats as changed settings.
rule train:
    input:
        unpack(R.train_inputs),
    output:
        f"{RESULTS}/runs/{{experiment}}/final.pt",
    log:
        f"{RESULTS}/logs/train/{{experiment}}.log",
    conda:
        ENV
    resources:
        gpu=0,  # the workflow profile sets the paper's 4; a site profile's --resources gpu caps it
    params:
        args=R.train_args,
    shell:
        "lct train --config {input.config} {params.args} --gpus {resources.gpu} "
        "--on-config-change supersede --quiet >> {log} 2>&1"


# The demo's metric: a small digit classifier whose features replace Inception.
rule train_classifier:
    input:
        R.classifier_images,
    output:
        R.classifier_path(),
    log:
        f"{RESULTS}/logs/train_classifier.log",
    conda:
        ENV
    params:
        args=R.classifier_args,
    shell:
        "lct train-classifier {params.args} --out {output} "
        "--threads {threads} > {log} 2>&1"
