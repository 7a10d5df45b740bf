"""Speed of MDGR's building blocks and of a training epoch, all measured in one run.

Sections (each figure: warm-up calls, then the median of ``--repeats`` >= 5 timed calls,
``time.perf_counter`` wall time, ``torch.set_num_threads(--threads)``):

1. **clustering** one batch (B=128, n=50, d=32, k=8): the batched torch k-means
   (``batched_kmeans``, what ``cluster_nodes(..., "kmeans")`` runs) against
   scikit-learn KMeans, Ward and Birch called graph by graph (``sklearn_cluster``);
2. **layer** forward + backward at the same sizes: the vectorised ``DynamicClusterConv``
   (with and without its k-means), the per-graph reference
   ``dynamic_cluster_conv_reference`` (``tests/nn/reference_conv.py``, so this section
   needs a full checkout), the DynamicEdgeConv recipe (torch-cluster
   ``knn_graph`` + PyG ``EdgeConv``, MLP of comparable size, same k) and ``GATConv`` on
   the static graph of consecutive items;
3. **scaling** of the layer (and of knn + EdgeConv) over B in {32, 128, 512} and n in
   {20, 50, 100, 200} (d=32, k=8): time and peak memory (see :func:`peak_tensor_bytes`);
4. **epoch**: one training epoch of MDGR and of SASRec on ml-1m-subset (paper protocol,
   same batch size, ``mdgr_graph.train._train_epoch``), and full-ranking evaluation
   throughput (``mdgr_graph.train.evaluate`` on the loo test split, users per second);
5. **candidate**: MDGR's candidate mode (``query="candidate"``, one graph per window and
   candidate) against its last-item mode, m = 1 and 5: a training step, its peak memory,
   and scoring 100 candidates per window (:func:`bench_candidate`);
6. **compile**: eager against ``torch.compile`` for the layer and for an MDGR training
   step (the compile error is recorded instead when compilation fails);
7. **bound** (not run by default): the MDGR training step with its clustering made free
   (recorded labels replayed), the most a cheaper k-means could save (:func:`bench_bound`).

Outputs ``speed.md`` (tables) and ``speed.png`` (scaling plot) in ``--out-dir`` and,
with ``--json PATH``, every figure with its raw times, the hardware and the seeds.
All files are written atomically. Example::

    .venv/bin/python benchmarks/speed.py --quick --json benchmarks/results/speed/speed.json
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib.util
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from tqdm.auto import tqdm

from mdgr_graph.bench import record
from mdgr_graph.io import atomic_write_bytes, atomic_write_text
from mdgr_graph.nn.cluster import batched_kmeans, sklearn_cluster
from mdgr_graph.nn.dynamic_cluster_conv import DynamicClusterConv

REPO = Path(__file__).resolve().parents[1]
#: The slow per-graph oracle of the layer; test code, loaded by its path (see
#: :func:`load_reference`).
REFERENCE_CONV = REPO / "tests" / "nn" / "reference_conv.py"
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
DATASET = "ml-1m-subset/ratings.dat.gz"
DEFAULT_OUT_DIR = REPO / "benchmarks" / "results" / "speed"
HEADLINE = {"B": 128, "n": 50, "d": 32, "k": 8}
SCALING_B = (32, 128, 512)
SCALING_N = (20, 50, 100, 200)
TARGETS = {
    "cluster_speedup_vs_sklearn_kmeans": (">=", 15.0),
    "conv_speedup_vs_reference": (">=", 10.0),
    "conv_speedup_vs_knn_edgeconv": (">=", 1.2),
    "epoch_ratio_mdgr_vs_sasrec": ("<=", 2.0),
    "epoch_ratio_mdgr_m1_vs_sasrec": ("<=", 2.0),
    "eval_ratio_mdgr_vs_sasrec": (">=", 0.5),
    "eval_ratio_mdgr_m1_vs_sasrec": (">=", 0.5),
    "memory_exponent_B": ("<=", 1.2),
}
#: The models of the epoch section: name in the output -> (build_model name, keywords).
#: ``mdgr`` is the model's default, the paper's m = 5 iterations; ``mdgr_m1`` is
#: ``mdgr-train``'s default (m = 1, chosen on validation, docs/results.md).
EPOCH_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "mdgr": ("mdgr", {}), "mdgr_m1": ("mdgr", {"m": 1}), "sasrec": ("sasrec", {}),
}


@functools.cache
def load_reference() -> Callable[..., Any]:
    """``dynamic_cluster_conv_reference`` from ``tests/nn/reference_conv.py``.

    The reference is test code, not part of the package, so it is loaded from the
    repository's file (once; :func:`main` loads it before timing anything when the
    ``layer`` section runs). Without that file (an installed package, no ``tests/``)
    this exits with a message saying so.
    """
    if not REFERENCE_CONV.is_file():
        raise SystemExit(
            f"benchmarks/speed.py needs the per-graph reference of DynamicClusterConv at "
            f"{REFERENCE_CONV}, which is not there; run it from a full checkout of the "
            f"repository (the reference lives in the tests, not in the installed package)"
        )
    spec = importlib.util.spec_from_file_location("mdgr_reference_conv", REFERENCE_CONV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.dynamic_cluster_conv_reference


# ---------------------------------------------------------------------- measuring
def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the bytes held by tensors allocated during one call of ``fn``.

    Every allocation and free of torch's CPU allocator is recorded by ``torch.profiler``
    (``profile_memory=True``); the running sum of those events, in time order, is the
    memory the call holds on top of what existed before it, and its maximum is the peak.
    It counts tensor storage only (activations, autograd buffers, gradients, outputs),
    not Python objects, numpy/scikit-learn buffers or allocator slack. Frees of blocks
    allocated before the call are not recorded (torch warns about them once), so tensors
    released early in the call (e.g. old gradients) do not lower the figure.
    """
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], warmup: int, repeats: int,
            device: torch.device) -> dict[str, Any]:
    """:func:`mdgr_graph.bench.record.measure` of ``fn`` followed by a device sync, so a
    CUDA figure is the time until the work is done, not until it is queued."""
    def call() -> None:
        fn()
        synchronize(device)

    return record.measure(call, warmup, repeats)


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak tensor memory of one call of ``fn`` on ``device``: :func:`peak_tensor_bytes`
    on the CPU; on CUDA the allocator's peak above what was allocated before the call
    (``torch.cuda.max_memory_allocated``)."""
    if device.type != "cuda":
        return peak_tensor_bytes(fn)
    gc.collect()
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def error_text(exc: BaseException, limit: int = 2000) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + " [...]"


# ---------------------------------------------------------------------- inputs
def make_graphs(B: int, n: int, d: int, seed: int,
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``B`` graphs of ``n`` nodes with N(0, 1) features, one query per graph, and the
    static graph of consecutive items (both directions) for GATConv; drawn on the CPU (the
    same numbers on every device), then moved to ``device``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B * n, d, generator=gen)
    batch = torch.arange(B).repeat_interleave(n)
    query = torch.randn(B, d, generator=gen)
    nodes = torch.arange(B * n).view(B, n)
    a, b = nodes[:, :-1].reshape(-1), nodes[:, 1:].reshape(-1)
    chain = torch.stack([torch.cat([a, b]), torch.cat([b, a])])
    graphs = {"x": x, "batch": batch, "query": query, "chain": chain}
    return {key: value.to(device) for key, value in graphs.items()}


class LayerBench:
    """The four layers compared at the same ``B, n, d, k`` (one forward + backward each)."""

    def __init__(self, B: int, n: int, d: int, k: int, seed: int,
                 device: torch.device | str = "cpu") -> None:
        from torch_geometric.nn import EdgeConv, GATConv

        self.B, self.n, self.d, self.k = B, n, d, k
        self.inputs = make_graphs(B, n, d, seed, device)
        torch.manual_seed(seed)
        self.conv = DynamicClusterConv(d, k=k)
        # DynamicEdgeConv recipe: MLP([x_i, x_j - x_i]) of about the layer's size, max.
        mlp = torch.nn.Sequential(
            torch.nn.Linear(2 * d, 3 * d), torch.nn.ReLU(), torch.nn.Linear(3 * d, d)
        )
        self.edge_conv = EdgeConv(mlp, aggr="max")
        self.gat = GATConv(d, d, heads=2, concat=False)
        for module in (self.conv, self.edge_conv, self.gat):
            module.to(device)
        x, batch = self.inputs["x"], self.inputs["batch"]
        self.cluster = self.conv.cluster_labels(x, batch, B)
        self.params = {
            "mdgr_layer": count_params(self.conv),
            "knn_edgeconv": count_params(self.edge_conv),
            "gat_static": count_params(self.gat),
        }

    def _x(self) -> torch.Tensor:
        return self.inputs["x"].clone().requires_grad_()

    def mdgr_layer(self) -> None:
        self.conv.zero_grad(set_to_none=True)
        i = self.inputs
        self.conv(self._x(), i["batch"], i["query"]).sum().backward()

    def mdgr_layer_given_clusters(self) -> None:
        self.conv.zero_grad(set_to_none=True)
        i = self.inputs
        self.conv(self._x(), i["batch"], i["query"], self.cluster).sum().backward()

    def reference(self) -> None:
        self.conv.zero_grad(set_to_none=True)
        i = self.inputs
        out = load_reference()(self.conv, self._x(), i["batch"], i["query"])[0]
        out.sum().backward()

    def knn_edgeconv(self) -> None:
        import torch_cluster

        self.edge_conv.zero_grad(set_to_none=True)
        x = self._x()
        edge_index = torch_cluster.knn_graph(
            x, self.k, batch=self.inputs["batch"], loop=False, flow="source_to_target"
        )
        self.edge_conv(x, edge_index).sum().backward()

    def gat_static(self) -> None:
        self.gat.zero_grad(set_to_none=True)
        self.gat(self._x(), self.inputs["chain"]).sum().backward()


# ---------------------------------------------------------------------- sections
def bench_clustering(args, bar) -> dict[str, Any]:
    B, n, d, k = (HEADLINE[key] for key in "Bndk")
    inputs = make_graphs(B, n, d, args.seed)  # scikit-learn runs on the CPU copy
    x, batch = inputs["x"], inputs["batch"]
    xd, batchd = x.to(args.device), batch.to(args.device)
    out: dict[str, Any] = {"B": B, "n": n, "d": d, "k": k, "methods": {}}
    runs = {
        "batched_kmeans": lambda: batched_kmeans(xd, batchd, k, batch_size=B),
        "sklearn_kmeans": lambda: sklearn_cluster(x, batch, k, "kmeans"),
        "sklearn_ward": lambda: sklearn_cluster(x, batch, k, "ward"),
        "sklearn_birch": lambda: sklearn_cluster(x, batch, k, "birch"),
    }
    for name, fn in runs.items():
        bar.set_description(f"clustering: {name}")
        warmup = args.warmup if name == "batched_kmeans" else 1
        out["methods"][name] = measure(fn, warmup, args.repeats, args.device)
        bar.update()
    base = out["methods"]["batched_kmeans"]["median_s"]
    out["speedup"] = {
        name: r["median_s"] / base for name, r in out["methods"].items() if name != "batched_kmeans"
    }
    return out


def bench_layer(args, bar) -> dict[str, Any]:
    lb = LayerBench(**HEADLINE, seed=args.seed, device=args.device)
    out: dict[str, Any] = {**HEADLINE, "params": lb.params, "methods": {}}
    for name in ("mdgr_layer", "mdgr_layer_given_clusters", "reference", "knn_edgeconv",
                 "gat_static"):
        bar.set_description(f"layer: {name}")
        warmup = 1 if name == "reference" else args.warmup
        out["methods"][name] = measure(getattr(lb, name), warmup, args.repeats, args.device)
        out["methods"][name]["peak_bytes"] = peak_bytes(getattr(lb, name), args.device)
        bar.update()
    base = out["methods"]["mdgr_layer"]["median_s"]
    out["speedup_of_mdgr_layer"] = {
        name: r["median_s"] / base for name, r in out["methods"].items() if name != "mdgr_layer"
    }
    return out


def bench_scaling(args, bar) -> dict[str, Any]:
    d, k = HEADLINE["d"], HEADLINE["k"]
    rows = []
    for B in SCALING_B:
        for n in SCALING_N:
            bar.set_description(f"scaling: B={B} n={n}")
            lb = LayerBench(B, n, d, k, args.seed, args.device)
            row: dict[str, Any] = {"B": B, "n": n, "d": d, "k": k}
            for name in ("mdgr_layer", "knn_edgeconv"):
                fn = getattr(lb, name)
                row[name] = measure(fn, 1, args.repeats, args.device)
                row[name]["peak_bytes"] = peak_bytes(fn, args.device)
            rows.append(row)
            del lb
            bar.update()
    # Fit peak ~ c * B^a * n^b over the grid (log-log least squares).
    design = np.array([[1.0, math.log(r["B"]), math.log(r["n"])] for r in rows])
    target = np.array([math.log(max(r["mdgr_layer"]["peak_bytes"], 1)) for r in rows])
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    per_bn2 = [r["mdgr_layer"]["peak_bytes"] / (r["B"] * r["n"] ** 2) for r in rows]
    return {
        "rows": rows,
        "memory_exponent_B": float(coef[1]),
        "memory_exponent_n": float(coef[2]),
        "bytes_per_B_n2": {"min": min(per_bn2), "max": max(per_bn2)},
    }


def _limited(dataset, num_batches: int | None, batch_size: int):
    """The first ``num_batches * batch_size`` examples of ``dataset`` (all when None)."""
    if num_batches is None or num_batches * batch_size >= len(dataset):
        return dataset
    return dataset[: num_batches * batch_size]


def _paper_training(args, path: Path) -> tuple[Any, Any, Any, Any]:
    """ml-1m-subset under the paper protocol, its training windows (all, and the first
    ``--epoch-batches`` batches of them) and the training configuration of the sections
    that time training steps."""
    from mdgr_graph.data.dataset import SequenceDataset
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset
    from mdgr_graph.train import TrainConfig

    paper = prepare_dataset(DataOptions(format="movielens", path=str(path), protocol="paper"))
    train_full = SequenceDataset(paper, "train")
    train = _limited(train_full, args.epoch_batches, args.batch_size)
    config = TrainConfig(batch_size=args.batch_size, progress=False, seed=args.seed,
                         device=str(args.device))
    return paper, train_full, train, config


def bench_epoch(args, bar) -> dict[str, Any]:
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset
    from mdgr_graph.models import build_model
    from mdgr_graph.train import _train_epoch, deterministic_algorithms, evaluate

    path = args.data_dir / DATASET
    out: dict[str, Any] = {"dataset": str(path), "batch_size": args.batch_size,
                           "epoch_batches": args.epoch_batches,
                           "eval_batches": args.eval_batches, "models": {}}
    if not path.is_file():
        out["skipped"] = f"data file not found: {path}"
        bar.update(2 * len(EPOCH_MODELS))
        return out
    paper, train_full, train, config = _paper_training(args, path)
    loo = prepare_dataset(DataOptions(format="movielens", path=str(path), protocol="loo"))
    out["train_windows"] = len(train)
    out["train_windows_full"] = len(train_full)
    out["batches_per_epoch"] = math.ceil(len(train) / args.batch_size)
    eval_users = loo.split_size("test")
    if args.eval_batches is not None:
        eval_users = min(eval_users, args.eval_batches * args.eval_batch_size)
    out["eval_users"] = eval_users
    out["eval_batch_size"] = args.eval_batch_size

    for name, (model_name, kwargs) in EPOCH_MODELS.items():
        entry: dict[str, Any] = {"model": model_name, "kwargs": kwargs}
        out["models"][name] = entry
        bar.set_description(f"epoch: {name}")
        try:
            torch.manual_seed(args.seed)
            model = build_model(model_name, paper, **kwargs).to(args.device)
        except Exception as exc:  # e.g. a model that does not exist in this checkout
            entry["skipped"] = f"build_model({name!r}) failed: {error_text(exc)}"
            tqdm.write(f"[speed] skipping {name}: {entry['skipped']}")
            bar.update(2)
            continue
        entry["params"] = model.num_parameters()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        epoch = iter(range(10**6))
        with deterministic_algorithms(config.deterministic):
            entry["epoch"] = measure(
                lambda m=model, o=optimizer, e=epoch: _train_epoch(m, o, train, config, next(e)),
                1, args.repeats, args.device,
            )
        bar.update()

        bar.set_description(f"eval: {name}")
        torch.manual_seed(args.seed)
        eval_model = build_model(model_name, loo, **kwargs).to(args.device)
        entry["eval"] = measure(
            lambda m=eval_model: evaluate(m, loo, "test", batch_size=args.eval_batch_size,
                                          device=args.device, max_batches=args.eval_batches),
            1, args.repeats, args.device,
        )
        entry["eval_users_per_s"] = eval_users / entry["eval"]["median_s"]
        bar.update()

    s = out["models"]["sasrec"]
    for name in ("mdgr", "mdgr_m1"):
        m = out["models"][name]
        if "epoch" in m and "epoch" in s:
            out[f"epoch_ratio_{name}_vs_sasrec"] = m["epoch"]["median_s"] / s["epoch"]["median_s"]
            out[f"eval_ratio_{name}_vs_sasrec"] = m["eval_users_per_s"] / s["eval_users_per_s"]
    return out


class ClusterReplay:
    """Stands in for ``cluster_nodes``: records the labels of every call, then, once
    :attr:`replaying`, returns the recorded labels in call order at no cost.

    Replaying the same batches in the same order gives every iteration the clusters of
    the recorded pass, so the rest of the step does the same work (the same candidate
    pairs, the same edge budgets); only the clustering's own time is gone.
    """

    def __init__(self, cluster_nodes: Callable[..., torch.Tensor]) -> None:
        self.cluster_nodes = cluster_nodes
        self.labels: list[torch.Tensor] = []
        self.position = 0
        self.replaying = False

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.replaying:
            self.labels.append(self.cluster_nodes(x, *args, **kwargs))
            return self.labels[-1]
        labels = self.labels[self.position % len(self.labels)]
        self.position += 1
        if labels.numel() != x.size(0):
            raise RuntimeError("cluster replay out of step: the batches changed order")
        return labels


def bench_bound(args, bar) -> dict[str, Any]:
    """The training step with the clustering made free (:class:`ClusterReplay`): the most
    that any cheaper k-means (warm starts, fewer Lloyd steps) could save.

    MDGR (m = 5 and m = 1) and SASRec train on the same first ``--epoch-batches``
    batches of ml-1m-subset in the same order every call (``_train_epoch`` at epoch 0);
    MDGR is timed with its k-means and then with the recorded labels replayed.
    """
    from unittest import mock

    from mdgr_graph.models import build_model
    from mdgr_graph.models import mdgr as mdgr_module
    from mdgr_graph.nn import dynamic_cluster_conv as conv_module
    from mdgr_graph.nn.cluster import cluster_nodes
    from mdgr_graph.train import _train_epoch

    path = args.data_dir / DATASET
    out: dict[str, Any] = {"dataset": str(path), "batch_size": args.batch_size,
                           "epoch_batches": args.epoch_batches, "models": {}}
    if not path.is_file():
        out["skipped"] = f"data file not found: {path}"
        bar.update(len(EPOCH_MODELS))
        return out
    paper, _, train, config = _paper_training(args, path)
    out["batches"] = math.ceil(len(train) / args.batch_size)
    for name, (model_name, kwargs) in EPOCH_MODELS.items():
        bar.set_description(f"bound: {name}")
        torch.manual_seed(args.seed)
        model = build_model(model_name, paper, **kwargs).to(args.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

        def epoch(m=model, o=optimizer) -> None:
            _train_epoch(m, o, train, config, 0)

        entry = {"model": model_name, "kwargs": kwargs,
                 "step": measure(epoch, args.warmup, args.repeats, args.device)}
        if model_name == "mdgr":
            replay = ClusterReplay(cluster_nodes)
            with mock.patch.object(conv_module, "cluster_nodes", replay), \
                    mock.patch.object(mdgr_module, "cluster_nodes", replay):
                epoch()  # record
                replay.replaying = True
                entry["step_clusters_free"] = measure(epoch, args.warmup, args.repeats,
                                                      args.device)
            entry["cluster_calls_per_epoch"] = len(replay.labels)
        for key in ("step", "step_clusters_free"):
            if key in entry:
                entry[key]["per_batch_s"] = entry[key]["median_s"] / out["batches"]
        out["models"][name] = entry
        bar.update()
    base = out["models"]["sasrec"]["step"]["median_s"]
    for entry in out["models"].values():
        entry["ratio_vs_sasrec"] = entry["step"]["median_s"] / base
        if "step_clusters_free" in entry:
            entry["ratio_clusters_free_vs_sasrec"] = (
                entry["step_clusters_free"]["median_s"] / base)
            entry["clustering_share"] = 1 - (entry["step_clusters_free"]["median_s"]
                                             / entry["step"]["median_s"])
    return out


#: (m, query, training draw) of the candidate-mode section; draw None: every candidate.
CANDIDATE_CASES = ((1, "last", None), (1, "candidate", (1, 4)), (1, "candidate", (10, 10)),
                   (5, "last", None), (5, "candidate", (1, 4)))


def bench_candidate(args, bar) -> dict[str, Any]:
    """MDGR's candidate mode against its last-item mode on ml-1m-subset (paper protocol):
    one training step (the first training batch, ``--batch-size`` windows), its peak
    tensor memory, and scoring the 100 candidates of ``--candidate-eval-windows`` test
    windows (``score_candidates``, no gradient)."""
    from torch_geometric.loader import DataLoader

    from mdgr_graph.data.dataset import SequenceDataset
    from mdgr_graph.data.prepare import DataOptions, prepare_dataset
    from mdgr_graph.models import build_model

    path = args.data_dir / DATASET
    out: dict[str, Any] = {"dataset": str(path), "batch_size": args.batch_size,
                           "eval_windows": args.candidate_eval_windows, "cases": []}
    if not path.is_file():
        out["skipped"] = f"data file not found: {path}"
        bar.update(len(CANDIDATE_CASES))
        return out
    paper = prepare_dataset(DataOptions(format="movielens", path=str(path), protocol="paper"))
    train = SequenceDataset(paper, "train")
    train.set_epoch(0)
    batch = next(iter(DataLoader(train, batch_size=args.batch_size))).to(args.device)
    test = SequenceDataset(paper, "test")
    eval_batch = next(iter(DataLoader(test, batch_size=args.candidate_eval_windows)))
    eval_batch = eval_batch.to(args.device)
    repeats = max(5, args.repeats)
    for m, query, draw in CANDIDATE_CASES:
        bar.set_description(f"candidate: m={m} {query}")
        torch.manual_seed(args.seed)
        kwargs: dict[str, Any] = {"m": m, "query": query}
        if query == "candidate":
            kwargs.update(train_positives=draw[0], train_negatives=draw[1])
        model = build_model("mdgr", paper, **kwargs).to(args.device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step(model=model, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            model.loss(batch).backward()
            optimizer.step()

        def score(model=model) -> None:
            with torch.no_grad():
                model.score_candidates(eval_batch)

        model.train()
        row = {"m": m, "query": query,
               "candidates_per_window": (eval_batch.candidates.size(1) if draw is None
                                         else sum(draw)),
               "step": measure(step, args.warmup, repeats, args.device),
               "step_peak_bytes": peak_bytes(step, args.device)}
        model.eval()
        row["eval"] = measure(score, 1, repeats, args.device)
        row["eval_ms_per_window"] = row["eval"]["median_s"] * 1e3 / eval_batch.num_graphs
        out["cases"].append(row)
        bar.update()
    last = {r["m"]: r for r in out["cases"] if r["query"] == "last"}
    for r in out["cases"]:
        base = last[r["m"]]
        r["step_vs_last"] = r["step"]["median_s"] / base["step"]["median_s"]
        r["eval_vs_last"] = r["eval"]["median_s"] / base["eval"]["median_s"]
        # the naive cost: one last-item step per training candidate of a window
        r["step_vs_naive"] = (None if r["query"] == "last" else r["step"]["median_s"]
                              / (r["candidates_per_window"] * base["step"]["median_s"]))
    return out


def bench_compile(args, bar) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.no_compile:
        out["skipped"] = "--no-compile"
        bar.update(2)
        return out

    # Dynamo warns about every graph break; the layer breaks (by design) where it reads
    # sizes from data (n_max, the edge budget), so keep the log quiet.
    import logging

    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)

    # The layer.
    bar.set_description("compile: layer")
    lb = LayerBench(**HEADLINE, seed=args.seed, device=args.device)
    layer: dict[str, Any] = {"eager": measure(lb.mdgr_layer, args.warmup, args.repeats,
                                              args.device)}
    try:
        compiled = torch.compile(lb.conv)
        i = lb.inputs

        def step() -> None:
            lb.conv.zero_grad(set_to_none=True)
            compiled(lb._x(), i["batch"], i["query"]).sum().backward()

        start = time.perf_counter()
        step()
        layer["first_call_s"] = time.perf_counter() - start
        layer["compiled"] = measure(step, args.warmup, args.repeats, args.device)
        with torch.no_grad():
            diff = (compiled(i["x"], i["batch"], i["query"]) - lb.conv(i["x"], i["batch"],
                                                                        i["query"])).abs().max()
        layer["max_abs_diff"] = float(diff)
        layer["speedup"] = layer["eager"]["median_s"] / layer["compiled"]["median_s"]
    except Exception as exc:
        layer["error"] = error_text(exc)
        tqdm.write(f"[speed] torch.compile of the layer failed: {layer['error'][:300]}")
    out["layer"] = layer
    bar.update()

    # One MDGR training step (loss + backward) on a fixed ml-1m-subset batch.
    bar.set_description("compile: MDGR step")
    model_out: dict[str, Any] = {}
    path = args.data_dir / DATASET
    if not path.is_file():
        model_out["skipped"] = f"data file not found: {path}"
    else:
        from torch_geometric.loader import DataLoader

        from mdgr_graph.data.dataset import SequenceDataset
        from mdgr_graph.data.prepare import DataOptions, prepare_dataset
        from mdgr_graph.models import build_model

        paper = prepare_dataset(DataOptions(format="movielens", path=str(path),
                                            protocol="paper"))
        torch.manual_seed(args.seed)
        # eval: no dropout, comparable outputs
        model = build_model("mdgr", paper).to(args.device).eval()
        loader = DataLoader(SequenceDataset(paper, "train"), batch_size=args.batch_size)
        batch = next(iter(loader)).to(args.device)

        def eager_step() -> None:
            model.zero_grad(set_to_none=True)
            model.loss(batch).backward()

        model_out["eager"] = measure(eager_step, args.warmup, args.repeats, args.device)
        try:
            loss_fn = torch.compile(model.loss)

            def compiled_step() -> None:
                model.zero_grad(set_to_none=True)
                loss_fn(batch).backward()

            start = time.perf_counter()
            compiled_step()
            model_out["first_call_s"] = time.perf_counter() - start
            model_out["compiled"] = measure(compiled_step, args.warmup, args.repeats,
                                            args.device)
            with torch.no_grad():
                model_out["loss_abs_diff"] = float((loss_fn(batch) - model.loss(batch)).abs())
            model_out["speedup"] = (model_out["eager"]["median_s"]
                                    / model_out["compiled"]["median_s"])
        except Exception as exc:
            model_out["error"] = error_text(exc)
            tqdm.write(f"[speed] torch.compile of MDGR failed: {model_out['error'][:300]}")
    out["mdgr_step"] = model_out
    bar.update()
    return out


# ---------------------------------------------------------------------- reporting
def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The figures the issue asks for, and whether each target holds."""
    figures: dict[str, Any] = {}
    c, lay = results.get("clustering"), results.get("layer")
    if c:
        figures["cluster_speedup_vs_sklearn_kmeans"] = c["speedup"]["sklearn_kmeans"]
    if lay:
        figures["conv_speedup_vs_reference"] = lay["speedup_of_mdgr_layer"]["reference"]
        figures["conv_speedup_vs_knn_edgeconv"] = lay["speedup_of_mdgr_layer"]["knn_edgeconv"]
    ep = results.get("epoch") or {}
    for name in ("mdgr", "mdgr_m1"):
        for kind in ("epoch", "eval"):
            key = f"{kind}_ratio_{name}_vs_sasrec"
            figures[key] = ep.get(key)
    sc = results.get("scaling")
    if sc:
        figures["memory_exponent_B"] = sc["memory_exponent_B"]
        figures["memory_exponent_n"] = sc["memory_exponent_n"]
    targets = {}
    for key, (op, bound) in TARGETS.items():
        value = figures.get(key)
        holds = None if value is None else (value >= bound if op == ">=" else value <= bound)
        targets[key] = {"value": value, "target": f"{op} {bound:g}", "holds": holds}
    return {"figures": figures, "targets": targets}


