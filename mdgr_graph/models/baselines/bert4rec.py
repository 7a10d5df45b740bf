r"""BERT4Rec: bidirectional encoder representations from Transformer for sequential
recommendation (Sun et al., CIKM 2019).

item embedding + learned position -> layer norm, dropout -> ``num_blocks`` bidirectional
(post-LN, GELU) Transformer layers -> output head
:math:`o = \mathrm{LN}(\mathrm{GELU}(W^P h + b^P))` and
:math:`r(i) = \langle o, E_i \rangle + b^O_i` with the input item table :math:`E`.

Training is the cloze task (items of the history replaced by a [mask] token and predicted
from both sides) plus the project's candidate loss at a [mask] appended after the last
item; serving scores the candidates (or every item) from the output at that appended
[mask], as the authors do for the next item.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from mdgr_graph.models.base import SequentialRecommender, check_positive
from mdgr_graph.models.baselines.sasrec import (
    CausalSequenceRecommender,
    check_transformer_options,
)


class BERT4Rec(SequentialRecommender):
    r"""BERT4Rec (Sun et al., CIKM 2019) on batches of sequence graphs.

    **Encoder.** With :math:`E` the item table (row 0 padding), a learned [mask] vector
    and learned positions :math:`P` (0 at the oldest kept item),
    :math:`h^0_j = \mathrm{Drop}(\mathrm{LN}(E_{s_j} + P_j))`, then ``num_blocks``
    Transformer encoder layers as in BERT (bidirectional attention over the real tokens,
    padding masked out as keys; post-LN; GELU feed-forward of width :math:`4d`).

    **Scores.** A [mask] token is appended at position :math:`n` after the :math:`n` kept
    items; with :math:`o = \mathrm{LN}(\mathrm{GELU}(W^P h^L_n + b^P))` the score of item
    :math:`i` is :math:`\langle o, E_i \rangle + b^O_i` (tied item table, one output bias
    per item). :meth:`score_candidates` and :meth:`score_all` use this, so the ``paper``
    protocol (the window's positives and negatives) and ``loo`` (every item) are served
    alike.

    **Loss** (:meth:`loss`): the sum of

    1. the project's candidate BCE (Eq. 17 of the MDGR paper) of those appended-[mask]
       logits for ``batch.candidates`` against ``batch.labels``, on the unmasked history,
       i.e. exactly the scores that evaluation reads (the counterpart of the authors'
       extra training samples that mask only the last item); and
    2. ``cloze_weight`` times the cloze loss (:meth:`cloze_loss`): in each history,
       :math:`\max(1, \mathrm{round}(n \rho))` positions (:math:`\rho` = ``mask_prob``)
       drawn uniformly without replacement with torch's global generator (so the training
       loop's per-epoch seed fixes them; padding is never drawn) are replaced by [mask],
       and each is predicted by a **full softmax** over the ``num_items`` items, the
       paper's objective, averaged over the masked positions of the batch. The full
       softmax is exact and cheap at this project's catalogue sizes (one
       ``[masked positions, num_items]`` product); sampled negatives would only be an
       approximation of it.

    Deviations from the paper and the authors' code: the candidate BCE (1) is added,
    because every model of the project learns the protocol's task (under ``paper`` the
    50 positives follow the history, so they are a set of "next" items rather than one);
    the history plus the appended [mask] is ``max_len + 1`` tokens (the authors drop the
    oldest item to keep ``max_len``); masked positions are always [mask] (as the authors'
    released data generator does; no BERT 80/10/10 rule); each epoch draws fresh masks
    instead of a fixed ``dupe_factor`` of pre-masked copies; no cap on predictions per
    sequence; Adam without weight decay or warm-up, from the shared loop.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: longest history read; longer sequences are cut to their most recent
            ``max_len`` items (positions ``0..max_len``, the last for the [mask]).
        dim: model width :math:`d`. (default: :obj:`32`)
        num_blocks: Transformer layers. (default: :obj:`2`)
        heads: attention heads (must divide ``dim``). (default: :obj:`2`)
        dropout: dropout of the input, attention, feed-forward. (default: :obj:`0.1`)
        mask_prob: cloze proportion :math:`\rho` of masked history items (the paper's
            choice for MovieLens-1m). (default: :obj:`0.2`)
        cloze_weight: weight of the cloze loss (0 trains on the candidates only).
            (default: :obj:`1.0`)

    Shapes:
        - **input:** a :class:`~torch_geometric.data.Batch` with ``x``, ``batch`` (and
          ``candidates``, ``labels`` for the loss)
        - **user_vectors:** ``[B, d]``; **score_candidates:** ``[B, C]``;
          **score_all:** ``[B, num_items + 1]``
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        dim: int = 32,
        num_blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.1,
        mask_prob: float = 0.2,
        cloze_weight: float = 1.0,
    ) -> None:
        super().__init__(num_items)
        check_positive(max_len=max_len, dim=dim)
        check_transformer_options(dim, num_blocks, heads, dropout)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must lie in (0, 1], got {mask_prob}")
        if cloze_weight < 0:
            raise ValueError(f"cloze_weight must be >= 0, got {cloze_weight}")
        self.max_len, self.dim = max_len, dim
        self.num_blocks, self.heads, self.dropout_p = num_blocks, heads, dropout
        self.mask_prob, self.cloze_weight = mask_prob, cloze_weight
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.mask_emb = nn.Parameter(torch.empty(dim))
        self.pos_emb = nn.Embedding(max_len + 1, dim)
        self.input_norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu",
                                       layer_norm_eps=1e-12, batch_first=True)
            for _ in range(num_blocks)
        )
        self.head = nn.Linear(dim, dim)  # W^P, b^P
        self.head_norm = nn.LayerNorm(dim, eps=1e-12)
        self.out_bias = nn.Parameter(torch.empty(num_items + 1))  # b^O
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BERT's initialisation: truncated normal (std 0.02) weights, zero biases."""

        def normal_(weight: Tensor) -> None:
            nn.init.trunc_normal_(weight, std=0.02, a=-0.04, b=0.04)

        for module in self.modules():
            if isinstance(module, nn.Linear):
                normal_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                normal_(module.in_proj_weight)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        for weight in (self.item_emb.weight, self.pos_emb.weight, self.mask_emb):
            normal_(weight)
        nn.init.zeros_(self.out_bias)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # the input helpers of the causal models do not depend on causality
    dense_items = CausalSequenceRecommender.dense_items

    # ------------------------------------------------------------------ encoder
    def encode(self, items: Tensor, mask: Tensor, masked: Tensor) -> Tensor:
        """Final hidden states ``[B, L, d]`` of right-padded ``items [B, L]``.

        Args:
            items: ``[B, L]`` item ids (0 at padding; ignored where ``masked``).
            mask: ``[B, L]`` True at real tokens (items and [mask] tokens).
            masked: ``[B, L]`` True where the token is [mask].
        """
        positions = torch.arange(items.shape[1], device=items.device)
        e = torch.where(masked.unsqueeze(-1), self.mask_emb, self.item_emb(items))
        h = self.dropout(self.input_norm(e + self.pos_emb(positions)))
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~mask)
        return h

    def output(self, h: Tensor) -> Tensor:
        r"""The output head :math:`o = \mathrm{LN}(\mathrm{GELU}(W^P h + b^P))`."""
        return self.head_norm(nn.functional.gelu(self.head(h)))

    @staticmethod
    def append_mask(items: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append a [mask] after the last real item of every row.

        Returns:
            ``items [B, L+1]``, ``mask [B, L+1]`` (real tokens, the new [mask] included)
            and ``masked [B, L+1]`` (True only at the appended [mask]).
        """
        batch = items.shape[0]
        items = torch.cat([items, items.new_zeros(batch, 1)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(batch, 1)], dim=1)
        masked = torch.zeros_like(mask)
        rows = torch.arange(batch, device=items.device)
        end = mask.sum(dim=1)
        masked[rows, end] = True
        return items, mask | masked, masked

    def user_vectors(self, batch: Batch) -> Tensor:
        """Output :math:`o` at the [mask] appended to each (unmasked) history: ``[B, d]``."""
        items, mask = self.dense_items(batch)
        items, mask, masked = self.append_mask(items, mask)
        h = self.encode(items, mask, masked)
        return self.output(h[masked])

    # ------------------------------------------------------------------ scores
    def _score(self, user: Tensor, candidates: Tensor) -> Tensor:
        return (torch.einsum("bd,bcd->bc", user, self.item_emb(candidates))
                + self.out_bias[candidates])

    def score_candidates(self, batch: Batch) -> Tensor:
        r"""Logits :math:`\langle o, E_c \rangle + b^O_c` of ``batch.candidates``: ``[B, C]``."""
        self._check_candidates(batch)
        return self._score(self.user_vectors(batch), batch.candidates)

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` (column 0 included), in item chunks."""
        user = self.user_vectors(batch)
        table = torch.cat([self.item_emb.weight, self.out_bias.unsqueeze(1)], dim=1)
        return self.score_item_chunks(
            lambda rows: user @ rows[:, :-1].t() + rows[:, -1], table, chunk_size)

    # ------------------------------------------------------------------ loss
    def cloze_positions(self, mask: Tensor) -> Tensor:
        r"""Draw the cloze positions: ``[B, L]`` True at :math:`\max(1,
        \mathrm{round}(n \rho))` real positions per row, uniformly without replacement
        (torch's global generator); never at padding."""
        count = torch.round(mask.sum(dim=1) * self.mask_prob).clamp(min=1)
        noise = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, 2.0)
        rank = noise.argsort(dim=1).argsort(dim=1)
        return (rank < count.unsqueeze(1)) & mask

    def cloze_loss(self, items: Tensor, mask: Tensor) -> Tensor:
        """Mean full-softmax cross-entropy of the items at fresh cloze positions.

        Args:
            items: ``[B, L]`` dense item ids (:meth:`dense_items`).
            mask: ``[B, L]`` real positions.

        Returns:
            ``[]``: the mean over masked positions of ``-log softmax(logits)[item]``, the
            softmax running over the ``num_items`` real items.
        """
        masked = self.cloze_positions(mask)
        h = self.encode(items, mask, masked)
        out = self.output(h[masked])  # [P, d]
        logits = out @ self.item_emb.weight[1:].t() + self.out_bias[1:]
        return nn.functional.cross_entropy(logits, items[masked] - 1)

    def loss(self, batch: Batch) -> Tensor:
        """The candidate loss (:attr:`candidate_loss_kind`, BCE by default; ``"ce"``: a
        softmax over every item) at the appended [mask], plus ``cloze_weight`` x cloze
        loss."""
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        items, mask = self.dense_items(batch)
        ext_items, ext_mask, appended = self.append_mask(items, mask)
        user = self.output(self.encode(ext_items, ext_mask, appended)[appended])
        if self.candidate_loss_kind == "ce":  # issue 27: softmax over every item
            every = user @ self.item_emb.weight.t() + self.out_bias
            loss = self.catalogue_loss(batch, labels, every)
        else:
            loss = self.loss_over_candidates(self._score(user, batch.candidates), labels)
        if self.cloze_weight > 0:
            loss = loss + self.cloze_weight * self.cloze_loss(items, mask)
        return loss

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, num_blocks={self.num_blocks}, heads={self.heads}, "
            f"dropout={self.dropout_p}, mask_prob={self.mask_prob}, "
            f"cloze_weight={self.cloze_weight})"
        )
