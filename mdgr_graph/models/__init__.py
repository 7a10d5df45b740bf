"""Models on the shared interface of :class:`SequentialRecommender`."""

from __future__ import annotations

from typing import Any

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import SequentialRecommender
from mdgr_graph.models.baselines import Popularity
from mdgr_graph.models.mdgr import MDGR, VARIANTS, SequenceEncoder

#: Every model the command-line tools can build, by name.
MODELS: tuple[str, ...] = (*VARIANTS, "pop")


def build_model(name: str, prepared: PreparedDataset, **kwargs: Any) -> SequentialRecommender:
    """Build model ``name`` for ``prepared`` (number of items, history length).

    MDGR variants take the keyword arguments of :class:`MDGR`; ``pop`` ignores them.
    """
    if name == "pop":
        return Popularity.from_prepared(prepared)
    if name in VARIANTS:
        opts = prepared.meta["options"]
        max_len = opts["history"] if prepared.protocol == "paper" else opts["max_len"]
        return MDGR.from_variant(name, prepared.num_items, max_len=max_len, **kwargs)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


__all__ = ["MDGR", "MODELS", "Popularity", "SequenceEncoder", "SequentialRecommender",
           "VARIANTS", "build_model"]
