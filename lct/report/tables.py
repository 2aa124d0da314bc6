"""Tables beside the published numbers (`lct report table`) and the report's other subcommands.

A table lists the paper's rows in the paper's order (`published_results.csv`): literature rows
with their published numbers, and each reproduced cell (`tables.<t>.rows` in the workflow config,
read from `eval/<experiment>/nfe<k>.json`) beside its published value and the difference. A cell
not yet computed is marked, never left out. With the demo's metric ("FD-digit", the Frechet
distance in digit-classifier features) the published FID is shown for reference only and no
difference is taken: the two numbers are not comparable.

Subcommands: `table`, `cell` (one experiment's rows, the `cell` target), `figure`, `samples`, `page` (the last three live in lct/report/figures.py).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from lct.report.inputs import load_workflow_config, strip_ext as _strip_ext

MISSING = "—"  # a reproduced cell not computed yet (footnoted)
NOT_REPORTED = "n/r"  # the paper gives no number (footnoted)


def read_published(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"published numbers {path} not found (config key `published`)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _num(s: Any) -> float | None:
    return None if s in (None, "") else float(s)


def _table_key(cfg: dict[str, Any], table: str) -> str:
    tables = cfg.get("tables") or {}
    for key in (table, f"table{table}"):
        if key in tables:
            return key
    raise KeyError(f"table {table!r} is not under `tables` in the workflow config; have {sorted(tables)}")


# What each reading of the paper (lct.config.READINGS) means, for the table captions.
READING_CAPTIONS = {
    "as_coded": "reading as_coded: the authors' code (mean-reduced distances, as-coded c, as-coded diffusion "
                "loss), which produced the published numbers",
    "paper_text": "reading paper_text: the paper's equations as printed (summed distances, eq. 11, eq. 9); "
                  "not expected to match the published numbers",
}


def metric_info(cfg: dict[str, Any]) -> dict[str, Any]:
    """Name, primary mode and extra modes of the Frechet metric the config's evaluation uses."""
    from lct.infra.suites import SUITES

    ev = cfg.get("evaluation") or {}
    feature = ev.get("feature", "inception")
    if feature not in SUITES:
        raise KeyError(f"evaluation.feature = {feature!r}; choose one of {sorted(SUITES)}")
    modes = list(ev.get("fid_modes") or SUITES[feature]["fd"])
    primary = "legacy_pytorch" if "legacy_pytorch" in modes else modes[0]
    name = SUITES[feature]["metric_name"]
    recall_feature = ev.get("recall_feature") or SUITES[feature]["recall"]
    return {"feature": feature, "name": name, "primary": primary, "extra": [m for m in modes if m != primary],
            "comparable": name == "FID", "recall_feature": recall_feature,
            "recall_comparable": name == "FID" and recall_feature == "vgg16_nvidia"}


