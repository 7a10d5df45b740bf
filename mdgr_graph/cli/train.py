"""Train and evaluate MDGR (or a variant, or a baseline) on a log.

The command line of ``mdgr-train`` and ``examples/train_mdgr.py``. With no arguments it
trains MDGR on the embedded synthetic data (paper protocol) and prints the test metrics.
Examples::

    mdgr-train
    mdgr-train --format movielens \\
        --path ../shared/data/ml-1m-subset/ratings.dat.gz --protocol paper --epochs 30
    mdgr-train --model mdgr-w --out runs/w --resume
    torchrun --nproc_per_node 2 examples/train_mdgr.py --out runs/ddp   # data-parallel

Under ``torchrun`` (WORLD_SIZE > 1) it joins the process group (gloo on the CPU, nccl with
``--device cuda``) and trains with DistributedDataParallel; ``--batch-size`` stays the
global batch and only rank 0 prints and writes files.

:func:`load_run` rebuilds a finished ``--out`` run (options, dataset, trained model) for
``mdgr-retrieve`` and ``mdgr-explain``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mdgr_graph import distributed
from mdgr_graph.cli.checks import writable_problem
from mdgr_graph.cli.model_options import (
    LOSS_MODELS,
    QUERY_MODELS,
    REPEAT_MODELS,
    model_options,
)
from mdgr_graph.data.cli import (
    add_data_arguments,
    add_loo_training_arguments,
    cache_dir_from_args,
    data_option_problem,
    loo_training_problem,
    options_from_args,
)
from mdgr_graph.data.prepare import PreparedDataset, prepare_dataset
from mdgr_graph.io import atomic_write_text
from mdgr_graph.models import CAUSAL_BASELINES, MODELS, build_model
from mdgr_graph.models.base import CANDIDATE_LOSSES, SequentialRecommender
from mdgr_graph.models.mdgr import POOL_VALUES
from mdgr_graph.nn.repeat import REPEAT_MODES
from mdgr_graph.train import (
    RunDirError,
    TrainConfig,
    check_run_dir,
    evaluate,
    fingerprint_differences,
    fit,
    load_checkpoint,
    run_fingerprint,
)

FINAL_KEYS = {
    "paper": {"auc": "auc/sampled", "recall@50": "recall@50/sampled"},
    "loo": {"hr@10": "hr@10/full", "ndcg@10": "ndcg@10/full", "recall@50": "recall@50/full",
            "mrr": "mrr/full"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(parser)
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=sorted(MODELS), default="mdgr",
                   help="mdgr, a Table 3 variant, a neural baseline (sasrec, gru4rec, "
                        "tisasrec, bert4rec, dcrec, maerec, comirec-sa, comirec-dr, mip, "
                        "pintext, surge, bigcf, static-graph, din; pintext, bigcf, dcrec and "
                        "maerec take --dim and keep their own defaults otherwise) or a "
                        "closed-form one (pop, spop = S-POP, itemknn, ease)")
    g.add_argument("--dim", type=int, default=32, help="model width d")
    g.add_argument("--k", type=int, default=8, help="number of interests (MDGR, ComiRec)")
    g.add_argument("--m", "--iterations", dest="m", type=int, default=1,
                   help="DynamicClusterConv iterations; 1 was chosen on validation on "
                        "ml-1m-subset among 1, 3, 5, 9, 15 (docs/results.md), the paper uses 5 "
                        "(MovieLens) and 9 (Amazon), as MDGR(...)'s default. Under torchrun "
                        "write --iterations: torchrun's own parser takes --m as an "
                        "abbreviation of its options")
    g.add_argument("--gamma", type=float, default=0.1,
                   help="edge budget: top ceil(gamma*n^2) same-cluster pairs per graph")
    g.add_argument("--delta", type=int, default=4, help="weighted-cosine heads")
    g.add_argument("--conv-heads", type=int, default=2, help="attention heads per iteration")
    g.add_argument("--dropout", type=float, default=0.1, help="encoder dropout")
    g.add_argument("--cluster", default="kmeans",
                   choices=["kmeans", "ward", "sklearn-kmeans", "birch"],
                   help="clustering: batched torch k-means or scikit-learn per graph")
    g.add_argument("--pool", default="attention", choices=["attention", "last", "mean"],
                   help="how a group is pooled into its interest vector")
    g.add_argument("--weighting", default="paper", choices=["paper", "log"],
                   help="MDGR: interest weights multiply the logit (paper Eq. 16) or add "
                        "log w (keeps more weight = higher score for every item)")
    g.add_argument("--binary", action="store_true",
                   help="binary adjacency (paper Eq. 9 literally) instead of weighted edges")
    g.add_argument("--no-conv-residual", dest="conv_residual", action="store_false",
                   help="MDGR: drop the residual connection around each iteration "
                        "(DESIGN.md decision 7; the paper has none)")
    g.add_argument("--no-conv-norm", dest="conv_norm", action="store_false",
                   help="MDGR: drop the LayerNorm after each iteration (the paper has none)")
    g.add_argument("--input-norm", default="none", choices=["none", "scale", "layer"],
                   help="MDGR variants: balance of the encoder's item / time / position "
                        "inputs; none: the paper's concatenation; scale: item embedding x "
                        "sqrt(d); layer: a LayerNorm per part (docs/model.md)")
    g.add_argument("--cluster-on", default="state", choices=["state", "item"],
                   help="MDGR: build the clustering and the metric graph from the node "
                        "states ('state', the paper) or from the item embeddings alone "
                        "('item', not in the paper; docs/model.md)")
    g.add_argument("--pool-values", default="state", choices=list(POOL_VALUES),
                   help="MDGR variants, MIP, static-graph: what the interest pooling (Eq. 14) "
                        "mixes: the node states ('state', the paper) or the item embeddings "
                        "with the weights the states give ('item', as ComiRec-SA's interests; "
                        "not in the paper; docs/model.md)")
    g.add_argument("--nodes-per-cluster", type=int, default=None, metavar="S",
                   help="MDGR variants, MIP, static-graph: a sequence of n items gets at most "
                        "max(1, n // S) clusters (and at most k), so short histories are not "
                        "cut into singletons without edges (not in the paper; docs/model.md; "
                        "default: k for every sequence)")
    g.add_argument("--query", default="last", choices=["last", "candidate"],
                   help="mdgr variants and surge: query of the graph attention (Eq. 11); "
                        "'last': the last history item (retrieval over the catalogue); "
                        "'candidate': each candidate item, one graph per (window, "
                        "candidate) as in the paper (ranking a given candidate set)")
    g.add_argument("--repeat", default="none", choices=list(REPEAT_MODES),
                   help="mdgr variants, MIP, static-graph: 'gate' adds a learned, user-gated "
                        "bonus for candidates already in the input sequence (repeat "
                        "consumption; not in the paper; docs/model.md)")
    g.add_argument("--loss", default=None, choices=list(CANDIDATE_LOSSES),
                   help="neural models: training loss; bce: Eq. 17 over the candidates (loo: "
                        "the target and one sampled negative); sampled_softmax: each positive "
                        "against the sampled negatives; gbce: gSASRec's gBCE over the "
                        "candidates (not in the paper; --gbce-t); ce: a softmax over every "
                        "item (default: the model's own, bce for most)")
    g.add_argument("--gbce-t", type=float, default=None,
                   help="with --loss gbce: gBCE's calibration t in [0, 1] (0: BCE; default: "
                        "0.75, gSASRec's)")
    g.add_argument("--train-positives", type=int, default=1,
                   help="candidate mode (and din): positives of each window drawn per "
                        "training step")
    g.add_argument("--train-negatives", type=int, default=4,
                   help="candidate mode (and din): negatives of each window drawn per "
                        "training step (SURGE's 1 + 4)")
    g.add_argument("--train-all-candidates", action="store_true",
                   help="candidate mode (and din): train on every candidate of a window "
                        "instead of a draw")
    g.add_argument("--blocks", type=int, default=2,
                   help="sasrec, tisasrec, bert4rec: transformer blocks; gru4rec: GRU layers")
    g.add_argument("--mask-prob", type=float, default=0.2,
                   help="bert4rec: proportion of history items masked for the cloze loss")
    g.add_argument("--history-targets", action="store_true",
                   help="sasrec/gru4rec/tisasrec/maerec: also learn next-item targets inside "
                        "the history")
    g.add_argument("--neighbours", type=int, default=100,
                   help="itemknn: neighbourhood size per item (0 keeps all)")
    g.add_argument("--shrink", type=float, default=10.0, help="itemknn: similarity shrinkage")
    g.add_argument("--l2", type=float, default=500.0, help="ease: L2 weight lambda")
    t = parser.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=15,
                   help="maximum epochs (small so the default demo finishes in minutes; "
                        "the paper trains to early stopping, use e.g. 100 with --patience 10)")
    t.add_argument("--patience", type=int, default=10,
                   help="stop after this many epochs without validation gain")
    t.add_argument("--batch-size", type=int, default=128, help="training batch size")
    t.add_argument("--lr", type=float, default=2e-3,
                   help="Adam learning rate (chosen on validation from 2e-3, 5e-3 for MDGR, "
                        "MIP and SASRec on ml-1m-subset; the paper uses 1e-3)")
    t.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    add_loo_training_arguments(t)
    t.add_argument("--no-mask-seen", dest="mask_seen", action="store_false",
                   help="loo: rank the target against every item, the user's earlier items "
                        "included (default: those are excluded and the target competes with "
                        "unseen items only; docs/data.md, repeat consumption)")
    t.add_argument("--device", default="cpu", help="cpu or cuda")
    t.add_argument("--max-users", type=int, default=None,
                   help="train and evaluate on a seeded subsample of this many users")
    t.add_argument("--out", type=Path, default=None,
                   help="directory for checkpoints, log.jsonl and args.json")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--metrics-json", type=Path, default=None,
                   help="write the final test metrics here as one JSON object")
    t.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 avoids oversubscription "
                        "when several runs share the cores")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for check in (data_option_problem, loo_training_problem, option_problem):
        if (problem := check(args)) is not None:
            parser.error(problem)
    if args.resume and args.out is None:
        parser.error("--resume needs --out")
    if args.history_targets and args.model not in CAUSAL_BASELINES:
        parser.error(f"--history-targets is for {', '.join(CAUSAL_BASELINES)}, not {args.model}")
    if args.repeat != "none" and args.model not in REPEAT_MODELS:
        parser.error(f"--repeat is for {', '.join(REPEAT_MODELS)}, not {args.model}")
    if args.loss is not None and args.model not in LOSS_MODELS:
        parser.error(f"--loss is for {', '.join(LOSS_MODELS)}, not {args.model}")
    if args.gbce_t is not None and args.loss != "gbce":
        parser.error("--gbce-t is gBCE's calibration: it needs --loss gbce")
    if args.gbce_t is not None and not (math.isfinite(args.gbce_t) and 0 <= args.gbce_t <= 1):
        parser.error(f"--gbce-t must lie in [0, 1], got {args.gbce_t}")
    if args.loss == "ce" and args.query == "candidate":
        parser.error("--loss ce scores every item with one user state: not with --query "
                     "candidate")
    if args.query == "candidate" and args.model not in QUERY_MODELS:
        parser.error(f"--query candidate is for the mdgr variants and surge, not {args.model}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


#: ``--option``: the least value it takes.
_MINIMA = {
    "epochs": 0, "patience": 1, "batch_size": 1, "dim": 1, "k": 1, "m": 0, "delta": 1,
    "conv_heads": 1, "train_positives": 0, "train_negatives": 0, "blocks": 1,
    "neighbours": 0, "threads": 1, "max_users": 1,
}
#: ``--option``: ``(low, high, low included, high included)`` for the real-valued options.
_INTERVALS = {
    "lr": (0.0, math.inf, False, False),
    "weight_decay": (0.0, math.inf, True, False),
    "gamma": (0.0, 1.0, False, True),
    "dropout": (0.0, 1.0, True, False),
    "mask_prob": (0.0, 1.0, False, True),
    "shrink": (0.0, math.inf, True, False),
    "l2": (0.0, math.inf, False, False),
}


def _interval(low: float, high: float, low_in: bool, high_in: bool) -> str:
    if math.isinf(high):
        return f"{'>=' if low_in else '>'} {low:g} and finite"
    return f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def option_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the model and training options, or None.

    Every count against its least value, every real number finite and in its range, the
    candidate draw non-empty, the paper protocol's validation split non-empty (it picks
    the best epoch), and ``--out`` / ``--metrics-json`` writable. Runs before any work.
    """
    for name, least in _MINIMA.items():
        value = getattr(args, name)
        if value is not None and value < least:
            return f"--{name.replace('_', '-')} must be >= {least}, got {value}"
    for name, (low, high, low_in, high_in) in _INTERVALS.items():
        value = getattr(args, name)
        inside = (low <= value if low_in else low < value) and (
            value <= high if high_in else value < high)
        if not (math.isfinite(value) and inside):
            return (f"--{name.replace('_', '-')} must be "
                    f"{_interval(low, high, low_in, high_in)}, got {value}")
    if not args.train_all_candidates and args.train_positives + args.train_negatives == 0:
        return "--train-positives + --train-negatives must be > 0"
    if args.protocol == "paper" and args.valid_frac == 0:
        return "--valid-frac must be > 0: the validation split picks the best epoch"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and args.batch_size % world:
        return (f"--batch-size {args.batch_size} is the global batch and must be a multiple "
                f"of the {world} processes")
    if args.out is not None and (problem := writable_problem(args.out, "--out", True)):
        return problem
    if args.metrics_json is not None:
        return writable_problem(args.metrics_json, "--metrics-json", False)
    return None


