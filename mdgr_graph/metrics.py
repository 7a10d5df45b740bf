"""Evaluation metrics, vectorised in torch (no Python loop over users or windows).

Two protocols are covered:

* **Sampled windows** (paper protocol): each row is one window with ``C`` candidate items,
  a 0/1 label per candidate and an optional validity mask. Per-row metrics are
  :func:`auc_per_row` and :func:`recall_at_k_per_row`; :func:`window_metrics` averages them
  into ``{"auc/sampled", "recall@K/sampled"}``.
* **Full ranking** (leave-one-out): each row scores every item, column ``0`` is padding and
  is never ranked, one target per row, seen items excluded. :func:`rank_of_target` gives the
  0-based rank; :func:`hit_rate_at_k`, :func:`ndcg_at_k`, :func:`recall_at_k` and :func:`mrr`
  turn ranks into per-user values; :func:`full_ranking_metrics` averages them.

NaN policy: a per-row metric that is undefined for a row (AUC of a row without a positive
or without a negative, recall of a row without a positive) is ``NaN``. Every averaging
function here (:func:`mean_ignore_nan`, :func:`window_metrics`, :class:`MetricAccumulator`)
skips NaN rows; a mean over no defined row is ``NaN``.

Per-row metrics are returned as ``float64`` tensors on the input device.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = [
    "MetricAccumulator",
    "auc_per_row",
    "full_ranking_metrics",
    "full_ranking_per_row",
    "hit_rate_at_k",
    "mean_ignore_nan",
    "mrr",
    "ndcg_at_k",
    "rank_of_target",
    "recall_at_k",
    "recall_at_k_per_row",
    "window_metrics",
    "window_metrics_per_row",
]

_DTYPE = torch.float64


# --------------------------------------------------------------------------- validation


def _check_scores_2d(scores: Tensor, name: str = "scores") -> None:
    if not isinstance(scores, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"{name} must be 2-D [B, C], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {scores.dtype}")


def _as_bool(x: Tensor, name: str, shape: torch.Size) -> Tensor:
    """Validate ``x`` (bool or 0/1 numbers) against ``shape`` and return it as bool."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.shape != shape:
        raise ValueError(
            f"{name} must have the same shape as scores {tuple(shape)}, got {tuple(x.shape)}"
        )
    if x.dtype == torch.bool:
        return x
    if x.numel() > 0 and bool(((x != 0) & (x != 1)).any()):
        raise ValueError(f"{name} must be boolean or contain only 0/1 values")
    return x != 0


def _check_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"{name} must be an int >= 1, got {k!r}")
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return k


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if len(ks) == 0:
        raise ValueError("ks must contain at least one cutoff k >= 1")
    return tuple(_check_k(k, "every k in ks") for k in ks)


def _check_no_nan(scores: Tensor, valid: Tensor) -> None:
    if bool((torch.isnan(scores) & valid).any()):
        raise ValueError("scores contain NaN at ranked (unmasked) positions")


def _check_rank(rank: Tensor) -> None:
    if not isinstance(rank, Tensor):
        raise TypeError(f"rank must be a torch.Tensor, got {type(rank).__name__}")
    if rank.dim() != 1:
        raise ValueError(f"rank must be 1-D [B], got shape {tuple(rank.shape)}")
    if rank.is_floating_point() or rank.dtype == torch.bool or rank.is_complex():
        raise TypeError(f"rank must be an integer tensor, got dtype {rank.dtype}")
    if rank.numel() > 0 and bool((rank < 0).any()):
        raise ValueError("rank must be >= 0 (0-based ranks)")


# --------------------------------------------------------------------------- averaging


def mean_ignore_nan(values: Tensor) -> float:
    """Mean of ``values`` over all non-NaN entries; ``NaN`` if there is none."""
    values = values.detach().reshape(-1).to(_DTYPE)
    keep = ~torch.isnan(values)
    n = int(keep.sum())
    if n == 0:
        return math.nan
    return float(values[keep].sum()) / n


# --------------------------------------------------------------------------- sampled windows


