"""Diagnose MDGR's clusters, graphs and interests on a split (mdgr_graph.diagnostics).

Runs mdgr_graph.diagnostics.diagnose on an MDGR-family model (MDGR, a Table 3
variant, MIP, static-graph; query='last') and prints, per graph iteration and for the final
clustering: how often consecutive items share a cluster against the chance level of the
same cluster sizes, how far apart the kept edges reach against random pairs, the share of
same-cluster pairs kept, how far the iterations move the node states, genre purity of the
clusters against contiguous time segments and random partitions of the same sizes
(--genres), the interests' mean pairwise cosine and weight spread, and the size of the
item, time and position parts of the encoder input. Under leave-one-out, --readouts also
ranks the catalogue with the model's interests read out in other ways (their mean, the
most weighted one, the one holding the last item, the last node's state) beside Eq. 16.
The model comes from one of:

  --run DIR          a finished 'examples/train_mdgr.py --out DIR' run: its data and
                     model options from DIR/args.json, its weights from DIR/best.pt (or
                     --checkpoint)
  --checkpoint PATH  weights (a train_mdgr/compare best.pt or a bare state dict) of the
                     model that the data and model options below describe
  --untrained        the model those options describe, initialised from --seed exactly
                     as train_mdgr.py initialises it before training

Examples:

    .venv/bin/python benchmarks/diagnostics.py --untrained --format movielens \\
        --path ../shared/data/ml-1m-subset/ratings.dat.gz --protocol paper --m 5 \\
        --genres ../shared/data/ml-1m-subset/movies.dat.gz --max-windows 300 --threads 1
    .venv/bin/python benchmarks/diagnostics.py --run runs/ml1m \\
        --genres ../shared/data/ml-1m-subset/movies.dat.gz --json d.json --plot d.png
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from mdgr_graph import diagnostics
from mdgr_graph.bench import record
from mdgr_graph.data.cli import (
    add_data_arguments,
    cache_dir_from_args,
    options_from_args,
)
from mdgr_graph.data.prepare import PreparedDataset, prepare_dataset
from mdgr_graph.data.protocols import SPLIT_NAMES
from mdgr_graph.io import atomic_write_bytes, atomic_write_text
from mdgr_graph.models import MIP, STATIC_GRAPH, VARIANTS, build_model
from mdgr_graph.models.mdgr import MDGR, POOL_VALUES
from mdgr_graph.nn.repeat import REPEAT_MODES

REPO = Path(__file__).resolve().parents[1]

#: Models this command diagnoses (those with MDGR's clustering and interests).
MODELS = (*VARIANTS, MIP, STATIC_GRAPH)

#: Model options of this command, with train_mdgr.py's names and defaults; with --run they
#: are read from args.json.
MODEL_DEFAULTS: dict[str, Any] = {
    "model": "mdgr", "dim": 32, "k": 8, "m": 1, "gamma": 0.1, "delta": 4, "conv_heads": 2,
    "dropout": 0.1, "cluster": "kmeans", "pool": "attention", "weighting": "paper",
    "binary": False, "conv_residual": True, "conv_norm": True, "input_norm": "none",
    "cluster_on": "state", "pool_values": "state", "nodes_per_cluster": None, "repeat": "none",
    "query": "last",
}


class UsageError(Exception):
    """A bad combination of options or a bad run directory (exit status 2)."""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the option help, the description as written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog="--run takes the data and model options from DIR/args.json; giving them as "
               "well is an error. Exit status 2 with one 'error:' line for a missing file or "
               "a bad option.",
        formatter_class=_Formatter,
    )
    src = parser.add_argument_group("model source (one of --run, --checkpoint, --untrained)")
    src.add_argument("--run", type=Path, default=None, metavar="DIR",
                     help="a finished examples/train_mdgr.py --out directory (args.json, "
                          "best.pt)")
    src.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                     help="weights to load: with --run instead of DIR/best.pt, otherwise "
                          "for the model the options below describe")
    src.add_argument("--untrained", action="store_true",
                     help="the untrained model the options below describe, initialised "
                          "with torch.manual_seed(--seed) as train_mdgr.py does")
    add_data_arguments(parser)
    parser.add_argument("--max-users", type=int, default=None,
                        help="data: a seeded subsample of this many users (as train_mdgr.py)")
    g = parser.add_argument_group("model (as examples/train_mdgr.py)")
    g.add_argument("--model", choices=MODELS, default=MODEL_DEFAULTS["model"],
                   help="an MDGR-family model: mdgr, a Table 3 variant, mip (no graph "
                        "iterations) or static-graph")
    g.add_argument("--dim", type=int, default=MODEL_DEFAULTS["dim"], help="model width d")
    g.add_argument("--k", type=int, default=MODEL_DEFAULTS["k"], help="number of interests")
    g.add_argument("--m", "--iterations", dest="m", type=int, default=MODEL_DEFAULTS["m"],
                   help="DynamicClusterConv iterations")
    g.add_argument("--gamma", type=float, default=MODEL_DEFAULTS["gamma"],
                   help="edge budget: top ceil(gamma*n^2) same-cluster pairs per graph")
    g.add_argument("--delta", type=int, default=MODEL_DEFAULTS["delta"],
                   help="weighted-cosine heads")
    g.add_argument("--conv-heads", type=int, default=MODEL_DEFAULTS["conv_heads"],
                   help="attention heads per iteration")
    g.add_argument("--dropout", type=float, default=MODEL_DEFAULTS["dropout"],
                   help="encoder dropout (inactive here: the model runs in eval mode)")
    g.add_argument("--cluster", default=MODEL_DEFAULTS["cluster"],
                   choices=["kmeans", "ward", "sklearn-kmeans", "birch"],
                   help="clustering (mip and mdgr-dgc always use ward)")
    g.add_argument("--pool", default=MODEL_DEFAULTS["pool"],
                   choices=["attention", "last", "mean"], help="interest pooling")
    g.add_argument("--weighting", default=MODEL_DEFAULTS["weighting"], choices=["paper", "log"],
                   help="how interest weights enter the score")
    g.add_argument("--binary", action="store_true",
                   help="binary adjacency (paper Eq. 9) instead of weighted edges")
    g.add_argument("--no-conv-residual", dest="conv_residual", action="store_false",
                   help="no residual connection around each iteration (as train_mdgr.py)")
    g.add_argument("--no-conv-norm", dest="conv_norm", action="store_false",
                   help="no LayerNorm after each iteration (as train_mdgr.py)")
    g.add_argument("--input-norm", default=MODEL_DEFAULTS["input_norm"],
                   choices=["none", "scale", "layer"],
                   help="balance of the encoder's input parts (none: the paper)")
    g.add_argument("--cluster-on", default=MODEL_DEFAULTS["cluster_on"],
                   choices=["state", "item"],
                   help="what the clusters and the metric graph are built from (state: the "
                        "paper)")
    g.add_argument("--pool-values", default=MODEL_DEFAULTS["pool_values"],
                   choices=list(POOL_VALUES),
                   help="what the interest pooling mixes (state: the paper; item: the item "
                        "embeddings)")
    g.add_argument("--nodes-per-cluster", type=int, default=MODEL_DEFAULTS["nodes_per_cluster"],
                   metavar="C",
                   help="at most n // C clusters per graph (not in the paper); every graph "
                        "has k when not given")
    g.add_argument("--repeat", default=MODEL_DEFAULTS["repeat"], choices=list(REPEAT_MODES),
                   help="the repeat term of the run (gate: not in the paper); --readouts "
                        "refuses it")
    g.add_argument("--query", default=MODEL_DEFAULTS["query"], choices=["last", "candidate"],
                   help="the graph's query (candidate: Eq. 11 as the paper writes it; such a "
                        "model takes --query-dependence only)")
    d = parser.add_argument_group("diagnostics")
    d.add_argument("--split", choices=SPLIT_NAMES, default="test", help="split to diagnose")
    d.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="only the first N sequences of the split; all when not given")
    d.add_argument("--batch-size", type=int, default=64, help="sequences per batch")
    d.add_argument("--genres", type=Path, default=None, metavar="MOVIES_DAT",
                   help="MovieLens movies.dat(.gz) (id::title::genres): adds genre purity "
                        "of the clusters against time segments and random partitions")
    d.add_argument("--readouts", action="store_true",
                   help="leave-one-out: also full-ranking HR/NDCG of the split's users (the "
                        "first --max-windows) under other readouts of the same interests "
                        "(mdgr_graph.diagnostics.readout_ranking)")
    d.add_argument("--query-dependence", action="store_true",
                   help="instead of the cluster diagnostics, for a --query candidate model: "
                        "the split's sampled metrics with the graph's query swapped for "
                        "another candidate of the window or the last item, and how much the "
                        "candidate moves the final clusters "
                        "(mdgr_graph.diagnostics.query_dependence)")
    d.add_argument("--no-mask-seen", action="store_true",
                   help="with --readouts: rank every item, the user's earlier items included "
                        "(for a run trained and evaluated with --no-mask-seen)")
    d.add_argument("--baseline-seed", type=int, default=0,
                   help="seed of the random-partition baseline of genre purity")
    d.add_argument("--device", default="cpu", help="cpu or cuda")
    d.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads; torch's choice when not given")
    d.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="also write the results, options and environment as JSON "
                        "(atomically)")
    d.add_argument("--plot", type=Path, default=None, metavar="PNG",
                   help="draw consecutive-same-cluster share vs chance per iteration, edge "
                        "position gap vs random, and genre purity (with --genres)")
    args = parser.parse_args(argv)
    if sum([args.run is not None, args.untrained, args.checkpoint is not None
            and args.run is None]) != 1:
        parser.error("give exactly one of --run DIR, --checkpoint PATH, --untrained")
    if args.run is not None:
        given = [f"--{dest.replace('_', '-')}" for dest in _data_and_model_dests()
                 if getattr(args, dest) != parser.get_default(dest)]
        if given:
            parser.error(f"--run takes the data and model options from args.json; drop "
                         f"{', '.join(given)}")
    if args.no_mask_seen and not args.readouts:
        parser.error("--no-mask-seen is an option of --readouts")
    if args.query_dependence and (args.readouts or args.plot or args.genres):
        parser.error("--query-dependence replaces the cluster diagnostics: drop --readouts, "
                     "--plot and --genres")
    if args.max_windows is not None and args.max_windows < 1:
        parser.error("--max-windows must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    return args


def _data_defaults() -> argparse.Namespace:
    """The defaults of the data options (:func:`add_data_arguments`)."""
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    return parser.parse_args([])


def _data_and_model_dests() -> list[str]:
    """Options that ``--run`` reads from args.json instead of the command line."""
    return [*vars(_data_defaults()), "max_users", *MODEL_DEFAULTS]


def _data_namespace(saved: dict[str, Any]) -> argparse.Namespace:
    """The data options of a train_mdgr.py ``args.json`` (defaults for missing keys)."""
    args = _data_defaults()
    for key in vars(args):
        if key in saved:
            setattr(args, key, saved[key])
    args.cache_dir = Path(args.cache_dir)
    args.max_users = saved.get("max_users")
    return args


def _model_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    keys = [key for key in MODEL_DEFAULTS if key != "model"]
    return {key: options.get(key, MODEL_DEFAULTS[key]) for key in keys}


def load(args: argparse.Namespace) -> tuple[PreparedDataset, MDGR, dict[str, Any]]:
    """The dataset and model ``args`` name, and a record of where they came from."""
    checkpoint = args.checkpoint
    if args.run is not None:
        saved_path = args.run / "args.json"
        checkpoint = checkpoint or args.run / "best.pt"
        for path in (saved_path, checkpoint):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: is {args.run} the --out of a "
                                        "finished examples/train_mdgr.py run?")
        try:
            saved = json.loads(saved_path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"{saved_path}: not JSON ({exc})") from exc
        name = saved.get("model", "mdgr")
        if name not in MODELS:
            raise UsageError(f"{saved_path}: model {name!r} has no MDGR clustering to "
                             f"diagnose; this command takes {', '.join(MODELS)}")
        data_args = _data_namespace(saved)
        kwargs = _model_kwargs(saved)
    else:
        if checkpoint is not None and not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint} not found")
        name, data_args, kwargs = args.model, args, _model_kwargs(vars(args))
    prepared = prepare_dataset(options_from_args(data_args),
                               cache_dir=cache_dir_from_args(data_args))
    if data_args.max_users is not None:
        prepared = prepared.subsample_users(data_args.max_users, seed=data_args.seed)
    torch.manual_seed(data_args.seed)  # as train_mdgr.py, so --untrained is its initial model
    model = build_model(name, prepared, **kwargs)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"] if isinstance(state, dict) and "model" in state
                              else state)
    source = {"run": str(args.run) if args.run else None,
              "checkpoint": str(checkpoint) if checkpoint else None,
              "untrained": checkpoint is None, "model": name, "model_kwargs": kwargs,
              "data": options_from_args(data_args).to_json(),
              "max_users": data_args.max_users}
    return prepared, model, source


# ---------------------------------------------------------------------- output
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.{digits}f}"
    return str(value)


def readout_table(readouts: dict[str, Any]) -> str:
    """The readouts of :func:`mdgr_graph.diagnostics.readout_ranking` as a text table."""
    lines = [f"readouts, full ranking of {readouts['users']} {readouts['split']} users:",
             f"  {'readout':<20}{'HR@10':>8}{'NDCG@10':>9}{'HR@50':>8}"]
    for name, m in readouts["readouts"].items():
        lines.append(f"  {name:<20}{m['hr@10/full']:>8.4f}{m['ndcg@10/full']:>9.4f}"
                     f"{m['hr@50/full']:>8.4f}")
    return "\n".join(lines)


def query_table(result: dict[str, Any]) -> str:
    """:func:`mdgr_graph.diagnostics.query_dependence` as a text table."""
    metrics = list(result["queries"]["own"])
    lines = [f"the graph's query, {result['windows']} {result['split']} windows:",
             f"  {'query':<18}" + "".join(f"{m:>20}" for m in metrics)]
    for name, values in result["queries"].items():
        lines.append(f"  {name:<18}" + "".join(f"{values[m]:>20.4f}" for m in metrics))
    lines.append(f"final clusters of two candidates' copies of a window: Rand agreement "
                 f"{_fmt(result['cluster_rand_agreement'])}, identical partitions "
                 f"{_fmt(result['identical_partitions'])} ({result['copies']} copies)")
    if result["attention_tv"]:
        tv = result["attention_tv"]
        lines.append(f"first iteration's attention (Eq. 12), total variation: between two "
                     f"candidates' queries {_fmt(tv['between_candidates'])}, from uniform "
                     f"weights {_fmt(tv['to_uniform'])}")
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    """The results as aligned text tables."""
    lines = [f"{result['model']} on {result['split']}: {result['sequences']} sequences, "
             f"k = {result['k']}, m = {result['m']}, clustering '{result['cluster']}'", ""]
    lines.append("encoder input, mean L2 norm per node   input   after encoder.proj")
    for name, label in [("item", "item embedding"), ("time", "time encoding"),
                        ("position", "position encoding")]:
        entry = result["encoder"][name]
        if entry is None:
            lines.append(f"  {label:<36}{'(not used)':>7}")
        else:
            lines.append(f"  {label:<36}{_fmt(entry['input']):>7}{_fmt(entry['projected']):>9}")
    lines.append(f"  {'projection bias':<36}{'':>7}{_fmt(result['encoder']['bias']):>9}")
    lines.append("")
    genres = "genre_purity" in result["final"]
    head = ["step", "consec. same", "chance", "clusters", "edges", "edge gap", "random gap",
            "kept/same pairs", "cos(x,x0)", "cos(x,prev)"]
    if genres:
        head += ["purity", "time seg.", "random"]
    rows = []
    for entry in [*result["iterations"], {"iteration": "final", **result["final"]}]:
        row = [str(entry["iteration"]), _fmt(entry["consecutive_same_cluster"]),
               _fmt(entry["consecutive_chance"]), _fmt(entry["clusters"], 2),
               _fmt(entry.get("edges"), 1), _fmt(entry.get("edge_gap"), 2),
               _fmt(entry.get("edge_gap_random"), 2),
               _fmt(entry.get("kept_share_of_same_cluster_pairs")),
               _fmt(entry.get("cos_to_encoder")), _fmt(entry.get("cos_to_previous"))]
        if genres:
            purity = entry["genre_purity"]
            row += [_fmt(purity["clusters"]), _fmt(purity["time_segments"]),
                    _fmt(purity["random"])]
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines.append("  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    final = result["final"]
    lines += ["", f"final interests: mean pairwise cosine {_fmt(final['interest_cosine'])} "
              f"({final['interest_users']} users with >= 2 interests); weights max/min "
              f"{_fmt(final['weight_max_min'])}, std/mean {_fmt(final['weight_std_mean'])}"]
    if "auc" in final:
        lines.append(f"scores: AUC {_fmt(final['auc'])} with every interest (Eq. 16), "
                     f"{_fmt(final['auc_mean_interest'])} with their mean alone; the "
                     f"positives of a window take the max from {_fmt(final['positive_interests'])}"
                     f" distinct interests")
    lines += ["", "step i: the clustering iteration i computed from its input and the edges "
              "it kept; cos(x,x0), cos(x,prev): its output against the encoder output and "
              "its input (mean over nodes); final: the clustering pooled into interests. "
              "Each figure is a mean over sequences (users for the interests)."]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Consecutive-same-cluster share vs chance, edge gap vs random (with iterations) and
    genre purity vs time segments vs random (with genres), per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [*result["iterations"], {"iteration": "final", **result["final"]}]
    labels = [str(s["iteration"]) for s in steps]
    x = list(range(len(steps)))
    genres = "genre_purity" in result["final"]
    panels = 1 + bool(result["iterations"]) + genres
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6), squeeze=False)
    axes = list(axes[0])
    ax = axes.pop(0)
    ax.plot(x, [s["consecutive_same_cluster"] for s in steps], "o-", label="clusters")
    ax.plot(x, [s["consecutive_chance"] for s in steps], "s--", color="grey",
            label="chance (same sizes)")
    ax.set(title="consecutive items in one cluster", xlabel="iteration", ylabel="share",
           ylim=(0, 1.02))
    ax.set_xticks(x, labels)
    ax.legend(fontsize=8)
    if result["iterations"]:
        ax = axes.pop(0)
        its = result["iterations"]
        xi = list(range(len(its)))
        ax.plot(xi, [s["edge_gap"] for s in its], "o-", label="kept edges")
        ax.plot(xi, [s["edge_gap_random"] for s in its], "s--", color="grey",
                label="random pairs")
        ax.set(title="|position difference| of edge ends", xlabel="iteration",
               ylabel="positions", ylim=(0, None))
        ax.set_xticks(xi, [str(s["iteration"]) for s in its])
        ax.legend(fontsize=8)
    if genres:
        ax = axes.pop(0)
        for key, label, style in [("clusters", "clusters", "o-"),
                                  ("time_segments", "time segments", "^-"),
                                  ("random", "random partition", "s--")]:
            ax.plot(x, [s["genre_purity"][key] for s in steps], style, label=label,
                    **({"color": "grey"} if key == "random" else {}))
        ax.set(title="genre purity (same group sizes)", xlabel="iteration", ylabel="purity")
        ax.set_xticks(x, labels)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['model']}, {result['split']} ({result['sequences']} sequences)",
                 fontsize=8)
    fig.tight_layout()
    atomic_write_bytes(path, lambda fh: fig.savefig(fh, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        prepared, model, source = load(args)
        item_genres = None
        if args.genres is not None:
            item_genres = diagnostics.read_item_genres(args.genres, prepared.arrays["item_ids"])
        if args.readouts and prepared.protocol != "loo":
            raise UsageError(f"--readouts ranks the catalogue: it needs --protocol loo, got "
                             f"{prepared.protocol!r}")
        model.to(args.device)
        if args.query_dependence:
            result = diagnostics.query_dependence(model, prepared, args.split,
                                                  args.max_windows, args.batch_size)
        else:
            result = diagnostics.diagnose(model, prepared, args.split, args.max_windows,
                                          item_genres, args.batch_size, args.baseline_seed)
        if args.readouts:
            result["readouts"] = diagnostics.readout_ranking(
                model, prepared, args.split, args.max_windows, args.batch_size,
                mask_seen=not args.no_mask_seen)
    except (OSError, ValueError, TypeError, RuntimeError, ImportError, UsageError,
            pickle.UnpicklingError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        message = " ".join(lines) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(query_table(result) if args.query_dependence else table(result))
    if "readouts" in result:
        print("\n" + readout_table(result["readouts"]))
    if args.json is not None:
        payload = {"diagnostics": result, "source": source, "data": prepared.stats(),
                   "genres": str(args.genres) if args.genres else None,
                   "max_windows": args.max_windows, "baseline_seed": args.baseline_seed,
                   "environment": record.environment(torch.get_num_threads())}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot is not None:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
