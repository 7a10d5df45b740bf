r"""DIN-style target attention without any graph: a control for MDGR's candidate query.

Zhou, Zhu, Song, Fan, Zhu, Ma, Yan, Jin, Li, Gai, "Deep Interest Network for
Click-Through Rate Prediction", KDD 2018 (arXiv 1706.06978). DIN represents a user
*per candidate*: an activation unit scores every behaviour of the history against the
candidate ad, and the history is pooled with those weights, so the user vector changes
with the item it is asked about.

:class:`TargetAttentionRec` is that mechanism on the project's interface. With history
states :math:`\mathbf{h}_1, \dots, \mathbf{h}_n` and candidate embedding
:math:`\mathbf{e}_c`:

.. math::
    a_{cj} &= \mathbf{w}_2^\top\, \mathrm{PReLU}\big(W_1 [\mathbf{h}_j \,\Vert\,
    \mathbf{e}_c \,\Vert\, \mathbf{h}_j - \mathbf{e}_c \,\Vert\, \mathbf{h}_j \odot
    \mathbf{e}_c] + \mathbf{b}_1\big) \;(+\, b_2)

    \mathbf{u}_c &= \sum_{j=1}^{n} \tilde a_{cj}\, \mathbf{h}_j, \qquad
    \tilde a_{c:} = \mathrm{softmax}_j(a_{c:}) \text{ or } a_{c:}

    \hat y_c &= \mathbf{w}_4^\top \mathrm{ReLU}\big(W_3 [\mathbf{u}_c \,\Vert\,
    \mathbf{e}_c \,\Vert\, \mathbf{u}_c \odot \mathbf{e}_c] + \mathbf{b}_3\big) + b_4

With ``encoder=True`` the states :math:`\mathbf{h}_j` are the output of MDGR's own
:class:`~mdgr_graph.models.mdgr.SequenceEncoder` (item embedding, time and position
sinusoids, one self-attention block), so the only difference to MDGR with a candidate
query is: no graph, no clusters, no interest weights, target attention instead. With
``encoder=False`` they are the raw item embeddings, as in DIN.

The first attention layer is applied block by block:
:math:`W_1 [\mathbf{h}, \mathbf{e}, \mathbf{h} - \mathbf{e}, \mathbf{h} \odot \mathbf{e}]
= (W_h + W_d)\,\mathbf{h} + (W_e - W_d)\,\mathbf{e} + W_p (\mathbf{h} \odot \mathbf{e})`,
so the history part is computed once per sequence, the candidate part once per candidate,
and only the product term once per (history item, candidate) pair
(:meth:`TargetAttentionRec.attention_logits`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_batch

from mdgr_graph.models.base import (
    SequentialRecommender,
    check_positive,
    check_train_sample,
    sample_candidates,
)
from mdgr_graph.models.baselines.sasrec import recent_nodes
from mdgr_graph.models.mdgr import SequenceEncoder

#: How the activation-unit outputs are turned into pooling weights.
NORMALISATIONS: tuple[str, ...] = ("softmax", "none")


class LastDimPReLU(nn.Module):
    r"""PReLU with one learned slope per feature of the *last* dimension,
    :math:`f(x_i) = \max(0, x_i) + \alpha_i \min(0, x_i)` (``nn.PReLU`` reads channels
    from dimension 1). Slopes start at 0.25, as ``nn.PReLU``.

    Shapes:
        - **input:** ``[*, channels]``; **output:** same
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.constant_(self.weight, 0.25)

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, self.weight * x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels})"


class History(NamedTuple):
    """What the target attention needs from a batch of histories, computed once."""

    states: Tensor  # [B, n, d] h_j (zeros at padding)
    mask: Tensor  # [B, n] True at real items
    part: Tensor  # [B, n, a] (W_h + W_d) h_j, the candidate-free term of the unit


