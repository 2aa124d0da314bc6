"""The 2-NFE intermediate index chosen as the authors chose it: `snakemake ... two_step_sweep`.

The second step of two-step consistency sampling restarts from sigma = grid[two_step_index]
(`sample.two_step_index` of a `sample.two_step_grid`-point Karras grid). The paper does not state
the index; the authors' evaluation scripts try several per dataset (CelebA-HQ sLCT 400 / 440 / 460,
FFHQ iLCT 440, LSUN 420; docs/FIDELITY.md). The workflow's `two_step_sweep` section names the
candidates; each is scored with a short FID (`two_step_sweep.num_samples`, 5,000), `lct sweep
best` picks the lowest (the primary FID mode; a tie goes to the smaller index), and the full
evaluation (evaluation.num_samples) runs at that index. `lct sweep table` writes the table, beside
the published 2-NFE FID, its caption saying how the index was chosen.

Subcommands: `best` (candidates' eval JSONs -> best.json), `table` (-> tables/two_step_sweep.{csv,md}).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from lct.report.tables import _md, metric_info, read_published
from lct.report.inputs import load_workflow_config, strip_ext

TABLE = "two_step_sweep"


class SweepError(ValueError):
    """A candidate result that cannot be compared; the message names the file."""


def candidate(path: str | Path, mode: str) -> tuple[int, float, dict[str, Any]]:
    """(two_step_index, FID in `mode`, the eval JSON) of one candidate's `lct evaluate` result."""
    res = json.loads(Path(path).read_text())
    index = (res.get("sampling") or {}).get("two_step_index")
    fid = (res.get("fid") or {}).get(mode)
    if res.get("nfe") != 2 or index is None:
        raise SweepError(f"{path}: not a 2-NFE evaluation with a sample.two_step_index (nfe {res.get('nfe')})")
    if fid is None or not math.isfinite(fid):
        raise SweepError(f"{path}: no finite FID in mode {mode!r} (has {sorted(res.get('fid') or {})}); rerun "
                         "its sweep_candidate job")
    return int(index), float(fid), res


def pick_best(paths: list[str | Path], mode: str) -> dict[str, Any]:
    """The candidate with the lowest FID (ties: the smaller index), from one checkpoint's results."""
    if not paths:
        raise SweepError("no candidate results; set two_step_sweep.candidates")
    scored = [candidate(p, mode) for p in paths]
    digests = {r.get("checkpoint_sha256") for _, _, r in scored}
    sizes = {r.get("num_samples") for _, _, r in scored}
    if len(digests) > 1 or len(sizes) > 1:
        raise SweepError(f"candidates {[str(p) for p in paths]} come from different checkpoints or sample counts "
                         f"({len(digests)} checkpoints, sample counts {sorted(sizes)}); rerun the sweep")
    index, fid, res = min(scored, key=lambda s: (s[1], s[0]))
    return {"sampling": {"two_step_index": index}, "mode": mode, "fid": fid, "num_samples": res.get("num_samples"),
            "checkpoint_sha256": res.get("checkpoint_sha256"), "experiment": res.get("experiment"),
            "candidates": {str(i): f for i, f, _ in sorted(scored)}}


def published_two_step(cfg: dict[str, Any], published: list[dict[str, str]], experiment: str) -> float | None:
    """The published 2-NFE FID of the table cell an experiment fills, if a table names it at NFE 2."""
    for key, t in (cfg.get("tables") or {}).items():
        if t.get("published", "") is None:
            continue
        pub_id = str(t.get("published", key.removeprefix("table")))
        for row in t.get("rows") or []:
            if row.get("experiment") == experiment and int(row.get("nfe") or 0) == 2:
                for p in published:
                    if p["table"] == pub_id and p["model"] == row["model"] and p["nfe"] and float(p["nfe"]) == 2:
                        return float(p["fid"]) if p["fid"] else None
    return None


