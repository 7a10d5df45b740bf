"""Same-timestamp ties at the held-out end of leave-one-out sequences.

Logs with coarse timestamps (the Amazon review sets: one timestamp per day) hold runs of
interactions with equal times. The reader sorts each user's interactions stably by time,
so within a run the file's order decides which item is last: under leave-one-out it
decides which item is the test target and which the validation target. This script says
how often that happens and writes the same log with every run of a user reversed, so a
comparison can be rerun on the other order (``compare.py --path ... --format ...``):

    .venv/bin/python benchmarks/tie_order.py --dataset amazon-beauty \\
        --write-reversed /tmp/amazon-beauty-tierev.tsv

The reversed log keeps every row (``user_id<TAB>item_id<TAB>timestamp``, the Amazon
layout); only the order of rows with the same user and timestamp changes. Write it outside
the repository (the data are not redistributed with the project).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from mdgr_graph.bench.runner import DATASETS
from mdgr_graph.data.readers import Interactions, read_amazon, read_movielens
from mdgr_graph.io import atomic_write_text

READERS = {"amazon": read_amazon, "movielens": read_movielens}


def user_order(log: Interactions) -> np.ndarray:
    """Row order grouping users (sorted raw ids) and sorting each user's rows by time, as
    the preprocessing does: ``lexsort`` is stable, so equal times keep the file's order."""
    _, user_code = np.unique(log.user, return_inverse=True)
    return np.lexsort((log.timestamp, user_code))


def tie_stats(log: Interactions) -> dict[str, float | int]:
    """Shares of users whose test item (the last) shares its timestamp with the validation
    item (the second last), and whose validation item shares it with the third last.

    Users with fewer than 3 interactions are not counted (they have no validation item)."""
    order = user_order(log)
    user, time = log.user[order], log.timestamp[order]
    end = np.flatnonzero(np.r_[user[1:] != user[:-1], True])  # last row of each user
    start = np.r_[0, end[:-1] + 1]
    ok = end - start >= 2
    last, second, third = end[ok], end[ok] - 1, end[ok] - 2
    same_day_pairs = int(np.sum((user[1:] == user[:-1]) & (time[1:] == time[:-1])))
    return {
        "users": int(ok.sum()),
        "interactions": len(log),
        "test_shares_time_with_valid": float(np.mean(time[last] == time[second])),
        "valid_shares_time_with_previous": float(np.mean(time[second] == time[third])),
        "adjacent_pairs_with_equal_time": same_day_pairs,
        "adjacent_pairs": int(np.sum(user[1:] == user[:-1])),
    }


def reversed_ties(log: Interactions) -> np.ndarray:
    """Row order of :func:`user_order` with every run of equal (user, time) reversed."""
    order = user_order(log)
    user, time = log.user[order], log.timestamp[order]
    new_run = np.r_[True, (user[1:] != user[:-1]) | (time[1:] != time[:-1])]
    run = np.cumsum(new_run)
    # Sort by run (ascending: users and times keep their order), then by descending
    # position inside the run.
    return order[np.lexsort((-np.arange(len(order)), run))]


def write_log(log: Interactions, order: np.ndarray, path: Path) -> None:
    """The rows of ``log`` in ``order`` as ``user_id<TAB>item_id<TAB>timestamp``."""
    stamps = log.timestamp[order]
    if not np.all(np.isfinite(stamps)) or np.any(stamps != np.round(stamps)):
        raise ValueError("write_log writes integer Unix seconds; the log has other timestamps")
    lines = ["user_id\titem_id\ttimestamp"]
    rows = zip(log.user[order], log.item[order], stamps, strict=True)
    lines += [f"{u}\t{i}\t{int(t)}" for u, i, t in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=[d for d, (f, _) in DATASETS.items() if f in READERS],
                   default="amazon-beauty")
    p.add_argument("--data-dir", type=Path, default=root.parent / "shared" / "data")
    p.add_argument("--path", type=Path, default=None,
                   help="any log instead of --dataset (read as --format)")
    p.add_argument("--format", choices=sorted(READERS), default="amazon")
    p.add_argument("--write-reversed", type=Path, default=None,
                   help="write the log with every same-user, same-timestamp run reversed")
    p.add_argument("--json", type=Path, default=None, help="write the statistics here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.path is not None:
        path, fmt = args.path, args.format
    else:
        fmt, rel = DATASETS[args.dataset]
        path = args.data_dir / rel
    if not path.is_file():
        print(f"tie_order.py: data file not found: {path}", file=sys.stderr)
        return 2
    log = READERS[fmt](path)
    stats = {"path": str(path), "format": fmt, **tie_stats(log)}
    print(json.dumps(stats, indent=1))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(stats, indent=1) + "\n")
    if args.write_reversed is not None:
        write_log(log, reversed_ties(log), args.write_reversed)
        print(f"wrote {args.write_reversed}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
