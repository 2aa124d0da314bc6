# Paths, wildcard constraints and the one object the rules ask about the config. The logic (input
# lists, command arguments, targets, captions) is lct/wfrules.py, tested as plain Python; a rule
# names R.<method> as its input function or params (Snakemake passes wildcards / input / output).
from lct.wfrules import Rules, alternation

R = Rules(
    config
)  # checks every cross-reference and resolves every experiment, naming the key
RESULTS = R.results
RES = R.res
ENV = "../../envs/environment.yaml"  # relative to workflow/rules/*.smk
# The paper's seven tables, and table_cd (beyond the paper) where configured.
TABLE_NAMES = list(config["tables"])


wildcard_constraints:
    experiment=alternation(config["experiments"]),
    dataset=alternation(config["datasets"]),
    table=alternation(TABLE_NAMES),
    figure="fig1|fig2|fig3",
    nfe=r"\d+",
    vae=alternation([v for v, d in config["vaes"].items() if d["kind"] == "train"]),
    archive=r"[^/]+",
