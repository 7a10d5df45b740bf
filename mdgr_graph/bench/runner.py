"""The benchmark runner: every model on one dataset and protocol, over several seeds.

For each seed ``s`` the data are prepared with ``seed=s`` (so the user split and the fixed
negatives change with the seed) and every model is trained with ``seed=s`` by the one
training loop of ``mdgr_graph.train``. Closed-form baselines (ItemKNN, EASE) pick their
hyper-parameters on the validation split of that seed from a fixed grid; neural models use
the configuration given on the command line (the same for every neural model, passed to
each model as :func:`~mdgr_graph.cli.model_options.benchmark_model_kwargs` says) and
select their best epoch on validation. Test metrics are read once, for the selected model.

- **Naming.** A run is ``<model>-seed<s>-<hash>`` (:func:`run_tag`), the hash that of
  :func:`run_config`, everything besides the seed that decides its result; options not
  given stay out of it, so adding an option keeps the names of earlier runs.
- **Claiming.** A run being trained holds ``<tag>.lock`` with its process id
  (:func:`claim`), so several copies can run on different models at once; a lock left
  by a killed process is taken over.
- **Resuming.** Every run is written to ``<out>/<dataset>-<protocol>/runs/<tag>.json``
  as soon as it finishes (atomically) and is never rerun; neural runs checkpoint every
  epoch under ``--work-dir`` and resume from there, and a longer run continues a
  finished shorter one (:func:`extend_shorter_run`). Runs whose recorded code defaults
  have changed since are refused (:func:`stale_runs`).
- **Summaries.** ``<out>/<summary name>.json`` (one entry per model: per-seed metrics,
  mean, std, params, train seconds) and the Table 2 Markdown beside it are rebuilt from
  the run files at the end of every invocation (:func:`summarize`), named after the
  options given (:func:`summary_path`).

``benchmarks/compare.py`` is this module's command line (:func:`main`); the other
benchmark scripts read its runs (:func:`finished_run`) or drive it. Paths default to a
checkout: ``root`` (the repository) holds ``benchmarks/results`` and ``runs/compare``,
and the data sit in ``../shared/data`` beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mdgr_graph.bench import record
from mdgr_graph.cli.model_options import benchmark_model_kwargs
from mdgr_graph.data.cli import (
    LOO_TRAIN_TARGET_HELP,
    add_csv_arguments,
    add_loo_training_arguments,
    loo_training_problem,
)
from mdgr_graph.data.prepare import FORMATS, DataOptions, PreparedDataset, prepare_dataset
from mdgr_graph.data.repeats import repeat_share
from mdgr_graph.io import atomic_write_text
from mdgr_graph.models import CLOSED_FORM, MODELS, build_model, model_defaults
from mdgr_graph.models.base import CANDIDATE_LOSSES, SequentialRecommender
from mdgr_graph.models.mdgr import POOL_VALUES
from mdgr_graph.nn.repeat import REPEAT_MODES
from mdgr_graph.train import SELECTION_METRIC, TrainConfig, evaluate, fit, load_checkpoint

#: Dataset name -> (reader format, file inside the data folder; None: generated).
DATASETS: dict[str, tuple[str, str | None]] = {
    "synthetic": ("synthetic", None),  # the embedded default log, planted interests
    "ml-1m-subset": ("movielens", "ml-1m-subset/ratings.dat.gz"),
    "ml-100k": ("movielens", "ml-100k/u.data.gz"),
    "amazon-beauty": ("amazon", "amazon-beauty/interactions.tsv.gz"),
    "amazon-sports": ("amazon", "amazon-sports/interactions.tsv.gz"),
}

#: Validation grids of the closed-form baselines (every combination is fitted).
GRIDS: dict[str, dict[str, list[Any]]] = {
    "pop": {},
    "spop": {},
    "itemknn": {"neighbours": [20, 50, 100, 200, 500, None], "shrink": [0.0, 10.0, 50.0, 100.0]},
    "ease": {"l2": [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0]},
}

#: Metrics reported per protocol: (column name, key in evaluate()'s output).
REPORTED = {
    "paper": [("AUC", "auc/sampled"), ("Recall@50", "recall@50/sampled")],
    "loo": [("HR@10", "hr@10/full"), ("NDCG@10", "ndcg@10/full"), ("MRR", "mrr/full")],
}

SEED_NOTE = {
    "paper": "The seed changes the user split, the fixed negatives and the initialisation.",
    "loo": "The leave-one-out split is the same for every seed (the seed changes the sampled "
           "negatives and the initialisation), so closed-form models score the same on every "
           "seed.",
}

DEFAULT_MODELS = ("pop", "spop", "itemknn", "ease", "gru4rec", "sasrec", "mdgr")
DEFAULT_LR = 2e-3


#: The first line of ``benchmarks/compare.py --help``.
DESCRIPTION = ("Table 2: every model on one dataset and protocol, over several seeds, side "
               "by side.")


def parse_args(argv: list[str] | None = None, root: Path | None = None) -> argparse.Namespace:
    """The runner's options (``argv``; default ``sys.argv[1:]``), with the folders under
    ``root`` (the repository; default the working directory) as defaults."""
    root = Path.cwd() if root is None else Path(root)
    p = argparse.ArgumentParser(description=DESCRIPTION,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ml-1m-subset",
                   help="a named dataset under --data-dir (or --path for any log)")
    p.add_argument("--path", type=Path, default=None,
                   help="any log instead of --dataset: the file, read as --format (csv: with "
                        "the column options below); its tables and runs are named --name")
    p.add_argument("--format", choices=[f for f in FORMATS if f != "synthetic"], default=None,
                   help="with --path: the reader")
    p.add_argument("--name", default=None,
                   help="with --path: name of its tables and run folders (default: the file "
                        "name up to its first dot)")
    add_csv_arguments(p)
    p.add_argument("--synthetic-repeat-prob", type=float, default=None,
                   help="--dataset synthetic: probability that an interaction repeats one of "
                        "the user's recent items (repeat consumption); the tables are named "
                        "synthetic-repeat<P>")
    p.add_argument("--synthetic-repeat-window", type=int, default=None,
                   help="with --synthetic-repeat-prob: how many previous items a repeat "
                        "chooses from (default 50)")
    p.add_argument("--protocol", choices=["paper", "loo"], default="paper")
    p.add_argument("--data-dir", type=Path, default=root.resolve().parent / "shared" / "data",
                   help="folder holding the datasets (../shared/data beside the repository)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=60, help="neural models: maximum epochs")
    p.add_argument("--patience", type=int, default=8, help="neural models: early stopping")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="neural models: Adam learning rate")
    p.add_argument("--lr-grid", default=None,
                   help="neural models: comma-separated learning rates tried on the tuning "
                        "seed; each model then runs every seed with the one of best "
                        "validation metric (replaces --lr; the same grid for every model)")
    p.add_argument("--tune-seed", type=int, default=None,
                   help="seed whose validation split picks the learning rate of --lr-grid "
                        "(default: the first of --seeds)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dim", type=int, default=32, help="neural models: width d")
    p.add_argument("--mdgr-k", type=int, default=None,
                   help="MDGR variants: number of interests k (default: the model's, 8)")
    p.add_argument("--mdgr-m", type=int, default=None,
                   help="MDGR variants: graph iterations m (default: the model's, 5)")
    p.add_argument("--mdgr-weighting", choices=["paper", "log"], default=None,
                   help="MDGR variants: how interest weights enter the score (default: "
                        "the model's, 'paper' = Eq. 16)")
    p.add_argument("--mdgr-cluster", choices=["kmeans", "ward"], default=None,
                   help="MDGR variants: clustering algorithm of every iteration and of the "
                        "final pooling (default: the model's, 'kmeans'; MIP is always Ward)")
    p.add_argument("--mdgr-cluster-on", choices=["state", "item"], default=None,
                   help="MDGR variants: what the clustering and the metric graph are built "
                        "from (default: the model's, 'state' = the paper; 'item': the item "
                        "embeddings alone, not in the paper)")
    p.add_argument("--mdgr-nodes-per-cluster", type=int, default=None, metavar="S",
                   help="MDGR variants, MIP and static-graph: at most max(1, n // S) clusters "
                        "for a sequence of n items (not in the paper; default: the model's, "
                        "k for every sequence)")
    p.add_argument("--mdgr-pool-values", choices=list(POOL_VALUES), default=None,
                   help="MDGR variants, MIP and static-graph: what the interest pooling mixes "
                        "(default: the model's, 'state' = the paper; 'item': the item "
                        "embeddings, not in the paper)")
    p.add_argument("--mdgr-input-norm", choices=["none", "scale", "layer"], default=None,
                   help="MDGR variants, MIP and static-graph: balance of the encoder's input "
                        "parts (default: the model's, 'none' = the paper)")
    p.add_argument("--mdgr-repeat", choices=list(REPEAT_MODES), default=None,
                   help="MDGR variants, MIP and static-graph: 'gate' adds a learned bonus for "
                        "candidates already in the input sequence (repeat consumption; not "
                        "in the paper; default: the model's, 'none')")
    p.add_argument("--loss", choices=list(CANDIDATE_LOSSES), default=None,
                   help="neural models that support it: training loss, 'ce' = a softmax over "
                        "every item (default: each model's own, Eq. 17's BCE for most); "
                        "models without the option keep their own")
    p.add_argument("--gbce-t", type=float, default=None,
                   help="with --loss gbce: gBCE's calibration t in [0, 1] (default: the "
                        "models', 0.75)")
    p.add_argument("--query", choices=["last", "candidate"], default=None,
                   help="MDGR variants and surge: query of the graph attention (Eq. 11); "
                        "'candidate' builds one graph per (window, candidate), as the paper "
                        "(default: the models' own, 'last')")
    p.add_argument("--train-positives", type=int, default=None,
                   help="candidate-query models and din: positives drawn per training "
                        "window (default: the model's, 1; with --train-negatives)")
    p.add_argument("--train-negatives", type=int, default=None,
                   help="candidate-query models and din: negatives drawn per training "
                        "window (default: the model's, 4)")
    p.add_argument("--train-all-candidates", action="store_true",
                   help="candidate-query models and din: train on every candidate of a "
                        "window instead of a draw")
    p.add_argument("--negatives", type=int, default=None,
                   help="sampled negatives per training row, what --loss sampled_softmax "
                        "and gbce rank each positive against (default: the data's, 50); "
                        "they also form the evaluation candidates (paper: the window's "
                        "candidates; loo: only the auc/sampled column)")
    p.add_argument("--train-stride", type=int, default=None,
                   help="paper protocol: stride of training windows (default: the window, "
                        "as in the paper); applies to every model")
    p.add_argument("--history-targets", action="store_true",
                   help="also train sasrec/gru4rec on next-item targets inside the history "
                        "(MDGR has no causal states, so it cannot use them)")
    add_loo_training_arguments(p)
    p.add_argument("--no-mask-seen", dest="mask_seen", action="store_false",
                   help="loo: rank the target against every item, the user's earlier items "
                        "included (default: excluded); its own run files and table")
    p.add_argument("--max-users", type=int, default=None,
                   help="restrict to a seeded subsample of users (for quick runs)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true",
                   help="a few minutes: 300 users, 3 epochs, seeds 0,1, small grids; results "
                        "go to <out>/quick/")
    p.add_argument("--out", type=Path, default=root / "benchmarks" / "results")
    p.add_argument("--work-dir", type=Path, default=root / "runs" / "compare",
                   help="checkpoints of neural runs (for resuming)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--only-finished", action="store_true",
                   help="train nothing: rebuild the summary and its table from the runs "
                        "already finished (with --lr-grid, of the grids that finished)")
    p.add_argument("--replace-summary", action="store_true",
                   help="let the summary replace rows of a table of the same name that were "
                        "built with another configuration (the name carries neither the model "
                        "options such as --dim nor --epochs, --patience or --batch-size); "
                        "without it such a command is refused before it trains and the old "
                        "table kept. A larger --epochs alone continues the rows and needs "
                        "no flag")
    args = p.parse_args(argv)
    if (problem := _log_problem(args)) is not None:
        p.error(problem)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if (problem := loo_training_problem(args)) is not None:
        p.error(problem)
    if (args.train_positives is None) != (args.train_negatives is None):
        p.error("--train-positives and --train-negatives go together")
    if args.negatives is not None and args.negatives < 1:
        p.error(f"--negatives must be >= 1, got {args.negatives}")
    if args.train_all_candidates and args.train_positives is not None:
        p.error("--train-all-candidates replaces --train-positives/--train-negatives")
    if args.loss == "ce" and args.query == "candidate":
        p.error("--loss ce scores every item with one user state: not with --query candidate")
    if args.gbce_t is not None and args.loss != "gbce":
        p.error("--gbce-t is gBCE's calibration: it needs --loss gbce")
    if args.gbce_t is not None and not 0 <= args.gbce_t <= 1:
        p.error(f"--gbce-t must lie in [0, 1], got {args.gbce_t}")
    if args.query == "candidate" and args.protocol == "loo":
        p.error("--query candidate under loo: the tables rank the whole catalogue, one graph "
                "pass per item in this mode; train it with mdgr-train and re-rank a first "
                "stage's list (mdgr-retrieve --rerank)")
    if args.lr_grid is not None:
        try:
            args.lr_grid = sorted({float(v) for v in args.lr_grid.split(",") if v.strip()})
        except ValueError:
            p.error(f"--lr-grid must be comma-separated numbers, got {args.lr_grid!r}")
        if not args.lr_grid or min(args.lr_grid) <= 0:
            p.error("--lr-grid needs at least one positive learning rate")
    if args.tune_seed is None and args.seeds:
        args.tune_seed = args.seeds[0]
    if args.quick:
        args.max_users = args.max_users or 300
        args.epochs = min(args.epochs, 3)
        args.seeds = args.seeds[:2]
        args.out = args.out / "quick"
        args.work_dir = args.work_dir / "quick"
    return args


def _log_problem(args: argparse.Namespace) -> str | None:
    """Check ``--path`` / ``--synthetic-repeat-*`` and set ``args.dataset`` to the name of
    the tables (the named dataset, ``--name``, or ``synthetic-repeat<P>[-window<W>]``)."""
    if args.path is not None:
        if args.format is None:
            return "--path needs --format (the reader of the log)"
        if not args.path.is_file():
            return f"--path {args.path}: no such file"
        args.dataset = args.name or args.path.name.split(".")[0]
        if not args.dataset or "/" in args.dataset:
            return f"--name must be a plain file name, got {args.dataset!r}"
    elif args.format is not None or args.name is not None:
        return "--format and --name go with --path"
    repeat, window = args.synthetic_repeat_prob, args.synthetic_repeat_window
    if repeat is None:
        return ("--synthetic-repeat-window goes with --synthetic-repeat-prob"
                if window is not None else None)
    if args.path is not None or args.dataset != "synthetic":
        return "--synthetic-repeat-prob is for --dataset synthetic"
    if not (math.isfinite(repeat) and 0 < repeat <= 1):
        return f"--synthetic-repeat-prob must lie in (0, 1], got {repeat}"
    if window is not None and window < 1:
        return f"--synthetic-repeat-window must be >= 1, got {window}"
    args.dataset = f"synthetic-repeat{repeat:g}" + ("" if window is None else f"-window{window}")
    return None


# ---------------------------------------------------------------------- environment
def environment(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`~mdgr_graph.bench.record.environment` with the runs' threads."""
    return record.environment(threads=args.threads)