def auc_per_row(scores: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """ROC AUC of every row (Mann–Whitney U, average ranks for ties).

    With ``P``/``N`` the valid positives/negatives of a row (``n_pos``, ``n_neg`` of them)::

        AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos * n_neg)
            = (#{(p, n): s_p > s_n} + 0.5 * #{(p, n): s_p == s_n}) / (n_pos * n_neg)

    where ``R_pos`` is the sum of the (tie-averaged, 1-based) ranks of the positives. This is
    exactly ``sklearn.metrics.roc_auc_score`` on the row's valid entries, ties included. It is
    computed with one sort and a batched ``searchsorted`` per row: ``O(B C log C)``.

    Args:
        scores: ``[B, C]`` float scores, higher = more relevant.
        labels: ``[B, C]`` bool or 0/1 relevance.
        mask: optional ``[B, C]`` bool (or 0/1); ``False`` entries are ignored.

    Returns:
        ``[B]`` float64 AUC; ``NaN`` for rows without a valid positive or a valid negative.
    """
    _check_scores_2d(scores)
    pos = _as_bool(labels, "labels", scores.shape)
    valid = torch.ones_like(pos) if mask is None else _as_bool(mask, "mask", scores.shape)
    _check_no_nan(scores, valid)
    pos = pos & valid
    neg = ~pos & valid
    n_pos = pos.sum(dim=1).to(_DTYPE)
    n_neg = neg.sum(dim=1).to(_DTYPE)
    batch, num_cand = scores.shape
    if num_cand == 0:
        return torch.full((batch,), math.nan, dtype=_DTYPE, device=scores.device)

    s = scores.detach().contiguous()
    # Sorted negative scores per row; non-negatives padded with +inf (they sort last). For a
    # query s, count(neg < s) never reaches a pad, count(neg <= s) does only when s == +inf,
    # where clamping to n_neg removes the pads again.
    inf = torch.tensor(math.inf, dtype=s.dtype, device=s.device)
    neg_sorted, _ = torch.where(neg, s, inf).sort(dim=1)
    n_less = torch.searchsorted(neg_sorted, s, right=False).to(_DTYPE)
    n_leq = torch.searchsorted(neg_sorted, s, right=True).to(_DTYPE)
    n_leq = torch.minimum(n_leq, n_neg.unsqueeze(1))
    pair_wins = n_less + 0.5 * (n_leq - n_less)  # per candidate, vs all valid negatives
    u = torch.where(pos, pair_wins, torch.zeros_like(pair_wins)).sum(dim=1)

    denom = n_pos * n_neg
    nan = torch.full_like(u, math.nan)
    return torch.where(denom > 0, u / denom.clamp_min(1.0), nan)


def _stable_order(scores: Tensor, valid: Tensor) -> Tensor:
    """Column order per row: valid entries first, by descending score, ties by column index."""
    order = torch.sort(scores.detach(), dim=1, descending=True, stable=True).indices
    valid_in_order = valid.gather(1, order).to(torch.uint8)
    # Second stable pass on the validity key keeps the score order inside each group.
    regroup = torch.sort(valid_in_order, dim=1, descending=True, stable=True).indices
    return order.gather(1, regroup)


def recall_at_k_per_row(
    scores: Tensor, labels: Tensor, k: int, mask: Tensor | None = None
) -> Tensor:
    """Recall@k of every row: ``|top-k(valid) ∩ positives| / |valid positives|``.

    Plain definition (the denominator is the number of positives, not ``min(k, #pos)``), so
    a row with more than ``k`` positives cannot reach 1. The top-k list contains valid
    (``mask``-True) candidates only, sorted by descending score; ties, including at the
    k-th place, are broken by candidate order (lower column index first, i.e.
    ``torch.sort(descending=True, stable=True)``). If a row has fewer than ``k`` valid
    candidates, all of them are in its list.

    Args:
        scores: ``[B, C]`` float scores.
        labels: ``[B, C]`` bool or 0/1 relevance.
        k: cutoff, ``k >= 1``.
        mask: optional ``[B, C]`` bool (or 0/1); ``False`` entries are never ranked.

    Returns:
        ``[B]`` float64 recall; ``NaN`` for rows without a valid positive.
    """
    _check_scores_2d(scores)
    k = _check_k(k)
    pos = _as_bool(labels, "labels", scores.shape)
    valid = torch.ones_like(pos) if mask is None else _as_bool(mask, "mask", scores.shape)
    _check_no_nan(scores, valid)
    pos = pos & valid
    n_pos = pos.sum(dim=1).to(_DTYPE)
    kk = min(k, scores.shape[1])
    order = _stable_order(scores, valid)[:, :kk]
    hits = pos.gather(1, order).sum(dim=1).to(_DTYPE)  # invalid entries are never positive
    nan = torch.full_like(hits, math.nan)
    return torch.where(n_pos > 0, hits / n_pos.clamp_min(1.0), nan)


def window_metrics_per_row(
    scores: Tensor, labels: Tensor, ks: Sequence[int] = (50,), mask: Tensor | None = None
) -> dict[str, Tensor]:
    """Per-window values of :func:`window_metrics` (keys ``auc/sampled``, ``recall@K/sampled``)."""
    ks = _check_ks(ks)
    out = {"auc/sampled": auc_per_row(scores, labels, mask)}
    for k in ks:
        out[f"recall@{k}/sampled"] = recall_at_k_per_row(scores, labels, k, mask)
    return out


def window_metrics(
    scores: Tensor, labels: Tensor, ks: Sequence[int] = (50,), mask: Tensor | None = None
) -> dict[str, float]:
    """Paper protocol summary over windows (rows), NaN rows skipped.

    Returns ``{"auc/sampled": mean_b AUC_b, "recall@K/sampled": mean_b Recall@K_b, ...}``
    for every ``K`` in ``ks``.
    """
    per_row = window_metrics_per_row(scores, labels, ks, mask)
    return {name: mean_ignore_nan(v) for name, v in per_row.items()}


# --------------------------------------------------------------------------- full ranking


def rank_of_target(scores: Tensor, target: Tensor, exclude: Tensor | None = None) -> Tensor:
    """0-based rank of each row's target among all rankable items (pessimistic ties).

    Rankable items of row ``b`` are columns ``1 .. num_items-1`` not in ``exclude[b]``
    (column ``0`` is padding and is never ranked); the target is always rankable, even if
    ``exclude`` marks it. Excluded items are removed from the ranking (as if scored
    ``-inf`` and placed below every rankable item)::

        rank_b = #{j rankable, j != t: s_j > s_t} + #{j rankable, j != t: s_j == s_t}

    i.e. ties with the target count against it (pessimistic), so constant scores never
    look good.

    Args:
        scores: ``[B, num_items]`` float scores over all items.
        target: ``[B]`` integer item ids in ``[1, num_items)``.
        exclude: optional ``[B, num_items]`` bool (or 0/1), True = already seen.

    Returns:
        ``[B]`` int64 ranks in ``[0, num_items - 2]``.
    """
    _check_scores_2d(scores)
    batch, num_items = scores.shape
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.shape != (batch,):
        raise ValueError(f"target must have shape [B]=({batch},), got {tuple(target.shape)}")
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must be an integer tensor, got dtype {target.dtype}")
    if batch > 0 and bool(((target < 1) | (target >= num_items)).any()):
        raise ValueError(
            f"target ids must be in [1, {num_items}) (0 is padding), got values in "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    target = target.to(torch.long)
    cols = torch.arange(num_items, device=scores.device)
    is_target = cols.unsqueeze(0) == target.unsqueeze(1)
    ranked = (
        torch.ones_like(is_target)
        if exclude is None
        else ~_as_bool(exclude, "exclude", scores.shape)
    )
    ranked = (ranked | is_target) & (cols != 0).unsqueeze(0)
    _check_no_nan(scores, ranked)
    s = scores.detach()
    s_t = s.gather(1, target.unsqueeze(1))
    others = ranked & ~is_target
    return (others & (s >= s_t)).sum(dim=1).to(torch.long)


def rank_in_list(items: Tensor, target: Tensor) -> Tensor:
    """0-based position of each row's ``target`` in its ranked list ``items [B, n]`` (best
    first), or ``n`` when the list misses it, as ``[B]`` long: the ``rank`` of
    :func:`hit_rate_at_k` and friends for a retrieved top-n list (``k <= n``; MRR counts a
    miss as rank ``n``)."""
    if items.dim() != 2 or target.shape != (items.size(0),):
        raise ValueError(f"items must be [B, n] and target [B], got {tuple(items.shape)} "
                         f"and {tuple(target.shape)}")
    found = items == target.unsqueeze(1)
    first = found.to(torch.int8).argmax(dim=1)
    return torch.where(found.any(dim=1), first, torch.full_like(first, items.size(1)))


def hit_rate_at_k(rank: Tensor, k: int) -> Tensor:
    """HR@k per user: ``1[rank < k]`` (``rank`` 0-based), float64 ``[B]``."""
    _check_rank(rank)
    k = _check_k(k)
    return (rank < k).to(_DTYPE)


def ndcg_at_k(rank: Tensor, k: int) -> Tensor:
    """NDCG@k per user with a single target: ``1 / log2(rank + 2)`` if ``rank < k`` else 0."""
    _check_rank(rank)
    k = _check_k(k)
    gain = 1.0 / torch.log2(rank.to(_DTYPE) + 2.0)
    return torch.where(rank < k, gain, torch.zeros_like(gain))


def recall_at_k(rank: Tensor, k: int) -> Tensor:
    """Recall@k per user. With a single target, ``hits / 1`` equals :func:`hit_rate_at_k`."""
    return hit_rate_at_k(rank, k)


def mrr(rank: Tensor) -> Tensor:
    """Reciprocal rank per user: ``1 / (rank + 1)`` (no cutoff), float64 ``[B]``."""
    _check_rank(rank)
    return 1.0 / (rank.to(_DTYPE) + 1.0)


def full_ranking_per_row(rank: Tensor, ks: Sequence[int] = (10, 50)) -> dict[str, Tensor]:
    """Per-user values of :func:`full_ranking_metrics` (same keys)."""
    ks = _check_ks(ks)
    _check_rank(rank)
    out: dict[str, Tensor] = {}
    for k in ks:
        out[f"hr@{k}/full"] = hit_rate_at_k(rank, k)
        out[f"ndcg@{k}/full"] = ndcg_at_k(rank, k)
        out[f"recall@{k}/full"] = recall_at_k(rank, k)
    out["mrr/full"] = mrr(rank)
    return out


def full_ranking_metrics(rank: Tensor, ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """Means over users of HR@k, NDCG@k, Recall@k (every k in ``ks``) and MRR.

    Keys: ``hr@K/full``, ``ndcg@K/full``, ``recall@K/full`` for each ``K``, and ``mrr/full``.
    """
    return {name: mean_ignore_nan(v) for name, v in full_ranking_per_row(rank, ks).items()}


# --------------------------------------------------------------------------- accumulator


class MetricAccumulator:
    """Streaming mean of per-row metric values over mini-batches (torchmetrics style).

    ``update(name, values)`` adds the non-NaN entries of ``values`` to a running sum and
    count (kept as tensors, so no device sync per batch); ``compute()`` returns
    ``sum / count`` per name (``NaN`` when the count is 0). ``state()`` exports
    ``{name: (sum, count)}`` and ``merge(state)`` adds one in, so distributed ranks can
    all-reduce sums and counts and get the exact global mean.

    Example::

        acc = MetricAccumulator()
        for batch in loader:
            rank = rank_of_target(model(batch), batch.target, batch.seen)
            acc.update_many(full_ranking_per_row(rank))
        results = acc.compute()
    """

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}

    def update(self, name: str, values: Tensor) -> None:
        """Add per-row ``values`` (any shape, NaN skipped) to metric ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric name must be a non-empty str, got {name!r}")
        if not isinstance(values, Tensor):
            raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
        v = values.detach().reshape(-1).to(_DTYPE)
        keep = ~torch.isnan(v)
        s = torch.where(keep, v, torch.zeros_like(v)).sum()
        c = keep.sum()
        if name in self._sums:
            self._sums[name] = self._sums[name] + s.to(self._sums[name].device)
            self._counts[name] = self._counts[name] + c.to(self._counts[name].device)
        else:
            self._sums[name] = s
            self._counts[name] = c

    def update_many(self, values: Mapping[str, Tensor]) -> None:
        """``update(name, v)`` for every item of ``values``."""
        for name, v in values.items():
            self.update(name, v)

    def state(self) -> dict[str, tuple[float, int]]:
        """``{name: (sum, count)}`` of the non-NaN values seen so far."""
        return {name: (float(self._sums[name]), int(self._counts[name])) for name in self._sums}

    def merge(self, other_state: Mapping[str, tuple[float, int]] | MetricAccumulator) -> None:
        """Add another accumulator (or its :meth:`state`) into this one."""
        items: Iterable[tuple[str, tuple[float, int]]]
        if isinstance(other_state, MetricAccumulator):
            items = other_state.state().items()
        else:
            items = other_state.items()
        for name, pair in items:
            if len(pair) != 2:
                raise ValueError(f"state of {name!r} must be a (sum, count) pair, got {pair!r}")
            total, count = float(pair[0]), int(pair[1])
            if count < 0:
                raise ValueError(f"count of {name!r} must be >= 0, got {count}")
            s = torch.tensor(total, dtype=_DTYPE)
            c = torch.tensor(count, dtype=torch.long)
            if name in self._sums:
                self._sums[name] = self._sums[name] + s.to(self._sums[name].device)
                self._counts[name] = self._counts[name] + c.to(self._counts[name].device)
            else:
                self._sums[name], self._counts[name] = s, c

    def compute(self) -> dict[str, float]:
        """Mean per metric name: ``sum / count`` (``NaN`` if no non-NaN value was seen)."""
        out: dict[str, float] = {}
        for name, (total, count) in self.state().items():
            out[name] = total / count if count > 0 else math.nan
        return out

    def reset(self) -> None:
        """Forget every metric."""
        self._sums.clear()
        self._counts.clear()

    def __len__(self) -> int:
        return len(self._sums)

    def __contains__(self, name: object) -> bool:
        return name in self._sums
