"""Speed and recall of catalogue retrieval (``mdgr_graph.retrieval``) on synthetic tables.

For item tables of 10^4, 10^5 and 10^6 items (d = 32) and users with k = 8 interests,
each backend runs the whole of :func:`mdgr_graph.retrieval.retrieve` (search every
interest for its top N = 50, add the offsets, merge per user by the max):

- **latency**: one user per call (batch of 1), median over ``--latency-users`` users,
  each timed ``--repeats`` times after ``--warmup`` warm-up calls;
- **throughput**: users per second at a batch of ``--batch`` users (median of
  ``--repeats`` after warm-up);
- **recall@50/exact** of the approximate index (FAISS IVF-Flat, ``nlist`` =
  round(sqrt(items)), several ``nprobe``) against exact search on the same batch; the
  faiss exact index's agreement with the torch one is recorded too;
- **build** time of each index.

Synthetic data (seeded): items are a mixture of ``--topics`` = 1000 Gaussian clusters
(centres N(0, I), items = centre + N(0, I) noise, so clusters overlap), like learned
item embeddings that group by genre; each interest query is a random centre plus
N(0, I) noise, scaled by a weight in [0.5, 1.5], with an offset ~ N(0, 0.1^2) (MDGR's
``paper`` weighting has this form). The recall of IVF depends strongly on how clustered
the table is: with half the spread it is ~1.0 already at nprobe = 4 (10^5 items), with
1.5 times the spread far lower. Everything runs on one thread (``torch.set_num_threads`` and
``faiss.omp_set_num_threads``, ``--threads``), on a CPU machine shared with other jobs:
compare backends within one run, not across machines. Writes ``retrieval.json`` (every
figure, raw times, seeds, versions, hardware) and ``retrieval.md`` in ``--out-dir``,
atomically. Example::

    .venv/bin/python benchmarks/retrieval.py --quick   # 265 s here; the full run 418 s
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mdgr_graph import retrieval
from mdgr_graph.bench import record
from mdgr_graph.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]

DEFAULT_OUT_DIR = REPO / "benchmarks" / "results" / "retrieval"
SIZES = (10**4, 10**5, 10**6)
DIM, K, N = 32, 8, 50


def synthetic(num_items: int, num_users: int, topics: int, seed: int) -> dict[str, torch.Tensor]:
    """Clustered item table ``[I, d]`` and ``num_users`` users' queries/offsets/mask."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(topics, DIM, generator=gen)
    topic = torch.randint(topics, (num_items,), generator=gen)
    items = centres[topic] + torch.randn(num_items, DIM, generator=gen)
    interest_topic = torch.randint(topics, (num_users, K), generator=gen)
    weight = 0.5 + torch.rand(num_users, K, 1, generator=gen)
    queries = weight * (centres[interest_topic]
                        + torch.randn(num_users, K, DIM, generator=gen))
    offsets = 0.1 * torch.randn(num_users, K, generator=gen)
    mask = torch.ones(num_users, K, dtype=torch.bool)
    return {"items": items, "queries": queries, "offsets": offsets, "mask": mask}


