"""The one map from a model name to the options it takes.

:data:`MODEL_OPTIONS` says, for every model :func:`~mdgr_graph.models.build_model` knows,
which of its keyword arguments the command line sets and from which option. Both command
lines read it:

- ``mdgr-train`` (:func:`model_options`) passes every keyword the model takes, with the
  option's value (its default when not given), so a run's ``args.json`` rebuilds it;
- the benchmark runner (:func:`benchmark_model_kwargs`) passes only the options given on
  its command line, so that a run's configuration hash, and with it the name of its result
  file, changes only when an option that was given changes.
"""

from __future__ import annotations

import argparse
from typing import Any

from mdgr_graph.models import (
    CLOSED_FORM,
    MIP,
    MODELS,
    STATIC_GRAPH,
    VARIANTS,
)

#: The candidate draw per training window (``None``: every candidate of the window).
DRAWS: tuple[str, ...] = ("train_positives", "train_negatives")

#: MDGR, its Table 3 variants, MIP and the static-graph control: ``MDGR``'s keywords.
_MDGR = {name: name for name in (
    "dim", "k", "m", "gamma", "delta", "conv_heads", "dropout", "cluster", "pool", "binary",
    "weighting", "input_norm", "cluster_on", "query", "conv_residual", "conv_norm", *DRAWS,
    "repeat", "loss", "gbce_t", "nodes_per_cluster", "pool_values")}
_SASREC = {"dim": "dim", "dropout": "dropout", "num_blocks": "blocks",
           "history_targets": "history_targets", "loss": "loss", "gbce_t": "gbce_t"}

#: Model name -> ``{keyword of build_model: option of mdgr-train (attribute of its args)}``.
MODEL_OPTIONS: dict[str, dict[str, str]] = {
    **dict.fromkeys((*VARIANTS, STATIC_GRAPH, MIP), _MDGR),
    "sasrec": _SASREC,
    "tisasrec": _SASREC,
    "gru4rec": {"dim": "dim", "dropout": "dropout", "num_layers": "blocks",
                "history_targets": "history_targets", "loss": "loss", "gbce_t": "gbce_t"},
    "bert4rec": {"dim": "dim", "dropout": "dropout", "num_blocks": "blocks",
                 "mask_prob": "mask_prob", "loss": "loss", "gbce_t": "gbce_t"},
    "maerec": {"dim": "dim", "history_targets": "history_targets"},
    "comirec-sa": {"dim": "dim", "interests": "k", "dropout": "dropout", "loss": "loss",
                   "gbce_t": "gbce_t"},
    "comirec-dr": {"dim": "dim", "interests": "k", "loss": "loss", "gbce_t": "gbce_t"},
    "surge": {"dim": "dim", "query": "query", **{d: d for d in DRAWS}, "loss": "loss",
              "gbce_t": "gbce_t"},
    "din": {"dim": "dim", "dropout": "dropout", **{d: d for d in DRAWS}},
    # their own defaults for the rest
    "pintext": {"dim": "dim"},
    "bigcf": {"dim": "dim"},
    "dcrec": {"dim": "dim", "loss": "loss", "gbce_t": "gbce_t"},
    "itemknn": {"neighbours": "neighbours", "shrink": "shrink"},
    "ease": {"l2": "l2"},
    "pop": {},
    "spop": {},
}
assert set(MODEL_OPTIONS) == set(MODELS), "every model needs its row"

#: Keywords passed only when their option differs from this value, so that runs made
#: before the option existed keep their recorded options (and hashes).
ONLY_WHEN_SET: dict[str, Any] = {"repeat": "none", "loss": None, "gbce_t": None,
                                 "nodes_per_cluster": None, "pool_values": "state"}

#: Models that can train with ``--loss`` (a softmax over the catalogue among the choices).
LOSS_MODELS: tuple[str, ...] = tuple(name for name, row in MODEL_OPTIONS.items()
                                     if "loss" in row)
#: Models that take ``--repeat``.
REPEAT_MODELS: tuple[str, ...] = tuple(name for name, row in MODEL_OPTIONS.items()
                                       if "repeat" in row)

