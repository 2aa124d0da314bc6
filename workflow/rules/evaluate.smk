# Evaluate stage: reference statistics once per dataset, then one small JSON per (experiment, NFE).


rule ref_stats:
    input:
        unpack(R.ref_inputs),
    output:
        f"{DATA}/ref/{{dataset}}-{config['evaluation']['feature']}.npz",
    log:
        f"{DATA}/logs/ref_stats/{{dataset}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        data=R.images_dir,
        args=R.ref_args(),
    shell:
        "python -m lct ref-stats --data {params.data} {params.args} --out {output} > {log} 2>&1"


# Samples with per-image seeds 0..N-1, decoded by the VAE, scored against the reference.
rule evaluate:
    input:
        unpack(R.evaluate_inputs),
    output:
        f"{RESULTS}/eval/{{experiment}}/nfe{{nfe}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}/nfe{{nfe}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        data=R.train_data_dir,
        args=R.evaluate_args,
    shell:
        "python -m lct evaluate --checkpoint {input.checkpoint} --data {params.data} "
        "--experiment {wildcards.experiment} --nfe {wildcards.nfe} --ref {input.ref} {params.args} "
        "--out {output} > {log} 2>&1"


# The 2-NFE intermediate index as the authors chose theirs (config `two_step_sweep`, lct/report/sweep.py):
# each candidate index scored with a short FID, the lowest picked (a local rule), and the full
# evaluation at it. The main tables keep each experiment's configured sample.two_step_index.
rule sweep_candidate:
    input:
        unpack(R.evaluate_inputs),
    output:
        f"{RESULTS}/eval/{{experiment}}/sweep/index{{index}}.json",
    log:
        f"{RESULTS}/logs/sweep_candidate/{{experiment}}/index{{index}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        data=R.train_data_dir,
        args=R.sweep_candidate_args,
    shell:
        "python -m lct evaluate --checkpoint {input.checkpoint} --data {params.data} "
        "--experiment {wildcards.experiment} --nfe 2 --ref {input.ref} {params.args} "
        "--out {output} > {log} 2>&1"


rule sweep_best:
    input:
        R.sweep_candidate_files,
    output:
        f"{RESULTS}/eval/{{experiment}}/sweep/best.json",
    log:
        f"{RESULTS}/logs/sweep_best/{{experiment}}.log",
    conda:
        ENV_LIGHT
    params:
        mode=R.sweep_mode(),
    shell:
        "python -m lct sweep best --mode {params.mode} --out {output} {input} > {log} 2>&1"


rule sweep_evaluate:
    input:
        unpack(R.sweep_evaluate_inputs),
    output:
        f"{RESULTS}/eval/{{experiment}}/sweep/best_nfe2.json",
    log:
        f"{RESULTS}/logs/sweep_evaluate/{{experiment}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        data=R.train_data_dir,
        args=R.evaluate_args,
    shell:
        "python -m lct evaluate --checkpoint {input.checkpoint} --data {params.data} "
        "--experiment {wildcards.experiment} --nfe 2 --ref {input.ref} {params.args} "
        "--sampling-file {input.best} --out {output} > {log} 2>&1"


# Figure 3: FID / Recall over training, one JSON per EMA snapshot (runs/<e>/snapshots/ema-*.pt).
rule evaluate_snapshots:
    input:
        unpack(R.evaluate_inputs),
    output:
        directory(f"{RESULTS}/eval/{{experiment}}/snapshots"),
    log:
        f"{RESULTS}/logs/evaluate_snapshots/{{experiment}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        data=R.train_data_dir,
        run_dir=R.run_dir,
        args=R.snapshot_args,
    shell:
        "(set -e; tmp={output}.tmp; mkdir -p $tmp; "
        "for ckpt in {params.run_dir}/snapshots/ema-*.pt; do "
        "[ -e $ckpt ] || {{ echo 'no snapshots in {params.run_dir}/snapshots: set train.snapshot_every' >&2; exit 1; }}; "
        "python -m lct evaluate --checkpoint $ckpt --data {params.data} --experiment {wildcards.experiment} "
        "--ref {input.ref} {params.args} --out $tmp/$(basename $ckpt .pt).json; done; "
        "mv $tmp {output}) > {log} 2>&1"


# Figure 1 (right): temporal-difference statistics of one model at N = num_timesteps.
rule stats_td:
    input:
        unpack(R.td_inputs),
    output:
        f"{RESULTS}/stats/td_{{experiment}}.json",
    log:
        f"{RESULTS}/logs/stats_td/{{experiment}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        data=R.train_data_dir,
        num_timesteps=R.fig1_num_timesteps,
    shell:
        "python -m lct stats td --checkpoint {input.checkpoint} --data {params.data} "
        "--num-timesteps {params.num_timesteps} --out {output} > {log} 2>&1"


# Uncurated samples for the sample-grid figures (seeds 0..grid^2-1), decoded to images.
rule sample:
    input:
        checkpoint=f"{RESULTS}/runs/{{experiment}}/final.pt",
    output:
        directory(f"{RESULTS}/samples/{{experiment}}/nfe{{nfe}}"),
    log:
        f"{RESULTS}/logs/sample/{{experiment}}/nfe{{nfe}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        data=R.train_data_dir,
        args=R.sample_args,
    shell:
        "python -m lct sample --checkpoint {input.checkpoint} --data {params.data} {params.args} "
        "--nfe {wildcards.nfe} --decode --out {output} > {log} 2>&1"
