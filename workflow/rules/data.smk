# Data stage: pretrained weights, datasets -> images.npy, the demo VAE, latents, Figure 1 data stats.


# On a login node with internet: every pretrained file under resources_dir, so compute nodes run offline.
rule fetch_weights:
    output:
        touch(fetch_marker()),
        fid_reference_downloads(),
    log:
        f"{RES}/logs/fetch_weights.log",
    conda:
        ENV
    params:
        flags=fetch_flags(),
        out=output_dir,
    shell:
        "lct fetch-weights --out {params.out} {params.flags} > {log} 2>&1"


# URL datasets (LSUN, CIFAR-10) are downloaded and checksum-verified here, on the login node
# (a local rule): compute nodes have no internet. prepare_data then finds the verified archive.
rule download_data:
    output:
        f"{RESULTS}/data/{{dataset}}/download/{{archive}}",
    log:
        f"{RESULTS}/logs/download_data/{{dataset}}-{{archive}}.log",
    conda:
        ENV
    params:
        source=source_args,
        resolution=resolution,
        out=dataset_dir,
    shell:
        "lct prepare-data --dataset {wildcards.dataset} {params.source} --resolution {params.resolution} "
        "--out {params.out} --download-only > {log} 2>&1"


rule prepare_data:
    input:
        prepare_inputs,
    output:
        f"{RESULTS}/data/{{dataset}}/images.npy",
    log:
        f"{RESULTS}/logs/prepare_data/{{dataset}}.log",
    conda:
        ENV
    params:
        source=source_args,
        resolution=resolution,
        out=output_dir,
    shell:
        "lct prepare-data --dataset {wildcards.dataset} {params.source} "
        "--resolution {params.resolution} --out {params.out} > {log} 2>&1"


# The demo's tiny AutoencoderKL (hub weights cannot be fetched offline).
rule train_vae:
    input:
        train_vae_images,
    output:
        directory(f"{RES}/{{vae}}"),
    log:
        f"{RESULTS}/logs/train_vae/{{vae}}.log",
    conda:
        ENV
    params:
        data=train_vae_data,
        args=train_vae_args,
    shell:
        "lct train-vae --data {params.data} --out {output} {params.args} "
        "--threads {threads} > {log} 2>&1"


rule encode:
    input:
        unpack(encode_inputs),
    output:
        f"{RESULTS}/data/{{dataset}}/latents/latents.npy",
        f"{RESULTS}/data/{{dataset}}/latents/norm.npz",
    log:
        f"{RESULTS}/logs/encode/{{dataset}}.log",
    conda:
        ENV
    params:
        vae=encode_vae,
        normalization=normalization,
        posterior=posterior_args,
        data=images_dir,
        out=output_dir,
    shell:
        "lct encode --data {params.data} --vae {params.vae} --normalization {params.normalization} "
        "{params.posterior} --out {params.out} > {log} 2>&1"


# Figure 1 (left): box-and-whisker statistics of normalized latents vs pixels.
rule stats_data:
    input:
        unpack(fig1_data_inputs),
    output:
        f"{RESULTS}/stats/fig1_data.json",
    log:
        f"{RESULTS}/logs/stats_data.log",
    conda:
        ENV
    params:
        dirs=fig1_dirs,
    shell:
        "lct stats data --latents {params.dirs[latents]} --pixels {params.dirs[pixels]} "
        "--out {output} > {log} 2>&1"
