"""Tests for mdgr_graph.metrics against sklearn and naive per-row Python loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mdgr_graph.metrics import (
    MetricAccumulator,
    auc_per_row,
    full_ranking_metrics,
    full_ranking_per_row,
    hit_rate_at_k,
    mean_ignore_nan,
    mrr,
    ndcg_at_k,
    rank_of_target,
    recall_at_k,
    recall_at_k_per_row,
    window_metrics,
    window_metrics_per_row,
)

# --------------------------------------------------------------------------- helpers

_KINDS = ["continuous", "rounded", "coarse", "integer"]


def _make_scores(kind: str, gen: torch.Generator, shape: tuple[int, int]) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "continuous":
        return x
    if kind == "rounded":  # heavy ties
        return torch.round(x * 10) / 10
    if kind == "coarse":  # very heavy ties
        return torch.round(x)
    if kind == "integer":
        return torch.randint(0, 4, shape, generator=gen).to(torch.float32)
    raise AssertionError(kind)


def _sklearn_auc_rows(scores, labels, mask=None) -> np.ndarray:
    s, y = scores.numpy(), labels.numpy().astype(bool)
    m = np.ones_like(y) if mask is None else mask.numpy().astype(bool)
    out = []
    for b in range(s.shape[0]):
        yb, sb = y[b][m[b]], s[b][m[b]]
        if yb.all() or not yb.any():
            out.append(math.nan)
        else:
            out.append(roc_auc_score(yb, sb))
    return np.asarray(out)


def _naive_recall(scores, labels, k, mask=None) -> list[float]:
    out = []
    for b in range(scores.shape[0]):
        cand = [j for j in range(scores.shape[1]) if mask is None or bool(mask[b, j])]
        cand.sort(key=lambda j: (-float(scores[b, j]), j))
        n_pos = sum(int(labels[b, j]) for j in cand)
        if n_pos == 0:
            out.append(math.nan)
            continue
        out.append(sum(int(labels[b, j]) for j in cand[:k]) / n_pos)
    return out


def _naive_rank(scores, target, exclude) -> list[int]:
    ranks = []
    for b in range(scores.shape[0]):
        t = int(target[b])
        items = [
            j
            for j in range(1, scores.shape[1])
            if j == t or exclude is None or not bool(exclude[b, j])
        ]
        # Pessimistic: the target goes after every other item with the same score.
        items.sort(key=lambda j: (-float(scores[b, j]), j == t))
        ranks.append(items.index(t))
    return ranks


def _assert_nan_equal(actual: torch.Tensor, expected) -> None:
    np.testing.assert_allclose(actual.numpy(), np.asarray(expected, dtype=float), atol=1e-12)


# --------------------------------------------------------------------------- AUC


@pytest.mark.parametrize("kind", ["continuous", "rounded", "coarse", "integer"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_auc_matches_sklearn(kind: str, use_mask: bool) -> None:
    gen = torch.Generator().manual_seed(_KINDS.index(kind) * 2 + use_mask)
    shape = (40, 23)
    scores = _make_scores(kind, gen, shape)
    labels = (torch.rand(shape, generator=gen) < 0.3).long()
    labels[0] = 0  # no positive
    labels[1] = 1  # no negative
    mask = (torch.rand(shape, generator=gen) < 0.8) if use_mask else None
    if mask is not None:
        mask[2] = False  # empty row
    got = auc_per_row(scores, labels, mask)
    assert got.shape == (40,) and got.dtype == torch.float64
    expected = _sklearn_auc_rows(scores, labels, mask)
    _assert_nan_equal(got, expected)
    assert torch.isnan(got[:2]).all()
    assert np.isfinite(expected).sum() >= 30  # the comparison is not vacuous


def test_auc_known_values_and_ties() -> None:
    labels = torch.tensor([[1, 1, 0, 0]] * 4)
    scores = torch.tensor(
        [[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 2.0, 0.0]]
    )
    got = auc_per_row(scores, labels)
    # Row 3: pairs (2>2 tie, 2>0), (1<2, 1>0) -> (0.5 + 1 + 0 + 1) / 4.
    torch.testing.assert_close(got, torch.tensor([1.0, 0.0, 0.5, 0.625], dtype=torch.float64))


def test_auc_bool_labels_and_infinite_scores() -> None:
    gen = torch.Generator().manual_seed(3)
    scores = torch.randn(16, 12, generator=gen)
    scores[:, 0] = math.inf
    scores[:, 1] = -math.inf
    scores[::2, 2] = math.inf
    labels = torch.rand(16, 12, generator=gen) < 0.5
    labels[:, 0] = True
    labels[:, 1] = False
    got = auc_per_row(scores, labels)
    torch.testing.assert_close(got, auc_per_row(scores, labels.long()))
    # Brute-force pairwise definition (handles +-inf ties exactly).
    for b in range(16):
        p = scores[b][labels[b]]
        n = scores[b][~labels[b]]
        wins = (p[:, None] > n[None, :]).double() + 0.5 * (p[:, None] == n[None, :]).double()
        assert got[b].item() == pytest.approx(wins.mean().item(), abs=1e-12)


def test_auc_mask_equals_dropping_columns() -> None:
    gen = torch.Generator().manual_seed(5)
    scores = torch.randn(8, 10, generator=gen)
    labels = torch.rand(8, 10, generator=gen) < 0.4
    labels[:, :2] = torch.tensor([True, False])
    mask = torch.ones(8, 10, dtype=torch.bool)
    mask[:, 6:] = False
    scores_junk = scores.clone()
    scores_junk[:, 6:] = torch.nan  # masked entries may hold anything, NaN included
    torch.testing.assert_close(
        auc_per_row(scores_junk, labels, mask), auc_per_row(scores[:, :6], labels[:, :6])
    )


def test_auc_empty_candidates() -> None:
    got = auc_per_row(torch.zeros(3, 0), torch.zeros(3, 0, dtype=torch.bool))
    assert got.shape == (3,) and torch.isnan(got).all()


# --------------------------------------------------------------------------- recall (sampled)


@pytest.mark.parametrize("kind", ["continuous", "rounded", "integer"])
@pytest.mark.parametrize("k", [1, 3, 7, 50])
def test_recall_matches_naive_loop(kind: str, k: int) -> None:
    gen = torch.Generator().manual_seed(100 * _KINDS.index(kind) + k)
    shape = (30, 15)
    scores = _make_scores(kind, gen, shape)
    labels = (torch.rand(shape, generator=gen) < 0.3).long()
    labels[0] = 0
    mask = torch.rand(shape, generator=gen) < 0.7
    for m in (None, mask):
        got = recall_at_k_per_row(scores, labels, k, m)
        _assert_nan_equal(got, _naive_recall(scores, labels, k, m))


def test_recall_ties_broken_by_candidate_order() -> None:
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    labels = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 1]])
    got = recall_at_k_per_row(scores, labels, k=2)
    torch.testing.assert_close(got, torch.tensor([0.5, 0.5], dtype=torch.float64))
    got1 = recall_at_k_per_row(scores, labels, k=1)
    torch.testing.assert_close(got1, torch.tensor([0.0, 0.5], dtype=torch.float64))


def test_recall_masked_entries_never_ranked() -> None:
    # Masked columns 0-1 have the best scores (or the same -inf as a valid positive, earlier
    # in column order); they must not take a top-k slot.
    scores = torch.tensor([[9.0, 9.0, 0.5, 0.1, 0.2], [-math.inf, -math.inf, 0.0, -math.inf, 1.0]])
    labels = torch.tensor([[1, 1, 0, 1, 0], [0, 0, 0, 1, 0]])
    mask = torch.tensor([[False, False, True, True, True], [False, False, True, True, True]])
    got = recall_at_k_per_row(scores, labels, 2, mask)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.0], dtype=torch.float64))
    got = recall_at_k_per_row(scores, labels, 3, mask)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0], dtype=torch.float64))
    # Positives under the mask do not count in the denominator.
    torch.testing.assert_close(
        recall_at_k_per_row(scores, labels, 100, mask), torch.ones(2, dtype=torch.float64)
    )


def test_recall_plain_denominator() -> None:
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    labels = torch.tensor([[1, 1, 1, 0]])
    # 2 hits out of 3 positives, not out of min(k, #pos) = 2.
    assert recall_at_k_per_row(scores, labels, 2).item() == pytest.approx(2 / 3)


def test_window_metrics() -> None:
    gen = torch.Generator().manual_seed(11)
    scores = torch.randn(20, 60, generator=gen)
    labels = torch.rand(20, 60, generator=gen) < 0.2
    labels[3] = False  # NaN row, skipped
    out = window_metrics(scores, labels)
    assert set(out) == {"auc/sampled", "recall@50/sampled"}
    auc = _sklearn_auc_rows(scores, labels)
    assert out["auc/sampled"] == pytest.approx(np.nanmean(auc), abs=1e-12)
    rec = np.asarray(_naive_recall(scores, labels, 50))
    assert out["recall@50/sampled"] == pytest.approx(np.nanmean(rec), abs=1e-12)
    out2 = window_metrics(scores, labels, ks=(5, 10))
    assert set(out2) == {"auc/sampled", "recall@5/sampled", "recall@10/sampled"}
    per_row = window_metrics_per_row(scores, labels, ks=(5, 10))
    assert all(v.shape == (20,) for v in per_row.values())


def test_mean_ignore_nan() -> None:
    assert mean_ignore_nan(torch.tensor([1.0, math.nan, 3.0])) == pytest.approx(2.0)
    assert math.isnan(mean_ignore_nan(torch.tensor([math.nan, math.nan])))
    assert math.isnan(mean_ignore_nan(torch.tensor([])))


# --------------------------------------------------------------------------- full ranking


def _full_ranking_case(seed: int, batch: int = 64, num_items: int = 40):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (batch, num_items), generator=gen).to(torch.float32)  # ties
    scores[:, 0] = 100.0  # padding column scores best but is never ranked
    target = torch.randint(1, num_items, (batch,), generator=gen)
    exclude = torch.rand(batch, num_items, generator=gen) < 0.3
    exclude[::3, :] |= torch.nn.functional.one_hot(target, num_items).bool()[::3]  # target seen
    return scores, target, exclude


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_of_target_matches_naive(seed: int) -> None:
    scores, target, exclude = _full_ranking_case(seed)
    got = rank_of_target(scores, target, exclude)
    assert got.dtype == torch.long and got.shape == target.shape
    assert got.tolist() == _naive_rank(scores, target, exclude)
    got_none = rank_of_target(scores, target)
    assert got_none.tolist() == _naive_rank(scores, target, None)


def test_rank_pessimistic_ties_and_exclusion() -> None:
    scores = torch.tensor([[50.0, 1.0, 1.0, 1.0, 0.0], [50.0, 3.0, 2.0, 1.0, 2.0]])
    target = torch.tensor([2, 2])
    exclude = torch.tensor([[False, False, True, False, False], [True, True, True, False, False]])
    # Row 0: target (excluded, still ranked) ties with items 1 and 3 -> rank 2.
    # Row 1: item 1 excluded, item 4 ties with the target -> rank 1.
    assert rank_of_target(scores, target, exclude).tolist() == [2, 1]
    # Constant scores are the worst case, never the best.
    const = torch.zeros(1, 10)
    assert rank_of_target(const, torch.tensor([4])).tolist() == [8]


def test_per_user_metrics_formulas() -> None:
    rank = torch.tensor([0, 1, 9, 10, 49, 50, 1000])
    torch.testing.assert_close(
        hit_rate_at_k(rank, 10), torch.tensor([1, 1, 1, 0, 0, 0, 0], dtype=torch.float64)
    )
    torch.testing.assert_close(recall_at_k(rank, 50), hit_rate_at_k(rank, 50))
    expected_ndcg = [1 / math.log2(r + 2) if r < 10 else 0.0 for r in rank.tolist()]
    _assert_nan_equal(ndcg_at_k(rank, 10), expected_ndcg)
    _assert_nan_equal(mrr(rank), [1 / (r + 1) for r in rank.tolist()])
    assert ndcg_at_k(torch.tensor([0]), 1).item() == 1.0


def test_full_ranking_metrics_vs_naive() -> None:
    scores, target, exclude = _full_ranking_case(7, batch=50)
    rank = rank_of_target(scores, target, exclude)
    out = full_ranking_metrics(rank, ks=(10, 20))
    assert set(out) == {
        "hr@10/full", "ndcg@10/full", "recall@10/full",
        "hr@20/full", "ndcg@20/full", "recall@20/full", "mrr/full",
    }  # fmt: skip
    naive = _naive_rank(scores, target, exclude)
    for k in (10, 20):
        assert out[f"hr@{k}/full"] == pytest.approx(np.mean([r < k for r in naive]))
        assert out[f"recall@{k}/full"] == out[f"hr@{k}/full"]
        nd = [1 / math.log2(r + 2) if r < k else 0.0 for r in naive]
        assert out[f"ndcg@{k}/full"] == pytest.approx(np.mean(nd))
    assert out["mrr/full"] == pytest.approx(np.mean([1 / (r + 1) for r in naive]))
    assert set(full_ranking_metrics(rank)) >= {"hr@50/full", "ndcg@50/full", "recall@50/full"}


# --------------------------------------------------------------------------- accumulator


def test_accumulator_minibatches_equal_whole_batch() -> None:
    scores, target, exclude = _full_ranking_case(3, batch=97)
    w_scores = torch.randn(97, 30, generator=torch.Generator().manual_seed(1))
    w_labels = torch.rand(97, 30, generator=torch.Generator().manual_seed(2)) < 0.2
    w_labels[::10] = False  # NaN rows for AUC/recall
    whole = full_ranking_metrics(rank_of_target(scores, target, exclude))
    whole.update(window_metrics(w_scores, w_labels, ks=(5, 50)))

    perm = torch.randperm(97, generator=torch.Generator().manual_seed(4))
    acc = MetricAccumulator()
    for idx in perm.split(13):
        rank = rank_of_target(scores[idx], target[idx], exclude[idx])
        acc.update_many(full_ranking_per_row(rank))
        acc.update_many(window_metrics_per_row(w_scores[idx], w_labels[idx], ks=(5, 50)))
    got = acc.compute()
    assert set(got) == set(whole)
    for name, value in whole.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_accumulator_state_merge_reset() -> None:
    a, b = MetricAccumulator(), MetricAccumulator()
    a.update("x", torch.tensor([1.0, 2.0, math.nan]))
    b.update("x", torch.tensor([3.0]))
    b.update("y", torch.tensor([math.nan]))
    assert a.state() == {"x": (3.0, 2)}
    assert b.state() == {"x": (3.0, 1), "y": (0.0, 0)}

    # Simulated all-reduce: sum the states of two ranks.
    merged = MetricAccumulator()
    merged.merge(a.state())
    merged.merge(b)
    out = merged.compute()
    assert out["x"] == pytest.approx(2.0)
    assert math.isnan(out["y"])
    assert "x" in merged and len(merged) == 2

    merged.reset()
    assert merged.compute() == {} and len(merged) == 0


# --------------------------------------------------------------------------- validation


def test_errors() -> None:
    s = torch.zeros(2, 3)
    y = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must have the same shape as scores"):
        auc_per_row(s, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"mask must have the same shape"):
        recall_at_k_per_row(s, y, 1, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"scores must be 2-D"):
        auc_per_row(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match=r"k must be >= 1, got 0"):
        recall_at_k_per_row(s, y, 0)
    with pytest.raises(ValueError, match=r"k must be an int"):
        hit_rate_at_k(torch.tensor([0]), 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"k must be >= 1, got -1"):
        ndcg_at_k(torch.tensor([0]), -1)
    with pytest.raises(ValueError, match=r"every k in ks must be >= 1"):
        full_ranking_metrics(torch.tensor([0]), ks=(10, 0))
    with pytest.raises(ValueError, match=r"ks must contain at least one"):
        window_metrics(s, y, ks=())
    with pytest.raises(ValueError, match=r"only 0/1"):
        auc_per_row(s, torch.full((2, 3), 2))
    with pytest.raises(ValueError, match=r"NaN"):
        auc_per_row(torch.full((2, 3), math.nan), y)
    with pytest.raises(ValueError, match=r"target must have shape \[B\]"):
        rank_of_target(s, torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match=r"target ids must be in \[1, 3\)"):
        rank_of_target(s, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"target ids must be in \[1, 3\)"):
        rank_of_target(s, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match=r"exclude must have the same shape"):
        rank_of_target(s, torch.tensor([1, 2]), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"rank must be 1-D"):
        mrr(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"rank must be >= 0"):
        mrr(torch.tensor([-1]))
    with pytest.raises(TypeError, match=r"rank must be an integer tensor"):
        mrr(torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"\(sum, count\) pair"):
        MetricAccumulator().merge({"x": (1.0,)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"non-empty str"):
        MetricAccumulator().update("", torch.tensor([1.0]))
