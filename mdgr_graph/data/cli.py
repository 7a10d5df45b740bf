"""Command-line options shared by ``python -m mdgr_graph.data`` and the examples."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from mdgr_graph.data.dataset import LOO_TRAIN_TARGETS
from mdgr_graph.data.prepare import (
    DEFAULT_CACHE_DIR,
    FORMATS,
    PROTOCOL_DEFAULTS,
    PROTOCOLS,
    DataOptions,
)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the data options (format, path, protocol, filters, cache) to ``parser``."""
    g = parser.add_argument_group("data")
    g.add_argument("--format", choices=FORMATS, default="synthetic",
                   help="log format; 'synthetic' generates the embedded default data")
    g.add_argument("--path", default=None, help="the log file (gzip is read transparently)")
    g.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="'paper': 100-item windows, 50 history + 50 positives + 50 negatives; "
                        "'loo': leave-one-out with full ranking")
    g.add_argument("--min-item-count", type=int, default=None,
                   help="drop items with fewer interactions (default: "
                        f"{PROTOCOL_DEFAULTS['paper']['min_item_count']} paper, "
                        f"{PROTOCOL_DEFAULTS['loo']['min_item_count']} loo)")
    g.add_argument("--min-user-len", type=int, default=None,
                   help="drop users with fewer interactions (default: "
                        f"{PROTOCOL_DEFAULTS['paper']['min_user_len']} paper, "
                        f"{PROTOCOL_DEFAULTS['loo']['min_user_len']} loo)")
    g.add_argument("--window", type=int, default=100, help="paper: window length")
    g.add_argument("--history", type=int, default=50, help="paper: history part of a window")
    g.add_argument("--train-stride", type=int, default=None,
                   help="paper: offset between training users' windows (default: the window, "
                        "non-overlapping as in the paper); smaller adds overlapping training "
                        "windows, validation and test are unchanged")
    g.add_argument("--negatives", type=int, default=50,
                   help="negatives per window (paper) or per sampled evaluation row (loo)")
    g.add_argument("--max-len", type=int, default=50, help="loo: history length")
    g.add_argument("--valid-frac", type=float, default=0.1, help="paper: validation users")
    g.add_argument("--test-frac", type=float, default=0.1, help="paper: test users")
    g.add_argument("--behaviors", default=None,
                   help="taobao: comma-separated behaviours to keep (pv,buy,cart,fav); "
                        "default all")
    add_csv_arguments(g)
    g.add_argument("--chunk-rows", type=int, default=None, metavar="N",
                   help="taobao, csv: read the file N lines at a time with pyarrow (bounded "
                        "parsing memory, for logs larger than memory); same result and cache "
                        "entry as reading it whole")
    g.add_argument("--synthetic-users", type=int, default=2000,
                   help="synthetic: number of users")
    g.add_argument("--synthetic-items", type=int, default=1000,
                   help="synthetic: number of items")
    g.add_argument("--synthetic-topics", type=int, default=20,
                   help="synthetic: number of planted topics")
    g.add_argument("--synthetic-repeat-prob", type=float, default=0.0,
                   help="synthetic: probability that an interaction repeats one of the "
                        "user's last --synthetic-repeat-window items (repeat consumption; "
                        "0 keeps the log of earlier versions)")
    g.add_argument("--synthetic-repeat-window", type=int, default=50,
                   help="synthetic: how many previous items a repeat chooses from")
    g.add_argument("--seed", type=int, default=0, help="seed of splits, negatives and training")
    g.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help="where prepared datasets are cached")
    g.add_argument("--no-cache", action="store_true", help="prepare without reading or "
                   "writing the cache")