def build_table(cfg: dict[str, Any] | str | Path, table: str, published: str | Path | list[dict[str, str]],
                eval_dir: str | Path) -> dict[str, Any]:
    """Rows (dicts) of one table plus its columns, footnotes and caption."""
    cfg = load_workflow_config(cfg)
    key = _table_key(cfg, table)
    tcfg = cfg["tables"][key]
    beyond = "published" in tcfg and tcfg["published"] is None  # a table beyond the paper (table_cd)
    pub_id = str(tcfg.get("published", key.removeprefix("table")))
    pub = []
    if not beyond:
        pub_rows = published if isinstance(published, list) else read_published(published)
        pub = [r for r in pub_rows if r["table"] == pub_id]
        if not pub:
            raise KeyError(f"no published rows for table {pub_id!r} (tables.{key}.published) in the published numbers")
    m = metric_info(cfg)
    eval_dir = Path(eval_dir)

    # Pair each configured cell with a published row of the same model (same NFE first, else in order).
    matched: dict[int, dict[str, Any]] = {}
    extra_cells = []
    for cell in tcfg.get("rows") or []:
        cands = [i for i, r in enumerate(pub) if r["model"] == cell["model"] and i not in matched and r["note"] != "literature"]
        exact = [i for i in cands if _num(pub[i]["nfe"]) == _num(cell.get("nfe"))]
        if exact or cands:
            matched[(exact or cands)[0]] = cell
        else:
            extra_cells.append(cell)

    notes: dict[str, str] = {}
    rows = []
    for i, r in enumerate(pub):
        rows.append(_row(r, matched.get(i), m, eval_dir, notes))
    for cell in extra_cells:
        rows.append(_row(None, cell, m, eval_dir, notes))

    fid_cols = [f"{m['name']} {m['primary']} (ours)" if m["comparable"] else f"{m['name']} (ours)"]
    fid_cols += [f"{m['name']} {mode} (ours)" for mode in m["extra"]]
    if m["comparable"]:
        cols = ["Group", "Model", "NFE", "FID (paper)", fid_cols[0], "Δ FID", *fid_cols[1:],
                "Recall (paper)", "Recall (ours)", "Δ Recall"]
    else:
        cols = ["Group", "Model", "NFE", "FID (paper, not comparable)", *fid_cols,
                "Recall (paper, not comparable)", f"Recall (ours, {m['feature']} features)"]
    footnotes = _metric_footnotes(m, beyond)
    if beyond:  # no published numbers: drop the paper and difference columns
        keep = [i for i, c in enumerate(cols) if "paper" not in c and not c.startswith("Δ")]
        cols = [cols[i] for i in keep]
        for r in rows:
            r["cells"] = [r["cells"][i] for i in keep]
        notes.pop(NOT_REPORTED, None)
    footnotes += [f"{k}: {v}" for k, v in notes.items()]
    for cell in tcfg.get("rows") or []:  # cells trained on another normalization of the latents
        variant = (cfg.get("experiments", {}).get(cell.get("experiment") or "") or {}).get("latents")
        if variant == "sd_scale":
            footnotes.append(f"{cell['model']}: trained, sampled and decoded on the latents x 0.18215 alone (no "
                             "standardization), as the authors' script for this cell.")
    reading = cfg.get("reading")
    if beyond:
        ds = tcfg.get("dataset", "")
        caption = f"{tcfg.get('title', key)} ({ds}): BEYOND THE PAPER, no published numbers to compare with"
    else:
        ds = tcfg.get("dataset", pub[0]["dataset"])
        where = ds if ds == pub[0]["dataset"] else f"{ds}; paper: {pub[0]['dataset']}"
        caption = f"Table {pub_id} ({where}): reproduced beside published"
    if reading in READING_CAPTIONS:
        caption += f"; {READING_CAPTIONS[reading]}"
    if cfg.get("random_weights_for_tests"):
        caption = "SMOKE TEST WITH RANDOM WEIGHTS, the numbers mean nothing. " + caption

    return {"key": key, "columns": cols, "rows": rows, "footnotes": footnotes, "caption": caption, "metric": m}


def _metric_footnotes(m: dict[str, Any], beyond: bool) -> list[str]:
    """What the table's metric columns are and whether they compare with the paper's."""
    footnotes: list[str] = []
    if not m["comparable"]:
        footnotes.append(f"{m['name']}: Frechet distance in {m['feature']} features on the demo dataset." + (
            "" if beyond else " The published FID and Recall (Inception / VGG16 features on the paper's dataset) are "
            "shown for reference only; they are not comparable, so no difference is given."))
    elif "clean" in m["extra"]:
        footnotes.append("FID legacy_pytorch: clean-fid's pytorch-fid mode, the authors' protocol; "
                         "FID clean: clean-fid's default mode, for reference." + ("" if beyond else " Δ = ours − paper."))
    if m["comparable"] and not m["recall_comparable"]:
        footnotes.append(f"Recall (ours) uses {m['recall_feature']} features, not NVIDIA's VGG16 of StyleGAN2-ADA's "
                         "pr50k3_full that the paper used: it is NOT comparable with the published Recall.")
    elif m["comparable"]:
        footnotes.append("Recall: StyleGAN2-ADA pr50k3_full (NVIDIA's VGG16, k = 3, all real images up to 200K "
                         "against the generated set), the authors' protocol.")
    return footnotes


