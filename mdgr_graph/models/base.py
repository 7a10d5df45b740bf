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

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.data import Batch

from mdgr_graph.nn.interest import InterestQueries

#: Losses a model can train with: over ``batch.candidates`` (see :func:`candidate_loss`)
#: or, ``"ce"``, a softmax over the whole catalogue (:func:`catalogue_softmax_loss`).
CANDIDATE_LOSSES: tuple[str, ...] = ("bce", "sampled_softmax", "ce", "gbce")

#: gSASRec's calibration :math:`t` of :func:`gbce_loss` (the value its authors recommend).
GBCE_T = 0.75


def sampled_softmax_loss(logits: Tensor, labels: Tensor) -> Tensor:
    r"""Sampled softmax over the candidates of each row, one term per positive.

    For a row with positives :math:`P` and negatives :math:`N`, each :math:`p \in P` is
    classified against the negatives only,
    :math:`-\log \frac{e^{s_p}}{e^{s_p} + \sum_{n \in N} e^{s_n}}
    = \mathrm{softplus}(\mathrm{logsumexp}_{n \in N} s_n - s_p)`, and the terms are
    averaged over every positive of the batch. Unlike the binary cross-entropy it is
    unchanged by adding a constant to a row's logits.

    Args:
        logits: ``[B, C]`` candidate scores.
        labels: ``[B, C]``, 1 (or True) at positives, 0 at negatives.
    """
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         "must both be [B, C]")
    positive = labels.bool()
    if not bool(positive.any()):
        return logits.sum() * 0.0
    negative_lse = torch.logsumexp(logits.masked_fill(positive, float("-inf")), dim=1)
    gap = negative_lse.unsqueeze(1) - logits  # [B, C]; only the positives' entries are used
    return nn.functional.softplus(gap[positive]).mean()


def gbce_loss(logits: Tensor, labels: Tensor, num_items: int, t: float = GBCE_T) -> Tensor:
    r"""gBCE of gSASRec (Petrov and Macdonald, RecSys 2023): binary cross-entropy with the
    positives' probability raised to the power :math:`\beta`, which undoes the
    overconfidence that negative sampling teaches.

    .. math::
        \mathcal{L} = \frac{1}{BC} \Big(\sum_{p} -\beta \log \sigma(s_p)
        + \sum_{n} -\log(1 - \sigma(s_n))\Big), \qquad
        \beta = \alpha \big(t (1 - 1/\alpha) + 1/\alpha\big) = 1 - t (1 - \alpha),

    with :math:`\alpha = N / (I - 1)` the sampling rate of a row's :math:`N` negatives among
    the :math:`I - 1` other items, and the mean over all :math:`B \times C` entries as in
    :func:`candidate_loss`'s ``"bce"``. :math:`t = 0` is that binary cross-entropy,
    :math:`t = 1` gives :math:`\beta = \alpha`.

    Args:
        logits: ``[B, C]`` candidate scores.
        labels: ``[B, C]``, 1 (or True) at positives, 0 at negatives.
        num_items: :math:`I`, the number of real items (at least 2).
        t: calibration in ``[0, 1]``. (default: :data:`GBCE_T`)
    """
    if logits.shape != labels.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         "must both be [B, C]")
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"gBCE's t must lie in [0, 1], got {t}")
    if num_items < 2:
        raise ValueError(f"gBCE needs at least 2 items, got num_items={num_items}")
    positive = labels.bool()
    alpha = ((~positive).sum(1, keepdim=True).to(logits.dtype) / (num_items - 1)).clamp(max=1)
    beta = 1.0 - t * (1.0 - alpha)  # [B, 1]
    terms = torch.where(positive, beta * nn.functional.softplus(-logits),
                        nn.functional.softplus(logits))
    return terms.mean()