def section_head(lines: list[str], title: str, result: dict[str, Any] | None) -> bool:
    """Append the heading of a section that ran (and its reason when it was skipped);
    whether its figures follow."""
    if not result:
        return False
    lines += ["", f"## {title}", ""]
    if "skipped" in result:
        lines.append(f"Skipped: {result['skipped']}")
        return False
    return True


def ms(r: dict[str, Any] | None) -> str:
    return "—" if not r or "median_s" not in r else f"{r['median_s'] * 1e3:,.1f} ms"


def mib(nbytes: int | None) -> str:
    return "—" if nbytes is None else f"{nbytes / 2**20:,.1f} MiB"


def markdown(payload: dict[str, Any]) -> str:
    res, hw, run = payload["results"], payload["hardware"], payload["run"]
    lines = [
        "# benchmarks/speed.py results",
        "",
        f"{run['finished']} — {hw['platform']}, {hw['cpu_count']} CPUs, "
        f"device {hw.get('device', 'cpu')}{' (' + hw['gpu'] + ')' if hw.get('gpu') else ''}, "
        f"{hw['threads']} torch thread(s), torch {hw['torch']}, "
        f"PyG {hw['torch_geometric']}; median of {run['repeats']} after "
        f"{run['warmup']} warm-up call(s){' (--quick)' if run['quick'] else ''}; "
        f"seed {run['seed']}.",
        "",
        "## Headline (B = 128, n = 50, d = 32, k = 8)",
        "",
        "| figure | value | target | holds |",
        "|---|---|---|---|",
    ]
    for key, t in payload["headline"]["targets"].items():
        value = "—" if t["value"] is None else f"{t['value']:.2f}"
        holds = {True: "yes", False: "**no**", None: "not measured"}[t["holds"]]
        lines.append(f"| `{key}` | {value} | {t['target']} | {holds} |")

    c = res.get("clustering")
    if c:
        lines += ["", "## Clustering one batch", "",
                  "| method | median | batched k-means is … faster |", "|---|---|---|"]
        for name, r in c["methods"].items():
            speed = c["speedup"].get(name)
            lines.append(f"| {name} | {ms(r)} | {'—' if speed is None else f'{speed:.1f}x'} |")

    lay = res.get("layer")
    if lay:
        lines += ["", "## One layer, forward + backward", "",
                  f"Parameters: {lay['params']}.", "",
                  "| layer | median | peak tensor memory | MDGR layer is … faster |",
                  "|---|---|---|---|"]
        for name, r in lay["methods"].items():
            speed = lay["speedup_of_mdgr_layer"].get(name)
            lines.append(f"| {name} | {ms(r)} | {mib(r.get('peak_bytes'))} | "
                         f"{'—' if speed is None else f'{speed:.2f}x'} |")

    sc = res.get("scaling")
    if sc:
        lines += ["", "## Scaling (d = 32, k = 8; forward + backward)", "",
                  f"Peak tensor memory of the MDGR layer fits B^{sc['memory_exponent_B']:.2f}"
                  f" · n^{sc['memory_exponent_n']:.2f}; bytes / (B n²) ranges "
                  f"{sc['bytes_per_B_n2']['min']:.0f}–{sc['bytes_per_B_n2']['max']:.0f}.", "",
                  "| B | n | MDGR layer | peak | bytes/(B n²) | knn + EdgeConv | peak |",
                  "|---|---|---|---|---|---|---|"]
        for r in sc["rows"]:
            m, e = r["mdgr_layer"], r["knn_edgeconv"]
            lines.append(f"| {r['B']} | {r['n']} | {ms(m)} | {mib(m['peak_bytes'])} | "
                         f"{m['peak_bytes'] / (r['B'] * r['n'] ** 2):.0f} | {ms(e)} | "
                         f"{mib(e['peak_bytes'])} |")

    ep = res.get("epoch")
    if section_head(lines, "Training epoch and evaluation (ml-1m-subset)", ep):
        limit = ("full epoch" if ep["epoch_batches"] is None
                 else f"first {ep['epoch_batches']} batches only (--epoch-batches)")
        lines += [f"Paper protocol, {ep['train_windows']} of {ep['train_windows_full']} "
                  f"training windows ({limit}), batch size {ep['batch_size']}; "
                  f"evaluation: loo test split, {ep['eval_users']} users, full ranking, "
                  f"batch size {ep['eval_batch_size']}.", "",
                  "| model | epoch | s / batch | eval users / s |", "|---|---|---|---|"]
        for name, e in ep["models"].items():
            if "skipped" in e:
                lines.append(f"| {name} | skipped: {e['skipped']} | | |")
                continue
            per_batch = e["epoch"]["median_s"] / ep["batches_per_epoch"]
            lines.append(f"| {name} | {e['epoch']['median_s']:.2f} s | {per_batch:.3f} | "
                         f"{e['eval_users_per_s']:,.0f} |")

    cand = res.get("candidate")
    if section_head(lines, "Candidate mode (ml-1m-subset, paper protocol)", cand):
        lines += [f"MDGR with the candidate as the query of Eq. 11 (`query=\"candidate\"`) "
                  f"against the last-item query: one training step on "
                  f"{cand['batch_size']} windows (forward, backward, Adam), its peak "
                  f"tensor memory, and scoring all 100 candidates of "
                  f"{cand['eval_windows']} test windows. 'naive' is one last-item step "
                  "per training candidate of a window, the cost without sharing.", "",
                  "| m | query | train candidates / window | step | x last | x naive | "
                  "peak | eval / window | x last |", "|---|---|---|---|---|---|---|---|---|"]
        for r in cand["cases"]:
            naive = "—" if r["step_vs_naive"] is None else f"{r['step_vs_naive']:.2f}"
            lines.append(
                f"| {r['m']} | {r['query']} | {r['candidates_per_window']} | "
                f"{ms(r['step'])} | {r['step_vs_last']:.2f} | {naive} | "
                f"{mib(r['step_peak_bytes'])} | {r['eval_ms_per_window']:.2f} ms | "
                f"{r['eval_vs_last']:.1f} |")

    bound = res.get("bound")
    if section_head(lines, "Bound: the training step with the clustering free (ml-1m-subset)",
                    bound):
        lines += [f"Paper protocol, the first {bound['batches']} batches of "
                  f"{bound['batch_size']} windows, the same order every call; "
                  "'clustering free': every k-means call returns the labels recorded on "
                  "an earlier pass (the most any cheaper k-means could save).", "",
                  "| model | s / batch | x SASRec | clustering free: s / batch | x SASRec "
                  "| clustering's share |", "|---|---|---|---|---|---|"]
        for name, e in bound["models"].items():
            free = e.get("step_clusters_free")
            lines.append(
                f"| {name} | {e['step']['per_batch_s']:.3f} | {e['ratio_vs_sasrec']:.2f} | "
                + ("— | — | — |" if free is None else
                   f"{free['per_batch_s']:.3f} | {e['ratio_clusters_free_vs_sasrec']:.2f} "
                   f"| {e['clustering_share']:.0%} |"))

    comp = res.get("compile")
    if section_head(lines, "torch.compile", comp):
        lines += ["| what | eager | compiled | first call (compile) | speed-up |",
                  "|---|---|---|---|---|"]
        for name in ("layer", "mdgr_step"):
            r = comp.get(name, {})
            if "error" in r or "skipped" in r:
                lines.append(f"| {name} | {ms(r.get('eager'))} | "
                             f"{r.get('error') or r.get('skipped')} | | |")
                continue
            lines.append(f"| {name} | {ms(r['eager'])} | {ms(r['compiled'])} | "
                         f"{r['first_call_s']:.1f} s | {r['speedup']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(scaling: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for B in SCALING_B:
        rows = [r for r in scaling["rows"] if r["B"] == B]
        ns = [r["n"] for r in rows]
        for name, style in (("mdgr_layer", "-o"), ("knn_edgeconv", ":s")):
            label = f"{'MDGR layer' if name == 'mdgr_layer' else 'knn+EdgeConv'}, B={B}"
            ax_t.plot(ns, [r[name]["median_s"] * 1e3 for r in rows], style, label=label)
            ax_m.plot(ns, [r[name]["peak_bytes"] / 2**20 for r in rows], style, label=label)
    for ax, title, unit in ((ax_t, "forward + backward", "ms"),
                            (ax_m, "peak tensor memory", "MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(SCALING_N, [str(n) for n in SCALING_N])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("nodes per graph n")
        ax.set_ylabel(unit)
        ax.set_title(f"{title} (d=32, k=8)")
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: --epoch-batches 10 and --eval-batches 2 unless "
                             "given, one warm-up call")
    parser.add_argument("--json", type=Path, default=None,
                        help="write every figure to PATH (atomically)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where speed.md and speed.png go (default: the folder of "
                             f"--json, else {DEFAULT_OUT_DIR.relative_to(REPO)})")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (>= 5)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls first (default 2, --quick 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"folder holding {DATASET}")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size")
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--epoch-batches", type=int, default=None,
                        help="limit an epoch to its first N batches (default: full epoch)")
    parser.add_argument("--eval-batches", type=int, default=None,
                        help="limit the evaluation to N batches (default: all test users)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--candidate-eval-windows", type=int, default=64,
                        help="candidate section: test windows scored (100 candidates each)")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (cuda:N): where the layers and models run; "
                             "scikit-learn's clustering stays on the CPU, and CUDA times "
                             "include a synchronize")
    parser.add_argument("--sections",
                        default="clustering,layer,scaling,epoch,candidate,compile",
                        help="comma-separated subset of the sections to run (also: bound)")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5 (the median of at least 5 runs)")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device: {exc}")
    if args.device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device}")
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available on this machine")
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.quick:
        args.epoch_batches = 10 if args.epoch_batches is None else args.epoch_batches
        args.eval_batches = 2 if args.eval_batches is None else args.eval_batches
    if args.out_dir is None:
        args.out_dir = args.json.parent if args.json is not None else DEFAULT_OUT_DIR
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    return args


