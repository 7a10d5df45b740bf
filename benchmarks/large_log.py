"""Reading and preparing a large Taobao log in chunks: rows per second and peak memory.

1. **Generate** (seeded, vectorised, written in blocks) a log in Taobao's ``UserBehavior.csv``
   format (``user,item,category,behavior,timestamp``, no header) of ``--rows`` rows under
   ``--work-dir``; an existing file of the same rows and seed is reused. Users come grouped
   with their rows in time order, as in the real file: about 100 rows per user
   (geometric), Zipf-like item popularity over ``rows / 20`` items, Taobao's behaviour mix
   (pv 89.5%, cart 5.5%, fav 3%, buy 2%), timestamps in the real log's nine days, and 1%
   exact duplicate rows.
2. **Measure**, each in a fresh Python process so that peak memories do not mix:

   * ``read``: parse and check the whole file into the integer-coded log
     (``read_taobao_chunked``; in memory: ``read_taobao``, which holds every row's raw
     fields instead);
   * ``prepare``: the whole ``prepare_dataset`` (paper protocol, default options, no
     cache): reading, duplicates, iterative 10/100 filtering, remapping, windows,
     negatives.

   The chunked path runs on ``--rows`` and on ``--small-rows``; the in-memory path only on
   ``--small-rows`` (its Python strings per field make 20M rows cost tens of GiB). On the
   small log both ``prepare`` runs hash every prepared array and the digests must agree.

Peak memory is the process's peak resident set (``VmHWM`` from ``/proc/self/status``,
``ru_maxrss`` where that is missing); ``baseline`` is the resident set after imports
(``mdgr_graph.data`` imports torch; pyarrow is imported for both paths), so
``peak - baseline`` is what the work needed.
Rows per second count the lines of the file. Example::

    .venv/bin/python benchmarks/large_log.py            # 20M rows, about 15-30 minutes
    .venv/bin/python benchmarks/large_log.py --quick    # 1M and 200k rows, a few minutes

Writes ``large_log.json`` and ``large_log.md`` in ``--out-dir`` (atomically).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from mdgr_graph.bench import record

REPO = Path(__file__).resolve().parents[1]

DEFAULT_OUT = REPO / "benchmarks" / "results" / "large_log"
DEFAULT_WORK = Path("/tmp") / "mdgr_large_log"
BEHAVIORS = ("pv", "buy", "cart", "fav")
BEHAVIOR_P = (0.895, 0.02, 0.055, 0.03)
T_START, T_END = 1511539200, 1512316799  # 2017-11-25 .. 2017-12-03, as the real log
MAX_USER, MAX_ITEM, MAX_CATEGORY = 1_018_011, 5_163_070, 5_162_429  # the real log's maxima
NUM_CATEGORIES = 9_439


# ---------------------------------------------------------------------- the log
def log_path(work_dir: Path, rows: int, seed: int) -> Path:
    return work_dir / f"taobao-{rows}-seed{seed}.csv"


def generate_log(path: Path, rows: int, seed: int, block_users: int = 20_000) -> None:
    """Write ``rows`` Taobao-format rows to ``path`` (through a temporary file)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    num_users = max(1, rows // 100)
    lengths = rng.geometric(1 / 100, num_users).astype(np.int64)
    lengths = np.maximum(1, np.round(lengths * rows / lengths.sum())).astype(np.int64)
    lengths[np.argmax(lengths)] += rows - lengths.sum()  # exactly `rows` in total
    if lengths.min() < 1:
        raise ValueError(f"--rows {rows} is too small to generate")
    user_ids = np.sort(rng.choice(MAX_USER, num_users, replace=False) + 1)
    num_items = max(10, rows // 20)
    categories = rng.choice(MAX_CATEGORY, NUM_CATEGORIES, replace=False) + 1
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with pacsv.CSVWriter(str(tmp), pa.schema([
        ("user", pa.int64()), ("item", pa.int64()), ("category", pa.int64()),
        ("behavior", pa.string()), ("timestamp", pa.int64()),
    ]), write_options=options) as writer:  # fmt: skip
        for first in range(0, num_users, block_users):
            n_rows = lengths[first : first + block_users]
            user = np.repeat(user_ids[first : first + block_users], n_rows)
            n = len(user)
            # Zipf-like popularity: rank r drawn with density ~ r^(-2/3), mapped to raw ids
            rank = np.floor(num_items * rng.random(n) ** 3).astype(np.int64)
            item = (rank * 1_000_003) % MAX_ITEM + 1
            category = categories[(item * 2_654_435_761) % NUM_CATEGORIES]
            behavior = rng.choice(len(BEHAVIORS), n, p=BEHAVIOR_P)
            ts = rng.integers(T_START, T_END + 1, n)
            order = np.lexsort((ts, user))
            item, category, behavior, ts = item[order], category[order], behavior[order], ts[order]
            dup = np.flatnonzero(rng.random(n) < 0.01)
            dup = dup[(dup > 0) & (user[dup] == user[dup - 1])]
            item[dup], category[dup], ts[dup] = item[dup - 1], category[dup - 1], ts[dup - 1]
            behavior[dup] = behavior[dup - 1]
            names = pa.DictionaryArray.from_arrays(behavior.astype(np.int8), list(BEHAVIORS))
            writer.write_table(pa.table({
                "user": user, "item": item, "category": category,
                "behavior": names.cast(pa.string()), "timestamp": ts,
            }))  # fmt: skip
    os.replace(tmp, path)


def ensure_log(work_dir: Path, rows: int, seed: int) -> tuple[Path, float | None]:
    """The log of ``rows`` rows, generated unless already there; also the seconds spent."""
    path = log_path(work_dir, rows, seed)
    if path.is_file():
        return path, None
    start = time.perf_counter()
    generate_log(path, rows, seed)
    return path, time.perf_counter() - start


# ---------------------------------------------------------------------- one measurement
def memory_kib() -> dict[str, int]:
    """Current and peak resident set of this process, KiB."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    if "VmHWM" not in out:  # ru_maxrss is KiB on Linux
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out.setdefault("VmRSS", out["VmHWM"])
    return out


def digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def worker(args: argparse.Namespace) -> int:
    """Run one measurement in this (fresh) process and print it as JSON."""
    from mdgr_graph.data.chunked import import_pyarrow, read_taobao_chunked
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset
    from mdgr_graph.data.readers import read_taobao

    import_pyarrow()  # loaded for both paths, so that the baseline is the same
    baseline = memory_kib()["VmRSS"]
    chunk_rows = args.chunk_rows if args.method == "chunked" else None
    out: dict[str, Any] = {}
    start = time.perf_counter()
    if args.stage == "read":
        if chunk_rows is None:
            log = read_taobao(args.path)
        else:
            log = read_taobao_chunked(args.path, chunk_rows=chunk_rows)
        out["kept_rows"] = len(log)
    else:
        options = DataOptions(format="taobao", path=str(args.path), protocol="paper",
                              seed=args.seed, chunk_rows=chunk_rows)
        prepared = prepare_dataset(options, cache_dir=None)
        out["stats"] = prepared.stats()
        out["options"] = options.to_json()
    seconds = time.perf_counter() - start
    if args.stage == "prepare":
        out["digest"] = digest(prepared.arrays)
    mem = memory_kib()
    out.update(seconds=seconds, baseline_kib=baseline, peak_kib=mem["VmHWM"])
    print(json.dumps(out))
    return 0


def measure(path: Path, rows: int, method: str, stage: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--method", method,
           "--stage", stage, "--path", str(path), "--chunk-rows", str(args.chunk_rows),
           "--seed", str(args.seed)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(
        method=method,
        stage=stage,
        rows=rows,
        file_bytes=path.stat().st_size,
        chunk_rows=args.chunk_rows if method == "chunked" else None,
        rows_per_s=rows / result["seconds"],
        process_wall_s=wall,
    )
    mib = (result["peak_kib"] - result["baseline_kib"]) / 1024
    print(f"  {method:<9} {stage:<8} {rows:>11,} rows  {result['seconds']:8.1f} s  "
          f"{result['rows_per_s']:>11,.0f} rows/s  peak {result['peak_kib'] / 1024:8.0f} MiB "
          f"(+{mib:.0f} over baseline)", flush=True)  # fmt: skip
    return result


# ---------------------------------------------------------------------- reporting
def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Large log: chunked reading and preparation",
        "",
        f"Generated Taobao-format log (seed {payload['seed']}), `--chunk-rows "
        f"{payload['chunk_rows']:,}`, paper protocol with default options (10/100 "
        "filtering), no cache. Each row is a fresh process; rows/s count the file's lines; "
        "peak is the process's peak resident set, baseline its resident set after imports "
        "(torch included).",
        "",
        "| path | stage | rows | file MiB | seconds | rows/s | peak MiB | peak - baseline MiB |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['method']} | {r['stage']} | {r['rows']:,} | {r['file_bytes'] / 2**20:,.0f} "
            f"| {r['seconds']:,.1f} | {r['rows_per_s']:,.0f} | {r['peak_kib'] / 1024:,.0f} "
            f"| {(r['peak_kib'] - r['baseline_kib']) / 1024:,.0f} |"
        )
    lines.append("")
    for r in payload["results"]:
        if r["stage"] == "prepare":
            s = r["stats"]
            lines.append(
                f"- {r['method']}, {r['rows']:,} rows: {s['users']:,} users, {s['items']:,} "
                f"items, {s['interactions']:,} interactions, {s['sequences']:,} windows kept"
            )
    if payload.get("identical_small") is not None:
        verdict = "identical" if payload["identical_small"] else "DIFFERENT"
        lines.append(f"- prepared arrays of the chunked and in-memory paths on "
                     f"{payload['small_rows']:,} rows: {verdict} (SHA-256 of every array)")
    hw = payload["hardware"]
    lines += [
        "",
        f"Hardware: {hw['platform']}, {hw['cpu_count']} CPUs, {hw['mem_total_mib']:,} MiB "
        f"memory, load average {', '.join(f'{x:.1f}' for x in hw['load_average'] or [])} "
        f"at the start and {', '.join(f'{x:.1f}' for x in payload['load_average_end'] or [])} "
        f"at the end (1, 5, 15 minutes); python {hw['python']}, numpy {hw['numpy']}, "
        f"pyarrow {hw['pyarrow']}. "
        f"{payload['note']}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=20_000_000, help="rows of the large log")
    parser.add_argument("--small-rows", type=int, default=2_000_000,
                        help="rows of the log both paths prepare")
    parser.add_argument("--chunk-rows", type=int, default=250_000, help="lines per chunk")
    parser.add_argument("--seed", type=int, default=0, help="seed of the log and of splits")
    parser.add_argument("--quick", action="store_true",
                        help="1M and 200k rows (a few minutes)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                        help="where the generated logs live (reused; never commit them)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT,
                        help="where large_log.json and large_log.md are written")
    parser.add_argument("--note", default="", help="free text added to the results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=("chunked", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=("read", "prepare"), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.rows, args.small_rows = 1_000_000, 200_000
    if min(args.rows, args.small_rows, args.chunk_rows) < 1:
        parser.error("--rows, --small-rows and --chunk-rows must be >= 1")
    from mdgr_graph.io import atomic_write_text

    hw = record.environment()
    logs: dict[int, Path] = {}
    generated: dict[str, float | None] = {}
    for rows in dict.fromkeys((args.rows, args.small_rows)):
        logs[rows], seconds = ensure_log(args.work_dir, rows, args.seed)
        generated[str(rows)] = seconds
        state = "reused" if seconds is None else f"generated in {seconds:.0f} s"
        print(f"log of {rows:,} rows: {logs[rows]} ({state})", flush=True)

    results = []
    for rows, method in ((args.rows, "chunked"), (args.small_rows, "chunked"),
                         (args.small_rows, "memory")):  # fmt: skip
        for stage in ("read", "prepare"):
            results.append(measure(logs[rows], rows, method, stage, args))
    small = {r["method"]: r["digest"] for r in results
             if r["stage"] == "prepare" and r["rows"] == args.small_rows}  # fmt: skip
    identical = small["chunked"] == small["memory"]
    print(f"chunked and in-memory preparations of {args.small_rows:,} rows are "
          f"{'identical' if identical else 'DIFFERENT'}")
    payload = {
        "benchmark": "large_log",
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seed": args.seed,
        "rows": args.rows,
        "small_rows": args.small_rows,
        "chunk_rows": args.chunk_rows,
        "quick": args.quick,
        "work_dir": str(args.work_dir),
        "generation_s": generated,
        "identical_small": identical,
        "note": args.note,
        "hardware": hw,
        "results": results,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out_dir / "large_log.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(args.out_dir / "large_log.md", markdown(payload))
    print(f"wrote {args.out_dir / 'large_log.json'} and large_log.md")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
