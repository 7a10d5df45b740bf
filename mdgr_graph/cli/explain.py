"""Draw what a trained MDGR learned for one user: interest sub-graphs and weights over time.

The command line of ``mdgr-explain`` and ``examples/explain_user.py`` (needs the ``viz``
extra: matplotlib and networkx). Reads a run directory written by ``mdgr-train --out DIR``
(its ``args.json`` and ``best.pt``), takes one user's most recent items and writes:

- ``<prefix>-graphs.png``: the interest sub-graph of every DynamicClusterConv iteration
  (nodes coloured by cluster, edge width by weight, titles with ``--titles``);
- ``<prefix>-weights.png``: the interest weights after each step of the user's history,
  interests tracked over time by the similarity of their vectors;
- ``<prefix>-interests.json``: each final interest's weight and items.

Example::

    mdgr-explain --run runs/ml1m --user 10 \\
        --titles ../shared/data/ml-1m-subset/movies.dat.gz --out-dir runs/ml1m/explain
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from mdgr_graph.cli.checks import writable_problem
from mdgr_graph.cli.train import load_run
from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.data.protocols import SPLIT_NAMES
from mdgr_graph.data.titles import item_labels, read_movielens_titles
from mdgr_graph.io import atomic_write_bytes, atomic_write_text
from mdgr_graph.models.mdgr import MDGR

try:
    import matplotlib.pyplot as plt

    from mdgr_graph.viz import (
        draw_interest_graphs,
        interest_weights_over_time,
        plot_interest_weights,
        trace_interests,
    )
except ImportError as exc:  # pragma: no cover - only without the viz extra
    raise ImportError("mdgr-explain draws with matplotlib and networkx: "
                      "pip install 'mdgr_graph[viz]'") from exc

#: ``--dpi`` above this makes pictures of hundreds of megapixels (matplotlib then fails
#: to allocate them); 300-600 is print quality.
MAX_DPI = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--run", type=Path, required=True,
                        help="the --out directory of a finished mdgr-train run of an MDGR "
                             "model (args.json, best.pt)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="weights to load instead of RUN/best.pt")
    parser.add_argument("--user", default=None,
                        help="raw user id as in the log (default: the first test user)")
    parser.add_argument("--titles", type=Path, default=None,
                        help="MovieLens movies.dat(.gz) ('id::title::genres') for item titles")
    parser.add_argument("--window", type=int, default=None,
                        help="items the model sees (default: the model's max_len)")
    parser.add_argument("--step", type=int, default=1,
                        help="weights over time: positions between consecutive steps")
    parser.add_argument("--x-axis", choices=["interaction", "days"], default="interaction",
                        help="weights over time: x axis")
    parser.add_argument("--out-dir", type=Path, default=Path("explain"),
                        help="where the PNG and JSON files go")
    parser.add_argument("--prefix", default=None, help="file name prefix (default: user<ID>)")
    parser.add_argument("--dpi", type=int, default=130)
    args = parser.parse_args(argv)
    if args.step < 1:
        parser.error(f"--step must be >= 1, got {args.step}")
    if not 1 <= args.dpi <= MAX_DPI:
        parser.error(f"--dpi must be in 1..{MAX_DPI}, got {args.dpi}")
    if args.prefix is not None and (not args.prefix or any(c in args.prefix for c in "/\\\0")
                                    or args.prefix in (".", "..")):
        parser.error(f"--prefix must be a file name prefix without '/', got {args.prefix!r} "
                     "(choose the folder with --out-dir)")
    return args


def user_history(prepared: PreparedDataset, user: str | None) -> tuple[str, np.ndarray,
                                                                          np.ndarray]:
    """``(raw user id, items [L], timestamps [L])`` of ``user`` (default: first test user)."""
    a = prepared.arrays
    raw_ids = a["user_ids"].astype(str)
    if user is None:
        if prepared.protocol == "paper":
            test_rows = np.flatnonzero(a["window_split"] == SPLIT_NAMES.index("test"))
            index = int(a["window_user"][test_rows[0]]) if len(test_rows) else 0
        else:
            index = 0
    else:
        found = np.flatnonzero(raw_ids == str(user))
        if not len(found):
            raise ValueError(f"unknown user {user!r}: not in the prepared log (ids as in the "
                             f"file, e.g. {', '.join(raw_ids[:3])})")
        index = int(found[0])
    start, end = a["seq_ptr"][index], a["seq_ptr"][index + 1]
    return str(raw_ids[index]), a["seq_items"][start:end], a["seq_time"][start:end]


def save_figure(fig, path: Path, dpi: int) -> None:
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_args, prepared, model = load_run(args.run, args.checkpoint)
        if not isinstance(model, MDGR):
            raise ValueError(f"{args.run} trained {run_args.model!r}; mdgr-explain draws "
                             "MDGR models (mdgr and its variants)")
        if model.candidate_mode:
            raise ValueError(f"{args.run} trained MDGR with --query candidate, whose graphs "
                             "and interests differ per candidate item; mdgr-explain draws "
                             "last-item runs (--query last)")
        user, items, stamps = user_history(prepared, args.user)
        titles = read_movielens_titles(args.titles) if args.titles else None
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    labels = item_labels(prepared.arrays["item_ids"], titles)
    window = model.max_len if args.window is None else args.window
    if not 1 <= window <= model.max_len:
        print(f"error: --window must be in 1..{model.max_len}", file=sys.stderr)
        return 2
    prefix = args.prefix or f"user{user}"
    for name in ("-graphs.png", "-weights.png", "-interests.json"):  # before any drawing
        if problem := writable_problem(args.out_dir / f"{prefix}{name}", "--out-dir", False):
            print(f"error: {problem}", file=sys.stderr)
            return 2
    days = (stamps - stamps[0]) / 86400.0

    recent = slice(max(0, len(items) - window), len(items))
    recent_days = days[recent] - days[recent][0]
    trace = trace_interests(model, torch.from_numpy(items[recent]),
                            torch.from_numpy(recent_days).float())
    paths = []
    if trace.graphs:
        fig = draw_interest_graphs(
            trace, labels, title=f"user {user}: interest sub-graphs of the last "
                                 f"{len(trace.items)} items")
        paths.append(args.out_dir / f"{prefix}-graphs.png")
        save_figure(fig, paths[-1], args.dpi)
    end, day, weight = interest_weights_over_time(model, torch.from_numpy(items),
                                                  torch.from_numpy(days), window, args.step)
    fig = plot_interest_weights(
        day, weight, position=end if args.x_axis == "interaction" else None,
        title=f"user {user}: interest weights over {len(items)} interactions "
              f"({days[-1]:.0f} days)")
    paths.append(args.out_dir / f"{prefix}-weights.png")
    save_figure(fig, paths[-1], args.dpi)

    interests = []
    for j in np.argsort(-trace.weights.numpy()):
        if not bool(trace.mask[j]):
            continue
        members = trace.items[trace.cluster == j].tolist()
        interests.append({"interest": int(j), "weight": float(trace.weights[j]),
                          "items": [labels[i] for i in members]})
    summary = {"user": user, "run": str(args.run), "items_seen": len(trace.items),
               "interests": interests}
    paths.append(args.out_dir / f"{prefix}-interests.json")
    atomic_write_text(paths[-1], json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    for entry in interests:
        print(f"interest {entry['interest']} (weight {entry['weight']:.3f}): "
              + "; ".join(entry["items"][:6]) + (" ..." if len(entry["items"]) > 6 else ""))
    for path in paths:
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