def prepare_from_args(args: argparse.Namespace) -> PreparedDataset:
    """The dataset ``args`` describe (from the cache when it is there), subsampled by
    ``--max-users``."""
    prepared = prepare_dataset(options_from_args(args), cache_dir=cache_dir_from_args(args))
    if args.max_users is not None:
        prepared = prepared.subsample_users(args.max_users, seed=args.seed)
    return prepared


def load_run(
    run_dir: str | Path, checkpoint: str | Path | None = None
) -> tuple[argparse.Namespace, PreparedDataset, SequentialRecommender]:
    """Rebuild a finished ``--out`` run: its options, its dataset and its trained model.

    Reads ``run_dir/args.json`` and loads ``checkpoint`` (default ``run_dir/best.pt``).
    Raises ``FileNotFoundError`` naming the missing file, and a ``ValueError`` naming the
    run for everything else that can be wrong with the folder:
    :class:`~mdgr_graph.train.RunDirError` when the checkpoint is damaged or was trained
    on other data or with another model than ``args.json`` says, and a plain
    ``ValueError`` when ``args.json`` is not JSON, was edited by hand (values of the wrong
    type) or the checkpoint holds the weights of another model.
    """
    run_dir = Path(run_dir)
    checkpoint = Path(checkpoint) if checkpoint is not None else run_dir / "best.pt"
    for path in (run_dir / "args.json", checkpoint):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} the --out of a "
                                    "finished mdgr-train (examples/train_mdgr.py) run?")
    try:
        return _rebuild_run(run_dir, checkpoint)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{run_dir / 'args.json'}: not valid JSON ({exc})") from exc
    except (TypeError, RuntimeError, KeyError, AttributeError) as exc:
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{run_dir}: its args.json and {checkpoint} do not rebuild a "
                         f"trained model ({type(exc).__name__}: {reason})") from exc