def recall(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over users of |approx top N ∩ exact top N| / N (vectorised)."""
    hits = (approx.unsqueeze(2) == exact.unsqueeze(1)) & (approx.unsqueeze(2) > 0)
    return float(hits.any(dim=2).float().sum(dim=1).div(exact.shape[1]).mean())


def bench_size(num_items: int, args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    data = synthetic(num_items, max(args.batch, args.latency_users), args.topics,
                     args.seed + num_items)
    q, c, m = data["queries"], data["offsets"], data["mask"]
    batch = slice(0, args.batch)
    out: dict[str, Any] = {"items": num_items, "nlist": retrieval.default_nlist(num_items),
                           "backends": {}}

    configs: list[tuple[str, str, dict]] = [("torch exact", "torch", {})]
    if retrieval.WITH_FAISS:
        configs.append(("faiss exact", "faiss-exact", {}))
        for nprobe in args.nprobe:
            configs.append((f"faiss IVF nprobe={nprobe}", "faiss-approx",
                            {"nprobe": nprobe, "seed": args.seed}))
    exact_items = None
    ivf_index = None
    for name, backend, options in configs:
        entry: dict[str, Any] = {"backend": backend, **options}
        start = time.perf_counter()
        if backend == "faiss-approx" and ivf_index is not None:
            index = ivf_index  # the same trained IVF lists, another nprobe
            index.index.nprobe = index.nprobe = min(options["nprobe"], index.nlist)
        else:
            index = retrieval.build_index(data["items"], backend, **options)
            entry["build_s"] = time.perf_counter() - start
            if backend == "faiss-approx":
                ivf_index = index
        entry["index"] = repr(index)

        def one_user(u: int, index=index) -> None:
            retrieval.retrieve(q[u : u + 1], c[u : u + 1], m[u : u + 1], index, N)

        per_user = [record.measure(lambda u=u: one_user(u), args.warmup, args.repeats)["median_s"]
                    for u in range(args.latency_users)]
        entry["latency_s"] = {"median": statistics.median(per_user), "per_user": per_user}
        entry["batch"] = record.measure(lambda index=index: retrieval.retrieve(
            q[batch], c[batch], m[batch], index, N), args.warmup, args.repeats)
        entry["users_per_s"] = args.batch / entry["batch"]["median_s"]
        found = retrieval.retrieve(q[batch], c[batch], m[batch], index, N).items
        if exact_items is None:
            exact_items = found
        entry["recall@50/exact"] = recall(found, exact_items)
        entry["identical_to_torch_exact"] = float((found == exact_items).float().mean())
        out["backends"][name] = entry
        log(f"[retrieval] {num_items:>9,} items  {name:<22} latency "
            f"{entry['latency_s']['median'] * 1e3:8.2f} ms  {entry['users_per_s']:9,.0f} "
            f"users/s  recall@50 {entry['recall@50/exact']:.3f}")
    return out


def markdown(payload: dict[str, Any]) -> str:
    run, env = payload["run"], payload["environment"]
    lines = [
        "# benchmarks/retrieval.py results",
        "",
        f"{run['finished']} — {env['platform']}, {env['cpu_count']} CPUs shared with other "
        f"jobs (load average at the start {run['load_average_start']}), **{env['threads']} "
        f"thread** for torch and faiss; torch {env['torch']}, faiss {env['faiss']}. "
        f"d = {DIM}, k = {K} interests per user, N = {N}; median of {run['repeats']} after "
        f"{run['warmup']} warm-up call(s){' (--quick)' if run['quick'] else ''}; latency: "
        f"one user per call, median over {run['latency_users']} users; throughput: "
        f"batches of {run['batch']} users; seed {run['seed']}. Each figure is the whole "
        "`retrieve()` (search every interest, add offsets, merge); recall@50 is against "
        "exact search on the same batch.",
        "",
        "| items | backend | build | latency / user | users / s (batch) | recall@50 |",
        "|---|---|---|---|---|---|",
    ]
    for size in payload["results"]:
        for name, e in size["backends"].items():
            build = f"{e['build_s']:.2f} s" if "build_s" in e else "(same index)"
            lines.append(
                f"| {size['items']:,} | {name} | {build} | "
                f"{e['latency_s']['median'] * 1e3:,.2f} ms | {e['users_per_s']:,.0f} | "
                f"{e['recall@50/exact']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 repeats, 5 latency users; the sizes stay 10^4..10^6 (265 s "
                             "on a busy 2-core machine, mostly faiss exact at 10^6 items; "
                             "--sizes 10000,100000 takes under a minute)")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="comma-separated catalogue sizes")
    parser.add_argument("--batch", type=int, default=256, help="users per throughput batch")
    parser.add_argument("--latency-users", type=int, default=None,
                        help="users timed one by one (None: 20, or 5 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per figure (None: 7, or 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first")
    parser.add_argument("--nprobe", default="4,16,64",
                        help="IVF lists scanned per query, comma-separated")
    parser.add_argument("--topics", type=int, default=1000,
                        help="Gaussian clusters of the synthetic item table")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help="where retrieval.json and retrieval.md go")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.nprobe = [int(s) for s in args.nprobe.split(",")]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.latency_users is None:
        args.latency_users = 5 if args.quick else 20
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if retrieval.WITH_FAISS:
        retrieval.faiss.omp_set_num_threads(args.threads)
    else:
        print("[retrieval] faiss is not installed: torch exact only", file=sys.stderr)
    print(f"[retrieval] {args.threads} thread(s) for torch and faiss "
          "(torch.set_num_threads, faiss.omp_set_num_threads)")
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    start = time.perf_counter()
    results = [bench_size(size, args, print) for size in args.sizes]
    payload = {
        "run": {"started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": time.perf_counter() - start, "quick": args.quick,
                "seed": args.seed, "data_seeds": {str(s): args.seed + s for s in args.sizes},
                "repeats": args.repeats, "warmup": args.warmup, "batch": args.batch,
                "latency_users": args.latency_users, "topics": args.topics,
                "dim": DIM, "k": K, "n": N, "load_average_start": load,
                "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])},
        "environment": record.environment(args.threads),
        "results": results,
    }
    atomic_write_text(args.out_dir / "retrieval.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(args.out_dir / "retrieval.md", markdown(payload))
    print(f"[retrieval] wrote {args.out_dir / 'retrieval.json'} and retrieval.md "
          f"({payload['run']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