# ---------------------------------------------------------------------- one run
def run_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """What decides a run's result, besides the seed: part of its file name's hash."""
    config: dict[str, Any] = {"model": name, "train_stride": args.train_stride,
                              "max_users": args.max_users}
    if not getattr(args, "mask_seen", True):  # only then: earlier runs keep their hashes
        config["mask_seen"] = False
    if getattr(args, "negatives", None) is not None:  # likewise
        config["negatives"] = args.negatives
    if name in CLOSED_FORM:
        config["grid"] = quick_grid(name) if args.quick else GRIDS[name]
    else:
        config.update(model_kwargs=benchmark_model_kwargs(name, args), epochs=args.epochs,
                      patience=args.patience, lr=args.lr, batch_size=args.batch_size)
        if args.protocol == "loo" and args.loo_train_targets != "last":
            config["loo_train_targets"] = args.loo_train_targets
            config["loo_train_positives"] = args.loo_train_positives
    return config


def quick_grid(name: str) -> dict[str, list[Any]]:
    return {k: v[:2] for k, v in GRIDS[name].items()}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]


#: TrainConfig fields that do not change a run's result, left out of its recorded defaults.
NOT_RESULT_FIELDS = ("out_dir", "resume", "progress", "eval_batch_size",
                     "find_unused_parameters")


