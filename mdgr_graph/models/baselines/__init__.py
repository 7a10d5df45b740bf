"""Baselines on the shared model interface (see docs/baselines.md for their status)."""

from mdgr_graph.models.baselines.pop import Popularity, training_item_counts

__all__ = ["Popularity", "training_item_counts"]
