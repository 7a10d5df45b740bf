"""Popularity: score every item by how often it occurs in the training data."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import SequentialRecommender


def training_item_counts(prepared: PreparedDataset) -> np.ndarray:
    """Occurrences of each item ``[num_items + 1]`` among the training interactions.

    See :meth:`~mdgr_graph.data.prepare.PreparedDataset.training_interactions`: the
    training windows (paper protocol) or the sequences without their valid and test
    targets (leave-one-out).
    """
    _, items = prepared.training_interactions()
    return np.bincount(items, minlength=prepared.num_items + 1)


class Popularity(SequentialRecommender):
    """Non-personalised baseline: ``score(item) = log(1 + count(item))``.

    Args:
        counts: ``[num_items + 1]`` training occurrences per item (index 0 is padding).
    """

    def __init__(self, counts: np.ndarray | Tensor) -> None:
        counts = torch.as_tensor(counts, dtype=torch.float32)
        super().__init__(counts.numel() - 1)
        self.register_buffer("log_count", torch.log1p(counts))

    @classmethod
    def from_prepared(cls, prepared: PreparedDataset) -> Popularity:
        return cls(training_item_counts(prepared))

    def loss(self, batch: Batch) -> None:
        return None

    def score_candidates(self, batch: Batch) -> Tensor:
        return self.log_count[batch.candidates]

    def score_all(self, batch: Batch) -> Tensor:
        return self.log_count.expand(batch.num_graphs, -1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_items={self.num_items})"
