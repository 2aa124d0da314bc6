# Evaluate stage: reference statistics once per dataset, then one small JSON per (experiment, NFE).


rule ref_stats:
    input:
        unpack(ref_inputs),
    output:
        f"{RESULTS}/ref/{{dataset}}-{config['evaluation']['feature']}.npz",
    log:
        f"{RESULTS}/logs/ref_stats/{{dataset}}.log",
    conda:
        ENV
    params:
        data=images_dir,
        args=eval_args(),
        recall_num=config["evaluation"].get("recall_real_max", 200000),
    shell:
        "lct ref-stats --data {params.data} {params.args} --recall-num {params.recall_num} "
        "--out {output} > {log} 2>&1"


# Samples with per-image seeds 0..N-1, decoded by the VAE, scored against the reference.
rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        f"{RESULTS}/eval/{{experiment}}/nfe{{nfe}}.json",
    log:
        f"{RESULTS}/logs/evaluate/{{experiment}}/nfe{{nfe}}.log",
    conda:
        ENV
    params:
        data=train_data_dir,
        args=eval_args(),
        num_samples=config["evaluation"]["num_samples"],
        ema=config["evaluation"]["ema"],
        recall_k=config["evaluation"].get("recall_k", 3),
        fid_reference=fid_reference_arg,
    shell:
        "lct evaluate --checkpoint {input.checkpoint} --data {params.data} "
        "--experiment {wildcards.experiment} --nfe {wildcards.nfe} --num-samples {params.num_samples} "
        "--ema {params.ema} --ref {input.ref} {params.args} --recall-k {params.recall_k} "
        "{params.fid_reference} --out {output} > {log} 2>&1"


# Figure 3: FID / Recall over training, one JSON per EMA snapshot (runs/<e>/snapshots/ema-*.pt).
rule evaluate_snapshots:
    input:
        unpack(snapshot_inputs),
    output:
        directory(f"{RESULTS}/eval/{{experiment}}/snapshots"),
    log:
        f"{RESULTS}/logs/evaluate_snapshots/{{experiment}}.log",
    conda:
        ENV
    params:
        data=train_data_dir,
        run_dir=run_dir,
        args=eval_args(),
        num_samples=snapshot_num_samples,
        nfe=snapshot_nfe,
        ema=config["evaluation"]["ema"],
    shell:
        "(set -e; tmp={output}.tmp; mkdir -p $tmp; "
        "for ckpt in {params.run_dir}/snapshots/ema-*.pt; do "
        "[ -e $ckpt ] || {{ echo 'no snapshots in {params.run_dir}/snapshots: set train.snapshot_every' >&2; exit 1; }}; "
        "lct evaluate --checkpoint $ckpt --data {params.data} --experiment {wildcards.experiment} "
        "--nfe {params.nfe} --num-samples {params.num_samples} --ema {params.ema} --ref {input.ref} "
        "{params.args} --out $tmp/$(basename $ckpt .pt).json; done; "
        "mv $tmp {output}) > {log} 2>&1"


# Figure 1 (right): temporal-difference statistics of one model at N = num_timesteps.
rule stats_td:
    input:
        unpack(td_inputs),
    output:
        f"{RESULTS}/stats/td_{{experiment}}.json",
    log:
        f"{RESULTS}/logs/stats_td/{{experiment}}.log",
    conda:
        ENV
    params:
        data=train_data_dir,
        num_timesteps=fig1_num_timesteps,
    shell:
        "lct stats td --checkpoint {input.checkpoint} --data {params.data} "
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
        ENV
    params:
        data=train_data_dir,
        last_seed=last_grid_seed,
        ema=config["evaluation"]["ema"],
    shell:
        "lct sample --checkpoint {input.checkpoint} --data {params.data} --ema {params.ema} "
        "--nfe {wildcards.nfe} --seeds 0-{params.last_seed} --decode --out {output} > {log} 2>&1"
