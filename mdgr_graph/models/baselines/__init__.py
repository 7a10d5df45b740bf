"""Baselines on the shared model interface (see docs/baselines.md for their status)."""

from mdgr_graph.models.baselines.gru4rec import GRU4Rec
from mdgr_graph.models.baselines.item_similarity import (
    EASE,
    ItemKNN,
    ItemSimilarityRecommender,
    training_matrix,
)
from mdgr_graph.models.baselines.pop import Popularity, training_item_counts
from mdgr_graph.models.baselines.sasrec import CausalSequenceRecommender, SASRec

__all__ = [
    "EASE",
    "CausalSequenceRecommender",
    "GRU4Rec",
    "ItemKNN",
    "ItemSimilarityRecommender",
    "Popularity",
    "SASRec",
    "training_item_counts",
    "training_matrix",
]
