"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

item embedding + learned position embedding -> ``num_blocks`` causal transformer blocks
-> final layer norm; the user vector is the state at the last real position and
``score(item) = <user, item embedding>`` with the input embedding table.

This module also holds :class:`CausalSequenceRecommender`, the plumbing that SASRec and
:class:`~mdgr_graph.models.baselines.gru4rec.GRU4Rec` share: dense right-padded batches
cut to the most recent ``max_len`` items, the last-position user vector, candidate and
chunked full scoring, and the optional next-item loss inside the history.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_batch

from mdgr_graph.models.base import (
    SequentialRecommender,
    catalogue_softmax_loss,
    check_positive,
)


def recent_nodes(value: Tensor, index: Tensor, batch_size: int, max_len: int
                 ) -> tuple[Tensor, Tensor]:
    """``(value, index)`` of the nodes kept when each graph is cut to its ``max_len`` most
    recent nodes (``index`` sorted, as ``batch.batch``)."""
    counts = torch.bincount(index, minlength=batch_size)
    if int(counts.max()) > max_len:
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(value.shape[0], device=value.device) - start[index]
        keep = rank >= (counts - max_len)[index]
        value, index = value[keep], index[keep]
    return value, index


def dense_recent(
    value: Tensor, index: Tensor, batch_size: int, max_len: int, fill_value: float = 0
) -> tuple[Tensor, Tensor]:
    """A node field as right-padded rows, each cut to its ``max_len`` most recent nodes.

    Args:
        value: ``[N, ...]`` a node field of the batch (items ``x``, days ``t``, ...).
        index: ``[N]`` sorted graph index of every node (``batch.batch``).
        batch_size: number of graphs ``B``.
        max_len: longest row kept; longer graphs keep their last ``max_len`` nodes.
        fill_value: value at padding.

    Returns:
        ``dense [B, L, ...]`` and ``mask [B, L]`` (True at real nodes), with
        ``L = min(max_len, largest graph)``, as :func:`~torch_geometric.utils.to_dense_batch`.
    """
    value, index = recent_nodes(value, index, batch_size, max_len)
    return to_dense_batch(value, index, fill_value=fill_value, batch_size=batch_size)


