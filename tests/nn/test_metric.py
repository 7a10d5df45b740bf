import itertools

import pytest
import torch

from mdgr_graph.nn import batched_kmeans
from mdgr_graph.nn.metric import (
    pow2_rescale,
    top_pairs,
    weighted_cosine,
)

D = 8


def test_weighted_cosine_is_the_mean_of_head_cosines():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, D, generator=gen)
    w = torch.rand(3, D, generator=gen) + 0.5
    sim = weighted_cosine(x, w)
    for b, i, j in itertools.product(range(2), range(5), range(5)):
        heads = [torch.cosine_similarity(w_h * x[b, i], w_h * x[b, j], dim=0) for w_h in w]
        assert torch.allclose(sim[b, i, j], torch.stack(heads).mean(), atol=1e-6)
    assert torch.equal(sim, sim.transpose(1, 2))
    # a zero row (padding) is 0 with everything
    x[0, 4] = 0
    assert torch.equal(weighted_cosine(x, w)[0, 4], torch.zeros(5))


def test_top_pairs_budgets_and_ties():
    score = torch.tensor([0.5, 0.9, 0.5, 0.1, 0.7, 0.7, 0.7, 0.2])
    group = torch.tensor([0, 0, 0, 0, 2, 2, 2, 1])
    kept = top_pairs(score, group, torch.tensor([3, 5, 2]))
    # group 0: 0.9 then the tie 0.5/0.5 (listed first wins both, budget 3 keeps both);
    # group 1 keeps its only pair; group 2: the three-way tie keeps the first two listed
    assert kept.tolist() == [1, 0, 2, 7, 4, 5]
    assert top_pairs(score, group, torch.tensor([1, 0, 1])).tolist() == [1, 4]
    assert top_pairs(score, group, torch.zeros(3, dtype=torch.long)).numel() == 0


def _two_sort_top_pairs(score, group, budget):
    """The previous ``top_pairs``: two global stable sorts (score, then graph)."""
    order = torch.sort(score, descending=True, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    graph = group[order]
    counts = torch.bincount(group, minlength=budget.numel())
    rank = torch.arange(order.numel()) - (counts.cumsum(0) - counts)[graph]
    return order[rank < budget[graph]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_pairs_equals_two_stable_sorts_with_ties(dtype):
    # the one-key sort keeps the tie rule of the two sorts exactly: -0.0 == 0.0,
    # infinities, NaN (largest), subnormals, many equal scores, unsorted groups
    gen = torch.Generator().manual_seed(1)
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"),
                            float("nan"), 0.5, -2.5e-38, 1e-45, -1e-45], dtype=dtype)
    for trial in range(400):
        num = int(torch.randint(1, 6, (1,), generator=gen))
        size = int(torch.randint(0, 60, (1,), generator=gen))
        group = torch.randint(0, num, (size,), generator=gen)
        if trial % 2:
            group = group.sort().values
        pick = special[torch.randint(0, len(special), (size,), generator=gen)]
        score = torch.where(torch.rand(size, generator=gen) < 0.5, pick,
                            torch.randn(size, generator=gen, dtype=dtype))
        budget = torch.randint(0, 20, (num,), generator=gen)
        assert torch.equal(top_pairs(score, group, budget),
                           _two_sort_top_pairs(score, group, budget))


@pytest.mark.parametrize("power", [-100, -20, 0, 20, 100])
def test_pow2_rescale_is_exact(power):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, D, generator=gen)
    x[2] = 0
    scaled = pow2_rescale(x * 2.0**power, dim=-1)
    assert torch.equal(scaled, pow2_rescale(x, dim=-1))
    peak = scaled.abs().amax(dim=-1)
    assert bool(((peak >= 0.5) & (peak < 1)).logical_or(peak == 0).all())
    assert torch.equal(scaled[2], torch.zeros(D))
    # only_down leaves rows below the target untouched, bit for bit
    assert torch.equal(pow2_rescale(x, -1, 40, only_down=True), x)


@pytest.mark.parametrize("scale", [2.0**100, 2.0**-100])
def test_metric_and_kmeans_are_scale_invariant(scale):
    # exact for powers of two: the same cosines and the same labels, bit for bit
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, D, generator=gen)
    batch = torch.arange(3).repeat_interleave(10)
    w = torch.rand(4, D, generator=gen) + 0.5
    assert torch.equal(weighted_cosine(x * scale, w), weighted_cosine(x, w))
    assert torch.equal(batched_kmeans(x * scale, batch, 3), batched_kmeans(x, batch, 3))


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e36])
def test_metric_and_kmeans_finite_at_extreme_magnitudes(scale):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(30, D, generator=gen)
    batch = torch.arange(3).repeat_interleave(10)
    w = torch.rand(4, D, generator=gen) + 0.5
    sim = weighted_cosine(x * scale, w)
    assert torch.isfinite(sim).all()
    assert torch.allclose(sim, weighted_cosine(x, w), atol=1e-5)
    assert torch.equal(batched_kmeans(x * scale, batch, 3), batched_kmeans(x, batch, 3))
    # one huge node among ordinary ones: its cosines are those of its direction
    y = x.clone()
    y[7] *= scale
    assert torch.allclose(weighted_cosine(y, w), weighted_cosine(x, w), atol=1e-5)
