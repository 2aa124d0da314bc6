# Report stage: tables beside the published numbers, figures, sample grids.


# The merged workflow config, for the table and figure commands; rewritten only when it changes.
rule resolved_config:
    output:
        f"{RESULTS}/config.resolved.yaml",
    log:
        f"{RESULTS}/logs/resolved_config.log",
    params:
        merged=resolved_config_json(),
    run:
        write_resolved_config(params.merged, output[0], log[0])


# Reproduced rows from eval/<experiment>/nfe<k>.json; rows with experiment: null are marked with their reason.
rule table:
    input:
        unpack(table_inputs),
    output:
        f"{RESULTS}/tables/{{table}}.csv",
        f"{RESULTS}/tables/{{table}}.md",
        f"{RESULTS}/tables/{{table}}.tex",
    log:
        f"{RESULTS}/logs/table/{{table}}.log",
    conda:
        ENV
    params:
        eval_dir=f"{RESULTS}/eval",
        out=output_prefix,
    shell:
        "lct report table --table {wildcards.table} --config {input.config} --published {input.published} "
        "--eval-dir {params.eval_dir} --out {params.out} > {log} 2>&1"


rule fig1_figure:
    input:
        unpack(fig1_inputs),
    output:
        figure_files("fig1"),
    log:
        f"{RESULTS}/logs/figures/fig1.log",
    conda:
        ENV
    params:
        out=output_prefix,
    shell:
        "lct report figure --figure fig1 --data-stats {input.data} --td-latent {input.td_latent} "
        "--td-pixel {input.td_pixel} --out {params.out} > {log} 2>&1"


# The three robust losses and their derivatives: needs no data.
rule fig2_figure:
    output:
        figure_files("fig2"),
    log:
        f"{RESULTS}/logs/figures/fig2.log",
    conda:
        ENV
    params:
        out=output_prefix,
    shell:
        "lct report figure --figure fig2 --out {params.out} > {log} 2>&1"


rule fig3_figure:
    input:
        snapshots=fig3_inputs,
        config=f"{RESULTS}/config.resolved.yaml",
        data=fig3_data_file,
    output:
        figure_files("fig3"),
    log:
        f"{RESULTS}/logs/figures/fig3.log",
    conda:
        ENV
    params:
        out=output_prefix,
        curriculum=fig3_curriculum,
    shell:
        "lct report figure --figure fig3 --config {input.config} --snapshots {input.snapshots} "
        "--data-file {input.data} {params.curriculum} --out {params.out} > {log} 2>&1"


rule sample_grid:
    input:
        sample_dirs,
    output:
        f"{RESULTS}/figures/samples/{{experiment}}_nfe{{nfe}}.png",
    log:
        f"{RESULTS}/logs/figures/samples_{{experiment}}_nfe{{nfe}}.log",
    conda:
        ENV
    params:
        out=output_prefix,
        grid=samples_grid,
    shell:
        "lct report figure --figure grid --samples {input} --grid {params.grid} --out {params.out} > {log} 2>&1"
