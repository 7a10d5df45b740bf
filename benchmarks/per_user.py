"""Where does MDGR win or lose? Per-window test metrics of finished compare.py runs, by group.

Loads the models of finished ``benchmarks/compare.py`` runs (neural: their best
checkpoint; closed-form: refitted with the hyper-parameters selected on validation;
:func:`mdgr_graph.bench.runner.load_finished_model`), scores every test window (paper
protocol) and groups the windows (:mod:`mdgr_graph.bench.groups`) by

- **genres**: distinct genres among the history's items (ml-1m-subset's ``movies.dat``),
  a proxy for how many distinct interests the history holds;
- **span**: days between the history's first and last interaction;
- **popularity**: mean training popularity (log count) of the history's items.

Each grouping splits the test windows into tertiles; the table (written beside the
compare.py summary as `<summary>-per-user.md` and `.json`) gives the mean test AUC and
Recall@50 of every model per tertile. Pass the same data and training options as the
compare.py invocation whose runs you want to analyse (they pick the run files)::

    .venv/bin/python benchmarks/per_user.py --train-stride 25 --lr 2e-3 --epochs 40 \\
        --patience 5 --models mdgr,sasrec,itemknn,ease --seeds 0
"""

import json
import sys
from pathlib import Path

from mdgr_graph.bench import groups, runner
from mdgr_graph.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    args = runner.parse_args(argv, REPO)
    if args.protocol != "paper":
        print("error: per_user.py analyses the paper protocol's test windows", file=sys.stderr)
        return 2
    lines, result = [], {}
    for seed in args.seeds:
        prepared = runner.load_data(args, seed)
        scores = {name: groups.per_window(
            runner.load_finished_model(name, seed, prepared, args), prepared)
            for name in args.models}
        genres = groups.movie_genres(args.data_dir / "ml-1m-subset" / "movies.dat.gz",
                                     prepared)
        seed_lines, seed_result = groups.tertile_tables(
            seed, scores, groups.groupings(prepared, genres))
        lines += seed_lines
        if seed_result:
            result[str(seed)] = seed_result
    lines = groups.pooled_tables(result, args.models) + lines
    text = "# Per-window test metrics by group\n" + "\n".join(lines) + "\n"
    base = runner.summary_path(args)
    atomic_write_text(base.with_name(base.name + "-per-user.md"), text)
    atomic_write_text(base.with_name(base.name + "-per-user.json"),
                      json.dumps(result, indent=2) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
