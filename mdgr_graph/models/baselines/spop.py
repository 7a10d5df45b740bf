"""S-POP (session popularity): how often the candidate occurs in the input sequence, ties
broken by global popularity."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import SequentialRecommender
from mdgr_graph.models.baselines.pop import training_item_counts


def popularity_tiebreak(counts: np.ndarray | Tensor) -> Tensor:
    """``[num_items + 1]`` float32 in ``[0, 1)``, ordered as ``counts``: the dense rank of
    each item's count among the distinct counts, divided by their number.

    Equal counts get equal values and every step is at least ``1 / distinct counts``, so
    added to an integer occurrence count it orders items by that count first and by
    popularity second, without float32 merging close popularities (the distinct counts of
    a log of ``N`` interactions are fewer than ``sqrt(2 N)``).
    """
    counts = torch.as_tensor(counts)
    distinct, rank = torch.unique(counts, return_inverse=True)
    return (rank.to(torch.float64) / len(distinct)).float()


def occurrences(batch: Batch, items: Tensor) -> Tensor:
    """``[B, C]``: how often ``items[b, c]`` occurs in graph ``b``'s sequence ``batch.x``.

    Sorted keys ``graph * (num_items + 1) + item`` (no ``B x items`` table), so it costs
    ``O((n + B C) log n)`` for ``n`` history items."""
    width = int(max(int(batch.x.max()), int(items.max()) if items.numel() else 0)) + 1
    keys, counts = torch.unique(batch.batch * width + batch.x, return_counts=True)
    wanted = torch.arange(items.shape[0], device=items.device)[:, None] * width + items
    pos = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
    return torch.where(keys[pos] == wanted, counts[pos], torch.zeros_like(counts[pos]))


class SessionPopularity(SequentialRecommender):
    """S-POP: ``score(item) = occurrences of item in the input sequence + t(item)``.

    ``t`` (:func:`popularity_tiebreak`) lies in ``[0, 1)`` and orders items by their
    training popularity, so the ranking is: items the sequence holds most often first,
    then, among equal occurrence counts (the never-seen items included), the popular
    ones first. The input sequence is what every model reads: the window's history under
    ``paper``, the last ``max_len`` items before the target under ``loo``. On a log
    without repeats (e.g. MovieLens ratings, where no candidate is in its history) S-POP
    ranks exactly as :class:`~mdgr_graph.models.baselines.Popularity`.

    Args:
        counts: ``[num_items + 1]`` training occurrences per item (index 0 is padding).
    """

    def __init__(self, counts: np.ndarray | Tensor) -> None:
        counts = torch.as_tensor(counts)
        super().__init__(counts.numel() - 1)
        self.register_buffer("tiebreak", popularity_tiebreak(counts))

    @classmethod
    def from_prepared(cls, prepared: PreparedDataset) -> SessionPopularity:
        return cls(training_item_counts(prepared))

    def loss(self, batch: Batch) -> None:
        return None

    def score_candidates(self, batch: Batch) -> Tensor:
        """``[B, C]`` scores of ``batch.candidates``."""
        self._check_batch(batch)
        self._check_candidates(batch)
        cand = batch.candidates
        return occurrences(batch, cand).float() + self.tiebreak[cand]

    def score_all(self, batch: Batch) -> Tensor:
        """``[B, num_items + 1]`` scores of every item (column 0 is padding)."""
        self._check_batch(batch)
        scores = self.tiebreak.expand(batch.num_graphs, -1).clone()
        ones = torch.ones_like(batch.x, dtype=scores.dtype)
        return scores.index_put_((batch.batch, batch.x), ones, accumulate=True)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_items={self.num_items})"