def _rebuild_run(run_dir: Path, checkpoint: Path
                 ) -> tuple[argparse.Namespace, PreparedDataset, SequentialRecommender]:
    args = parse_args([])
    saved = json.loads((run_dir / "args.json").read_text())
    unknown = sorted(set(saved) - set(vars(args)))
    if unknown:
        raise ValueError(f"{run_dir / 'args.json'}: unknown options {unknown}")
    vars(args).update(saved)
    args.cache_dir = Path(args.cache_dir)
    prepared = prepare_from_args(args)
    model = build_model(args.model, prepared, **model_options(args))
    state = load_checkpoint(checkpoint)
    if "model" in state and "fingerprint" in state:
        config = TrainConfig(run_options={"model": args.model, **model_options(args)})
        now = run_fingerprint(model, prepared, config)
        diffs = fingerprint_differences(
            {part: state["fingerprint"].get(part) for part in ("data", "model")},
            {part: now[part] for part in ("data", "model")})
        if diffs:
            raise RunDirError(
                f"{checkpoint} was not trained with the options of {run_dir / 'args.json'} "
                f"({'; '.join(diffs[:4])}); was args.json rewritten by another run?")
    model.load_state_dict(state["model"] if "model" in state else state)
    model.eval()
    return args, prepared, model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    distributed.init_from_env(args.device)
    try:
        return _run(args)
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace) -> int:
    device = distributed.local_device(args.device)
    main_rank = distributed.is_main_process()
    say = print if main_rank else (lambda *a, **k: None)
    try:
        with distributed.main_process_first():  # rank 0 fills the cache, the others read it
            prepared = prepare_from_args(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stats = prepared.stats()
    say("data:", json.dumps(stats))

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    try:
        model = build_model(args.model, prepared, **model_options(args))
    except (ValueError, AssertionError) as exc:  # options the model's own checks refuse
        print(f"error: --model {args.model}: {exc}", file=sys.stderr)
        return 2
    say(model)
    if distributed.is_distributed():
        say(f"distributed: {distributed.world_size()} processes, "
            f"{args.batch_size // distributed.world_size()} sequences each per batch")
    config = TrainConfig(
        epochs=args.epochs, patience=args.patience, lr=args.lr,
        weight_decay=args.weight_decay, batch_size=args.batch_size, device=device,
        seed=args.seed, out_dir=str(args.out) if args.out else None, resume=args.resume,
        progress=not args.no_progress, loo_train_targets=args.loo_train_targets,
        loo_train_positives=args.loo_train_positives, mask_seen=args.mask_seen,
        run_options={"model": args.model, **model_options(args)},
    )
    try:
        # refuse another run's folder (or a mismatched --resume) before writing args.json
        check_run_dir(model, prepared, config)
        if args.out is not None and main_rank:
            atomic_write_text(args.out / "args.json", json.dumps(
                {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                indent=2))
        start = time.perf_counter()
        result = fit(model, prepared, config)
    except RunDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test = evaluate(model, prepared, "test", config.eval_batch_size, config.device,
                    mask_seen=config.mask_seen)
    say(f"test ({time.perf_counter() - start:.1f}s total):",
          " ".join(f"{k}={v:.4f}" for k, v in test.items()))

    # loo with the candidate as the query reports auc/sampled only (evaluate): the
    # headline keys it has, and every metric under "metrics"
    final = {name: test[key] for name, key in FINAL_KEYS[prepared.protocol].items()
             if key in test}
    final.update(
        best_epoch=result.best_epoch, epochs=result.epochs,
        train_seconds=round(result.train_seconds, 3), **model.num_parameters(),
        model=args.model, protocol=prepared.protocol, metrics=test,
    )
    say(json.dumps(final))
    if args.metrics_json is not None and main_rank:
        atomic_write_text(args.metrics_json, json.dumps(final, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
