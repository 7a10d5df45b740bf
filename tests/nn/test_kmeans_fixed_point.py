"""The batched k-means runs Lloyd's algorithm to its fixed point, not one step of it.

On well-separated blobs one Lloyd step already gives the answer, so the blob tests of
``test_cluster.py`` cannot tell a k-means that stops after one step from a real one. On
overlapping clouds the assignment keeps moving for several steps; there the result must
be a fixed point of Lloyd's map (with each centroid the mean of its points, every point is
nearest its own centroid), equal to a plain per-graph Lloyd loop from the same
farthest-point start, and different from the result of a single step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdgr_graph.nn import batched_kmeans, cluster_nodes

K = 4
SIZES = (60, 37, 60, 52, 60, 45, 60, 23)  # one graph per seed below; padding in the batch


def overlapping_clouds(seed: int, n: int, k: int = K, d: int = 2) -> torch.Tensor:
    """``k`` Gaussian clouds whose centres (std 1) are as far apart as their spread
    (std 1): heavily overlapping, so Lloyd's algorithm needs several steps."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return centres[torch.arange(n) % k] + torch.randn(n, d, generator=gen, dtype=torch.float64)


@pytest.fixture(scope="module")
def clouds() -> tuple[torch.Tensor, torch.Tensor]:
    xs = [overlapping_clouds(seed, n) for seed, n in enumerate(SIZES)]
    batch = torch.cat([torch.full((len(x),), g) for g, x in enumerate(xs)])
    return torch.cat(xs), batch


def per_graph(t: torch.Tensor, batch: torch.Tensor) -> list[np.ndarray]:
    return [t[batch == g].numpy() for g in range(int(batch.max()) + 1)]


def centroids(x: np.ndarray, labels: np.ndarray, k: int) -> dict[int, np.ndarray]:
    return {c: x[labels == c].mean(0) for c in range(k) if np.any(labels == c)}


def lloyd_violations(x: np.ndarray, labels: np.ndarray, k: int, tol: float = 1e-9) -> int:
    """Points not nearest the mean of their own group (0 at a fixed point of Lloyd's map)."""
    means = centroids(x, labels, k)
    names = sorted(means)
    dist = np.stack([np.linalg.norm(x - means[c], axis=1) for c in names], axis=1)
    own = dist[np.arange(len(x)), [names.index(c) for c in labels]]
    return int(np.sum(own > dist.min(1) + tol))


def reference_kmeans(x: np.ndarray, k: int, max_steps: int = 1000) -> tuple[np.ndarray, int]:
    """Farthest-point start and Lloyd steps until the assignment repeats, one graph, in
    numpy (the start ``batched_kmeans`` documents). Returns the labels and the number of
    steps that changed the assignment."""
    first = int(np.argmax(np.linalg.norm(x - x.mean(0), axis=1)))
    centres = [x[first]]
    nearest = np.linalg.norm(x - x[first], axis=1)
    while len(centres) < k and nearest.max() > 0:
        i = int(np.argmax(nearest))
        centres.append(x[i])
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
    c = np.stack(centres)

    def assign(c):
        return np.argmin(np.linalg.norm(x[:, None, :] - c[None], axis=2), axis=1)

    labels = assign(c)
    for step in range(max_steps):
        for j in range(len(c)):
            if np.any(labels == j):
                c[j] = x[labels == j].mean(0)
        new = assign(c)
        if np.array_equal(new, labels):
            return labels, step
        labels = new
    raise AssertionError("reference k-means did not converge")


def test_data_needs_several_lloyd_steps(clouds):
    """The test data is fit for purpose: one step is not enough, ten are."""
    x, batch = clouds
    steps = [reference_kmeans(xg, K)[1] for xg in per_graph(x, batch)]
    assert max(steps) >= 3, steps
    assert max(steps) <= 10, steps  # converged within the default number of steps


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_result_is_a_lloyd_fixed_point(clouds, dtype):
    x, batch = clouds
    labels = batched_kmeans(x.to(dtype), batch, K)
    for xg, lab in zip(per_graph(x, batch), per_graph(labels, batch), strict=True):
        assert lloyd_violations(xg, lab, K, tol=1e-5) == 0
        assert len(np.unique(lab)) == K


def test_equals_plain_lloyd_from_the_same_start(clouds):
    x, batch = clouds
    labels = batched_kmeans(x, batch, K)
    for g, (xg, lab) in enumerate(zip(per_graph(x, batch), per_graph(labels, batch),
                                      strict=True)):
        want, _ = reference_kmeans(xg, K)
        np.testing.assert_array_equal(lab, want, err_msg=f"graph {g}")


def test_differs_from_one_lloyd_step(clouds):
    x, batch = clouds
    full = batched_kmeans(x, batch, K)
    one = batched_kmeans(x, batch, K, num_iters=1)
    assert not torch.equal(full, one)
    one_step = per_graph(one, batch)
    # one step leaves points nearer another group's mean in several graphs
    bad = [lloyd_violations(xg, lab, K) for xg, lab in zip(per_graph(x, batch), one_step,
                                                           strict=True)]
    assert sum(v > 0 for v in bad) >= 3, bad


def test_more_steps_than_needed_change_nothing(clouds):
    x, batch = clouds
    full = batched_kmeans(x, batch, K)
    assert torch.equal(batched_kmeans(x, batch, K, num_iters=50), full)
    assert torch.equal(cluster_nodes(x, batch, K), full)  # the layer's entry point


def test_each_graph_alone_gives_the_same_fixed_point(clouds):
    """Batching (padding to the longest graph) does not stop Lloyd early or late."""
    x, batch = clouds
    full = batched_kmeans(x, batch, K)
    for g in range(len(SIZES)):
        alone = batched_kmeans(x[batch == g], None, K)
        assert torch.equal(alone, full[batch == g]), g