def catalogue_softmax_loss(logits: Tensor, rows: Tensor, targets: Tensor,
                           chunk_size: int | None = None) -> Tensor:
    r"""Cross-entropy of a softmax over every real item, one term per positive.

    For a positive item :math:`p` of row :math:`b`,
    :math:`-\log \frac{e^{s_{b,p}}}{\sum_{v=1}^{I} e^{s_{b,v}}}` (the padding column 0 is
    left out), averaged over the positives. Used by ``loss="ce"`` (issue 27): the field's
    strong training of SASRec-style models, against Eq. 17's one sampled negative.

    Args:
        logits: ``[B, I + 1]`` scores of every item, column 0 the padding, or a callable
            ``rows -> [len(rows), I + 1]`` that computes them for some rows only (then
            ``chunk_size`` rows at a time, each chunk checkpointed, so memory holds one
            chunk's logits).
        rows: ``[P]`` row of each positive.
        targets: ``[P]`` item id of each positive (``>= 1``).
        chunk_size: positives per chunk when ``logits`` is a callable.
    """
    if rows.numel() == 0:
        raise ValueError("catalogue_softmax_loss needs at least one positive")
    if not callable(logits):
        return _softmax_terms(logits[rows], targets).mean()
    step = rows.numel() if chunk_size is None else chunk_size

    def chunk_terms(chunk_rows: Tensor, chunk_targets: Tensor) -> Tensor:
        return _softmax_terms(logits(chunk_rows), chunk_targets).sum()

    # checkpointed: a chunk's [chunk, I + 1] logits are recomputed in the backward pass
    # instead of kept, so memory holds one chunk of them, not all positives' at once
    total = sum(checkpoint(chunk_terms, rows[i : i + step], targets[i : i + step],
                           use_reentrant=False)
                for i in range(0, rows.numel(), step))
    return total / rows.numel()


class _MaxInterestLogSumExp(torch.autograd.Function):
    """Autograd of :func:`max_interest_logsumexp` over the unmasked interests only.

    Takes them flattened interest-major: the ``R_0`` rows' interest 0, then the first
    ``R_1`` rows' interest 1, ... (``R_0 >= R_1 >= ...``, rows sorted by how many interests
    they have), so one matrix product per item chunk scores exactly the interests that
    exist. The forward keeps each item's winning score and which interests reach it; the
    backward gives each item's softmax weight to them (split evenly at a tie, as ``amax``
    does), chunk by chunk."""

    @staticmethod
    def forward(ctx, flat_queries: Tensor, flat_offsets: Tensor, items: Tensor,
                rows_per_interest: list[int], chunk_size: int) -> Tensor:
        batch_size = rows_per_interest[0]
        starts = itertools.accumulate(rows_per_interest[:-1], initial=0)
        layout = list(zip(starts, rows_per_interest, strict=True))  # (first, rows) per j
        best = flat_queries.new_empty(batch_size, items.size(0))
        winners = torch.empty(flat_queries.size(0), items.size(0), dtype=torch.bool,
                              device=flat_queries.device)
        for start in range(0, items.size(0), chunk_size):
            chunk = slice(start, start + chunk_size)
            scores = torch.mm(flat_queries, items[chunk].t())  # [V, chunk], in cache
            scores.add_(flat_offsets.unsqueeze(-1))
            top = scores[:batch_size].clone()
            for first, rows in layout[1:]:
                torch.maximum(top[:rows], scores[first:first + rows], out=top[:rows])
            for first, rows in layout:
                torch.eq(scores[first:first + rows], top[:rows],
                         out=winners[first:first + rows, chunk])
            best[:, chunk] = top
        lse = torch.logsumexp(best, dim=1)
        ctx.save_for_backward(flat_queries, items, best, winners, lse)
        ctx.layout, ctx.chunk_size = layout, chunk_size
        return lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lse: Tensor):
        flat_queries, items, best, winners, lse = ctx.saved_tensors
        layout, chunk_size = ctx.layout, ctx.chunk_size
        batch_size = layout[0][1]
        # d lse_b / d s_{b,i} = softmax_i, shared by the interests that reach s_{b,i}
        weight = torch.exp(best - lse.unsqueeze(1)).mul_(grad_lse.unsqueeze(1))  # [B, I]
        grad_queries = torch.zeros_like(flat_queries)
        grad_offsets = flat_queries.new_zeros(flat_queries.size(0))
        grad_items = torch.empty_like(items)
        for start in range(0, items.size(0), chunk_size):
            chunk = slice(start, start + chunk_size)
            spread = winners[:, chunk].to(weight.dtype)  # [V, chunk]
            share = spread[:batch_size].clone()  # winners of each (row, item)
            for first, rows in layout[1:]:
                share[:rows] += spread[first:first + rows]
            share = torch.div(weight[:, chunk], share, out=share)
            for first, rows in layout:
                spread[first:first + rows].mul_(share[:rows])
            grad_offsets += spread.sum(dim=-1)
            grad_queries.addmm_(spread, items[chunk])
            torch.mm(spread.t(), flat_queries, out=grad_items[chunk])
        return grad_queries, grad_offsets, grad_items, None, None


