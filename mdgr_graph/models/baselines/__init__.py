"""Baselines on the shared model interface (see docs/baselines.md for their status)."""

from mdgr_graph.models.baselines.comirec import ComiRecDR, ComiRecSA, MultiInterestRecommender
from mdgr_graph.models.baselines.gru4rec import GRU4Rec
from mdgr_graph.models.baselines.item_similarity import (
    EASE,
    ItemKNN,
    ItemSimilarityRecommender,
    training_matrix,
)
from mdgr_graph.models.baselines.pop import Popularity, training_item_counts
from mdgr_graph.models.baselines.sasrec import CausalSequenceRecommender, SASRec
from mdgr_graph.models.baselines.static_graph import StaticGraphRec, consecutive_edges

__all__ = [
    "EASE",
    "CausalSequenceRecommender",
    "ComiRecDR",
    "ComiRecSA",
    "MultiInterestRecommender",
    "GRU4Rec",
    "ItemKNN",
    "ItemSimilarityRecommender",
    "Popularity",
    "SASRec",
    "StaticGraphRec",
    "consecutive_edges",
    "training_item_counts",
    "training_matrix",
]