class TargetAttentionRec(SequentialRecommender):
    r"""DIN-style target attention (Zhou et al., KDD 2018) as a graph-free control.

    Every candidate :math:`c` gets its own user vector :math:`\mathbf{u}_c`, a pooling of
    the history states weighted by DIN's activation unit (see the module docstring for
    the equations), and the logit is a two-layer MLP of
    :math:`[\mathbf{u}_c, \mathbf{e}_c, \mathbf{u}_c \odot \mathbf{e}_c]`. Everything
    is batched: dense histories ``[B, n, d]``, candidates ``[B, C, d]``, attention
    ``[B, C, n]``; no loop over sequences or candidates.

    The history is cut to its most recent ``max_len`` items (as SASRec, ComiRec and SURGE
    do); positions and days are then counted from the oldest kept item, so a cut history
    is encoded exactly like a sequence of those items alone.

    **Training.** With ``train_positives=P`` and ``train_negatives=N`` (default 1 and 4,
    as SURGE's training examples) :meth:`loss` draws ``P`` positives and ``N``
    negatives of every row (:func:`~mdgr_graph.models.base.sample_candidates`, torch's
    global generator, which the training loop seeds per epoch) and scores only those;
    with both ``None`` it trains on every candidate of the row. The loss is
    :attr:`candidate_loss_kind` (the project's BCE, Eq. 17 of MDGR, unless set).
    Evaluation always scores every candidate.

    Deviations from DIN (also in ``docs/baselines.md``):

    - ``normalise="softmax"`` (default) normalises the attention over the history
      (padding masked): DIN's paper deliberately keeps the unnormalised sum to preserve
      the intensity of the user's interest; ``normalise="none"`` is that literal form
      (padding gets weight 0). The authors' released code does apply a softmax, after
      dividing the logits by :math:`\sqrt{d}`; that scale is left out here (the last
      attention layer can learn any scale). Under the softmax the bias of the last
      attention layer cancels, so it is left out there;
    - the activation unit's input is :math:`[\mathbf{h}, \mathbf{e}, \mathbf{h} -
      \mathbf{e}, \mathbf{h} \odot \mathbf{e}]`, as in the released code (which orders
      it :math:`[\mathbf{e}, \mathbf{h}, \mathbf{e} - \mathbf{h}, \mathbf{e} \odot
      \mathbf{h}]`, the same family of maps); the paper's figure shows an outer product.
      One hidden layer of width ``att_hidden`` with PReLU, the paper's activation (the
      released code: two sigmoid layers of 80 and 40; Dice is not used);
    - the history states are MDGR's encoder output by default (``encoder=False``: item
      embeddings, as DIN); items only, no category, user-profile or context features
      (our logs have none);
    - the prediction MLP reads :math:`[\mathbf{u}_c, \mathbf{e}_c, \mathbf{u}_c \odot
      \mathbf{e}_c]` with one hidden ReLU layer of width ``mlp_hidden`` and a single
      logit (paper: DIN's concatenated feature groups, 200-80 with PReLU/Dice and a 2-way
      softmax, which is a sigmoid of one logit; released code: batch norm, then
      :math:`[\mathbf{u}_c, \mathbf{e}_c]` through 80-40 sigmoid layers, plus a learned
      per-item bias, none of which is used here); no mini-batch aware regularisation
      (the optimiser's weight decay stands in for it);
    - training on sampled candidates of the protocol's windows with BCE (or the sampled
      softmax), not on logged impressions.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: longest history read (longer ones are cut to the most recent).
            (default: :obj:`50`)
        dim: width :math:`d` of item embeddings and states. (default: :obj:`32`)
        encoder: encode the history with MDGR's :class:`SequenceEncoder` (False: raw item
            embeddings). (default: :obj:`True`)
        time_dim: width of the encoder's time encoding (even). (default: :obj:`16`)
        pos_dim: width of the encoder's position encoding (even). (default: :obj:`16`)
        attn_heads: heads of the encoder's self-attention (must divide ``dim``).
            (default: :obj:`2`)
        dropout: dropout of the encoder. (default: :obj:`0.1`)
        att_hidden: hidden width :math:`a` of the activation unit (None: ``dim``).
            (default: :obj:`None`)
        mlp_hidden: hidden width of the prediction MLP. (default: :obj:`64`)
        normalise: ``"softmax"`` or ``"none"`` (see above). (default: :obj:`"softmax"`)
        train_positives: positives drawn per row for the loss (None with
            ``train_negatives=None``: every candidate). (default: :obj:`1`)
        train_negatives: negatives drawn per row for the loss. (default: :obj:`4`)
        candidate_chunk: largest item chunk of :meth:`score_all` (the attention holds
            ``B x chunk x n x a`` values). (default: :obj:`64`)

    Shapes:
        - **score_candidates:** ``[B, C]``; **score_all:** ``[B, num_items + 1]``
    """

    #: The candidate is the query: no softmax over the catalogue in one pass.
    SUPPORTED_LOSSES: tuple[str, ...] = ("bce", "sampled_softmax", "gbce")

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        dim: int = 32,
        encoder: bool = True,
        time_dim: int = 16,
        pos_dim: int = 16,
        attn_heads: int = 2,
        dropout: float = 0.1,
        att_hidden: int | None = None,
        mlp_hidden: int = 64,
        normalise: str = "softmax",
        train_positives: int | None = 1,
        train_negatives: int | None = 4,
        candidate_chunk: int = 64,
    ) -> None:
        super().__init__(num_items)
        att_hidden = dim if att_hidden is None else att_hidden
        check_positive(max_len=max_len, dim=dim, att_hidden=att_hidden,
                       mlp_hidden=mlp_hidden, candidate_chunk=candidate_chunk)
        if normalise not in NORMALISATIONS:
            raise ValueError(f"unknown normalise {normalise!r}; choose from "
                             f"{', '.join(NORMALISATIONS)}")
        check_train_sample(train_positives, train_negatives)
        if encoder:
            check_positive(time_dim=time_dim, pos_dim=pos_dim, attn_heads=attn_heads)
            for name, value in (("time_dim", time_dim), ("pos_dim", pos_dim)):
                if value % 2:
                    raise ValueError(f"{name} must be even, got {value}")
            if dim % attn_heads:
                raise ValueError(f"attn_heads={attn_heads} must divide dim={dim}")
            if not 0.0 <= dropout < 1.0:
                raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.max_len, self.dim, self.att_hidden = max_len, dim, att_hidden
        self.mlp_hidden_dim = mlp_hidden
        self.use_encoder, self.normalise = bool(encoder), normalise
        self.time_dim, self.pos_dim, self.attn_heads, self.dropout_p = (
            time_dim, pos_dim, attn_heads, dropout)
        self.train_positives, self.train_negatives = train_positives, train_negatives
        self.candidate_chunk = candidate_chunk

        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.encoder = (SequenceEncoder(dim, time_dim, pos_dim, attn_heads, dropout)
                        if encoder else None)
        # activation unit: W_1 = [W_h, W_e, W_d, W_p] on [h, e, h - e, h * e]
        self.att_in = nn.Linear(4 * dim, att_hidden)
        self.att_act = LastDimPReLU(att_hidden)
        self.att_out = nn.Linear(att_hidden, 1, bias=normalise == "none")
        self.mlp_hidden = nn.Linear(3 * dim, mlp_hidden)
        self.mlp_out = nn.Linear(mlp_hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if self.encoder is not None:
            for module in self.encoder.modules():
                if isinstance(module, nn.MultiheadAttention):
                    module._reset_parameters()  # in-projection (out_proj is a Linear)
                elif module is not self.encoder and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        for layer in (self.att_in, self.att_out, self.mlp_hidden, self.mlp_out):
            nn.init.xavier_uniform_(layer.weight)  # TF dense defaults of DIN's code
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.att_act.reset_parameters()

    # ------------------------------------------------------------------ the history
    def history_states(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """History states ``[B, n, d]`` (zeros at padding) and mask ``[B, n]``, with
        ``n = min(max_len, longest history)``: the encoder output or the item
        embeddings of the most recent ``max_len`` items."""
        self._check_batch(batch)
        num_seq = batch.num_graphs
        node, index = recent_nodes(torch.arange(batch.x.numel(), device=batch.x.device),
                                   batch.batch, num_seq, self.max_len)
        states = self.item_emb(batch.x[node])
        if self.encoder is not None:
            counts = torch.bincount(index, minlength=num_seq)
            start = torch.cumsum(counts, 0) - counts
            pos = torch.arange(node.numel(), device=node.device) - start[index]
            days = batch.t[node]
            days = days - days[start[index]]  # days since the oldest kept item
            states = self.encoder(states, days, pos, index, num_seq)
        return to_dense_batch(states, index, batch_size=num_seq)

    def history(self, batch: Batch) -> History:
        """:meth:`history_states` with the candidate-free terms of the activation unit."""
        states, mask = self.history_states(batch)
        w_h, _, w_d, _ = self.att_in.weight.split(self.dim, dim=1)  # each [a, d]
        return History(states, mask, states @ (w_h + w_d).t())

    # ------------------------------------------------------------------ attention
    def attention_logits(self, history: History, items: Tensor) -> Tensor:
        """Activation-unit outputs :math:`a_{cj}`: ``[B, C, n]`` for ``items [B, C, d]``
        (padding entries are computed but not masked here)."""
        _, w_e, w_d, w_p = self.att_in.weight.split(self.dim, dim=1)
        cand = items @ (w_e - w_d).t() + self.att_in.bias  # [B, C, a], once per candidate
        cross = (history.states.unsqueeze(1) * items.unsqueeze(2)) @ w_p.t()  # [B, C, n, a]
        hidden = history.part.unsqueeze(1) + cand.unsqueeze(2) + cross
        return self.att_out(self.att_act(hidden)).squeeze(-1)

    def attention(self, history: History, items: Tensor) -> Tensor:
        """Pooling weights ``[B, C, n]``: softmax over the real items, or the raw
        activation-unit outputs (``normalise="none"``); 0 at padding either way."""
        logits = self.attention_logits(history, items)
        pad = ~history.mask.unsqueeze(1)
        if self.normalise == "softmax":
            return torch.softmax(logits.masked_fill(pad, float("-inf")), dim=-1)
        return logits.masked_fill(pad, 0.0)

    def _logits(self, history: History, items: Tensor) -> Tensor:
        """Logits ``[B, C]`` of ``items [B, C, d]`` (or ``[K, d]``, shared by all rows)."""
        if items.dim() == 2:
            items = items.unsqueeze(0).expand(history.states.size(0), -1, -1)
        user = self.attention(history, items) @ history.states  # [B, C, d]
        hidden = self.mlp_hidden(torch.cat([user, items, user * items], dim=-1))
        return self.mlp_out(torch.relu(hidden)).squeeze(-1)

    # ------------------------------------------------------------------ scores
    def score_candidates(self, batch: Batch) -> Tensor:
        """Logits of ``batch.candidates``: ``[B, C]``."""
        self._check_candidates(batch)
        return self._logits(self.history(batch), self.item_emb(batch.candidates))

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` (column 0 included), exact: each
        chunk of ``min(chunk_size, candidate_chunk)`` items is scored as candidates of
        every row, the history terms computed once."""
        history = self.history(batch)
        return self.score_item_chunks(lambda chunk: self._logits(history, chunk),
                                      self.item_emb.weight,
                                      min(chunk_size, self.candidate_chunk))

    def loss(self, batch: Batch) -> Tensor:
        """:attr:`candidate_loss_kind` over ``P + N`` drawn candidates of every row (all
        of them when ``train_positives`` and ``train_negatives`` are None); only the
        drawn candidates are scored."""
        labels = self.candidate_labels(batch)
        self._check_candidates(batch)
        candidates = batch.candidates
        if self.train_positives is not None:
            try:
                candidates, labels = sample_candidates(
                    candidates, labels, self.train_positives, self.train_negatives)
            except ValueError as err:
                raise ValueError(
                    f"{type(self).__name__}.loss: {err} (train_positives="
                    f"{self.train_positives}, train_negatives={self.train_negatives}; "
                    "None for both trains on every candidate)") from err
        logits = self._logits(self.history(batch), self.item_emb(candidates))
        return self.loss_over_candidates(logits, labels)

    def _check_batch(self, batch: Batch) -> None:
        super()._check_batch(batch)
        if self.encoder is not None and getattr(batch, "t", None) is None:
            raise ValueError(f"{type(self).__name__} with encoder=True needs batch.t (days)")

    def __repr__(self) -> str:
        encoder = (f"encoder=True, time_dim={self.time_dim}, pos_dim={self.pos_dim}, "
                   f"attn_heads={self.attn_heads}, dropout={self.dropout_p}"
                   if self.encoder is not None else "encoder=False")
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, {encoder}, att_hidden={self.att_hidden}, "
            f"mlp_hidden={self.mlp_hidden_dim}, normalise={self.normalise!r}, "
            f"train_positives={self.train_positives}, "
            f"train_negatives={self.train_negatives}, loss={self.candidate_loss_kind!r})"
        )
