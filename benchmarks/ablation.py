"""Table 3: MDGR against its ablations (-weights, -dynamic graph clustering, -position/time).

Runs ``benchmarks/compare.py`` (:mod:`mdgr_graph.bench.runner`) for MDGR and its variants
with the options given (finished runs are skipped, unfinished ones resume from their
checkpoints; the full ``mdgr`` runs are the ones of Table 2), then writes
``<summary>-ablation.json`` and ``-ablation.md`` beside the compare.py summaries: mean ±
std of the test metrics over the seeds that finished, the difference to the full model,
and the paper's MovieLens figures for reference.

=========  ==============================================  ====================
variant    what is removed                                 paper's label
=========  ==============================================  ====================
mdgr-w     interest weights (all interests weigh the same)  -Weight
mdgr-dgc   dynamic graph clustering (Ward on the encoder)   -DGC
mdgr-pt    position and time encodings                      -PT
mdgr-p     position encoding                                -P
mdgr-t     time encoding                                    -T
=========  ==============================================  ====================

The -DGC row uses the runs of ``mip``: ``build_model("mip")`` is the ``mdgr-dgc`` variant
with the same options (the paper's Table 2 MIP row equals its Table 3 -DGC row), so the
Table 2 runs serve both tables instead of training the same model twice under two names.

``--only-finished`` tabulates existing runs without training. Example::

    .venv/bin/python benchmarks/ablation.py --train-stride 25 --lr 2e-3 --epochs 40 \\
        --patience 5 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from mdgr_graph.bench import runner
from mdgr_graph.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]

#: Variant, what it removes (Table 3's "Ablation" column), in the paper's row order.
ABLATIONS: tuple[tuple[str, str], ...] = (
    ("mdgr-w", "-Weight"),
    ("mdgr-dgc", "-DGC"),
    ("mdgr-pt", "-PT"),
    ("mdgr-p", "-P"),
    ("mdgr-t", "-T"),
    ("mdgr", "ALL"),
)

#: Variants whose runs are those of another model name that builds the same model.
RUNS_OF: dict[str, str] = {"mdgr-dgc": "mip"}

#: Table 3 of the paper, MovieLens columns (AUC, Recall@50, in %), for reference only:
#: the paper's MovieLens is the full ML-1M with its own split; numbers are not comparable.
PAPER_MOVIELENS = {"mdgr-w": (88.49, 87.61), "mdgr-dgc": (92.32, 92.97),
                   "mdgr-pt": (92.61, 92.21), "mdgr-p": (93.96, 93.19),
                   "mdgr-t": (90.01, 89.31), "mdgr": (96.16, 95.59)}


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--variants", default=",".join(name for name, _ in ABLATIONS),
                   help="comma-separated, from: " + ", ".join(name for name, _ in ABLATIONS))
    p.add_argument("--only-finished", action="store_true",
                   help="tabulate the finished runs only; train nothing")
    own, rest = runner.split_wrapper_args(p, argv, ("--models",),
                                          "--models is set by ablation.py (use --variants)",
                                          REPO)
    own.variants = [v.strip() for v in own.variants.split(",") if v.strip()]
    known = dict(ABLATIONS)
    unknown = sorted(set(own.variants) - set(known))
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(known)}")
    if "mdgr" not in own.variants:
        own.variants.append("mdgr")  # the reference row
    return own, rest


def table(args: argparse.Namespace, variants: list[str]) -> dict[str, Any]:
    """Mean/std of the finished runs of every variant and the difference to ``mdgr``."""
    keys = runner.REPORTED[args.protocol]
    rows = []
    for name, label in ABLATIONS:
        if name not in variants:
            continue
        run_name = RUNS_OF.get(name, name)
        runs = [r for seed in args.seeds
                if (r := runner.finished_run(run_name, seed, args))]
        row: dict[str, Any] = {"model": name, "ablation": label, "runs_of": run_name,
                               "seeds": [r["seed"] for r in runs],
                               "epochs": [r["epochs"] for r in runs],
                               "cut": [runner.cut_by_budget(r) for r in runs]}
        for col, key in keys:
            values = [r["test"][key] for r in runs]
            row[col] = {"per_seed": values,
                        "mean": statistics.fmean(values) if values else None,
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0}
        if name in PAPER_MOVIELENS and args.protocol == "paper":
            row["paper_movielens"] = dict(zip([c for c, _ in keys], PAPER_MOVIELENS[name],
                                              strict=False))
        rows.append(row)
    full = next((r for r in rows if r["model"] == "mdgr"), None)
    for row in rows:
        for col, _ in keys:
            both = full is not None and row[col]["mean"] is not None \
                and full[col]["mean"] is not None
            row[col]["minus_full"] = row[col]["mean"] - full[col]["mean"] if both else None
    return {"dataset": args.dataset, "protocol": args.protocol,
            "environment": runner.environment(args), "rows": rows}


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    keys = runner.REPORTED[args.protocol]
    env = result["environment"]
    head = ["variant", "ablation", *[f"test {c}" for c, _ in keys],
            *[f"{c} − MDGR" for c, _ in keys], "seeds", "epochs run"]
    if args.protocol == "paper":
        head.append("paper (MovieLens) AUC / R@50")
    lines = [
        f"# Table 3: ablations, {result['dataset']}, {result['protocol']} protocol",
        "",
        f"Mean ± standard deviation of the test metrics over the finished seeds; "
        f"\"− MDGR\" is the difference of means to the full model (negative: the removed "
        f"part helps). {env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}. "
        f"The paper's figures are its full MovieLens-1M (not this subset, not comparable). "
        f"Generated by `benchmarks/ablation.py` (`{env['command']}`).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in result["rows"]:
        name, run_name = row["model"], row["runs_of"]
        cells = [name if run_name == name else f"{name} (runs of {run_name})", row["ablation"]]
        for col, _ in keys:
            m = row[col]["mean"]
            cells.append("—" if m is None else f"{m:.4f} ± {row[col]['std']:.4f}")
        for col, _ in keys:
            d = row[col]["minus_full"]
            cells.append("—" if d is None or row["model"] == "mdgr" else f"{d:+.4f}")
        cells.append(",".join(map(str, row["seeds"])) or "none")
        cells.append(runner.epochs_cell(row) or "-")
        if args.protocol == "paper":
            paper = PAPER_MOVIELENS.get(row["model"])
            cells.append(f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "")
        lines.append("| " + " | ".join(cells) + " |")
    if any(any(row["cut"]) for row in result["rows"]):
        lines += ["", runner.CUT_NOTE]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    own, rest = split_args(list(sys.argv[1:] if argv is None else argv))
    argv_c = [*rest, "--models", ",".join(RUNS_OF.get(v, v) for v in own.variants)]
    if not own.only_finished:
        status = runner.main(argv_c, REPO)
        if status != 0:
            return status
    args = runner.parse_args(argv_c, REPO)
    result = table(args, own.variants)
    base = runner.summary_path(args)
    atomic_write_text(base.with_name(f"{base.name}-ablation.json"),
                      json.dumps(result, indent=2) + "\n")
    text = markdown(result, args)
    atomic_write_text(base.with_name(f"{base.name}-ablation.md"), text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
