# Paths, wildcard constraints and the one object the rules ask about the config. The logic (input
# lists, command arguments, targets, captions, site resources) is lct/workflow/rules.py, tested as plain
# Python; a rule names R.<method> as its input function or params (Snakemake passes wildcards).
from lct.workflow.rules import Rules, alternation
from lct.workflow.site import is_report_run

# Checks every cross-reference, resolves every experiment (ranges included), reads the site knobs;
# a bad value ends the run here in one line naming the key.
R = exit_on_config_error(lambda: Rules(config))
R.executing = lambda: workflow.executor_plugin is not None and not workflow.dryrun
if workflow.is_main_process and is_report_run(sys.argv[1:]):
    R.report_mode = (
        True  # a partial run's report: what exists, and a list of what is missing
    )
    config["report_status"] = R.report_status()
RESULTS = R.results  # results/<name>: runs, evaluations, tables, figures
DATA = R.data_root  # results/<data_from or name>: images, latents, reference statistics
RES = R.res
GPU_JOB = (
    R.gpu_job()
)  # partition, account, GPU model of GPU rules (config `site`, environment)
CPU_JOB = R.cpu_job()  # partition and account of CPU-only rules
ENV_GPU = "../../envs/gpu.yaml"  # per-rule conda envs (--sdm conda), relative to workflow/rules/*.smk
ENV_LIGHT = "../../envs/light.yaml"
# The paper's seven tables, and table_cd (beyond the paper) where configured.
TABLE_NAMES = list(config["tables"])


wildcard_constraints:
    experiment=alternation(config["experiments"]),
    dataset=alternation(config["datasets"]),
    table=alternation(TABLE_NAMES),
    figure="fig1|fig2|fig3",
    normalization="standardize|sd_scale",
    nfe=r"\d+",
    index=r"\d+",
    vae=alternation([v for v, d in config["vaes"].items() if d["kind"] == "train"]),
    archive=r"[^/]+",
