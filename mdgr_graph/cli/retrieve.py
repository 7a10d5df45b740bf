"""Retrieve the top N items of the whole catalogue for every user of a trained run.

The command line of ``mdgr-retrieve`` and ``examples/retrieve.py``. Reads a run written
by ``mdgr-train --out DIR`` (``DIR/args.json`` and ``DIR/best.pt``), rebuilds its dataset
and model from ``args.json``, exports each user's interest queries
(``mdgr_graph.retrieval.export_interests``), searches the item table once per interest
and merges per user by the max (exact for MDGR's Eq. 16 with the ``torch`` and
``faiss-exact`` backends). Items in the user's history are excluded unless
``--keep-history``. Writes JSON or CSV (by the suffix of ``--out``) atomically. Examples::

    mdgr-train --format movielens \\
        --path ../shared/data/ml-1m-subset/ratings.dat.gz --protocol loo --out runs/loo
    mdgr-retrieve runs/loo --n 20 --out runs/loo/top20.csv \\
        --titles ../shared/data/ml-1m-subset/movies.dat.gz --backend faiss-exact

Rows are the split's examples: one per user under ``loo``; one per window under
``paper`` (history = the window's first part). Supported models: MDGR and its
variants, ``static-graph``, ``mip``, ``comirec-sa``, ``comirec-dr``.

**Two-stage serving.** ``--rerank RUN2`` re-ranks the top ``--rerank-n`` items of the
first stage with a second run trained on the same data, typically MDGR with
``--query candidate`` (the paper's target-aware form, which cannot search the catalogue
itself), and writes the best ``--n`` of them. ``--evaluate`` prints HR@10, NDCG@10 and the
seconds per row of each stage against the split's held-out items (leave-one-out)::

    mdgr-retrieve runs/loo --rerank runs/loo-candidate --rerank-n 100 \
        --n 10 --evaluate
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdgr_graph import retrieval
from mdgr_graph.cli.checks import device_problem, writable_problem
from mdgr_graph.cli.train import load_run
from mdgr_graph.data.cli import options_from_args
from mdgr_graph.data.titles import read_movielens_titles
from mdgr_graph.io import atomic_write_text
from mdgr_graph.metrics import full_ranking_metrics, rank_in_list


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("run", type=Path,
                        help="directory written by mdgr-train --out (args.json, best.pt)")
    parser.add_argument("--checkpoint", default="best.pt",
                        help="checkpoint file inside RUN (last.pt also works)")
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"],
                        help="whose users to retrieve for")
    parser.add_argument("--n", type=int, default=50, help="items per user")
    parser.add_argument("--out", type=Path, default=None,
                        help="output file, .json or .csv (default: RUN/top{N}-{SPLIT}.json)")
    parser.add_argument("--titles", type=Path, default=None,
                        help="MovieLens movies.dat ('id::title::genres', UTF-8 or Latin-1; "
                             ".gz read transparently) to add item titles")
    parser.add_argument("--backend", default="torch",
                        choices=[b for b in retrieval.BACKENDS if b != "auto"],
                        help="torch: exact, chunked matmul; faiss-exact: IndexFlatIP; "
                             "faiss-approx: IVF-Flat (approximate, see --nlist/--nprobe)")
    parser.add_argument("--nlist", type=int, default=None,
                        help="faiss-approx: IVF lists (default: round(sqrt(items)))")
    parser.add_argument("--nprobe", type=int, default=16,
                        help="faiss-approx: lists scanned per interest")
    parser.add_argument("--keep-history", action="store_true",
                        help="also return items already in the user's history")
    parser.add_argument("--export", type=Path, default=None,
                        help="also save the exported queries, interests, weights and item "
                             "table here (torch.save)")
    parser.add_argument("--rerank", type=Path, default=None,
                        help="a second run (same data) whose model re-ranks the first "
                             "stage's top --rerank-n items, e.g. MDGR --query candidate")
    parser.add_argument("--rerank-n", type=int, default=100,
                        help="first-stage items per row handed to --rerank (>= --n)")
    parser.add_argument("--evaluate", action="store_true",
                        help="leave-one-out: print HR@10 / NDCG@10 of each stage against "
                             "the split's targets, and the seconds per row")
    parser.add_argument("--batch-size", type=int, default=256, help="users per model batch")
    parser.add_argument("--device", default="cpu", help="device of the model: cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch (and faiss) CPU threads (default: the libraries' choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    for name in ("n", "batch_size", "nprobe"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.nlist is not None and args.nlist < 1:
        parser.error(f"--nlist must be >= 1, got {args.nlist}")
    if args.rerank is not None and args.rerank_n < args.n:
        parser.error(f"--rerank-n ({args.rerank_n}) must be >= --n ({args.n})")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.out is not None and args.out.suffix.lower() not in (".json", ".csv"):
        parser.error(f"--out must end in .json or .csv, got {args.out}")
    if (problem := device_problem(args.device)) is not None:
        parser.error(problem)
    return args


def output_problem(args: argparse.Namespace, out: Path) -> str | None:
    """Why ``out`` or ``--export`` cannot be written, or None (checked before the search;
    missing folders are created)."""
    for path, option in ((out, "--out"), (args.export, "--export")):
        if path is not None and (problem := writable_problem(path, option, False)):
            return problem
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        if retrieval.WITH_FAISS:
            retrieval.faiss.omp_set_num_threads(args.threads)
    try:
        train, prepared, model = load_run(args.run, args.run / args.checkpoint)
        reranker = None
        if args.rerank is not None:
            second, _, reranker = load_run(args.rerank)
            if options_from_args(second) != options_from_args(train) or (
                second.max_users, second.seed) != (train.max_users, train.seed):
                raise ValueError(f"{args.rerank} was trained on other data than {args.run} "
                                 "(data options, --max-users or --seed differ)")
        titles = None
        if args.titles is not None:
            titles = {k: v.title for k, v in read_movielens_titles(args.titles).items()}
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.n > prepared.num_items:
        print(f"error: --n {args.n} exceeds the {prepared.num_items} items", file=sys.stderr)
        return 2
    if getattr(model, "candidate_mode", False):
        print(f"error: {args.run} trained {train.model!r} with --query candidate, which cannot "
              "search the catalogue; retrieve with a last-item run and pass this one as "
              "--rerank", file=sys.stderr)
        return 2
    if not callable(getattr(model, "interest_queries", None)):
        print("error: retrieval supports MDGR, its variants, static-graph, mip, ComiRec and "
              f"PinText2; the run trained {train.model!r}", file=sys.stderr)
        return 2
    out = args.out or args.run / f"top{args.n}-{args.split}.json"
    if (problem := output_problem(args, out)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    model.to(args.device)

    start = time.perf_counter()
    exported = retrieval.export_interests(model, prepared, args.split, args.batch_size,
                                          args.device, progress=not args.no_progress)
    if args.export is not None:
        exported.save(args.export)
    options = {}
    if args.backend == "faiss-approx":
        options = {"nlist": args.nlist, "nprobe": args.nprobe, "seed": train.seed}
    try:
        index = retrieval.build_index(exported.items, args.backend, **options)
    except (ImportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    exclude = None if args.keep_history else retrieval.history_items(prepared, args.split)
    first_n = args.n if reranker is None else min(args.rerank_n, prepared.num_items)
    found = retrieval.retrieve(exported.queries, exported.offsets, exported.mask, index,
                               first_n, exclude=exclude)
    seconds = time.perf_counter() - start
    stages = [("retrieve", found, seconds)]
    if reranker is not None:
        reranker.to(args.device)
        start = time.perf_counter()
        found = retrieval.rerank(reranker, prepared, args.split, found.items, n=args.n,
                                 batch_size=max(1, args.batch_size // 4), device=args.device,
                                 progress=not args.no_progress)
        stages.append(("rerank", found, time.perf_counter() - start))
        seconds += stages[-1][2]
    if args.evaluate:
        report_stages(prepared, args.split, stages, args.n)

    user_ids = prepared.arrays["user_ids"][exported.users.numpy()]
    item_ids = prepared.arrays["item_ids"][found.items.numpy()]  # id 0 -> "" (padding)
    text = (to_csv if out.suffix.lower() == ".csv" else to_json)(
        user_ids, item_ids, found, titles,
        meta={"run": str(args.run), "model": train.model, "split": args.split, "n": args.n,
              "index": repr(index), "exclude_history": not args.keep_history},
    )
    atomic_write_text(out, text)
    print(f"{len(user_ids)} {args.split} rows x top {args.n} with {index!r} in "
          f"{seconds:.1f}s -> {out}")
    return 0


def report_stages(prepared, split: str, stages: list, n: int) -> None:
    """Print HR@10 / NDCG@10 of each stage's list (cut to the final ``n``) against the
    split's leave-one-out targets, and its seconds per row."""
    if prepared.protocol != "loo":
        print("--evaluate: the paper protocol has no single held-out item; skipped")
        return
    target = torch.from_numpy(prepared.loo_example(split)["target"]).long()
    ks = tuple(k for k in (10,) if k <= n) or (n,)
    for name, found, secs in stages:
        rank = rank_in_list(found.items[:, :n], target)
        metrics = full_ranking_metrics(rank, ks)
        shown = " ".join(f"{key.split('/')[0]}={value:.4f}" for key, value in metrics.items()
                         if not key.startswith(("recall", "mrr")))
        print(f"{name}: {shown} (top {n} of {found.items.size(1)}; "
              f"{secs / len(target) * 1e3:.2f} ms per row)")