def build_table(cfg: dict[str, Any] | str | Path, published: str | Path, eval_dir: str | Path) -> dict[str, Any]:
    """Rows: each swept experiment's candidates, the chosen index and the full evaluation at it."""
    cfg = load_workflow_config(cfg)
    sweep = cfg[TABLE]
    m = metric_info(cfg)
    pub = read_published(published)
    eval_dir = Path(eval_dir)
    cands = [int(i) for i in sweep["candidates"]]
    cols = ["Experiment", *[f"{m['name']} {sweep['num_samples']:,} @ {i}" for i in cands], "chosen index",
            f"{m['name']} {m['primary']} (ours, chosen)", "FID (paper, 2 NFE)"]
    rows = []
    for e in sweep["experiments"]:
        best_file, full_file = eval_dir / e / "sweep" / "best.json", eval_dir / e / "sweep" / "best_nfe2.json"
        best = json.loads(best_file.read_text()) if best_file.is_file() else {}
        full = json.loads(full_file.read_text()) if full_file.is_file() else {}
        chosen = (best.get("sampling") or {}).get("two_step_index")
        ours = (full.get("fid") or {}).get(m["primary"])
        paper = published_two_step(cfg, pub, e) if m["comparable"] else None
        short = [(best.get("candidates") or {}).get(str(i)) for i in cands]
        cells = [e, *[("—" if f is None else f"{f:.2f}" + (" *" if i == chosen else "")) for i, f in zip(cands, short)],
                 "—" if chosen is None else str(chosen), "—" if ours is None else f"{ours:.2f}",
                 "n/r" if paper is None else f"{paper:.2f}"]
        rows.append({"cells": cells, "values": {"experiment": e, "chosen_index": chosen, "fid_chosen": ours,
                                                "num_samples": full.get("num_samples"), "fid_paper": paper,
                                                **{f"fid_short_{i}": f for i, f in zip(cands, short)}}})
    caption = (f"2-NFE sampling at an intermediate index chosen per experiment: each candidate index "
               f"({', '.join(map(str, cands))}) scored with a {sweep['num_samples']:,}-sample {m['name']}, the lowest "
               f"(*) evaluated on {cfg['evaluation']['num_samples']:,} samples, as the authors chose theirs "
               f"(their scripts try several per dataset); the main tables use sample.two_step_index as configured")
    footnotes = [f"{m['name']} {m['primary']}; — not computed yet; n/r: no published 2-NFE number for this cell."]
    if not m["comparable"]:
        footnotes.append(f"{m['name']} is not FID: the published column is not shown (not comparable).")
    return {"key": TABLE, "columns": cols, "rows": rows, "footnotes": footnotes, "caption": caption}


def write_table(t: dict[str, Any], out: str | Path) -> list[Path]:
    """<out>.csv and <out>.md, each to a temporary name, then renamed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in t["rows"] for k in r["values"]))
    paths = []
    for ext in ("csv", "md"):
        path = out.with_name(f"{out.name}.{ext}")
        tmp = path.with_name(path.name + ".tmp")
        if ext == "csv":
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows([{k: ("" if r["values"].get(k) is None else r["values"][k]) for k in fields}
                             for r in t["rows"]])
        else:
            tmp.write_text(_md(t))
        tmp.replace(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lct sweep", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("best", help="the candidate with the lowest FID -> a JSON for `lct evaluate --sampling-file`")
    b.add_argument("--mode", required=True, help="the FID mode that decides (the tables' primary mode)")
    b.add_argument("--out", required=True)
    b.add_argument("candidates", nargs="+", help="eval JSONs of one experiment at 2 NFE, one per index")
    t = sub.add_parser("table", help="tables/two_step_sweep.{csv,md}")
    t.add_argument("--config", required=True, help="the sweep's slice of the workflow config")
    t.add_argument("--published", required=True)
    t.add_argument("--eval-dir", required=True)
    t.add_argument("--out", required=True, help="output prefix")
    a = p.parse_args(argv)
    try:
        if a.cmd == "best":
            best = pick_best(a.candidates, a.mode)
            out = Path(a.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(json.dumps(best, indent=1))
            tmp.replace(out)
            print(f"lct sweep: {best['experiment']}: two_step_index {best['sampling']['two_step_index']} "
                  f"({best['mode']} {best['fid']:.3f}; candidates {best['candidates']})")
            return 0
        for path in write_table(build_table(a.config, a.published, a.eval_dir), strip_ext(a.out)):
            print(path)
        return 0
    except (SweepError, FileNotFoundError, KeyError) as e:
        print(f"lct sweep: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