def max_interest_logsumexp(queries: Tensor, offsets: Tensor, items: Tensor,
                           chunk_size: int = 512) -> Tensor:
    r"""Log-partition of a multi-interest score over an item table, differentiable.

    .. math::
        \mathrm{lse}_b = \log \sum_{i} \exp \big(\max_j\ q_{bj}^\top p_i + c_{bj}\big)

    The same value and gradient as autograd through
    ``torch.logsumexp((queries @ items.T + offsets[..., None]).amax(1), 1)``, up to float
    rounding (ties between interests share the gradient, as with ``amax``), computed
    ``chunk_size`` items at a time so that each chunk's scores stay in cache, and
    differentiated by hand: the forward keeps the winning score of every item and a bool
    mask of the interests that reach it; the backward multiplies the softmax weights
    through that mask. What it avoids is autograd's float ``[B, k, I]`` scores saved for
    the max, and the ``cat`` of the chunks. A masked interest takes an offset of ``-inf``
    (the models also zero its query); masked interests are left out before any product,
    so the cost follows the interests that exist (about half of the ``B x k`` slots on the
    short Amazon histories), not ``k``. Every row needs at least one interest that is not
    masked. First derivatives only (``create_graph`` is refused).

    Args:
        queries: :math:`q`, ``[B, k, d]``.
        offsets: :math:`c`, ``[B, k]``; ``-inf`` marks a masked interest.
        items: :math:`p`, ``[I, d]``.
        chunk_size: items per chunk. (default: :obj:`512`)

    Returns:
        ``[B]``.
    """
    if queries.dim() != 3 or offsets.shape != queries.shape[:2] or items.dim() != 2 \
            or items.size(1) != queries.size(2):
        raise ValueError(f"need queries [B, k, d], offsets [B, k] and items [I, d]; got "
                         f"{tuple(queries.shape)}, {tuple(offsets.shape)}, {tuple(items.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if queries.size(0) == 0:
        raise ValueError("max_interest_logsumexp needs at least one row, got B = 0")
    unmasked = offsets != float("-inf")
    counts = unmasked.sum(dim=1)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0])
        raise ValueError(f"row {row} has every interest masked (offset -inf); each row "
                         "needs at least one")
    # rows by number of interests (most first), each row's unmasked interests first
    rows = torch.argsort(counts, descending=True, stable=True)
    order = torch.argsort((~unmasked[rows]).to(torch.uint8), dim=1, stable=True)
    # [k, B] slots that exist; nonzero walks them interest-major
    exists = torch.arange(queries.size(1), device=counts.device).unsqueeze(1) < counts[rows]
    interest, sorted_row = exists.nonzero(as_tuple=True)
    row_index, interest_index = rows[sorted_row], order[sorted_row, interest]
    rows_per_interest = [n for n in exists.sum(dim=1).tolist() if n > 0]
    lse_sorted = _MaxInterestLogSumExp.apply(
        queries[row_index, interest_index], offsets[row_index, interest_index], items,
        rows_per_interest, chunk_size)
    return lse_sorted[torch.argsort(rows)]


