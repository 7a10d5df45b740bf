r"""TiSASRec: time interval aware self-attention (Li, Wang & McAuley, WSDM 2020).

SASRec whose attention also reads, for every pair of items :math:`(i, j)` of a sequence,
an embedding of their personalised time interval :math:`r_{ij}` (in keys and values), and
absolute position embeddings (in keys and values instead of being added to the input):

.. math::
    e_{ij} = \frac{m_i W^Q \big(m_j W^K + r^K_{ij} + p^K_j\big)^\top}{\sqrt{d_h}},
    \qquad
    z_i = \sum_{j \le i} \mathrm{softmax}_j(e_{ij}) \big(m_j W^V + r^V_{ij} + p^V_j\big).

The user vector is the state at the last real position and
:math:`r(i) = \langle u, M_i \rangle` with the input item table, as for SASRec, so the model
scores candidates and the whole catalogue through
:class:`~mdgr_graph.models.baselines.sasrec.CausalSequenceRecommender`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from mdgr_graph.models.baselines.sasrec import (
    CausalSequenceRecommender,
    check_transformer_options,
    dense_recent,
)


def time_interval_matrix(times: Tensor, mask: Tensor, max_interval: int) -> Tensor:
    r"""Personalised, clipped time intervals between every pair of items of each row.

    As in the authors' preprocessing: the row's scale :math:`r_{\min}` is its smallest
    non-zero gap between consecutive items (1 if every gap is zero); each time becomes
    :math:`s_j = \mathrm{round}((t_j - t_0) / r_{\min})` and the interval of a pair is
    :math:`\min(|s_i - s_j|, k)` with :math:`k` = ``max_interval``.

    Args:
        times: ``[B, L]`` times of right-padded rows (any unit, ascending in each row).
        mask: ``[B, L]`` True at real items.
        max_interval: the clipping value :math:`k`.

    Returns:
        ``[B, L, L]`` integer intervals in ``0..k`` (0 wherever ``i`` or ``j`` is padding).
    """
    times = times.to(torch.float64)  # days of second-resolution logs need the precision
    gaps = (times[:, 1:] - times[:, :-1]).abs()
    gaps = gaps.masked_fill(~(mask[:, 1:] & mask[:, :-1]) | (gaps <= 0), math.inf)
    if gaps.shape[1]:
        scale = gaps.amin(dim=1)
        scale = torch.where(torch.isfinite(scale), scale, torch.ones_like(scale))
    else:  # every row holds one item
        scale = times.new_ones(times.shape[0])
    steps = torch.round((times - times[:, :1]) / scale[:, None])
    interval = (steps[:, :, None] - steps[:, None, :]).abs().clamp(max=max_interval)
    pair = mask[:, :, None] & mask[:, None, :]
    return interval.masked_fill(~pair, 0).long()


class TimeIntervalAttention(nn.Module):
    r"""Causal multi-head self-attention with relative time-interval and absolute-position
    embeddings in keys and values (TiSASRec, Eq. 5-6), without an output projection.

    The interval terms are computed per interval value rather than per pair: with
    :math:`T^K, T^V` the ``[k + 1, d]`` interval tables,
    :math:`q_i^\top r^K_{ij} = (q_i^\top T^{K\top})[r_{ij}]` (a gather from ``[B, H, L, k+1]``
    scores) and :math:`\sum_j a_{ij} r^V_{ij} = \sum_v \big(\sum_{j: r_{ij} = v}
    a_{ij}\big) T^V_v` (a scatter-add of the attention into ``k + 1`` buckets), which is
    the same sum without building ``[B, L, L, d]`` tensors.

    Shapes:
        - **input:** ``q [B, L, d]`` (normalised queries), ``h [B, L, d]`` (keys/values),
          ``pos_k, pos_v [L, d]``, ``time_k, time_v [k + 1, d]`` (interval tables),
          ``interval [B, L, L]`` (indices into them), ``causal [L, L]`` (True: masked)
        - **output:** ``[B, L, d]``
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        for layer in (self.query, self.key, self.value):
            layer.reset_parameters()

    def _split(self, x: Tensor) -> Tensor:
        """``[..., L, d] -> [..., H, L, d/H]``."""
        return x.unflatten(-1, (self.heads, -1)).movedim(-2, -3)

    def forward(self, q: Tensor, h: Tensor, pos_k: Tensor, pos_v: Tensor, time_k: Tensor,
                time_v: Tensor, interval: Tensor, causal: Tensor) -> Tensor:
        batch, length, _ = q.shape
        query, key, value = (self._split(f(x)) for f, x in
                             ((self.query, q), (self.key, h), (self.value, h)))  # [B,H,L,dh]
        pk, pv = self._split(pos_k), self._split(pos_v)  # [H, L, dh]
        tk, tv = self._split(time_k), self._split(time_v)  # [H, k+1, dh]
        index = interval.unsqueeze(1).expand(-1, self.heads, -1, -1)  # [B, H, L, L]
        logits = (query @ key.transpose(-1, -2) + query @ pk.transpose(-1, -2)
                  + (query @ tk.transpose(-1, -2)).gather(-1, index))
        logits = logits / math.sqrt(query.shape[-1])
        attn = self.dropout(torch.softmax(logits.masked_fill(causal, float("-inf")), dim=-1))
        buckets = attn.new_zeros(*attn.shape[:-1], tk.shape[-2]).scatter_add_(-1, index, attn)
        out = attn @ value + attn @ pv + buckets @ tv
        return out.movedim(1, 2).reshape(batch, length, self.dim)