SECTIONS = {
    "clustering": (bench_clustering, 4),
    "layer": (bench_layer, 5),
    "scaling": (bench_scaling, len(SCALING_B) * len(SCALING_N)),
    "epoch": (bench_epoch, 2 * len(EPOCH_MODELS)),
    "candidate": (bench_candidate, len(CANDIDATE_CASES)),
    "compile": (bench_compile, 2),
    "bound": (bench_bound, len(EPOCH_MODELS)),
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        print(f"unknown sections: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if "layer" in args.sections:
        load_reference()  # a missing reference stops the run here, not after an hour
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    total = sum(SECTIONS[s][1] for s in args.sections)
    with tqdm(total=total, desc="speed", dynamic_ncols=True) as bar:
        for name in args.sections:
            fn, steps = SECTIONS[name]
            before = bar.n
            try:
                results[name] = fn(args, bar)
            except Exception as exc:  # keep the other sections' figures
                errors[name] = traceback.format_exc()
                tqdm.write(f"[speed] section {name} failed: {error_text(exc, 500)}")
                bar.update(max(0, before + steps - bar.n))
    payload = {
        "run": {"started": started,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "argv": sys.argv[1:] if argv is None else argv, "quick": args.quick,
                "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
                "device": str(args.device), "seed": args.seed,
                "seeds": {"torch": args.seed, "inputs": args.seed, "training": args.seed},
                "epoch_batches": args.epoch_batches, "eval_batches": args.eval_batches,
                "sections": args.sections},
        "hardware": {**record.environment(args.threads), "device": str(args.device),
                     "gpu": (torch.cuda.get_device_name(args.device)
                             if args.device.type == "cuda" else None)},
        "results": results,
        "errors": errors,
    }
    payload["headline"] = headline(results)
    payload.update(payload["headline"]["figures"])  # the headline figures at top level
    text = markdown(payload)
    print("\n" + text)
    atomic_write_text(args.out_dir / "speed.md", text)
    if "scaling" in results:
        plot(results["scaling"], args.out_dir / "speed.png")
    if args.json is not None:
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out_dir / 'speed.md'}"
          + (f", {args.out_dir / 'speed.png'}" if "scaling" in results else "")
          + (f", {args.json}" if args.json else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
