"""Models on the shared interface of :class:`SequentialRecommender`."""

from __future__ import annotations

import inspect
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
    SessionPopularity,
    StaticGraphRec,
    TargetAttentionRec,
    TiSASRec,
)
from mdgr_graph.models.mdgr import MDGR, VARIANTS, SequenceEncoder

#: Baselines fitted in closed form (no gradient training), by name.
CLOSED_FORM: tuple[str, ...] = ("pop", "spop", "itemknn", "ease")

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
    "din": TargetAttentionRec,
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
    :meth:`MAERec.from_prepared`; ``din`` those of :class:`TargetAttentionRec` (DIN-style
    target attention without a graph, a control); ``itemknn`` ``neighbours`` and
    ``shrink``, ``ease``
    ``l2``; ``pop`` and ``spop`` (S-POP) take none.
    ``loss`` (any neural model) sets :attr:`~SequentialRecommender.candidate_loss_kind`:
    ``"bce"`` (Eq. 17 over the given candidates), ``"sampled_softmax"``, ``"gbce"``
    (gSASRec's gBCE, calibration ``gbce_t``, default 0.75) or ``"ce"`` (a softmax over the
    whole catalogue, issue 27); not given, the model's own default.
    Closed-form models are fitted on the training interactions here; a neural baseline
    with a ``from_prepared(prepared, max_len, **kwargs)`` class method (one that builds a
    global item graph or reads item labels) is built through it.
    """
    cls = model_class(name)
    if name in ("pop", "spop") and kwargs:
        raise TypeError(f"{name} takes no options, got {sorted(kwargs)}")
    if name in CLOSED_FORM:
        return cls.from_prepared(prepared, **kwargs)
    loss = kwargs.pop("loss", None)
    gbce_t = kwargs.pop("gbce_t", None)
    model = _build_neural(name, cls, prepared, **kwargs)
    if loss is not None:
        model.candidate_loss_kind = loss
    if gbce_t is not None:
        if model.candidate_loss_kind != "gbce":
            raise ValueError(f"gbce_t is gBCE's calibration: it needs loss='gbce' (got "
                             f"{model.candidate_loss_kind!r})")
        if not 0.0 <= gbce_t <= 1.0:
            raise ValueError(f"gbce_t must lie in [0, 1], got {gbce_t}")
        model.gbce_t = float(gbce_t)
    return model


def _build_neural(name: str, cls: type, prepared: PreparedDataset,
                  **kwargs: Any) -> SequentialRecommender:
    max_len = history_length(prepared)
    if name in VARIANTS or name == MIP:
        return MDGR.from_variant(variant_of(name), prepared.num_items, max_len=max_len, **kwargs)
    if hasattr(cls, "from_prepared"):  # models that read global training statistics
        return cls.from_prepared(prepared, max_len=max_len, **kwargs)
    return cls(prepared.num_items, max_len=max_len, **kwargs)


def variant_of(name: str) -> str:
    """The Table 3 variant that model ``name`` (a variant, or MIP) is built as."""
    return "mdgr-dgc" if name == MIP else name


def model_class(name: str) -> type:
    """The class :func:`build_model` builds for model ``name``."""
    classes: dict[str, type] = {"pop": Popularity, "spop": SessionPopularity,
                                "itemknn": ItemKNN, "ease": EASE,
                                STATIC_GRAPH: StaticGraphRec, MIP: MDGR,
                                **NEURAL_BASELINES, **dict.fromkeys(VARIANTS, MDGR)}
    if name not in classes:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return classes[name]


def model_defaults(name: str) -> dict[str, str]:
    """What the code decides for model ``name`` beyond the options given to it: the keyword
    defaults of the constructor and ``from_prepared`` that :func:`build_model` calls (as
    reprs, ``"from_prepared.<arg>"`` for the latter) and a variant's or MIP's fixed settings
    (``"variant.<arg>"``).

    Two runs whose records differ here were built by different code even if given the same
    options (e.g. a changed default loss).
    """
    cls = model_class(name)
    defaults: dict[str, str] = {}
    for prefix, method in [("", "__init__"), ("from_prepared.", "from_prepared")]:
        for owner in cls.__mro__:  # into a parent while the method forwards **kwargs
            if method not in vars(owner):
                continue
            params = inspect.signature(getattr(owner, method)).parameters.values()
            for param in params:
                if param.default is not inspect.Parameter.empty:
                    defaults.setdefault(prefix + param.name, repr(param.default))
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
                break
    fixed = VARIANTS[variant_of(name)] if name in VARIANTS or name == MIP else {}
    defaults.update({f"variant.{key}": repr(value) for key, value in fixed.items()})
    return defaults


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
    "SessionPopularity",
    "SequentialRecommender",
    "STATIC_GRAPH",
    "StaticGraphRec",
    "SURGE",
    "TargetAttentionRec",
    "TiSASRec",
    "build_model",
    "history_length",
    "model_class",
    "model_defaults",
]
