"""Baselines on the shared model interface (see docs/baselines.md for their status)."""

from mdgr_graph.models.baselines.bert4rec import BERT4Rec
from mdgr_graph.models.baselines.bigcf import BIGCF
from mdgr_graph.models.baselines.comirec import ComiRecDR, ComiRecSA, MultiInterestRecommender
from mdgr_graph.models.baselines.dcrec import DCRec
from mdgr_graph.models.baselines.din import TargetAttentionRec
from mdgr_graph.models.baselines.gru4rec import GRU4Rec
from mdgr_graph.models.baselines.item_similarity import (
    EASE,
    ItemKNN,
    ItemSimilarityRecommender,
    cooccurrence,
    training_matrix,
)
from mdgr_graph.models.baselines.maerec import MAERec
from mdgr_graph.models.baselines.pintext import PinText2
from mdgr_graph.models.baselines.pop import Popularity, training_item_counts
from mdgr_graph.models.baselines.sasrec import CausalSequenceRecommender, SASRec
from mdgr_graph.models.baselines.spop import SessionPopularity, occurrences, popularity_tiebreak
from mdgr_graph.models.baselines.static_graph import StaticGraphRec, consecutive_edges
from mdgr_graph.models.baselines.surge import SURGE
from mdgr_graph.models.baselines.tisasrec import TiSASRec, time_interval_matrix

__all__ = [
    "BERT4Rec",
    "BIGCF",
    "EASE",
    "CausalSequenceRecommender",
    "ComiRecDR",
    "ComiRecSA",
    "DCRec",
    "MultiInterestRecommender",
    "GRU4Rec",
    "ItemKNN",
    "ItemSimilarityRecommender",
    "MAERec",
    "PinText2",
    "Popularity",
    "SASRec",
    "SessionPopularity",
    "StaticGraphRec",
    "SURGE",
    "TargetAttentionRec",
    "TiSASRec",
    "consecutive_edges",
    "training_item_counts",
    "time_interval_matrix",
    "cooccurrence",
    "occurrences",
    "popularity_tiebreak",
    "training_matrix",
]