def to_json(user_ids: np.ndarray, item_ids: np.ndarray, found: retrieval.Retrieved,
            titles: dict[str, str] | None, meta: dict) -> str:
    """One object per row: raw user id, raw item ids, scores (and titles), best first;
    slots without an item (fewer than n retrievable) are left out."""
    keep = (found.items > 0).numpy()
    scores = found.scores.numpy()
    rows = []
    for row, (user, items, score, ok) in enumerate(zip(user_ids, item_ids, scores, keep,
                                                        strict=True)):
        entry = {"row": row, "user": str(user), "items": items[ok].tolist(),
                 "scores": [round(float(s), 6) for s in score[ok]]}
        if titles is not None:
            entry["titles"] = [titles.get(i) for i in entry["items"]]
        rows.append(entry)
    head = json.dumps(meta, indent=1, ensure_ascii=False)[:-2]  # without the closing "\n}"
    body = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in rows)
    return f'{head},\n "rows": [\n  {body}\n ]\n}}\n'  # one line per row


def to_csv(user_ids: np.ndarray, item_ids: np.ndarray, found: retrieval.Retrieved,
           titles: dict[str, str] | None, meta: dict) -> str:
    """Long format ``row,user,rank,item,score[,title]``, one line per retrieved item."""
    num_rows, n = item_ids.shape
    keep = (found.items > 0).numpy().reshape(-1)
    columns = [np.repeat(np.arange(num_rows), n), np.repeat(user_ids, n),
               np.tile(np.arange(1, n + 1), num_rows), item_ids.reshape(-1),
               np.char.mod("%.6g", found.scores.numpy().reshape(-1))]
    columns = [c[keep] for c in columns]
    header = ["row", "user", "rank", "item", "score"]
    if titles is not None:
        header.append("title")
        columns.append(np.array([titles.get(i, "") for i in columns[3]], dtype=object))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(zip(*columns, strict=True))
    return buf.getvalue()


if __name__ == "__main__":
    sys.exit(main())
