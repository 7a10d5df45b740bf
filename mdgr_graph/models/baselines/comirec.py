r"""ComiRec: controllable multi-interest recommendation (Cen et al., KDD 2020).

"Controllable Multi-Interest Framework for Recommendation" extracts :math:`K` interest
vectors :math:`V = [v_1, \dots, v_K] \in \mathbb{R}^{K \times d}` from a user's history
and, at serving time, retrieves the items closest to any of them. Two extractors:

- :class:`ComiRecSA` (self-attentive method):
  :math:`A = \mathrm{softmax}(W_2\, \tanh(W_1 H^\top))^\top`, :math:`V = A^\top H`;
- :class:`ComiRecDR` (dynamic routing): capsules routed from the behaviour
  embeddings through bilinear maps, squashed, for ``routing_iters`` iterations.

On this project's candidate interface both score an item by its best-matching interest,
:math:`r(i) = \max_k \langle v_k, M_i \rangle` with the input item table :math:`M`
(what ComiRec does at serving time, merging the per-interest nearest neighbours).

Neither extractor is causal: every interest reads the whole (kept) history, so there
are no per-position states and no next-item loss inside the history here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from mdgr_graph.models.base import SequentialRecommender, check_positive
from mdgr_graph.models.baselines.sasrec import CausalSequenceRecommender
from mdgr_graph.nn.interest import InterestQueries


def squash(s: Tensor, eps: float = 1e-9) -> Tensor:
    r"""Capsule squashing (Sabour et al., 2017, as in ComiRec), along the last dimension.

    :math:`\mathrm{squash}(s) = \frac{\lVert s\rVert^2}{1 + \lVert s\rVert^2}\,
    \frac{s}{\sqrt{\lVert s\rVert^2 + \epsilon}}` with :math:`\epsilon = 10^{-9}` as in the
    authors' code (so a zero capsule stays zero, with a finite gradient).
    """
    norm2 = s.pow(2).sum(dim=-1, keepdim=True)
    return s * (norm2 / (1.0 + norm2) / torch.sqrt(norm2 + eps))


class MultiInterestRecommender(SequentialRecommender):
    r"""Base of models that read a history into :math:`K` interest vectors.

    A subclass implements :meth:`extract` (dense items ``[B, L]`` + mask -> interests
    ``[B, K, d]``) and owns an ``item_emb`` table of ``num_items + 1`` rows (row 0 is
    padding). The score of an item is its largest dot product with an interest,
    :math:`r(i) = \max_k \langle v_k, M_i \rangle`.

    The input plumbing is that of
    :class:`~mdgr_graph.models.baselines.sasrec.CausalSequenceRecommender` (same checks;
    right-padded items cut to the most recent ``max_len``), reused without its causal
    state interface, which does not apply here.

    Loss: ComiRec's sampled softmax (default), each positive of ``batch.candidates``
    against the row's sampled negatives
    (:func:`~mdgr_graph.models.base.sampled_softmax_loss`), on the max-over-interests
    logits; ``loss="bce"`` gives Eq. 17 of the MDGR paper instead. The score has no bias
    and an interest is a mix of the history's own embeddings, so no interest can push
    every item's logit down: with 50 negatives per positive the binary cross-entropy
    fights that and trains poorly, while the softmax is unchanged by a shift of the logits.

    Args:
        num_items: number of real items (ids ``1..num_items``; 0 is padding).
        max_len: longest history the model reads (longer ones are cut).
        dim: width :math:`d` of interests and item embeddings.
        interests: number of interests :math:`K`.
        loss: ``"sampled_softmax"`` or ``"bce"``.
    """

    def __init__(self, num_items: int, max_len: int, dim: int, interests: int,
                 loss: str = "sampled_softmax") -> None:
        super().__init__(num_items)
        check_positive(max_len=max_len, dim=dim, interests=interests)
        self.max_len, self.dim, self.num_interests = max_len, dim, interests
        self.candidate_loss_kind = loss

    # the input helpers of the causal models do not depend on causality
    dense_items = CausalSequenceRecommender.dense_items
    _check_batch = CausalSequenceRecommender._check_batch
    _check_candidates = CausalSequenceRecommender._check_candidates

    def extract(self, items: Tensor, mask: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Interests ``[B, K, d]`` of right-padded ``items [B, L]`` (``mask``: real)."""
        raise NotImplementedError

    def interests(self, batch: Batch) -> Tensor:
        """The :math:`K` interest vectors of every sequence: ``[B, K, d]``."""
        items, mask = self.dense_items(batch)
        return self.extract(items, mask)

    def interest_queries(self, batch: Batch) -> InterestQueries:
        r"""The score as inner products for retrieval: queries :math:`q_k = v_k`, offsets
        0, every interest taking part (:math:`r(i) = \max_k q_k^\top M_i`); weights are
        ones. Shapes as in :class:`~mdgr_graph.nn.interest.InterestQueries`."""
        v = self.interests(batch)
        ones = v.new_ones(v.shape[:2])
        return InterestQueries(v, torch.zeros_like(ones), ones.bool(), v, ones)

    # ------------------------------------------------------------------ scores
    def _score(self, interests: Tensor, candidates: Tensor) -> Tensor:
        scores = torch.einsum("bkd,bcd->bkc", interests, self.item_emb(candidates))
        return scores.amax(dim=1)

    def score_candidates(self, batch: Batch) -> Tensor:
        r"""Logits :math:`\max_k \langle v_k, M_c \rangle` of ``batch.candidates``: ``[B, C]``."""
        self._check_candidates(batch)
        return self._score(self.interests(batch), batch.candidates)

    #: ``loss="ce"`` through :meth:`interest_catalogue_loss` (the score is the plain max).
    catalogue_by_interests = True

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` (column 0 included), in item chunks."""
        interests = self.interests(batch)
        return self.score_item_chunks(
            lambda items: torch.einsum("bkd,nd->bkn", interests, items).amax(dim=1),
            self.item_emb.weight, chunk_size,
        )


class ComiRecSA(MultiInterestRecommender):
    r"""ComiRec-SA (Cen et al., KDD 2020): self-attentive interest extraction.

    With :math:`H \in \mathbb{R}^{n \times d}` the embeddings of the :math:`n` kept items
    (dropout applied) and :math:`P \in \mathbb{R}^{n \times d}` learned position
    embeddings (positions count from the oldest kept item),

    .. math::
        A = \mathrm{softmax}_j\big(W_2 \tanh(W_1 (H + P)^\top + b_1) + b_2\big)^\top
        \in \mathbb{R}^{n \times K}, \qquad V = A^\top H \in \mathbb{R}^{K \times d},

    with :math:`W_1 \in \mathbb{R}^{d_a \times d}`, :math:`W_2 \in \mathbb{R}^{K \times
    d_a}` (the softmax runs over the sequence, padding masked out). As in the
    authors' code, the position embedding enters the attention logits only (the values
    are :math:`H`), :math:`d_a = 4d` by default and both layers have biases.

    Scoring: :math:`r(i) = \max_k \langle v_k, M_i \rangle` for every candidate, which is
    how ComiRec serves. Training uses the same max; the paper trains with the interest
    :math:`\arg\max_k \langle v_k, M_{target} \rangle` (hard readout), which for the positive item
    is the same interest. Loss: the paper's sampled softmax, with the row's sampled
    negatives as the sample (the authors sample from the whole catalogue).

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: positions of the position embedding; longer sequences are cut to their
            most recent ``max_len`` items.
        dim: embedding width :math:`d`. (default: :obj:`32`)
        interests: number of interests :math:`K`. (default: :obj:`4`)
        hidden: attention width :math:`d_a` (None: :math:`4d`). (default: :obj:`None`)
        dropout: dropout of the history embeddings :math:`H`. (default: :obj:`0.1`)
        loss: ``"sampled_softmax"`` (the paper's) or ``"bce"`` (Eq. 17 of MDGR).
            (default: :obj:`"sampled_softmax"`)

    Shapes:
        - **interests:** ``[B, K, d]``
        - **score_candidates:** ``[B, C]``; **score_all:** ``[B, num_items + 1]``
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        dim: int = 32,
        interests: int = 4,
        hidden: int | None = None,
        dropout: float = 0.1,
        loss: str = "sampled_softmax",
    ) -> None:
        super().__init__(num_items, max_len, dim, interests, loss)
        hidden = 4 * dim if hidden is None else hidden
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.hidden, self.dropout_p = hidden, dropout
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.dropout = nn.Dropout(dropout)
        self.att_hidden = nn.Linear(dim, hidden)  # W_1, b_1
        self.att_out = nn.Linear(hidden, interests)  # W_2, b_2
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        nn.init.xavier_normal_(self.pos_emb.weight)
        for layer in (self.att_hidden, self.att_out):  # TF dense defaults of the authors
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def attention(self, items: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Attention ``A [B, K, L]`` (rows sum to 1 over real items, 0 at padding) and
        the history embeddings ``H [B, L, d]`` (zeros at padding)."""
        h = self.dropout(self.item_emb(items)) * mask.unsqueeze(-1).to(self.item_emb.weight.dtype)
        positions = torch.arange(items.shape[1], device=items.device)
        logits = self.att_out(torch.tanh(self.att_hidden(h + self.pos_emb(positions))))
        logits = logits.transpose(1, 2).masked_fill(~mask.unsqueeze(1), float("-inf"))
        return torch.softmax(logits, dim=-1), h

    def extract(self, items: Tensor, mask: Tensor) -> Tensor:
        """Interests ``V = A H``: ``[B, K, d]``."""
        att, h = self.attention(items, mask)
        return att @ h

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, interests={self.num_interests}, hidden={self.hidden}, "
            f"dropout={self.dropout_p}, loss={self.candidate_loss_kind!r})"
        )


class ComiRecDR(MultiInterestRecommender):
    r"""ComiRec-DR (Cen et al., KDD 2020): dynamic-routing interest capsules.

    Each kept item :math:`e_j` votes for interest :math:`k` through a bilinear map,
    :math:`\hat e_{k|j} = S_k e_j`, with :math:`S \in \mathbb{R}^{K \times d
    \times d}` shared by all positions. Routing logits :math:`b \in \mathbb{R}^{K \times
    n}` start at zero, as in the authors' code for maps that differ per interest (MIND's
    random start is needed only when one map serves all interests), and
    ``routing_iters`` times:

    .. math::
        c_{kj} = \mathrm{softmax}_k(b_{kj}) \text{ (0 at padding)}, \quad
        v_k = \mathrm{squash}\Big(\sum_j c_{kj}\, \hat e_{k|j}\Big), \quad
        b_{kj} \mathrel{+}= \langle \hat e_{k|j}, v_k \rangle

    (the softmax runs over the interests, for each item). As in the authors'
    code the logits are not back-propagated through: they are computed from detached
    votes, and only the last iteration's :math:`\sum_j c_{kj} \hat e_{k|j}` carries
    gradients (to :math:`S` and the item table, with :math:`c` held fixed).

    Differences from the authors' code: their ComiRec-DR uses a separate map per position
    and interest (``bilinear_type=2``, :math:`\mathrm{max\_len} \cdot K d^2` parameters),
    here one map per interest shared by all positions, so the extractor ignores order.
    Scoring and loss as for :class:`ComiRecSA`: :math:`\max_k \langle v_k, M_i \rangle`
    for every candidate in training and evaluation (the paper's argmax-on-target readout
    picks that interest for the positive item), and the paper's sampled softmax over the
    row's sampled negatives.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: longest history read; longer sequences are cut to their most recent
            ``max_len`` items.
        dim: embedding and capsule width :math:`d`. (default: :obj:`32`)
        interests: number of interest capsules :math:`K`. (default: :obj:`4`)
        routing_iters: routing iterations. (default: :obj:`3`)
        loss: ``"sampled_softmax"`` (the paper's) or ``"bce"``. (default:
            :obj:`"sampled_softmax"`)

    Shapes:
        - **interests:** ``[B, K, d]``
        - **score_candidates:** ``[B, C]``; **score_all:** ``[B, num_items + 1]``
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        dim: int = 32,
        interests: int = 4,
        routing_iters: int = 3,
        loss: str = "sampled_softmax",
    ) -> None:
        super().__init__(num_items, max_len, dim, interests, loss)
        if routing_iters < 1:
            raise ValueError(f"routing_iters must be >= 1, got {routing_iters}")
        self.routing_iters = routing_iters
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.bilinear = nn.Parameter(torch.empty(interests, dim, dim))  # S_k: [d_out, d_in]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        # the authors' bilinear_type=1 map is a TF dense layer d -> K d (Glorot uniform)
        nn.init.xavier_uniform_(self.bilinear.view(self.num_interests * self.dim, self.dim))

    def votes(self, items: Tensor, mask: Tensor) -> Tensor:
        r"""Votes :math:`\hat e_{k|j} = S_k e_j`: ``[B, K, L, d]`` (zeros at padding)."""
        e = self.item_emb(items) * mask.unsqueeze(-1).to(self.item_emb.weight.dtype)
        return torch.einsum("bld,ked->bkle", e, self.bilinear)

    def route(self, votes: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Dynamic routing: interests ``[B, K, d]`` and coupling ``c [B, K, L]``."""
        fixed = votes.detach()
        logits = votes.new_zeros(votes.shape[:3])
        pad = ~mask.unsqueeze(1)
        for it in range(self.routing_iters):
            coupling = torch.softmax(logits, dim=1).masked_fill(pad, 0.0)
            if it < self.routing_iters - 1:
                caps = squash(torch.einsum("bkl,bkld->bkd", coupling, fixed))
                logits = logits + torch.einsum("bkld,bkd->bkl", fixed, caps)
            else:
                caps = squash(torch.einsum("bkl,bkld->bkd", coupling, votes))
        return caps, coupling

    def extract(self, items: Tensor, mask: Tensor) -> Tensor:
        """Interest capsules after ``routing_iters`` routing iterations: ``[B, K, d]``."""
        return self.route(self.votes(items, mask), mask)[0]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, interests={self.num_interests}, "
            f"routing_iters={self.routing_iters}, loss={self.candidate_loss_kind!r})"
        )
