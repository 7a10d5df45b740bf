"""Models on the shared interface of :class:`SequentialRecommender`."""

from __future__ import annotations

from typing import Any

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import SequentialRecommender
from mdgr_graph.models.baselines import (
    BIGCF,
    EASE,
    SURGE,
    BERT4Rec,
    ComiRecDR,
    ComiRecSA,
    DCRec,
    GRU4Rec,
    ItemKNN,
    MAERec,
    PinText2,
    Popularity,
    SASRec,
    StaticGraphRec,
    TiSASRec,
)
from mdgr_graph.models.mdgr import MDGR, VARIANTS, SequenceEncoder

#: Baselines fitted in closed form (no gradient training), by name.
CLOSED_FORM: tuple[str, ...] = ("pop", "itemknn", "ease")

#: Neural baselines trained by the same loop as MDGR, by name.
NEURAL_BASELINES: dict[str, type] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "comirec-sa": ComiRecSA,
    "comirec-dr": ComiRecDR,
    "surge": SURGE,
    "tisasrec": TiSASRec,
    "bert4rec": BERT4Rec,
    "pintext": PinText2,
    "bigcf": BIGCF,
    "dcrec": DCRec,
    "maerec": MAERec,
}

#: Neural baselines with causal states, which can also learn next-item targets inside the
#: history (``history_targets=True``).
CAUSAL_BASELINES: tuple[str, ...] = ("sasrec", "gru4rec", "tisasrec", "maerec")

#: MDGR's pipeline with the graph layer on fixed consecutive-item edges (a control).
STATIC_GRAPH = "static-graph"

#: MIP (Shi et al., 2022): encoder with time and position, one static clustering, pooled
#: interests and learned interest weights: MDGR without dynamic graph clustering
#: (docs/baselines.md). The MDGR paper's MIP row in Table 2 equals its MDGR-DGC row in
#: Table 3, digit for digit.
MIP = "mip"

#: Every model the command-line tools can build, by name.
MODELS: tuple[str, ...] = (*VARIANTS, STATIC_GRAPH, MIP, *NEURAL_BASELINES, *CLOSED_FORM)


def history_length(prepared: PreparedDataset) -> int:
    """Length of the input sequences of ``prepared``: the paper history or loo ``max_len``."""
    opts = prepared.meta["options"]
    return opts["history"] if prepared.protocol == "paper" else opts["max_len"]


def build_model(name: str, prepared: PreparedDataset, **kwargs: Any) -> SequentialRecommender:
    """Build model ``name`` for ``prepared`` (number of items, history length).

    Keyword arguments go to the model: MDGR variants, ``mip`` and ``static-graph`` take
    those of :class:`MDGR`,
    ``sasrec``, ``gru4rec``, ``comirec-sa``, ``comirec-dr``, ``tisasrec``, ``bert4rec``
    those of :class:`SASRec`, :class:`GRU4Rec`, :class:`ComiRecSA`, :class:`ComiRecDR`,
    :class:`TiSASRec`, :class:`BERT4Rec`; ``surge`` those of :class:`SURGE`; ``pintext``
    those of :meth:`PinText2.from_prepared`; ``bigcf`` those of
    :meth:`BIGCF.from_prepared`; ``dcrec``, ``maerec`` those of :meth:`DCRec.from_prepared`,
    :meth:`MAERec.from_prepared`; ``itemknn`` ``neighbours`` and ``shrink``, ``ease``
    ``l2``; ``pop`` takes none.
    Closed-form models are fitted on the training interactions here; a neural baseline
    with a ``from_prepared(prepared, max_len, **kwargs)`` class method (one that builds a
    global item graph or reads item labels) is built through it.
    """
    if name == "pop":
        if kwargs:
            raise TypeError(f"pop takes no options, got {sorted(kwargs)}")
        return Popularity.from_prepared(prepared)
    if name == "itemknn":
        return ItemKNN.from_prepared(prepared, **kwargs)
    if name == "ease":
        return EASE.from_prepared(prepared, **kwargs)
    if name in NEURAL_BASELINES:
        cls = NEURAL_BASELINES[name]
        if hasattr(cls, "from_prepared"):  # models that read global training statistics
            return cls.from_prepared(prepared, max_len=history_length(prepared), **kwargs)
        return cls(prepared.num_items, max_len=history_length(prepared), **kwargs)
    if name == STATIC_GRAPH:
        return StaticGraphRec(prepared.num_items, max_len=history_length(prepared), **kwargs)
    if name in VARIANTS:
        return MDGR.from_variant(name, prepared.num_items, max_len=history_length(prepared),
                                 **kwargs)
    if name == MIP:
        return MDGR.from_variant("mdgr-dgc", prepared.num_items,
                                 max_len=history_length(prepared), **kwargs)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


__all__ = [
    "BERT4Rec",
    "BIGCF",
    "CAUSAL_BASELINES",
    "CLOSED_FORM",
    "EASE",
    "MDGR",
    "MIP",
    "MODELS",
    "NEURAL_BASELINES",
    "VARIANTS",
    "ComiRecDR",
    "ComiRecSA",
    "DCRec",
    "GRU4Rec",
    "ItemKNN",
    "MAERec",
    "PinText2",
    "Popularity",
    "SASRec",
    "SequenceEncoder",
    "SequentialRecommender",
    "STATIC_GRAPH",
    "StaticGraphRec",
    "SURGE",
    "TiSASRec",
    "build_model",
    "history_length",
]
