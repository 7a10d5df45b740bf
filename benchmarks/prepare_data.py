"""Time ``prepare_dataset`` on ml-1m-subset, cold (no cache) and warm (from the cache).

For each protocol (``paper`` and ``loo``, default options, seed 0):

* **cold**: a fresh, empty temporary cache folder, so the call reads the gzipped log,
  preprocesses it, applies the protocol and writes the cache entry;
* **warm**: the same options again, served from the entry the cold call wrote (hashing
  the input file and loading the ``.npz``).

Each figure is the median of ``--repeats`` in-process calls timed with
``time.perf_counter``; interpreter and import start-up are not counted. Example::

    .venv/bin/python benchmarks/prepare_data.py --json benchmarks/results/prepare_data.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mdgr_graph.bench import record
from mdgr_graph.data.prepare import DataOptions, prepare_dataset

REPO = Path(__file__).resolve().parents[1]

DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DATASET = "ml-1m-subset/ratings.dat.gz"
PROTOCOLS = ("paper", "loo")


def time_protocol(path: Path, protocol: str, repeats: int) -> dict[str, Any]:
    options = DataOptions(format="movielens", path=str(path), protocol=protocol, seed=0)
    cold, warm = [], []
    stats = None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="mdgr-bench-") as cache:
            start = time.perf_counter()
            first = prepare_dataset(options, cache_dir=cache)
            cold.append(time.perf_counter() - start)
            entries = list(Path(cache).glob("*.npz"))
            if len(entries) != 1:
                raise RuntimeError(f"expected one cache entry after the cold call, got {entries}")
            start = time.perf_counter()
            second = prepare_dataset(options, cache_dir=cache)
            warm.append(time.perf_counter() - start)
            if second.stats() != first.stats():
                raise RuntimeError("the cached entry does not match the prepared dataset")
            stats = first.stats()
    return {
        "dataset": DATASET,
        "protocol": protocol,
        "options": options.to_json(),
        "cold_s": statistics.median(cold),
        "warm_s": statistics.median(warm),
        "cold_runs_s": cold,
        "warm_runs_s": warm,
        "stats": stats,
    }


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def print_table(results: list[dict[str, Any]], repeats: int) -> None:
    print(f"prepare_dataset on {DATASET} (median of {repeats})")
    header = f"{'protocol':<9}{'cold s':>9}{'warm s':>9}{'users':>8}{'items':>8}"
    header += f"{'interactions':>14}{'sequences':>11}{'train':>7}{'valid':>7}{'test':>7}"
    print(header)
    for r in results:
        s = r["stats"]
        print(
            f"{r['protocol']:<9}{r['cold_s']:>9.2f}{r['warm_s']:>9.3f}{s['users']:>8}"
            f"{s['items']:>8}{s['interactions']:>14}{s['sequences']:>11}{s['train']:>7}"
            f"{s['valid']:>7}{s['test']:>7}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="folder holding ml-1m-subset/ratings.dat.gz")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="also write the results to PATH (atomically)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    path = args.data_dir / DATASET
    if not path.is_file():
        print(f"error: no such file: {path} (see --data-dir)", file=sys.stderr)
        return 2

    results = [time_protocol(path, protocol, args.repeats) for protocol in PROTOCOLS]
    print_table(results, args.repeats)
    hw = record.environment()
    print(f"hardware: {hw['platform']}, {hw['cpu_count']} CPUs, python {hw['python']}, "
          f"numpy {hw['numpy']}, torch {hw['torch']}")
    if args.json is not None:
        payload = {
            "benchmark": "prepare_data",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "repeats": args.repeats,
            "data_file": str(path),
            "hardware": hw,
            "results": results,
        }
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