def _row(pub: dict[str, str] | None, cell: dict[str, Any] | None, m: dict[str, Any], eval_dir: Path,
         notes: dict[str, str]) -> dict[str, Any]:
    """One output row: display cells (`cells`) and raw numbers (`values`) for the CSV."""
    fid_p = _num(pub["fid"]) if pub else None
    rec_p = _num(pub["recall"]) if pub else None
    literature = pub is not None and pub["note"] == "literature"
    nfe_p = pub["nfe"] if pub else ""
    v: dict[str, Any] = {"group": pub["group"] if pub else "", "model": (pub or cell)["model"],
                         "nfe_paper": nfe_p, "nfe": cell.get("nfe") if cell else (nfe_p if literature else None),
                         "fid_paper": fid_p, "recall_paper": rec_p, "experiment": cell.get("experiment") if cell else None,
                         "status": "literature" if literature else "computed"}
    ours: dict[str, float | None] = {mode: None for mode in [m["primary"], *m["extra"]]}
    rec_o = None
    if not literature:
        if cell is None:
            v["status"] = "not configured"
            notes[MISSING] = "not computed (no eval JSON yet, or the cell is not configured)"
        elif not cell.get("experiment"):
            v["status"] = "not run"
            notes[f"{MISSING} ({cell['model']})"] = f"not run: {cell.get('reason', 'no experiment configured')}"
        else:
            path = eval_dir / str(cell["experiment"]) / f"nfe{cell['nfe']}.json"
            if path.is_file():
                res = json.loads(path.read_text())
                ours = {mode: (res.get("fid") or {}).get(mode) for mode in ours}
                rec_o = res.get("recall")
                ref = (res.get("fid_reference") or {}).get(m["primary"]) or {}
                if m["comparable"] and ref.get("file"):
                    notes["FID reference"] = (f"the pytorch-fid statistics file {Path(ref['file']).name} "
                                              f"(sha256 {ref['sha256'][:12]}...), as the authors scored")
                elif m["comparable"] and ref:
                    notes["FID reference"] = (f"statistics of the dataset's {ref.get('images')} images "
                                              f"({ref.get('image_format')}), computed by lct ref-stats; the authors used "
                                              "precomputed pytorch-fid statistics files (evaluation.fid_reference)")
                v["num_samples"] = res.get("num_samples")
            else:
                v["status"] = "not computed"
                notes[MISSING] = "not computed (no eval JSON yet, or the cell is not configured)"
    for mode, val in ours.items():
        v[f"fid_{mode}"] = val
    v["recall"] = rec_o
    comparable = m["comparable"] and not literature
    v["fid_diff"] = ours[m["primary"]] - fid_p if comparable and None not in (ours[m["primary"]], fid_p) else None
    v["recall_diff"] = rec_o - rec_p if comparable and None not in (rec_o, rec_p) else None

    def paper(x: float | None) -> str:
        if x is None:
            notes[NOT_REPORTED] = "not reported in the paper"
            return NOT_REPORTED
        return f"{x:.2f}"

    def mine(x: float | None, fmt: str = "{:.2f}") -> str:
        return "" if literature else (MISSING if x is None else fmt.format(x))

    nfe = str(v["nfe"]) if v["nfe"] is not None else ""
    if pub and cell and _num(cell.get("nfe")) != _num(nfe_p):
        nfe = f"{cell.get('nfe')} (paper {nfe_p})"
    cells = [v["group"], v["model"], nfe or str(nfe_p), paper(fid_p), mine(ours[m["primary"]])]
    if m["comparable"]:
        cells.append(mine(v["fid_diff"], "{:+.2f}") if v["status"] == "computed" else ("" if literature else MISSING))
    cells += [mine(ours[mode]) for mode in m["extra"]]
    cells += [paper(rec_p), mine(rec_o)]
    if m["comparable"]:
        cells.append("" if literature else (MISSING if v["recall_diff"] is None else f"{v['recall_diff']:+.2f}"))
    if pub is None:
        cells[3] = NOT_REPORTED
        notes[NOT_REPORTED] = "not reported in the paper"
    v["cells"] = cells
    return v


def _md(t: dict[str, Any]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"**{t['caption']}**", "", "| " + " | ".join(t["columns"]) + " |", "|" + "---|" * len(t["columns"])]
    lines += ["| " + " | ".join(esc(c) for c in r["cells"]) + " |" for r in t["rows"]]
    lines += [""] + [f"- {f}" for f in t["footnotes"]]
    return "\n".join(lines) + "\n"


def _tex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("Δ", r"$\Delta$"), ("−", "$-$"), (MISSING, "---")):
        s = s.replace(a, b)
    return s