def code_defaults(name: str) -> dict[str, str]:
    """Defaults of the code that decide a run of ``name`` but are not in its options hash:
    the model's (:func:`~mdgr_graph.models.model_defaults`) and the field defaults of
    ``TrainConfig`` and ``DataOptions`` (``train.<field>``, ``data.<field>``), as reprs.

    Saved in every run file, so that a finished run is not reused after such a default
    changed (:func:`stale_runs`).
    """
    defaults = dict(model_defaults(name))
    for prefix, options in (("train.", TrainConfig), ("data.", DataOptions)):
        for field in dataclasses.fields(options):
            if field.default is not dataclasses.MISSING and field.name not in NOT_RESULT_FIELDS:
                defaults[prefix + field.name] = repr(field.default)
    return defaults


def changed_defaults(run: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The defaults recorded in finished ``run`` that the code has changed since, as
    ``{name: (then, now)}``. Defaults added or removed since are not compared (an added
    argument's default keeps the old behaviour); a run file written before defaults were
    recorded gives ``{}``."""
    recorded = run.get("code_defaults")
    if recorded is None:
        return {}
    now = code_defaults(run["model"])
    return {key: (recorded[key], now[key]) for key in sorted(recorded.keys() & now.keys())
            if recorded[key] != now[key]}


def stale_runs(folder: Path) -> list[str]:
    """One line per run file in ``folder`` whose recorded code defaults changed since."""
    lines = []
    for path in sorted(folder.glob("*.json")):
        changed = changed_defaults(json.loads(path.read_text()))
        if changed:
            lines.append(f"{path}: " + ", ".join(f"{key} {then} -> {now}"
                                               for key, (then, now) in changed.items()))
    return lines


def runs_dir(args: argparse.Namespace) -> Path:
    """Folder of the per-run result files of ``args.dataset`` / ``args.protocol``."""
    return args.out / f"{args.dataset}-{args.protocol}" / "runs"


def run_tag(name: str, seed: int, args: argparse.Namespace) -> str:
    """``<model>-seed<s>-<config hash>``: names a run's result file and checkpoint folder."""
    return f"{name}-seed{seed}-{config_hash(run_config(name, args))}"


def checkpoint_dir(tag: str, args: argparse.Namespace) -> Path:
    """Folder of the checkpoints of run ``tag`` (:func:`run_tag`) under ``--work-dir``."""
    return args.work_dir / f"{args.dataset}-{args.protocol}" / tag


def finished_run(name: str, seed: int, args: argparse.Namespace) -> dict[str, Any] | None:
    """The result file of a finished run under ``args``'s configuration, or None.

    Under ``--lr-grid`` a neural model's run is the one at its selected learning rate
    (:func:`resolved_args`); None while the grid is unfinished.
    """
    resolved = resolved_args(name, args)
    if resolved is None:
        return None
    path = runs_dir(resolved) / f"{run_tag(name, seed, resolved)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def resolved_args(name: str, args: argparse.Namespace) -> argparse.Namespace | None:
    """``args`` with the learning rate model ``name`` runs at: under ``--lr-grid``, the one
    selected on validation (None while the grid's runs are unfinished); else ``args``."""
    if not getattr(args, "lr_grid", None) or name in CLOSED_FORM:
        return args
    choice = lr_choice(name, args)
    return None if choice is None else with_lr(args, choice["selected_lr"])


def load_finished_model(name: str, seed: int, prepared: PreparedDataset,
                        args: argparse.Namespace) -> SequentialRecommender:
    """The model of the finished run of ``name`` and ``seed`` under ``args`` on its data
    ``prepared`` (:func:`load_data`): a neural model with the weights of its best epoch,
    a closed-form one refitted with the hyper-parameters it selected on validation.
    ``FileNotFoundError`` when the run has not finished."""
    run = finished_run(name, seed, args)
    resolved = resolved_args(name, args) or args
    tag = run_tag(name, seed, resolved)
    if run is None:
        raise FileNotFoundError(f"no finished compare.py run {tag} in {runs_dir(args)}")
    if name in CLOSED_FORM:
        return build_model(name, prepared, **run["selected"])
    model = build_model(name, prepared, **run["config"]["model_kwargs"])
    model.load_state_dict(load_checkpoint(checkpoint_dir(tag, resolved) / "best.pt")["model"])
    return model


def load_data(args: argparse.Namespace, seed: int) -> PreparedDataset:
    """The data of ``args.dataset`` / ``args.protocol`` prepared with ``seed`` (the log of
    ``--path``, or the synthetic log with ``--synthetic-repeat-prob``, when given)."""
    extra: dict[str, Any] = {}
    if getattr(args, "path", None) is not None:
        fmt, path = args.format, args.path
        extra = {"user_col": args.user_col, "item_col": args.item_col,
                 "time_col": args.time_col, "sep": args.sep}
    elif getattr(args, "synthetic_repeat_prob", None) is not None:
        fmt, path = "synthetic", None
        window = args.synthetic_repeat_window
        extra = {"synthetic": {"repeat_prob": args.synthetic_repeat_prob,
                               "repeat_window": 50 if window is None else window}}
    else:
        fmt, rel = DATASETS[args.dataset]
        path = None
        if rel is not None:
            path = args.data_dir / rel
            if not path.is_file():
                raise FileNotFoundError(f"{args.dataset}: no such file {path}")
    if getattr(args, "negatives", None) is not None:
        extra["negatives"] = args.negatives
    options = DataOptions(format=fmt, path=None if path is None else str(path),
                          protocol=args.protocol, seed=seed, train_stride=args.train_stride,
                          **extra)
    prepared = prepare_dataset(options)
    if args.max_users is not None:
        prepared = prepared.subsample_users(args.max_users, seed=seed)
    return prepared


def run_closed_form(name: str, prepared: PreparedDataset, grid: dict[str, list[Any]],
                    mask_seen: bool = True) -> dict[str, Any]:
    """Fit every grid point, keep the best on validation, evaluate it on test
    (``mask_seen``: see :func:`~mdgr_graph.train.evaluate`)."""
    metric = SELECTION_METRIC[prepared.protocol]
    tried, best = [], None
    start = time.perf_counter()
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        t0 = time.perf_counter()
        model = build_model(name, prepared, **params)
        fit_seconds = time.perf_counter() - t0
        valid = evaluate(model, prepared, "valid", mask_seen=mask_seen)
        tried.append({"params": params, "valid": valid, "fit_seconds": fit_seconds})
        if best is None or valid[metric] > best[2][metric]:
            best = (params, model, valid, fit_seconds)
    params, model, valid, fit_seconds = best
    return {
        "selected": params, "valid": valid,
        "test": evaluate(model, prepared, "test", mask_seen=mask_seen),
        "train_seconds": fit_seconds, "tuning_seconds": time.perf_counter() - start,
        "grid": tried, "epochs": 0, "best_epoch": 0, **model.num_parameters(),
    }


def neural_setup(name: str, prepared: PreparedDataset, seed: int, config: dict[str, Any],
                 **train_options: Any) -> tuple[Any, TrainConfig]:
    """The seeded model of run configuration ``config`` (:func:`run_config`) and its
    training configuration (``train_options``: further :class:`TrainConfig` fields)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(name, prepared, **config["model_kwargs"])
    train = TrainConfig(epochs=config["epochs"], patience=config["patience"], lr=config["lr"],
                        batch_size=config["batch_size"], seed=seed,
                        loo_train_targets=config.get("loo_train_targets", "last"),
                        loo_train_positives=config.get("loo_train_positives", 1),
                        mask_seen=config.get("mask_seen", True), **train_options)
    return model, train


def run_neural(name: str, prepared: PreparedDataset, seed: int, config: dict[str, Any],
               work_dir: Path, progress: bool) -> dict[str, Any]:
    model, train = neural_setup(name, prepared, seed, config, out_dir=str(work_dir),
                                resume=True, progress=progress)
    result = fit(model, prepared, train, log=None)
    return {
        "valid": result.best_valid,
        "test": evaluate(model, prepared, "test", mask_seen=train.mask_seen),
        "train_seconds": result.train_seconds, "epochs": result.epochs,
        "best_epoch": result.best_epoch, **model.num_parameters(),
        "valid_curve": [row["valid"][SELECTION_METRIC[prepared.protocol]]
                        for row in result.history],
    }


def summary_path(args: argparse.Namespace) -> Path:
    """``<out>/<dataset>-<protocol>`` (``.json`` / ``.md``), with ``-stride<S>``,
    ``-neg<N>``, ``-k<K>``,
    ``-m<M>``, ``-weighting-<W>``, ``-cluster-<C>``, ``-cluster-on-<I>``, ``-npc<S>``,
    ``-input-norm-<N>``, ``-pool-values-<V>``, ``-repeat-<R>``, ``-loss-<L>``,
    ``-history-targets``, ``-query-<Q>``,
    ``-targets-<T>[-p<P>]`` (loo training targets other than ``last``), ``-unmasked``
    (``--no-mask-seen``) and ``-lr<LR>``
    (or ``-lrgrid-<LRs>``) appended when those options are set (the learning rate when it
    is not the default), so each configuration keeps its own table."""
    name = f"{args.dataset}-{args.protocol}"
    if args.train_stride is not None:
        name += f"-stride{args.train_stride}"
    if getattr(args, "negatives", None) is not None:
        name += f"-neg{args.negatives}"
    if args.mdgr_k is not None:
        name += f"-k{args.mdgr_k}"
    if args.mdgr_m is not None:
        name += f"-m{args.mdgr_m}"
    if args.mdgr_weighting is not None:
        name += f"-weighting-{args.mdgr_weighting}"
    if getattr(args, "mdgr_cluster", None) is not None:
        name += f"-cluster-{args.mdgr_cluster}"
    if getattr(args, "mdgr_cluster_on", None) is not None:
        name += f"-cluster-on-{args.mdgr_cluster_on}"
    if getattr(args, "mdgr_nodes_per_cluster", None) is not None:
        name += f"-npc{args.mdgr_nodes_per_cluster}"
    if getattr(args, "mdgr_input_norm", None) is not None:
        name += f"-input-norm-{args.mdgr_input_norm}"
    if getattr(args, "mdgr_pool_values", None) is not None:
        name += f"-pool-values-{args.mdgr_pool_values}"
    if getattr(args, "mdgr_repeat", None) is not None:
        name += f"-repeat-{args.mdgr_repeat}"
    if getattr(args, "loss", None) is not None:
        name += f"-loss-{args.loss}"
    if getattr(args, "gbce_t", None) is not None:
        name += f"-t{_dotless(args.gbce_t)}"
    if getattr(args, "history_targets", False):
        name += "-history-targets"
    if getattr(args, "query", None) is not None:
        name += f"-query-{args.query}"
    if getattr(args, "train_positives", None) is not None:
        name += f"-p{args.train_positives}n{args.train_negatives}"
    if getattr(args, "train_all_candidates", False):
        name += "-all-candidates"
    if args.protocol == "loo" and getattr(args, "loo_train_targets", "last") != "last":
        name += f"-targets-{args.loo_train_targets}"
        if args.loo_train_positives > 1:
            name += f"-p{args.loo_train_positives}"
    if not getattr(args, "mask_seen", True):
        name += "-unmasked"
    if getattr(args, "lr_grid", None):
        name += "-lrgrid-" + "-".join(_dotless(lr) for lr in args.lr_grid)
    elif args.lr != DEFAULT_LR:
        name += f"-lr{_dotless(args.lr)}"
    return args.out / name


def _dotless(value: float) -> str:
    """``0.005 -> '0p005'``: file names with one dot only, before their extension."""
    return f"{value:g}".replace(".", "p")


def split_wrapper_args(parser: argparse.ArgumentParser, argv: list[str],
                       reserved: tuple[str, ...], reserved_error: str,
                       root: Path | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Options of a script that drives compare.py (``parser``, built with
    ``add_help=False``) and the rest of ``argv``, which goes to compare.py.

    ``-h`` prints both scripts' help and exits; an option of the rest starting with one of
    ``reserved`` (set by the script itself) is refused with ``reserved_error``.
    """
    parser.add_argument("-h", "--help", action="store_true")
    own, rest = parser.parse_known_args(argv)
    if own.help:
        parser.print_help()
        print("\nEvery other option is passed to compare.py:\n")
        parse_args(["--help"], root)  # exits
    if any(a.startswith(reserved) for a in rest):
        parser.error(reserved_error)
    return own, rest


def claim(lock: Path) -> Path | None:
    """Create ``lock`` holding this process id; None if a live process holds it already.

    A lock left by a process that no longer exists (a killed run) is taken over, so an
    interrupted run resumes from its checkpoint on the next invocation.
    """
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
                return None  # alive
            except (ValueError, ProcessLookupError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # stale
                continue
            except PermissionError:
                return None  # alive, another user's
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return lock
    return None


# ---------------------------------------------------------------------- summary
class SummaryConflict(ValueError):
    """A rebuilt summary would drop or replace rows built with another configuration."""


def summary_conflicts(folder: Path, args: argparse.Namespace) -> list[str]:
    """The rows of the table already at ``<folder>.json`` whose configuration differs from
    the one ``args`` gives their model, one line each; empty when there is no such table or
    every row agrees. Not a difference: the learning rate where ``--lr-grid`` picks it, and
    a larger ``--epochs`` alone (it continues the rows' runs)."""
    path = folder.with_name(folder.name + ".json")
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []  # unreadable: nothing a rebuild could lose
    conflicts = []
    for entry in old.get("models", []) if isinstance(old, dict) else []:
        name, config = entry.get("model"), entry.get("config")
        if name not in MODELS or not isinstance(config, dict):
            continue
        now = run_config(name, args)
        ignore = {"lr"} if getattr(args, "lr_grid", None) and name not in CLOSED_FORM else set()
        differs = sorted(k for k in (set(config) | set(now)) - ignore
                         if config.get(k) != now.get(k))
        if differs == ["epochs"] and isinstance(config["epochs"], int) \
                and now["epochs"] > config["epochs"]:
            continue  # a larger budget continues these rows' runs
        if differs:
            conflicts.append(f"{name}: " + ", ".join(
                f"{k} {config.get(k)!r} there, {now.get(k)!r} now" for k in differs))
    return conflicts


def conflict_message(folder: Path, conflicts: list[str]) -> str:
    """Why the table at ``<folder>.json`` is kept, and what to do (``conflicts`` from
    :func:`summary_conflicts`)."""
    return (f"{folder.name}.json holds rows built with another configuration, which this "
            "table would replace or drop (its name carries neither the model options such "
            "as --dim nor --epochs, --patience or --batch-size), so it is kept. Use --out DIR "
            "for a separate table, or --replace-summary to replace it:\n  "
            + "\n  ".join(conflicts))


def summarize(folder: Path, args: argparse.Namespace,
              tuning: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Rebuild ``<folder>.json`` and ``.md`` from every run file of the current configs.

    ``tuning`` (from :func:`tune_learning_rates`) gives each tuned model its selected
    learning rate and the validation scores of the grid; those models are reported at the
    selected rate.
    """
    tuning = tuning or {}
    if not getattr(args, "replace_summary", False) and (
            conflicts := summary_conflicts(folder, args)):
        raise SummaryConflict(conflict_message(folder, conflicts))
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(runs_dir(args).glob("*.json")):
        run = json.loads(path.read_text())
        name = run["model"]
        if getattr(args, "lr_grid", None) and name not in CLOSED_FORM and name not in tuning:
            continue  # a neural model outside this grid: its runs are not grid-selected
        model_args = with_lr(args, tuning[name]["selected_lr"]) if name in tuning else args
        if run["config_hash"] != config_hash(run_config(name, model_args)):
            continue  # another configuration (e.g. another --train-stride)
        runs.setdefault(name, []).append(run)
    keys = REPORTED[args.protocol]
    entries = []
    order = [m for m in MODELS if m in runs]
    for name in order:
        rs = sorted(runs[name], key=lambda r: r["seed"])
        per_seed = {str(r["seed"]): {col: r["test"][key] for col, key in keys} for r in rs}
        mean = {col: statistics.fmean(r["test"][key] for r in rs) for col, key in keys}
        std = {col: (statistics.stdev(r["test"][key] for r in rs) if len(rs) > 1 else 0.0)
               for col, key in keys}
        entries.append({
            "model": name,
            "seeds": [r["seed"] for r in rs],
            "per_seed": per_seed,
            "mean": mean,
            "std": std,
            "params": rs[0]["params"],
            "params_without_item_table": rs[0]["params_without_item_table"],
            "train_seconds": statistics.fmean(r["train_seconds"] for r in rs),
            "epochs": [r["epochs"] for r in rs],
            "cut": [cut_by_budget(r) for r in rs],
            "selected": [r.get("selected") for r in rs] if name in CLOSED_FORM else None,
            "lr_tuning": tuning.get(name),
            "config": rs[0]["config"],
            "commands": sorted({r["environment"]["command"] for r in rs}),
        })
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    summary = {"dataset": args.dataset, "protocol": args.protocol,
               "environment": environment(args), "models": entries,
               "test_repeat_share": repeat_shares(args, seeds)}
    atomic_write_text(folder.with_name(folder.name + ".json"),
                      json.dumps(summary, indent=2) + "\n")
    atomic_write_text(folder.with_name(folder.name + ".md"), markdown_table(summary, keys))
    return summary


def repeat_shares(args: argparse.Namespace, seeds: list[int]
                       ) -> dict[str, float | None] | None:
    """Per seed, the share of test positives that repeat an item of their history
    (:func:`~mdgr_graph.data.repeats.repeat_share`; None for an empty split); None when
    the data cannot be loaded."""
    try:
        shares = {str(seed): repeat_share(load_data(args, seed), "test") for seed in seeds}
    except (OSError, ValueError):
        return None
    return {seed: None if math.isnan(v) else v for seed, v in shares.items()}


def repeat_line(shares: dict[str, float | None] | None) -> str | None:
    """The table's sentence on :func:`repeat_shares`, or None without them."""
    known = {seed: v for seed, v in (shares or {}).items() if v is not None}
    if not known:
        return None
    per_seed = ", ".join(f"{100 * v:.1f}" for v in known.values())
    return (f"Test positives that repeat an item of their history (the window's under "
            f"paper, the user's earlier items under loo): "
            f"{100 * statistics.fmean(known.values()):.1f} % (seeds {', '.join(known)}: "
            f"{per_seed} %); the sampled negatives never do, so where this is large "
            f"S-POP (`spop`) is the baseline to beat (docs/data.md, repeat consumption).")


#: The line under a table with a run marked by :func:`epochs_cell`.
CUT_NOTE = ("`*` in \"epochs run\": **cut**, the run used its whole epoch budget while "
            "validation was still improving within the patience, so it is not shown to have "
            "converged (more epochs may change its row).")


def cut_by_budget(run: dict[str, Any]) -> bool:
    """Whether a neural run used its whole epoch budget before early stopping fired: its
    last ``patience`` epochs did not all fail to improve on validation, so it is not shown
    to have converged (``best_epoch`` counts from 0, ``epochs`` is the number run)."""
    config = run.get("config", {})
    if run.get("model") in CLOSED_FORM or "patience" not in config or "epochs" not in config:
        return False
    return (run["epochs"] >= config["epochs"]
            and run["epochs"] - 1 - run["best_epoch"] < config["patience"])


def epochs_cell(entry: dict[str, Any]) -> str:
    """The table's "epochs run" cell: one count per seed, ``*`` after a run that was cut
    by the epoch budget (:func:`cut_by_budget`)."""
    cut = entry.get("cut") or [False] * len(entry["epochs"])
    return ",".join(f"{n}{'*' if c else ''}" for n, c in zip(entry["epochs"], cut, strict=True))


def markdown_table(summary: dict[str, Any], keys: list[tuple[str, str]]) -> str:
    env = summary["environment"]
    head = ["model", *[f"test {col}" for col, _ in keys], "seeds", "params",
            "params w/o item table", "epochs run", "train s (mean)"]
    lines = [
        f"# {summary['dataset']}, {summary['protocol']} protocol",
        "",
        f"Mean ± standard deviation over seeds. {SEED_NOTE[summary['protocol']]} "
        f"{env['platform']}, {env['cpu_count']} CPUs, {env['threads']} thread(s) per run, "
        f"torch {env['torch']}. Train s: wall seconds of the training epochs (closed form: "
        f"the fit of the selected configuration), with other runs sharing the cores. "
        f"Generated by `benchmarks/compare.py`.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    if (repeats := repeat_line(summary.get("test_repeat_share"))) is not None:
        lines[3:3] = ["", repeats]
    neural = [e["config"] for e in summary["models"] if e["model"] not in CLOSED_FORM]
    if neural:
        config = neural[0]
        lines[2] += (f" Neural models: at most {config['epochs']} epochs (early stopping "
                     f"patience {config['patience']}), batch {config['batch_size']}")
        if summary["protocol"] == "loo":
            targets = config.get("loo_train_targets", "last")
            lines[2] += f", training targets `{targets}` ({LOO_TRAIN_TARGET_HELP[targets]})"
        lines[2] += "."
    tuned = [e for e in summary["models"] if e.get("lr_tuning")]
    if tuned:
        first = tuned[0]["lr_tuning"]
        lines[2] += (f" Neural models: learning rate chosen per model from "
                     f"{', '.join(f'{lr:g}' for lr in first['grid'])} by validation "
                     f"{first['metric']} on seed {first['seed']} (shown in the model column).")
    for e in summary["models"]:
        cells = [e["model"] + (f" (lr {e['lr_tuning']['selected_lr']:g})"
                               if e.get("lr_tuning") else "")]
        cells += [f"{e['mean'][col]:.4f} ± {e['std'][col]:.4f}" for col, _ in keys]
        cells += [",".join(map(str, e["seeds"])), f"{e['params']:,}",
                  f"{e['params_without_item_table']:,}",
                  "-" if e["model"] in CLOSED_FORM else epochs_cell(e),
                  f"{e['train_seconds']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(any(e.get("cut") or []) for e in summary["models"]):
        lines += ["", CUT_NOTE]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def with_lr(args: argparse.Namespace, lr: float) -> argparse.Namespace:
    """A copy of ``args`` with learning rate ``lr`` (and no grid)."""
    return argparse.Namespace(**{**vars(args), "lr": lr, "lr_grid": None})


def run_all(tasks: list[tuple[str, int, argparse.Namespace]], args: argparse.Namespace,
            desc: str) -> bool:
    """Run every ``(model, seed, args)`` task whose result file is missing; False on a data
    error (already reported)."""
    folder = runs_dir(args)
    bar = tqdm(tasks, desc=desc, disable=args.no_progress)
    for name, seed, task_args in bar:
        config = run_config(name, task_args)
        tag = run_tag(name, seed, task_args)
        path = folder / f"{tag}.json"
        if path.is_file():
            continue
        lock = claim(folder / f"{tag}.lock")
        if lock is None:
            tqdm.write(f"{tag}: running in another process, skipped")
            continue
        bar.set_postfix_str(tag)
        extended = None if name in CLOSED_FORM else extend_shorter_run(
            name, seed, config, folder, checkpoint_dir(tag, task_args), task_args)
        try:
            prepared = load_data(task_args, seed)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            lock.unlink(missing_ok=True)
            return False
        if name in CLOSED_FORM:
            result = run_closed_form(name, prepared, config["grid"],
                                     config.get("mask_seen", True))
        else:
            result = run_neural(name, prepared, seed, config, checkpoint_dir(tag, task_args),
                                progress=not args.no_progress)
        run = {"model": name, "seed": seed, "config": config, "config_hash": config_hash(config),
               "code_defaults": code_defaults(name), "environment": environment(args),
               **result}
        if extended is not None:
            run["extended_from"] = extended
        atomic_write_text(path, json.dumps(run, indent=2) + "\n")
        lock.unlink(missing_ok=True)
        metrics = " ".join(f"{col}={result['test'][key]:.4f}"
                           for col, key in REPORTED[args.protocol])
        tqdm.write(f"{tag}: {metrics} ({result['train_seconds']:.1f}s)")
    return True


def extend_shorter_run(name: str, seed: int, config: dict[str, Any], folder: Path,
                       work: Path, args: argparse.Namespace) -> str | None:
    """Start a neural run from the checkpoint of a finished shorter one, if there is one.

    A finished run of the same model, seed and configuration but a smaller ``epochs`` that
    used all its epochs (no early stop) is the first part of this run: the loop has a
    constant learning rate and resumes exactly, so continuing from its ``last.pt`` gives
    what an uninterrupted run of ``config["epochs"]`` would. Its checkpoint files are
    copied into ``work`` (only when ``work`` holds no checkpoint yet); returns its tag.
    """
    if (work / "last.pt").is_file():
        return None
    rest = {k: v for k, v in config.items() if k != "epochs"}
    best = None
    for path in folder.glob(f"{name}-seed{seed}-*.json"):
        run = json.loads(path.read_text())
        old = run["config"]
        used_all_epochs = run["epochs"] == old["epochs"]
        if ({k: v for k, v in old.items() if k != "epochs"} != rest or not used_all_epochs
                or old["epochs"] >= config["epochs"]):
            continue
        source = checkpoint_dir(path.stem, args)
        if (source / "last.pt").is_file() and (best is None or old["epochs"] > best[0]):
            best = (old["epochs"], path.stem, source)
    if best is None:
        return None
    work.mkdir(parents=True, exist_ok=True)
    for file in ("best.pt", "log.jsonl", "last.pt"):  # last.pt last: it marks a resumable run
        if (best[2] / file).is_file():
            tmp = work / f".{file}.tmp"
            shutil.copyfile(best[2] / file, tmp)
            tmp.replace(work / file)
    tqdm.write(f"{name}-seed{seed}: continuing the {best[0]}-epoch run {best[1]}")
    return best[1]


def tune_learning_rates(args: argparse.Namespace) -> dict[str, dict[str, Any]] | None:
    """Every neural model at every rate of ``--lr-grid`` on ``--tune-seed``; the selected rate
    is the one of best validation metric (ties: the smaller rate). None if a run is
    missing (running elsewhere, or a data error)."""
    neural = [m for m in args.models if m not in CLOSED_FORM]
    tasks = [(name, args.tune_seed, with_lr(args, lr)) for name in neural for lr in args.lr_grid]
    if not run_all(tasks, args, "lr grid"):
        return None
    tuning = {name: lr_choice(name, args) for name in neural}
    return None if any(choice is None for choice in tuning.values()) else tuning


def lr_choice(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--lr-grid`` runs of ``name`` on ``--tune-seed`` and the rate of best validation
    metric (ties: the smaller rate); None if one of them has not finished."""
    metric = SELECTION_METRIC[args.protocol]
    scores = {}
    for lr in args.lr_grid:
        run = finished_run(name, args.tune_seed, with_lr(args, lr))
        if run is None:
            return None
        scores[lr] = run["valid"][metric]
    best = max(args.lr_grid, key=lambda lr: (scores[lr], -lr))
    return {"grid": list(args.lr_grid), "seed": args.tune_seed, "metric": metric,
            "valid": {f"{lr:g}": scores[lr] for lr in args.lr_grid}, "selected_lr": best}


def finished_grids(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """:func:`lr_choice` of every neural model whose learning-rate grid has finished."""
    return {name: choice for name in MODELS if name not in CLOSED_FORM
            and (choice := lr_choice(name, args)) is not None}


def main(argv: list[str] | None = None, root: Path | None = None) -> int:
    """Run what is missing of ``argv``'s configuration (folders under ``root``, see
    :func:`parse_args`), then rebuild and print its summary; 0, or 2 after an error."""
    args = parse_args(argv, root)
    torch.set_num_threads(args.threads)
    runs_dir(args).mkdir(parents=True, exist_ok=True)
    stale = stale_runs(runs_dir(args))
    if stale:
        print("error: these finished runs were made with code defaults that have changed "
              "since, so their results are not those of the current code; delete each file "
              "(and its checkpoint folder under --work-dir) to rerun it:\n  "
              + "\n  ".join(stale), file=sys.stderr)
        return 2
    if not args.replace_summary and (conflicts := summary_conflicts(summary_path(args), args)):
        print("error: nothing was run: " + conflict_message(summary_path(args), conflicts),
              file=sys.stderr)
        return 2
    if args.only_finished:
        grids = finished_grids(args) if args.lr_grid else None
        summary = summarize(summary_path(args), args, grids)
        print(markdown_table(summary, REPORTED[args.protocol]), end="")
        return 0
    tuning = None
    if args.lr_grid:
        tuning = tune_learning_rates(args)
        if tuning is None:
            print("learning-rate grid incomplete (a run failed or runs elsewhere); run again "
                  "to continue", file=sys.stderr)
            return 2
        for name, t in tuning.items():
            tqdm.write(f"{name}: lr {t['selected_lr']:g} selected ({t['metric']} on seed "
                       f"{t['seed']}: " + ", ".join(f"{k}={v:.4f}" for k, v in t["valid"].items())
                       + ")")
    tasks = [(name, seed, with_lr(args, tuning[name]["selected_lr"]) if tuning and name in tuning
              else args) for seed in args.seeds for name in args.models]
    if not run_all(tasks, args, "runs"):
        return 2
    if args.lr_grid:  # the table keeps every model whose grid finished, not only --models
        tuning = {**finished_grids(args), **tuning}
    summary = summarize(summary_path(args), args, tuning)
    print(markdown_table(summary, REPORTED[args.protocol]), end="")
    return 0