class CausalSequenceRecommender(SequentialRecommender):
    r"""Base of left-to-right models whose state at position :math:`t` sees items
    :math:`\le t` only.

    A subclass implements :meth:`encode` (dense items ``[B, L]`` -> states ``[B, L, d]``)
    and owns an ``item_emb`` table of ``num_items + 1`` rows (row 0 is padding); the
    score of an item is the dot product of the user vector with its embedding.

    Sequences longer than ``max_len`` are cut to their most recent ``max_len`` items (as
    SASRec's data pipeline does); the batch itself is not modified.

    Loss: the base class's binary cross-entropy over ``batch.candidates`` (Eq. 17), the
    loss every model of the project uses. With ``history_targets=True`` the model's native
    next-item loss inside the history is added: the state at every position
    :math:`t < n-1` scores item :math:`t+1` against one negative drawn uniformly from
    ``1..num_items`` (with torch's global generator, so the training loop's seeding fixes
    it), as :math:`-\log\sigma(s^+) - \log(1 - \sigma(s^-))`, averaged over those
    positions. It is off by default because the paper's protocol trains every model on
    the window targets only; the option lets a model learn from the inside of the history
    too, as SASRec and GRU4Rec are trained in their own papers.

    With ``candidate_loss_kind = "ce"`` (``loss="ce"`` of ``build_model``; issue 27) both
    terms become a softmax over the whole catalogue instead
    (:func:`~mdgr_graph.models.base.catalogue_softmax_loss`): the target against every
    item, and every history position's next item against every item, in checkpointed
    chunks of :attr:`HISTORY_CHUNK` positions. This is the strong training the
    leave-one-out literature compares against (SASRec with a full or sampled softmax).

    Args:
        num_items: number of real items (ids ``1..num_items``; 0 is padding).
        max_len: longest history the model reads (longer ones are cut).
        dim: width :math:`d` of states and item embeddings.
        history_targets: add the next-item loss inside the history (see above).
    """

    #: History positions per chunk of the catalogue softmax (``loss="ce"``).
    HISTORY_CHUNK = 1024

    def __init__(self, num_items: int, max_len: int, dim: int, history_targets: bool) -> None:
        super().__init__(num_items)
        check_positive(max_len=max_len, dim=dim)
        self.max_len, self.dim = max_len, dim
        self.history_targets = history_targets

    def encode(self, items: Tensor, mask: Tensor) -> Tensor:  # pragma: no cover - abstract
        """States ``[B, L, d]`` of right-padded ``items [B, L]`` (``mask [B, L]``: real)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs
    def dense_items(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The batch as right-padded item ids, cut to the most recent ``max_len`` items.

        Returns:
            ``items [B, L]`` (0 at padding) and ``mask [B, L]`` (True at real items), with
            ``L = min(max_len, longest sequence)``; item ``j`` of a row is its ``j``-th
            oldest kept interaction.
        """
        self._check_batch(batch)
        return dense_recent(batch.x, batch.batch, batch.num_graphs, self.max_len)

    def sequence_states(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """States of every position: ``states [B, L, d]`` (zeros at padding), ``mask [B, L]``.

        The state at position ``t`` depends on the items ``0..t`` of its sequence only.
        """
        states, mask, _ = self._states(batch)
        return states, mask

    def _states(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        items, mask = self.dense_items(batch)
        states = self.encode(items, mask)
        return states * mask.unsqueeze(-1).to(states.dtype), mask, items

    @staticmethod
    def _last(states: Tensor, mask: Tensor) -> Tensor:
        last = mask.sum(dim=1) - 1
        return states[torch.arange(states.shape[0], device=states.device), last]

    def user_vectors(self, batch: Batch) -> Tensor:
        """The state at each sequence's last real position: ``[B, d]``."""
        return self._last(*self.sequence_states(batch))

    # ------------------------------------------------------------------ scores
    def _score(self, user: Tensor, candidates: Tensor) -> Tensor:
        return torch.einsum("bd,bcd->bc", user, self.item_emb(candidates))

    def score_candidates(self, batch: Batch) -> Tensor:
        """Logits of ``batch.candidates``: ``[B, C]``."""
        self._check_candidates(batch)
        return self._score(self.user_vectors(batch), batch.candidates)

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` (column 0 included), in item chunks."""
        user = self.user_vectors(batch)
        return self.score_item_chunks(lambda items: user @ items.t(), self.item_emb.weight,
                                      chunk_size)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch) -> Tensor:
        """The candidate loss (:attr:`candidate_loss_kind`: Eq. 17's BCE by default), plus
        the history next-item loss if enabled."""
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        states, mask, items = self._states(batch)
        user = self._last(states, mask)
        if self.candidate_loss_kind == "ce":
            loss = self.catalogue_loss(batch, labels, user @ self.item_emb.weight.t())
        else:
            loss = self.loss_over_candidates(self._score(user, batch.candidates), labels)
        if self.history_targets:
            loss = loss + self.history_loss(states, mask, items)
        return loss

    def history_loss(self, states: Tensor, mask: Tensor, items: Tensor) -> Tensor:
        """Next-item BCE inside the history, one uniform negative per position (with
        ``candidate_loss_kind = "ce"``: a softmax over every item per position).

        Args:
            states: ``[B, L, d]`` states (:meth:`sequence_states`).
            mask: ``[B, L]`` real positions.
            items: ``[B, L]`` dense item ids (:meth:`dense_items`).

        Returns:
            ``[]``: the mean over positions ``t < n-1`` of
            ``softplus(-s(t, item_{t+1})) + softplus(s(t, negative))``; 0 (with a graph)
            when every sequence has one item.
        """
        target = items[:, 1:]
        valid = mask[:, 1:] & (target > 0)
        if not bool(valid.any()):
            return states.sum() * 0.0
        h = states[:, :-1][valid]  # [P, d]
        pos = target[valid]
        if self.candidate_loss_kind == "ce":  # every item, HISTORY_CHUNK positions at a time
            return catalogue_softmax_loss(lambda rows: h[rows] @ self.item_emb.weight.t(),
                                          torch.arange(pos.numel(), device=pos.device), pos,
                                          chunk_size=self.HISTORY_CHUNK)
        neg = torch.randint(1, self.num_items + 1, pos.shape, device=pos.device)
        pos_logit = (h * self.item_emb(pos)).sum(-1)
        neg_logit = (h * self.item_emb(neg)).sum(-1)
        per_position = nn.functional.softplus(-pos_logit) + nn.functional.softplus(neg_logit)
        return per_position.mean()

    # ------------------------------------------------------------------ checks
class SASRecBlock(nn.Module):
    r"""One SASRec block, arranged as in the authors' code (pre-LN queries).

    :math:`q = \mathrm{LN}_1(h)`, :math:`h = q + \mathrm{MHA}(q, h, h)` under a causal
    mask, then :math:`u = \mathrm{LN}_2(h)`, :math:`h = u + \mathrm{FFN}(u)` with
    :math:`\mathrm{FFN} = \mathrm{Drop}(W_2\,\mathrm{Drop}(\mathrm{ReLU}(W_1 u)))`.

    Shapes:
        - **input:** ``h [B, L, d]``, ``attn_mask [L, L]`` (True: masked)
        - **output:** ``[B, L, d]``
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(dim, dim), nn.Dropout(dropout),
        )

    def forward(self, h: Tensor, attn_mask: Tensor) -> Tensor:
        q = self.norm1(h)
        attended, _ = self.attn(q, h, h, attn_mask=attn_mask, need_weights=False)
        h = q + attended
        u = self.norm2(h)
        return u + self.ffn(u)


def check_transformer_options(dim: int, num_blocks: int, heads: int, dropout: float) -> None:
    """Raise a ValueError naming the first invalid transformer option."""
    if num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    if heads < 1 or dim % heads:
        raise ValueError(f"heads must be >= 1 and divide dim={dim}, got {heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")


class SASRec(CausalSequenceRecommender):
    r"""SASRec (Kang & McAuley, ICDM 2018) on batches of sequence graphs.

    :math:`h^0_j = \sqrt{d}\, M_{s_j} + P_j` (dropout), ``num_blocks`` causal
    :class:`SASRecBlock` s, a final layer norm; user vector :math:`u = h_{n-1}`, and
    :math:`r(i) = \langle u, M_i \rangle` with the shared item table :math:`M`.

    Positions count from the oldest kept item (``0..n-1``, the ``batch.pos`` convention of
    MDGR), so a prefix gets the same states alone as inside its full sequence. The
    authors' code left-pads to ``max_len`` instead, so its positions count from the left
    edge of the padded window.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: positions of the position embedding; longer sequences are cut to their
            most recent ``max_len`` items.
        dim: model width :math:`d`. (default: :obj:`32`)
        num_blocks: transformer blocks. (default: :obj:`2`)
        heads: attention heads (must divide ``dim``). (default: :obj:`2`)
        dropout: dropout of embeddings, attention and FFN. (default: :obj:`0.2`)
        history_targets: add the next-item loss inside the history (off by default; see
            :class:`CausalSequenceRecommender`). (default: :obj:`False`)
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        dim: int = 32,
        num_blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.2,
        history_targets: bool = False,
    ) -> None:
        super().__init__(num_items, max_len, dim, history_targets)
        check_transformer_options(dim, num_blocks, heads, dropout)
        self.num_blocks, self.heads, self.dropout_p = num_blocks, heads, dropout
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(SASRecBlock(dim, heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        nn.init.xavier_normal_(self.pos_emb.weight)
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                if not isinstance(module, (nn.Embedding, SASRec)):
                    module.reset_parameters()

    def encode(self, items: Tensor, mask: Tensor) -> Tensor:
        """States ``[B, L, d]`` of right-padded ``items [B, L]``.

        With right padding, the causal mask alone keeps padding out of every real
        position (padding only ever follows the real items).
        """
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        h = self.item_emb(items) * math.sqrt(self.dim) + self.pos_emb(positions)
        h = self.dropout(h) * mask.unsqueeze(-1).to(h.dtype)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        for block in self.blocks:
            h = block(h, causal)
        return self.final_norm(h)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, num_blocks={self.num_blocks}, heads={self.heads}, "
            f"dropout={self.dropout_p}, history_targets={self.history_targets})"
        )
