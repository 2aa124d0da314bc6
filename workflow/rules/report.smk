# Report stage: tables beside the published numbers, figures, sample grids.


# The slice of the workflow config one table or figure reads; rewritten only when that slice changes.
rule table_config:
    output:
        f"{RESULTS}/configs/tables/{{table}}.yaml",
    log:
        f"{RESULTS}/logs/table_config/{{table}}.log",
    params:
        content=R.table_slice_json,
    run:
        write_yaml(params.content, output[0], log[0])


rule figure_config:
    output:
        f"{RESULTS}/configs/figures/{{figure}}.yaml",
    log:
        f"{RESULTS}/logs/figure_config/{{figure}}.log",
    params:
        content=R.figure_slice_json,
    run:
        write_yaml(params.content, output[0], log[0])


# Reproduced rows from eval/<experiment>/nfe<k>.json; rows with experiment: null are marked with their reason.
rule table:
    input:
        unpack(R.table_inputs),
    output:
        report(
            f"{RESULTS}/tables/{{table}}.csv",
            caption="../report/caption.rst",
            category="Tables",
            subcategory="{table}",
        ),
        f"{RESULTS}/tables/{{table}}.md",
        f"{RESULTS}/tables/{{table}}.tex",
    log:
        f"{RESULTS}/logs/table/{{table}}.log",
    conda:
        ENV_LIGHT
    params:
        eval_dir=f"{RESULTS}/eval",
        out=R.output_prefix,
        caption=R.table_caption,
    shell:
        "python -m lct report table --table {wildcards.table} --config {input.config} --published {input.published} "
        "--eval-dir {params.eval_dir} --out {params.out} > {log} 2>&1"


# The two_step_sweep table: candidates' short FIDs, the chosen index, the full evaluation at it.
rule sweep_config:
    output:
        f"{RESULTS}/configs/tables/two_step_sweep.yaml",
    log:
        f"{RESULTS}/logs/table_config/two_step_sweep.log",
    params:
        content=R.sweep_slice_json,
    run:
        write_yaml(params.content, output[0], log[0])


rule sweep_table:
    input:
        unpack(R.sweep_table_inputs),
    output:
        report(
            f"{RESULTS}/tables/two_step_sweep.csv",
            caption="../report/caption.rst",
            category="Tables",
            subcategory="two_step_sweep",
        ),
        f"{RESULTS}/tables/two_step_sweep.md",
    log:
        f"{RESULTS}/logs/table/two_step_sweep.log",
    conda:
        ENV_LIGHT
    params:
        eval_dir=f"{RESULTS}/eval",
        out=R.output_prefix,
        caption=R.sweep_caption(),
    shell:
        "python -m lct sweep table --config {input.config} --published {input.published} "
        "--eval-dir {params.eval_dir} --out {params.out} > {log} 2>&1"


# One experiment's cells of every table citing it, beside the published numbers (the `cell` target).
rule cell_result:
    input:
        unpack(R.cell_inputs),
    output:
        report(
            f"{RESULTS}/cells/{{experiment}}.md",
            caption="../report/caption.rst",
            category="Cells",
            subcategory="{experiment}",
        ),
        f"{RESULTS}/cells/{{experiment}}.json",
    log:
        f"{RESULTS}/logs/cell_result/{{experiment}}.log",
    conda:
        ENV_LIGHT
    params:
        eval_dir=f"{RESULTS}/eval",
        out=R.output_prefix,
        caption=R.cell_caption,
    shell:
        "python -m lct report cell --experiment {wildcards.experiment} --table-configs {input.configs} "
        "--published {input.published} --eval-dir {params.eval_dir} --out {params.out} > {log} 2>&1"


rule fig1_figure:
    input:
        unpack(R.fig1_inputs),
    output:
        report(
            f"{RESULTS}/figures/fig1.png",
            caption="../report/caption.rst",
            category="Figures",
            subcategory="fig1",
        ),
        f"{RESULTS}/figures/fig1.pdf",
    log:
        f"{RESULTS}/logs/figures/fig1.log",
    conda:
        ENV_LIGHT
    params:
        out=R.output_prefix,
        caption=R.figure_caption("fig1"),
    shell:
        "python -m lct report figure --figure fig1 --data-stats {input.data} --td-latent {input.td_latent} "
        "--td-pixel {input.td_pixel} --out {params.out} > {log} 2>&1"


# The three robust losses and their derivatives: needs no data.
rule fig2_figure:
    output:
        report(
            f"{RESULTS}/figures/fig2.png",
            caption="../report/caption.rst",
            category="Figures",
            subcategory="fig2",
        ),
        f"{RESULTS}/figures/fig2.pdf",
    log:
        f"{RESULTS}/logs/figures/fig2.log",
    conda:
        ENV_LIGHT
    params:
        out=R.output_prefix,
        caption=R.figure_caption("fig2"),
    shell:
        "python -m lct report figure --figure fig2 --out {params.out} > {log} 2>&1"


rule fig3_figure:
    input:
        snapshots=R.fig3_inputs,
        config=f"{RESULTS}/configs/figures/fig3.yaml",
        data=R.fig3_data_file,
    output:
        report(
            f"{RESULTS}/figures/fig3.png",
            caption="../report/caption.rst",
            category="Figures",
            subcategory="fig3",
        ),
        f"{RESULTS}/figures/fig3.pdf",
    log:
        f"{RESULTS}/logs/figures/fig3.log",
    conda:
        ENV_LIGHT
    params:
        out=R.output_prefix,
        curriculum=R.fig3_curriculum,
        caption=R.figure_caption("fig3"),
    shell:
        "python -m lct report figure --figure fig3 --config {input.config} --snapshots {input.snapshots} "
        "--data-file {input.data} {params.curriculum} --out {params.out} > {log} 2>&1"


rule sample_grid:
    input:
        R.sample_dirs,
    output:
        report(
            f"{RESULTS}/figures/samples/{{experiment}}_nfe{{nfe}}.png",
            caption="../report/caption.rst",
            category="Samples",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "NFE": "{nfe}"},
        ),
    log:
        f"{RESULTS}/logs/figures/samples_{{experiment}}_nfe{{nfe}}.log",
    conda:
        ENV_LIGHT
    params:
        out=R.output_prefix,
        grid=R.samples_grid,
        caption=R.samples_caption,
    shell:
        "python -m lct report figure --figure grid --samples {input} --grid {params.grid} --out {params.out} > {log} 2>&1"