def _softmax_terms(logits: Tensor, targets: Tensor) -> Tensor:
    real = logits[:, 1:]
    return torch.logsumexp(real, dim=1) - real.gather(1, (targets - 1).unsqueeze(1)).squeeze(1)


def check_candidate_loss(kind: str) -> None:
    """Raise a ``ValueError`` unless ``kind`` is one of :data:`CANDIDATE_LOSSES`."""
    if kind not in CANDIDATE_LOSSES:
        raise ValueError(f"unknown candidate loss {kind!r}; choose from "
                         f"{', '.join(CANDIDATE_LOSSES)}")


def candidate_loss(logits: Tensor, labels: Tensor, kind: str = "bce",
                   num_items: int | None = None, gbce_t: float = GBCE_T) -> Tensor:
    """The loss ``kind`` (one of :data:`CANDIDATE_LOSSES`) of candidate ``logits [B, C]``:
    ``"bce"`` is Eq. 17 (mean binary cross-entropy against ``labels``), ``"sampled_softmax"``
    is :func:`sampled_softmax_loss`, ``"gbce"`` :func:`gbce_loss` (needs ``num_items``)."""
    check_candidate_loss(kind)
    if kind == "ce":
        raise ValueError("loss 'ce' is a softmax over the catalogue, not over the candidates: "
                         "use catalogue_softmax_loss")
    if kind == "bce":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
    if kind == "gbce":
        if num_items is None:
            raise ValueError("loss 'gbce' needs num_items (its sampling rate)")
        return gbce_loss(logits, labels, num_items, gbce_t)
    return sampled_softmax_loss(logits, labels)


