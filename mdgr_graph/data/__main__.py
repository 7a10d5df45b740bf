"""Prepare a dataset and print its statistics.

Example::

    python -m mdgr_graph.data --format movielens \\
        --path ../shared/data/ml-1m-subset/ratings.dat.gz --protocol paper --json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from mdgr_graph.data.cli import (
    add_data_arguments,
    cache_dir_from_args,
    data_option_problem,
    options_from_args,
)
from mdgr_graph.data.prepare import prepare_dataset
from mdgr_graph.data.repeats import repeat_share


def program_name() -> str | None:
    """The name the usage line shows: ``python -m mdgr_graph.data`` when this file runs
    as a module (argparse would say ``__main__.py``), else argparse's default, the name
    of the program that was run (``mdgr-data`` for the console script)."""
    if sys.argv and Path(sys.argv[0]).resolve() == Path(__file__).resolve():
        return "python -m mdgr_graph.data"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=program_name(),
        description="Read, filter and split an interaction log; print its statistics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if (problem := data_option_problem(args)) is not None:
        parser.error(problem)
    start = time.perf_counter()
    try:
        options = options_from_args(args)
        dataset = prepare_dataset(options, cache_dir=cache_dir_from_args(args))
    except (ValueError, OSError, ImportError) as exc:  # DataFormatError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats: dict[str, float | None] = dict(dataset.stats())
    share = repeat_share(dataset, "test")  # positives that repeat a history item
    stats["test_repeat_share"] = None if math.isnan(share) else share
    if args.json:
        print(json.dumps(stats))
        return 0
    source = options.path or f"synthetic (seed {options.seed})"
    print(f"dataset: {source}  protocol: {options.protocol}  "
          f"({time.perf_counter() - start:.2f} s)")
    unit = "windows" if options.protocol == "paper" else "users"
    for key, value in stats.items():
        if key == "test_repeat_share":
            shown = "-" if value is None else f"{value:.1%}"
            print(f"  {'test repeats':<13}{shown:>12} of the test positives are in their "
                  "history")
            continue
        suffix = f" {unit}" if key in ("sequences", "train", "valid", "test") else ""
        print(f"  {key:<13}{value:>12,}{suffix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