def add_csv_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The column and separator options of the generic CSV reader."""
    parser.add_argument("--user-col", default="user", help="csv: user column name")
    parser.add_argument("--item-col", default="item", help="csv: item column name")
    parser.add_argument("--time-col", default="timestamp", help="csv: timestamp column name")
    parser.add_argument("--sep", default=None, help="csv: separator (sniffed when omitted)")


def options_from_args(args: argparse.Namespace) -> DataOptions:
    """Build :class:`DataOptions` from parsed :func:`add_data_arguments` options."""
    synthetic = {}
    if args.format == "synthetic":
        synthetic = {
            "num_users": args.synthetic_users,
            "num_items": args.synthetic_items,
            "num_topics": args.synthetic_topics,
            "topics_per_user": (min(2, args.synthetic_topics), min(4, args.synthetic_topics)),
        }
        repeat_prob = getattr(args, "synthetic_repeat_prob", 0.0)
        if repeat_prob:  # only then: the options (and cache key) of other logs stay as they were
            synthetic.update(repeat_prob=repeat_prob,
                             repeat_window=getattr(args, "synthetic_repeat_window", 50))
    behaviors = tuple(b.strip() for b in args.behaviors.split(",")) if args.behaviors else None
    return DataOptions(
        format=args.format,
        path=args.path,
        protocol=args.protocol,
        min_item_count=args.min_item_count,
        min_user_len=args.min_user_len,
        window=args.window,
        history=args.history,
        train_stride=args.train_stride,
        negatives=args.negatives,
        max_len=args.max_len,
        valid_frac=args.valid_frac,
        test_frac=args.test_frac,
        seed=args.seed,
        behaviors=behaviors,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        sep=args.sep,
        synthetic=synthetic,
        chunk_rows=getattr(args, "chunk_rows", None),
    )


def cache_dir_from_args(args: argparse.Namespace) -> Path | None:
    return None if args.no_cache else args.cache_dir


#: What each ``--loo-train-targets`` choice makes a training example (help text and tables).
LOO_TRAIN_TARGET_HELP: dict[str, str] = {
    "last": "one example per user, the third-last item",
    "random": "one example per user and epoch, at a random cut point (ComiRec's)",
    "all": "every prefix of every training sequence, each epoch (as RecBole)",
}


def add_loo_training_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup
                               ) -> None:
    """``--loo-train-targets`` and ``--loo-train-positives`` (leave-one-out training
    examples, :class:`~mdgr_graph.data.dataset.SequenceDataset`); check them with
    :func:`loo_training_problem`."""
    parser.add_argument("--loo-train-targets", choices=list(LOO_TRAIN_TARGETS), default="last",
                        help="loo: training examples: " + "; ".join(
                            f"{k}: {v}" for k, v in LOO_TRAIN_TARGET_HELP.items()))
    parser.add_argument("--loo-train-positives", type=int, default=1,
                        help="loo with --loo-train-targets random: positives per training "
                             "example (the items following the cut point)")


def loo_training_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of :func:`add_loo_training_arguments`, or None."""
    if args.loo_train_positives < 1 or (args.loo_train_targets != "random"
                                        and args.loo_train_positives != 1):
        return "--loo-train-positives must be >= 1, and 1 unless --loo-train-targets random"
    return None


#: ``--option``: the least value it takes (counts and sizes of the data options).
_DATA_MINIMA = {
    "min_item_count": 1, "min_user_len": 1, "window": 2, "history": 1, "train_stride": 1,
    "negatives": 1, "max_len": 1, "chunk_rows": 1, "synthetic_users": 1,
    "synthetic_items": 1, "synthetic_topics": 1, "synthetic_repeat_window": 1, "seed": 0,
}


def data_option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the options of :func:`add_data_arguments`, or None.

    Checks every count against its least value, that the split fractions are finite,
    in ``[0, 1)`` and sum to less than 1, that ``--synthetic-repeat-prob`` lies in
    ``[0, 1]``, and everything :class:`DataOptions` checks, so
    a bad option is reported before any file is read.
    """
    for name, least in _DATA_MINIMA.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            return f"--{name.replace('_', '-')} must be >= {least}, got {value}"
    for name in ("valid_frac", "test_frac"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0 <= value < 1):
            return f"--{name.replace('_', '-')} must lie in [0, 1), got {value}"
    repeat_prob = getattr(args, "synthetic_repeat_prob", 0.0)
    if not (math.isfinite(repeat_prob) and 0 <= repeat_prob <= 1):
        return f"--synthetic-repeat-prob must lie in [0, 1], got {repeat_prob}"
    if args.valid_frac + args.test_frac >= 1:
        return (f"--valid-frac + --test-frac must be < 1 (some users must train), got "
                f"{args.valid_frac} + {args.test_frac}")
    if args.format == "synthetic" and args.synthetic_items < args.synthetic_topics:
        return (f"--synthetic-items ({args.synthetic_items}) must be >= --synthetic-topics "
                f"({args.synthetic_topics})")
    try:
        options_from_args(args)
    except ValueError as exc:
        return str(exc)
    return None
