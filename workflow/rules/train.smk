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
        resolved=experiment_json,
    run:
        write_experiment_config(params.resolved, output[0], log[0])


# Only final.pt is declared: checkpoints/ stay undeclared so a failed or preempted job never loses
# them, and rerunning the same command resumes. Several GPUs: torchrun inside one job. When the
# experiment's settings changed (its config differs from the run's), the old state is moved aside
# (runs/<e>/superseded-<time>/), never deleted, and training starts afresh.
rule train:
    input:
        unpack(train_inputs),
    output:
        f"{RESULTS}/runs/{{experiment}}/final.pt",
    log:
        f"{RESULTS}/logs/train/{{experiment}}.log",
    conda:
        ENV
    params:
        data=train_data_dir,
        run_dir=run_dir,
        res=RES,
    shell:
        # Settings changed since the last attempt: keep the old state aside, start afresh.
        "(if [ -f {params.run_dir}/config.yaml ] && ! cmp -s {input.config} {params.run_dir}/config.yaml; then "
        "old={params.run_dir}/superseded-$(date +%Y%m%d-%H%M%S); mkdir -p $old; "
        "for f in checkpoints snapshots config.yaml log.jsonl loss.png; do "
        "[ ! -e {params.run_dir}/$f ] || mv {params.run_dir}/$f $old/; done; "
        "echo lct workflow: settings changed, previous state moved to $old; fi; "
        "if [ {resources.gpu} -gt 1 ]; then "
        "torchrun --standalone --nproc_per_node {resources.gpu} -m lct.cli train "
        "--config {input.config} --data {params.data} --run-dir {params.run_dir} --resources {params.res} --quiet; "
        "else lct train --config {input.config} --data {params.data} --run-dir {params.run_dir} "
        "--resources {params.res} --quiet; "
        "fi) >> {log} 2>&1"


# The demo's metric: a small digit classifier whose features replace Inception.
rule train_classifier:
    input:
        classifier_images,
    output:
        classifier_path(),
    log:
        f"{RESULTS}/logs/train_classifier.log",
    conda:
        ENV
    params:
        data=classifier_data,
        steps=classifier_steps,
    shell:
        "lct train-classifier --data {params.data} --out {output} --steps {params.steps} "
        "--threads {threads} > {log} 2>&1"
