"""GRU4Rec: session-based recommendation with recurrent networks (Hidasi et al., ICLR 2016).

item embedding -> dropout -> GRU (``num_layers``) -> state at the last real position ->
linear map to ``dim`` -> dot product with the item embedding table.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mdgr_graph.models.baselines.sasrec import CausalSequenceRecommender


class GRU4Rec(CausalSequenceRecommender):
    r"""GRU4Rec (Hidasi et al., ICLR 2016) on batches of sequence graphs.

    :math:`h_j = \mathrm{GRU}(\mathrm{Drop}(M_{s_j}), h_{j-1})`, user vector
    :math:`u = W h_{n-1} + b`, and :math:`r(i) = \langle u, M_i \rangle` with the same item
    table :math:`M` as the input.

    Differences from the paper: the input is a learned embedding rather than a one-hot
    vector and the output layer is tied to it (a dot product with :math:`M` instead of a
    separate ``num_items``-wide layer), so the model scores any candidate set on the shared
    interface; sequences are whole user histories in mini-batches (not session-parallel
    mini-batches), and the training loss is the project's candidate BCE (optionally plus a
    next-item BCE inside the history, see :class:`CausalSequenceRecommender`) instead of
    TOP1/BPR over in-batch negatives.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: longest history read; longer sequences are cut to their most recent
            ``max_len`` items (as for SASRec, so both see the same input).
        dim: width of embeddings, GRU state and user vector. (default: :obj:`32`)
        num_layers: stacked GRU layers. (default: :obj:`1`)
        dropout: dropout of the input embeddings and between GRU layers.
            (default: :obj:`0.2`)
        history_targets: add the next-item loss inside the history (off by default).
            (default: :obj:`False`)
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        dim: int = 32,
        num_layers: int = 1,
        dropout: float = 0.2,
        history_targets: bool = False,
    ) -> None:
        super().__init__(num_items, max_len, dim, history_targets)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.num_layers, self.dropout_p = num_layers, dropout
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(
            dim, dim, num_layers=num_layers, batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.out = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.gru.reset_parameters()
        self.out.reset_parameters()

    def encode(self, items: Tensor, mask: Tensor) -> Tensor:
        """States ``[B, L, d]`` of right-padded ``items [B, L]``.

        The recurrence runs left to right, so padding (which only follows the real items)
        never reaches a real position and needs no packing.
        """
        h, _ = self.gru(self.dropout(self.item_emb(items)))
        return self.out(h)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, num_layers={self.num_layers}, dropout={self.dropout_p}, "
            f"history_targets={self.history_targets})"
        )