class TiSASRecBlock(nn.Module):
    r"""One TiSASRec block in the authors' layout (that of SASRec, pre-LN queries).

    :math:`q = \mathrm{LN}_1(h)`, :math:`h = q + \mathrm{TimeAttn}(q, h)` under a causal
    mask, then :math:`u = \mathrm{LN}_2(h)`, :math:`h = u + \mathrm{FFN}(u)` with
    :math:`\mathrm{FFN} = \mathrm{Drop}(W_2\,\mathrm{Drop}(\mathrm{ReLU}(W_1 u)))`.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-8)
        self.attn = TimeIntervalAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(dim, dim), nn.Dropout(dropout),
        )

    def forward(self, h: Tensor, pos_k: Tensor, pos_v: Tensor, time_k: Tensor, time_v: Tensor,
                interval: Tensor, causal: Tensor) -> Tensor:
        q = self.norm1(h)
        h = q + self.attn(q, h, pos_k, pos_v, time_k, time_v, interval, causal)
        u = self.norm2(h)
        return u + self.ffn(u)


class TiSASRec(CausalSequenceRecommender):
    r"""TiSASRec (Li, Wang & McAuley, WSDM 2020) on batches of sequence graphs.

    Input :math:`m_j = \sqrt{d}\, M_{s_j}` (dropout; no position is added to it),
    ``num_blocks`` :class:`TiSASRecBlock` s whose attention adds, per head, absolute
    position embeddings :math:`p^K_j, p^V_j` and interval embeddings
    :math:`r^K_{ij}, r^V_{ij}` (all four with dropout, shared by the blocks) to the
    projected keys and values, a final layer norm; user vector :math:`u = h_{n-1}` and
    :math:`r(i) = \langle u, M_i \rangle` with the shared item table :math:`M`.

    Intervals (:func:`time_interval_matrix`) come from ``batch.t`` (days): each sequence's
    times are divided by its smallest non-zero gap between consecutive items, rounded,
    differenced for every pair and clipped at ``max_interval`` (:math:`k`), so
    ``max_interval + 1`` interval embeddings per table.

    Deviations from the paper and the authors' code:

    - the personal scale :math:`r^u_{\min}` is taken over the history the model reads
      (the window under the paper protocol, the kept history under leave-one-out), not over
      the user's whole log (which, in the authors' code, includes validation and test
      items); times are days in float64 rather than integer seconds;
    - positions count from the oldest kept item, as in this project's SASRec (the authors
      left-pad to ``max_len``);
    - loss: the project's candidate BCE (Eq. 17 of the MDGR paper); the authors' next-item
      BCE with one negative per position is available as ``history_targets=True`` (see
      :class:`CausalSequenceRecommender`); no L2 on the embeddings. Under
      ``history_targets`` the state at :math:`t` is causal in the items but its time scale
      :math:`r_{\min}` reads every time of the history (a timing, never an item, of later
      positions), as in the authors' code;
    - dropout acts on the rows of the position and interval tables (one mask per batch)
      instead of on every looked-up ``[B, L, L, d]`` pair embedding, so the interval terms
      can be computed per interval value (:class:`TimeIntervalAttention`) at about the
      cost of SASRec rather than several times it.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: positions of the position embeddings; longer sequences are cut to their
            most recent ``max_len`` items.
        dim: model width :math:`d`. (default: :obj:`32`)
        num_blocks: attention blocks. (default: :obj:`2`)
        heads: attention heads (must divide ``dim``; the authors use one).
            (default: :obj:`1`)
        dropout: dropout of the input, position and interval embeddings, attention and FFN.
            (default: :obj:`0.2`)
        max_interval: clipping value :math:`k` of the scaled intervals (the authors'
            ``time_span``). (default: :obj:`256`)
        history_targets: add the next-item loss inside the history (off by default).
            (default: :obj:`False`)

    Shapes:
        - **input:** a :class:`~torch_geometric.data.Batch` with ``x``, ``t``, ``batch``
          (and ``candidates``, ``labels`` for the loss)
        - **score_candidates:** ``[B, C]``; **score_all:** ``[B, num_items + 1]``
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        dim: int = 32,
        num_blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        max_interval: int = 256,
        history_targets: bool = False,
    ) -> None:
        super().__init__(num_items, max_len, dim, history_targets)
        check_transformer_options(dim, num_blocks, heads, dropout)
        if max_interval < 1:
            raise ValueError(f"max_interval must be >= 1, got {max_interval}")
        self.num_blocks, self.heads, self.dropout_p = num_blocks, heads, dropout
        self.max_interval = max_interval
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_k = nn.Embedding(max_len, dim)
        self.pos_v = nn.Embedding(max_len, dim)
        self.time_k = nn.Embedding(max_interval + 1, dim)
        self.time_v = nn.Embedding(max_interval + 1, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TiSASRecBlock(dim, heads, dropout)
                                    for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for emb in (self.item_emb, self.pos_k, self.pos_v, self.time_k, self.time_v):
            nn.init.xavier_normal_(emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    # ------------------------------------------------------------------ inputs
    def dense_times(self, batch: Batch) -> Tensor:
        """``batch.t`` as right-padded rows ``[B, L]`` aligned with :meth:`dense_items`."""
        t = getattr(batch, "t", None)
        if t is None or t.shape != batch.x.shape:
            raise ValueError(f"{type(self).__name__} needs batch.t (days) shaped like batch.x")
        return dense_recent(t, batch.batch, batch.num_graphs, self.max_len)[0]

    def intervals(self, batch: Batch) -> Tensor:
        """The clipped personalised intervals ``[B, L, L]`` of the kept items."""
        _, mask = self.dense_items(batch)
        return time_interval_matrix(self.dense_times(batch), mask, self.max_interval)

    def _states(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        items, mask = self.dense_items(batch)
        interval = time_interval_matrix(self.dense_times(batch), mask, self.max_interval)
        states = self.encode(items, mask, interval)
        return states * mask.unsqueeze(-1).to(states.dtype), mask, items

    def encode(self, items: Tensor, mask: Tensor, interval: Tensor | None = None) -> Tensor:
        """States ``[B, L, d]`` of right-padded ``items [B, L]`` with intervals
        ``[B, L, L]`` (:func:`time_interval_matrix`).

        With right padding, the causal mask alone keeps padding out of every real
        position (padding only ever follows the real items).
        """
        if interval is None:
            raise ValueError("TiSASRec.encode needs the interval matrix [B, L, L]")
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        h = self.dropout(self.item_emb(items) * math.sqrt(self.dim))
        h = h * mask.unsqueeze(-1).to(h.dtype)
        pos_k, pos_v = self.dropout(self.pos_k(positions)), self.dropout(self.pos_v(positions))
        time_k, time_v = self.dropout(self.time_k.weight), self.dropout(self.time_v.weight)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        for block in self.blocks:
            h = block(h, pos_k, pos_v, time_k, time_v, interval, causal)
        return self.final_norm(h)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, num_blocks={self.num_blocks}, heads={self.heads}, "
            f"dropout={self.dropout_p}, max_interval={self.max_interval}, "
            f"history_targets={self.history_targets})"
        )
