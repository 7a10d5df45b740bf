"""Where does MDGR win or lose? Per-example test metrics of finished compare.py runs, by group.

Loads the models of finished ``benchmarks/compare.py`` runs (neural: their best
checkpoint; closed-form: refitted with the hyper-parameters selected on validation;
:func:`mdgr_graph.bench.runner.load_finished_model`), scores every test example (paper
protocol: each window's AUC and Recall@50 against its candidates; leave-one-out: each
user's HR@10 and NDCG@10 over the whole catalogue) and groups them
(:mod:`mdgr_graph.bench.groups`) by

- **genres** (ml-1m-subset only): distinct genres among the history's items
  (``movies.dat``), a proxy for how many distinct interests the history holds;
- **span**: days between the history's first and last interaction;
- **popularity**: mean training popularity (log count) of the history's items;
- **history length** (leave-one-out): the items of the history the model reads.

Each grouping splits the test examples into tertiles; the table (written beside the
compare.py summary as `<summary>-per-user.md` and `.json`) gives every model's mean
metrics per tertile. ``--cross span:length`` (repeatable; names: genres, span,
popularity, length) adds the nine cells of one grouping's tertiles by another's, e.g. to
see whether a gain on long spans is a gain on long histories. Pass the same data and
training options as the compare.py invocation whose runs you want to analyse (they pick
the run files)::

    .venv/bin/python benchmarks/per_user.py --train-stride 25 --lr 2e-3 --epochs 40 \\
        --patience 5 --models mdgr,sasrec,itemknn,ease --seeds 0
    .venv/bin/python benchmarks/per_user.py --dataset amazon-beauty --protocol loo \\
        --loss ce --loo-train-targets all --dim 64 --mdgr-m 1 --lr 1e-3 --epochs 40 \\
        --patience 5 --models mdgr,ease,itemknn --seeds 0
"""

import argparse
import json
import sys
from pathlib import Path

from mdgr_graph.bench import groups, runner
from mdgr_graph.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def cross_pair(text: str) -> tuple[str, str]:
    """``"span:length"`` -> the two grouping names of :data:`groups.GROUPING_NAMES`."""
    parts = text.split(":")
    if len(parts) != 2 or len(set(parts)) != 2 or not set(parts) <= set(groups.GROUPING_NAMES):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give two different groupings as A:B, from "
            f"{', '.join(groups.GROUPING_NAMES)}")
    return groups.GROUPING_NAMES[parts[0]], groups.GROUPING_NAMES[parts[1]]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--cross", type=cross_pair, action="append", default=[], metavar="A:B",
                   help="also tabulate grouping A's tertiles by grouping B's (repeatable; "
                        f"names: {', '.join(groups.GROUPING_NAMES)})")
    own, rest = runner.split_wrapper_args(p, list(sys.argv[1:] if argv is None else argv),
                                          (), "", REPO)
    args = runner.parse_args(rest, REPO)
    lines, result = [], {}
    for seed in args.seeds:
        try:
            prepared = runner.load_data(args, seed)
            scores = {name: groups.per_example(
                runner.load_finished_model(name, seed, prepared, args), prepared,
                args.mask_seen) for name in args.models}
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        genres = None  # movies.dat describes ml-1m-subset's item ids only
        if args.dataset == "ml-1m-subset" and getattr(args, "path", None) is None:
            genres = groups.movie_genres(args.data_dir / "ml-1m-subset" / "movies.dat.gz",
                                         prepared)
        grouped = groups.groupings(prepared, genres)
        missing = sorted({g for pair in own.cross for g in pair} - set(grouped))
        if missing:
            print(f"error: --cross: no grouping {missing} for this data and protocol (there "
                  f"are {', '.join(grouped)})", file=sys.stderr)
            return 2
        seed_lines, seed_result = groups.tertile_tables(seed, scores, grouped, own.cross)
        lines += seed_lines
        if seed_result:
            result[str(seed)] = seed_result
    lines = groups.pooled_tables(result, args.models) + lines
    kind = "user" if args.protocol == "loo" else "window"
    text = f"# Per-{kind} test metrics by group\n" + "\n".join(lines) + "\n"
    base = runner.summary_path(args)
    atomic_write_text(base.with_name(base.name + "-per-user.md"), text)
    atomic_write_text(base.with_name(base.name + "-per-user.json"),
                      json.dumps(result, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
