"""The contract every model of the project implements, so one training loop serves all.

A model takes a :class:`~torch_geometric.data.Batch` of
:class:`~mdgr_graph.data.SequenceData` graphs and provides:

- ``loss(batch) -> Tensor []``: the training loss (models without parameters may
  return ``None`` and are "fitted" by :meth:`fit_statistics` instead);
- ``score_candidates(batch) -> Tensor [B, C]``: scores of ``batch.candidates``;
- ``score_all(batch) -> Tensor [B, num_items + 1]``: scores of every item, column 0
  (padding) included and ignored by the metrics.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import Batch


class SequentialRecommender(nn.Module):
    """Base class: binary cross-entropy over the candidates and chunked full scoring.

    Args:
        num_items: number of real items (ids ``1..num_items``; 0 is padding).
    """

    def __init__(self, num_items: int) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        self.num_items = num_items

    def score_candidates(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_all(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Batch) -> Tensor | None:
        """Eq. 17: mean binary cross-entropy of the candidate logits against the labels."""
        logits = self.score_candidates(batch)
        return nn.functional.binary_cross_entropy_with_logits(logits, batch.labels.float())

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts with and without the item embedding table (DESIGN.md)."""
        total = sum(p.numel() for p in self.parameters())
        emb = getattr(self, "item_emb", None)
        table = emb.weight.numel() if isinstance(emb, nn.Embedding) else 0
        return {"params": total, "params_without_item_table": total - table}