def _tex(t: dict[str, Any]) -> str:
    n = len(t["columns"])
    out = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex_escape(t['caption'])}}}", r"\small",
           r"\begin{tabular}{ll" + "r" * (n - 2) + "}", r"\toprule",
           " & ".join(_tex_escape(c) for c in t["columns"]) + r" \\", r"\midrule"]
    group = None
    for r in t["rows"]:
        if group is not None and r["group"] != group:
            out.append(r"\midrule")
        group = r["group"]
        out.append(" & ".join(_tex_escape(str(c)) for c in r["cells"]) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    out += [r"\par\footnotesize " + _tex_escape(f) for f in t["footnotes"]]
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"


CSV_FIELDS_FIXED = ["group", "model", "nfe_paper", "nfe", "experiment", "status", "fid_paper"]


def _csv_rows(t: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    m = t["metric"]
    fields = CSV_FIELDS_FIXED + [f"fid_{mode}" for mode in [m["primary"], *m["extra"]]] + \
        ["fid_diff", "recall_paper", "recall", "recall_diff", "metric_name"]
    rows = [{**{k: ("" if r.get(k) is None else r.get(k)) for k in fields}, "metric_name": m["name"]} for r in t["rows"]]
    return fields, rows


def write_table(t: dict[str, Any], out: str | Path) -> list[Path]:
    """Write <out>.csv, <out>.md, <out>.tex (each to a temporary name, then renamed)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields, rows = _csv_rows(t)
    paths = []
    for ext in ("csv", "md", "tex"):
        path = out.with_name(out.name + f".{ext}")
        tmp = path.with_name(path.name + ".tmp")
        if ext == "csv":
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
        else:
            tmp.write_text(_md(t) if ext == "md" else _tex(t))
        tmp.replace(path)
        paths.append(path)
    return paths


def make_table(config: dict[str, Any] | str | Path, table: str, published: str | Path, eval_dir: str | Path,
               out: str | Path) -> list[Path]:
    """Build one table and write its .csv, .md and .tex files."""
    return write_table(build_table(config, table, published, eval_dir), out)


def build_cell(table_configs: list[str | Path], experiment: str, published: str | Path,
               eval_dir: str | Path) -> dict[str, Any]:
    """One experiment's rows of every table citing it (each table's slice config), beside the published numbers."""
    pub_rows = read_published(published)
    out_rows, metric, footnotes = [], None, []
    for path in table_configs:
        cfg = load_workflow_config(path)
        for key in cfg["tables"]:
            t = build_table(cfg, key, pub_rows, eval_dir)
            metric = t["metric"]
            for r in t["rows"]:
                if r.get("experiment") == experiment:
                    out_rows.append({"table": key, "columns": t["columns"], **r})
            footnotes += [f for f in t["footnotes"] if f not in footnotes]
    if not out_rows:
        raise KeyError(f"no table row names experiment {experiment!r} in {[str(p) for p in table_configs]}")
    return {"experiment": experiment, "rows": out_rows, "metric": metric, "footnotes": footnotes}


def write_cell(c: dict[str, Any], out: str | Path) -> list[Path]:
    """<out>.json (raw numbers per table row) and <out>.md (the rows as in their tables), temp name then rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = [f"**Experiment `{c['experiment']}`: its cells beside the published numbers**", ""]
    for r in c["rows"]:
        lines += [f"{r['table']}:", "", "| " + " | ".join(r["columns"]) + " |", "|" + "---|" * len(r["columns"]),
                  "| " + " | ".join(esc(x) for x in r["cells"]) + " |", ""]
    lines += [f"- {f}" for f in c["footnotes"]]
    doc = {"experiment": c["experiment"], "metric": c["metric"],
           "rows": [{k: v for k, v in r.items() if k not in ("cells", "columns")} for r in c["rows"]]}
    paths = []
    for ext, text in (("json", json.dumps(doc, indent=2, allow_nan=False) + "\n"), ("md", "\n".join(lines) + "\n")):
        path = out.with_name(out.name + f".{ext}")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    from lct.report import figures

    p = argparse.ArgumentParser(prog="lct report", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="one table as .csv, .md, .tex")
    t.add_argument("--table", required=True, help="table key, e.g. table2a (or 2a)")
    t.add_argument("--workflow-config", "--config", dest="config", required=True, help="workflow config YAML")
    t.add_argument("--published", default=None, help="published_results.csv (default: the config's `published`)")
    t.add_argument("--eval-dir", required=True, help="results/<name>/eval")
    t.add_argument("--out", required=True, help="output prefix, e.g. results/<name>/tables/table2a")
    c = sub.add_parser("cell", help="one experiment's cells beside the published numbers (.json, .md)")
    c.add_argument("--experiment", required=True)
    c.add_argument("--table-configs", nargs="+", required=True, help="configs/tables/<t>.yaml of the tables citing it")
    c.add_argument("--published", required=True, help="published_results.csv")
    c.add_argument("--eval-dir", required=True, help="results/<name>/eval")
    c.add_argument("--out", required=True, help="output prefix, e.g. results/<name>/cells/<experiment>")
    figures.add_subparsers(sub)
    a = p.parse_args(argv)
    if a.cmd == "cell":
        for path in write_cell(build_cell(a.table_configs, a.experiment, a.published, a.eval_dir), _strip_ext(a.out)):
            print(path)
        return 0
    if a.cmd == "table":
        cfg = load_workflow_config(a.config)
        published = a.published or cfg.get("published") or "config/published_results.csv"
        for path in make_table(cfg, a.table, published, a.eval_dir, _strip_ext(a.out)):
            print(path)
        return 0
    return figures.run_subcommand(a)
