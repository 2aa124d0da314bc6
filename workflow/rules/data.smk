# Data stage: pretrained weights, datasets -> images.npy, the demo VAE, latents, Figure 1 data stats.


# On a login node with internet: every pretrained file under resources_dir, so compute nodes run offline.
rule fetch_weights:
    output:
        touch(R.fetch_marker()),
        R.fid_reference_downloads(),
    log:
        f"{RES}/logs/fetch_weights.log",
    retries: 0  # deterministic (checksums, sources): a resubmission fails the same way
    conda:
        ENV_GPU
    params:
        command=R.fetch_command(),
        flags=R.fetch_flags(),
        out=R.output_dir,
    shell:
        "python -m lct {params.command} --out {params.out} {params.flags} > {log} 2>&1"


# URL datasets (LSUN, CIFAR-10) are downloaded and checksum-verified here, on the login node
# (a local rule): compute nodes have no internet. prepare_data then finds the verified archive.
rule download_data:
    input:
        R.check_source,
    output:
        f"{DATA}/data/{{dataset}}/download/{{archive}}",
    log:
        f"{DATA}/logs/download_data/{{dataset}}-{{archive}}.log",
    retries: 0  # deterministic (checksums, sources): a resubmission fails the same way
    conda:
        ENV_GPU
    params:
        source=R.source_args,
        resolution=R.resolution,
        out=R.dataset_dir,
    shell:
        "python -m lct prepare-data --dataset {wildcards.dataset} {params.source} --resolution {params.resolution} "
        "--out {params.out} --download-only > {log} 2>&1"


rule prepare_data:
    input:
        R.prepare_inputs,
        R.check_source,
    output:
        f"{DATA}/data/{{dataset}}/images.npy",
    log:
        f"{DATA}/logs/prepare_data/{{dataset}}.log",
    retries: 0  # deterministic (checksums, sources): a resubmission fails the same way
    conda:
        ENV_GPU
    resources:
        **CPU_JOB,
    params:
        source=R.source_args,
        resolution=R.resolution,
        out=R.output_dir,
    shell:
        "python -m lct prepare-data --dataset {wildcards.dataset} {params.source} "
        "--resolution {params.resolution} --out {params.out} > {log} 2>&1"


# The demo's tiny AutoencoderKL (hub weights cannot be fetched offline).
rule train_vae:
    input:
        R.train_vae_images,
    output:
        directory(f"{RES}/{{vae}}"),
    log:
        f"{RESULTS}/logs/train_vae/{{vae}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        args=R.train_vae_args,
    shell:
        "python -m lct train-vae {params.args} --out {output} "
        "--threads {threads} > {log} 2>&1"


rule encode:
    input:
        unpack(R.encode_inputs),
    output:
        f"{DATA}/data/{{dataset}}/latents/latents.npy",
        f"{DATA}/data/{{dataset}}/latents/norm.npz",
    log:
        f"{DATA}/logs/encode/{{dataset}}.log",
    conda:
        ENV_GPU
    resources:
        **GPU_JOB,
    params:
        args=R.encode_args,
        data=R.images_dir,
        out=R.output_dir,
    shell:
        "python -m lct encode --data {params.data} {params.args} --out {params.out} > {log} 2>&1"


# Another normalization of the same latents for an experiment that asks for it (experiments.<e>.latents):
# a link to latents.npy, its latents.json, and norm.npz written last (light: a local rule).
rule latent_variant:
    input:
        f"{DATA}/data/{{dataset}}/latents/latents.npy",
    output:
        f"{DATA}/data/{{dataset}}/latents-{{normalization}}/norm.npz",
    log:
        f"{DATA}/logs/encode/{{dataset}}-{{normalization}}.log",
    conda:
        ENV_LIGHT
    params:
        out=R.output_dir,
    shell:
        "python -m lct encode --renormalize {wildcards.normalization} --data {input} --out {params.out} > {log} 2>&1"


# Figure 1 (left): box-and-whisker statistics of normalized latents vs pixels.
rule stats_data:
    input:
        unpack(R.fig1_data_inputs),
    output:
        f"{RESULTS}/stats/fig1_data.json",
    log:
        f"{RESULTS}/logs/stats_data.log",
    conda:
        ENV_GPU
    resources:
        **CPU_JOB,
    params:
        args=R.fig1_data_args,
    shell:
        "python -m lct stats data {params.args} --out {output} > {log} 2>&1"
