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
        ENV
    params:
        flags=R.fetch_flags(),
        out=R.output_dir,
    shell:
        "lct fetch-weights --out {params.out} {params.flags} > {log} 2>&1"


# URL datasets (LSUN, CIFAR-10) are downloaded and checksum-verified here, on the login node
# (a local rule): compute nodes have no internet. prepare_data then finds the verified archive.
rule download_data:
    output:
        f"{RESULTS}/data/{{dataset}}/download/{{archive}}",
    log:
        f"{RESULTS}/logs/download_data/{{dataset}}-{{archive}}.log",
    retries: 0  # deterministic (checksums, sources): a resubmission fails the same way
    conda:
        ENV
    params:
        source=R.source_args,
        resolution=R.resolution,
        out=R.dataset_dir,
    shell:
        "lct prepare-data --dataset {wildcards.dataset} {params.source} --resolution {params.resolution} "
        "--out {params.out} --download-only > {log} 2>&1"


rule prepare_data:
    input:
        R.prepare_inputs,
    output:
        f"{RESULTS}/data/{{dataset}}/images.npy",
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    retries: 0  # deterministic (checksums, sources): a resubmission fails the same way
    conda:
        ENV
    params:
        source=R.source_args,
        resolution=R.resolution,
        out=R.output_dir,
    shell:
        "lct prepare-data --dataset {wildcards.dataset} {params.source} "
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
        ENV
    params:
        args=R.train_vae_args,
    shell:
        "lct train-vae {params.args} --out {output} " "--threads {threads} > {log} 2>&1"


rule encode:
    input:
        unpack(R.encode_inputs),
    output:
        f"{RESULTS}/data/{{dataset}}/latents/latents.npy",
        f"{RESULTS}/data/{{dataset}}/latents/norm.npz",
    log:
        f"{RESULTS}/logs/encode/{{dataset}}.log",
    conda:
        ENV
    params:
        args=R.encode_args,
        data=R.images_dir,
        out=R.output_dir,
    shell:
        "lct encode --data {params.data} {params.args} --out {params.out} > {log} 2>&1"


# Figure 1 (left): box-and-whisker statistics of normalized latents vs pixels.
rule stats_data:
    input:
        unpack(R.fig1_data_inputs),
    output:
        f"{RESULTS}/stats/fig1_data.json",
    log:
        f"{RESULTS}/logs/stats_data.log",
    conda:
        ENV
    params:
        args=R.fig1_data_args,
    shell:
        "lct stats data {params.args} --out {output} > {log} 2>&1"