def sample_candidates(
    candidates: Tensor, labels: Tensor, positives: int, negatives: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``positives`` positives and ``negatives`` negatives of every row, uniformly
    without replacement (SURGE's 1 positive + 4 negatives per training example).

    Candidate-query models (``query="candidate"``) run one graph per (sequence,
    candidate) pair, so they train on a few candidates of each window instead of all of
    them. The draw uses ``generator`` (default: torch's global generator, which the
    training loop seeds per epoch, so a resumed run draws the same candidates).

    Args:
        candidates: ``[B, C]`` item ids.
        labels: ``[B, C]``, 1 (or True) at positives, 0 at negatives.
        positives, negatives: how many of each to keep per row (``>= 0``, not both 0).

    Returns:
        ``(candidates [B, P + N], labels [B, P + N])``: the drawn positives first, in
        random order, then the drawn negatives.

    Raises:
        ValueError: on mismatched shapes, or a row with fewer positives or negatives than
            asked for (naming the row).
    """
    if candidates.shape != labels.shape or candidates.dim() != 2:
        raise ValueError(f"candidates {tuple(candidates.shape)} and labels "
                         f"{tuple(labels.shape)} must both be [B, C]")
    if positives < 0 or negatives < 0 or positives + negatives == 0:
        raise ValueError(f"need positives >= 0, negatives >= 0 and at least one candidate, "
                         f"got {positives} and {negatives}")
    positive = labels.bool()
    keys = torch.rand(candidates.shape, generator=generator, device=candidates.device)
    picked = []
    for want, is_kind, kind in ((positives, positive, "positives"),
                                (negatives, ~positive, "negatives")):
        if want == 0:
            continue
        have = is_kind.sum(dim=1)
        short = (have < want).nonzero()
        if short.numel():
            row = int(short[0])
            raise ValueError(f"row {row} has {int(have[row])} {kind}, fewer than the "
                             f"{want} to sample per row")
        # random keys in [0, 1) for the kind, -1 elsewhere: the top ``want`` are a
        # uniform sample without replacement of the kind's entries
        picked.append(keys.masked_fill(~is_kind, -1.0).topk(want, dim=1).indices)
    index = torch.cat(picked, dim=1)
    return candidates.gather(1, index), labels.gather(1, index)


def check_train_sample(
    positives: int | None, negatives: int | None
) -> tuple[int, int] | None:
    """``(positives, negatives)`` drawn per training window by a candidate-query model
    (:func:`sample_candidates`), checked; ``None`` when both are ``None`` (train on every
    candidate)."""
    if positives is None and negatives is None:
        return None
    for name, value in (("train_positives", positives), ("train_negatives", negatives)):
        if value is None:
            raise ValueError("train_positives and train_negatives must both be None (train "
                             f"on every candidate) or both be set, got {positives} and "
                             f"{negatives}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if positives + negatives == 0:
        raise ValueError("train_positives + train_negatives must be > 0")
    return positives, negatives


def check_positive(**sizes: int) -> None:
    """Raise a ``ValueError`` naming the first of ``sizes`` (e.g. ``max_len=..., dim=...``)
    below 1."""
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


class SequentialRecommender(nn.Module):
    """Base class: a loss over the candidates and chunked full scoring.

    The loss is :attr:`candidate_loss_kind` of :func:`candidate_loss`: Eq. 17's binary
    cross-entropy unless a subclass sets another (ComiRec trains with its paper's
    sampled softmax; PinText2, DCRec and MAERec take it by default, chosen on validation).

    Args:
        num_items: number of real items (ids ``1..num_items``; 0 is padding).
    """

    _candidate_loss_kind: str = "bce"

    #: The losses this model can train with (a subclass that cannot score the catalogue in
    #: one pass, or has a loss of its own, lists fewer).
    SUPPORTED_LOSSES: tuple[str, ...] = CANDIDATE_LOSSES

    #: gBCE's calibration :math:`t` when :attr:`candidate_loss_kind` is ``"gbce"``.
    gbce_t: float = GBCE_T

    def __init__(self, num_items: int) -> None:
        super().__init__()
        check_positive(num_items=num_items)
        self.num_items = num_items

    @property
    def candidate_loss_kind(self) -> str:
        """The loss over the candidates, one of :data:`CANDIDATE_LOSSES` that the model
        supports (:attr:`supported_losses`; checked when set)."""
        return self._candidate_loss_kind

    @candidate_loss_kind.setter
    def candidate_loss_kind(self, kind: str) -> None:
        check_candidate_loss(kind)
        if kind not in self.supported_losses:
            raise ValueError(f"{type(self).__name__} cannot train with loss {kind!r}; it "
                             f"supports {', '.join(self.supported_losses)}")
        self._candidate_loss_kind = kind

    @property
    def supported_losses(self) -> tuple[str, ...]:
        """:attr:`SUPPORTED_LOSSES`, without ``"ce"`` where this instance cannot score the
        catalogue in one pass (the candidate as the query)."""
        if self.ranks_catalogue_in_one_pass:
            return self.SUPPORTED_LOSSES
        return tuple(kind for kind in self.SUPPORTED_LOSSES if kind != "ce")

    def loss_over_candidates(self, logits: Tensor, labels: Tensor) -> Tensor:
        """:func:`candidate_loss` of ``logits [B, C]`` with this model's
        :attr:`candidate_loss_kind` (not ``"ce"``), item count and :attr:`gbce_t`."""
        return candidate_loss(logits, labels, self.candidate_loss_kind, self.num_items,
                              self.gbce_t)

    @property
    def ranks_catalogue_in_one_pass(self) -> bool:
        """Whether :meth:`score_all` costs about one forward pass per sequence. False for
        a model whose query is the candidate (MDGR and SURGE with ``query="candidate"``),
        where it runs one pass per item: leave-one-out evaluation then scores only the
        sampled candidates (``auc/sampled``) and training selects on that
        (:func:`mdgr_graph.train.selection_metric`)."""
        return True

    def score_candidates(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_all(self, batch: Batch) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Batch) -> Tensor | None:
        """:func:`candidate_loss` of the candidate logits against the labels, or with
        ``"ce"`` :func:`catalogue_softmax_loss` of each positive candidate (by default
        Eq. 17, the mean binary cross-entropy)."""
        labels = self.candidate_labels(batch)
        if self.candidate_loss_kind == "ce":
            return self.catalogue_loss(batch, labels)
        return self.loss_over_candidates(self.score_candidates(batch), labels)

    #: True where ``loss="ce"`` can take :meth:`interest_catalogue_loss` of
    #: ``interest_queries(batch)`` over ``item_emb`` instead of :meth:`score_all`'s logits
    #: (a max-over-interests score with nothing added to it).
    catalogue_by_interests: bool = False

    def catalogue_loss(self, batch: Batch, labels: Tensor, logits: Tensor | None = None) -> Tensor:
        """:func:`catalogue_softmax_loss` of every positive of ``batch.candidates`` against
        all items, from ``logits [B, num_items + 1]`` (default: :meth:`score_all`, or
        :meth:`interest_catalogue_loss` where :attr:`catalogue_by_interests`)."""
        if logits is None and self.catalogue_by_interests:
            return self.interest_catalogue_loss(self.interest_queries(batch),
                                                self.item_emb.weight, labels, batch.candidates)
        rows, column = labels.bool().nonzero(as_tuple=True)
        logits = self.score_all(batch) if logits is None else logits
        return catalogue_softmax_loss(logits, rows, batch.candidates[rows, column])

    @staticmethod
    def interest_catalogue_loss(queries: InterestQueries, table: Tensor, labels: Tensor,
                                candidates: Tensor) -> Tensor:
        r""":func:`catalogue_softmax_loss` of a multi-interest score
        :math:`s(p) = \max_{j:\,\mathrm{mask}_j} q_j^\top p + c_j` over the item
        ``table [num_items + 1, d]`` (row 0 the padding, left out), without its
        ``[B, num_items + 1]`` logits: the log-partition comes from
        :func:`max_interest_logsumexp`, each positive's score from its own row. Equal to
        ``catalogue_loss`` of the chunked scores up to float rounding, gradient included.

        Args:
            queries: :class:`~mdgr_graph.nn.interest.InterestQueries` of the batch.
            table: item embeddings ``[num_items + 1, d]``.
            labels, candidates: ``[B, C]``; every positive of ``candidates`` is a target.
        """
        rows, column = labels.bool().nonzero(as_tuple=True)
        if rows.numel() == 0:
            raise ValueError("catalogue_softmax_loss needs at least one positive")
        targets = candidates[rows, column]
        if bool((targets < 1).any()):
            raise ValueError("a positive candidate is the padding id 0; targets must be >= 1")
        keep = queries.mask
        q = queries.queries.masked_fill(~keep.unsqueeze(-1), 0.0)
        c = queries.offsets.masked_fill(~keep, float("-inf"))
        # the log-partition of the rows with a positive only (each once)
        with_positive, row_of = rows.unique(return_inverse=True)
        lse = max_interest_logsumexp(q[with_positive], c[with_positive], table[1:])
        target = (q[rows] @ table[targets].unsqueeze(-1)).squeeze(-1)
        return (lse[row_of] - (target + c[rows]).amax(dim=1)).mean()

    def candidate_labels(self, batch: Batch) -> Tensor:
        """``batch.labels [B, C]``, checked to exist and to match ``batch.candidates``."""
        labels = getattr(batch, "labels", None)
        candidates = getattr(batch, "candidates", None)
        if labels is None or candidates is None or labels.shape != candidates.shape:
            shape = None if candidates is None else tuple(candidates.shape)
            raise ValueError(
                f"{type(self).__name__}.loss needs batch.labels shaped like batch.candidates "
                f"{shape}"
            )
        return labels

    @staticmethod
    def score_item_chunks(
        score: Callable[[Tensor], Tensor], table: Tensor, chunk_size: int = 8192
    ) -> Tensor:
        """Concatenate ``score(table[chunk]) -> [B, chunk]`` over chunks of the item table.

        Keeps full ranking at ``B x chunk_size`` scores per step; returns ``[B, len(table)]``.
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunks = [score(table[start : start + chunk_size])
                  for start in range(0, table.shape[0], chunk_size)]
        return torch.cat(chunks, dim=1)

    def _check_batch(self, batch: Batch) -> None:
        """Raise ``ValueError`` unless ``batch`` is a Batch of non-empty sequences of item
        ids in ``1..num_items``."""
        name = type(self).__name__
        for key in ("x", "batch"):
            if getattr(batch, key, None) is None:
                raise ValueError(f"{name} needs a Batch of SequenceData with field '{key}'")
        if not hasattr(batch, "num_graphs"):
            raise ValueError(f"{name} needs a torch_geometric Batch, got {type(batch).__name__}")
        x = batch.x
        if x.dim() != 1 or x.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"batch.x must be 1-D integer item ids, got {x.dtype} "
                             f"{tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError("the batch holds no interactions")
        if int(x.min()) < 1 or int(x.max()) > self.num_items:
            raise ValueError(
                f"history item ids must lie in 1..{self.num_items} (num_items="
                f"{self.num_items}), got {int(x.min())}..{int(x.max())}"
            )
        counts = torch.bincount(batch.batch, minlength=batch.num_graphs)
        if counts.numel() != batch.num_graphs or int(counts.min()) < 1:
            raise ValueError("every sequence of the batch needs at least one interaction")

    def _check_candidates(self, batch: Batch) -> None:
        """Raise ``ValueError`` unless ``batch.candidates`` is ``[B, C]`` ids in
        ``0..num_items``."""
        cand = getattr(batch, "candidates", None)
        if cand is None:
            raise ValueError(f"{type(self).__name__} needs batch.candidates [B, C]")
        if cand.dim() != 2 or cand.shape[0] != batch.num_graphs:
            raise ValueError(
                f"batch.candidates must be [B={batch.num_graphs}, C], got {tuple(cand.shape)}"
            )
        if cand.numel() and (int(cand.min()) < 0 or int(cand.max()) > self.num_items):
            raise ValueError(
                f"candidate ids must lie in 0..{self.num_items}, got "
                f"{int(cand.min())}..{int(cand.max())}"
            )

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts with and without the item embedding table (DESIGN.md)."""
        total = sum(p.numel() for p in self.parameters())
        emb = getattr(self, "item_emb", None)
        table = emb.weight.numel() if isinstance(emb, nn.Embedding) else 0
        return {"params": total, "params_without_item_table": total - table}


def check_interactions(user: Tensor, item: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """``(user, item)`` as 1-D ``long`` tensors, checked: integer ids, items in
    ``1..num_items``, each user's interactions contiguous (as
    :meth:`~mdgr_graph.data.prepare.PreparedDataset.training_interactions` returns them)."""
    user, item = torch.as_tensor(user), torch.as_tensor(item)
    if user.is_floating_point() or item.is_floating_point():
        raise ValueError(f"user and item must be integer ids, got {user.dtype} and {item.dtype}")
    user, item = user.long(), item.long()
    if user.dim() != 1 or user.shape != item.shape:
        raise ValueError(f"user and item must be 1-D of one length, got {tuple(user.shape)} "
                         f"and {tuple(item.shape)}")
    check_positive(num_items=num_items)
    if item.numel() and (int(item.min()) < 1 or int(item.max()) > num_items):
        raise ValueError(f"item ids must lie in 1..{num_items}")
    if user.numel() and 1 + int((user[1:] != user[:-1]).sum()) != int(user.unique().numel()):
        raise ValueError("each user's interactions must be contiguous, in sequence order")
    return user, item