#: Models that take ``--query``; ``candidate`` needs graph layers or SURGE
#: (static-graph supports ``last`` only).
QUERY_MODELS: tuple[str, ...] = (*VARIANTS, MIP, "surge")

#: Models whose graph attention takes the candidate as its query under ``--query
#: candidate``. Without graph layers (``mdgr-dgc``, MIP) the candidate-query model is the
#: same model, so the benchmark does not give them the option and they keep their runs.
CANDIDATE_QUERY_MODELS: tuple[str, ...] = (*(v for v in VARIANTS if v != "mdgr-dgc"),
                                           "surge")

#: Keyword of ``build_model`` -> option of the benchmark command line that sets it. The
#: benchmark sets no other keyword: every model keeps its own default for the rest.
BENCHMARK_OPTIONS: dict[str, str] = {
    "dim": "dim", "history_targets": "history_targets", "k": "mdgr_k", "m": "mdgr_m",
    "weighting": "mdgr_weighting", "cluster": "mdgr_cluster", "input_norm": "mdgr_input_norm",
    "cluster_on": "mdgr_cluster_on", "query": "query", "repeat": "mdgr_repeat", "loss": "loss",
    "gbce_t": "gbce_t",
    "train_positives": "train_positives", "train_negatives": "train_negatives",
    "nodes_per_cluster": "mdgr_nodes_per_cluster", "pool_values": "mdgr_pool_values",
}

#: Keywords the benchmark never passes to a model although the model takes them: MIP
#: clusters once with Ward and has no iterations (its runs were always made without these;
#: ``mdgr-dgc``, the same model, was given them, and its run names keep them).
BENCHMARK_SKIPS: dict[str, tuple[str, ...]] = {MIP: ("m", "cluster", "cluster_on")}


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every keyword argument of ``build_model`` that ``args.model`` takes, from the parsed
    ``mdgr-train`` options ``args``."""
    options = {}
    for keyword, option in MODEL_OPTIONS[args.model].items():
        value = getattr(args, option)
        if keyword == "neighbours":
            value = value or None  # --neighbours 0 keeps them all
        elif keyword in DRAWS and args.train_all_candidates:
            value = None
        if keyword in ONLY_WHEN_SET and value == ONLY_WHEN_SET[keyword]:
            continue
        options[keyword] = value
    return options


def benchmark_model_kwargs(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of neural model ``name`` under the benchmark options ``args``:
    the model's :data:`MODEL_OPTIONS` that the benchmark sets (:data:`BENCHMARK_OPTIONS`)
    and that were given (not None); ``query`` only for :data:`CANDIDATE_QUERY_MODELS`; the
    candidate draw only where the model trains on drawn candidates (``din``, or
    ``--query candidate``), under ``--train-all-candidates`` as None."""
    if name in CLOSED_FORM:
        raise ValueError(f"{name} is fitted in closed form: its options are a grid")
    query = getattr(args, "query", None)
    draws = name == "din" or (query == "candidate" and name in CANDIDATE_QUERY_MODELS)
    all_candidates = getattr(args, "train_all_candidates", False)
    kwargs: dict[str, Any] = {}
    for keyword in MODEL_OPTIONS[name]:
        if keyword not in BENCHMARK_OPTIONS or keyword in BENCHMARK_SKIPS.get(name, ()):
            continue
        if keyword == "query" and name not in CANDIDATE_QUERY_MODELS:
            continue
        if keyword in DRAWS:
            if draws and all_candidates:
                kwargs[keyword] = None
                continue
            if not draws:
                continue
        value = getattr(args, BENCHMARK_OPTIONS[keyword], None)
        if value is not None:
            kwargs[keyword] = value
    return kwargs


__all__ = [
    "BENCHMARK_OPTIONS",
    "BENCHMARK_SKIPS",
    "CANDIDATE_QUERY_MODELS",
    "DRAWS",
    "MODEL_OPTIONS",
    "QUERY_MODELS",
    "benchmark_model_kwargs",
    "model_options",
]
