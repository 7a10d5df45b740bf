import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from mdgr_graph.nn import batched_kmeans, cluster_nodes, sklearn_cluster


def make_blobs(sizes, k, d=8, seed=0):
    """Well-separated Gaussian blobs per graph: centres ~ N(0, 10^2), points std 0.3."""
    gen = torch.Generator().manual_seed(seed)
    xs, truth, batch = [], [], []
    for g, n in enumerate(sizes):
        centres = 10.0 * torch.randn(k, d, generator=gen)
        label = torch.arange(n) % k
        xs.append(centres[label] + 0.3 * torch.randn(n, d, generator=gen))
        truth.append(label)
        batch.append(torch.full((n,), g))
    return torch.cat(xs), torch.cat(truth), torch.cat(batch)


def inertia(x, labels):
    total = 0.0
    for c in labels.unique():
        pts = x[labels == c]
        total += (pts - pts.mean(0)).pow(2).sum().item()
    return total


def split(t, batch):
    return [t[batch == g] for g in range(int(batch.max()) + 1)]


def test_batched_kmeans_matches_sklearn_on_blobs():
    sizes, k = [40, 60, 24, 80], 4
    x, _, batch = make_blobs(sizes, k)
    ours = batched_kmeans(x, batch, k)
    ref = sklearn_cluster(x, batch, k, "kmeans")
    assert ours.shape == (x.size(0),) and ours.dtype == torch.long
    for xg, a, b in zip(split(x, batch), split(ours, batch), split(ref, batch), strict=True):
        assert adjusted_rand_score(b.numpy(), a.numpy()) >= 0.95
        assert inertia(xg, a) <= 1.05 * inertia(xg, b) + 1e-6


@pytest.mark.parametrize("method", ["ward", "sklearn-kmeans", "birch", "kmeans"])
def test_all_methods_recover_blobs(method):
    sizes, k = [30, 45], 3
    x, truth, batch = make_blobs(sizes, k, seed=1)
    labels = cluster_nodes(x, batch, k, method=method)
    assert labels.shape == (x.size(0),)
    assert int(labels.min()) >= 0 and int(labels.max()) < k
    for t, lab in zip(split(truth, batch), split(labels, batch), strict=True):
        assert adjusted_rand_score(t.numpy(), lab.numpy()) >= 0.95


@pytest.mark.parametrize("method", ["ward", "sklearn-kmeans", "birch", "kmeans"])
def test_degenerate_graphs(method):
    # graph 0: one node; graph 1: 3 nodes (< k); graph 2: identical rows;
    # graph 3: 12 rows with 2 distinct values (repeated items).
    # (graph 1 is spread out: Birch merges points closer than its threshold of 0.5)
    k = 5
    gen = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(1, 4, generator=gen),
            10.0 * torch.randn(3, 4, generator=gen),
            torch.ones(6, 4),
            torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 2.0]]).repeat(6, 1),
        ]
    )
    batch = torch.tensor([0] + [1] * 3 + [2] * 6 + [3] * 12)
    labels = cluster_nodes(x, batch, k, method=method)
    parts = split(labels, batch)
    assert parts[0].tolist() == [0]
    assert parts[1].unique().numel() == 3
    assert parts[2].unique().tolist() == [0]
    assert parts[3].unique().numel() == 2
    assert int(labels.min()) >= 0 and int(labels.max()) < k
    # identical rows share a label
    assert parts[3][0::2].unique().numel() == 1 and parts[3][1::2].unique().numel() == 1


def test_batched_kmeans_batching_invariance():
    gen = torch.Generator().manual_seed(3)
    sizes = [1, 3, 7, 20, 50]
    x = torch.randn(sum(sizes), 16, generator=gen)
    batch = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes)])
    together = batched_kmeans(x, batch, k=8)
    alone = torch.cat([batched_kmeans(xg, None, k=8) for xg in split(x, batch)])
    assert torch.equal(together, alone)


def test_batched_kmeans_deterministic_and_options():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(30, 8, generator=gen)
    batch = torch.tensor([0] * 10 + [1] * 20)
    a = batched_kmeans(x, batch, k=4)
    assert torch.equal(a, batched_kmeans(x.clone(), batch, k=4))
    # zero Lloyd steps = farthest-point assignment; still valid labels
    b = batched_kmeans(x, batch, k=4, num_iters=0)
    assert int(b.max()) < 4
    # an empty trailing graph (batch_size larger than the last id) is fine
    c = batched_kmeans(x, batch, k=4, batch_size=3)
    assert torch.equal(a, c)
    # gradients are never tracked, integer features are accepted
    xg = x.clone().requires_grad_()
    assert not batched_kmeans(xg, batch, k=4).requires_grad
    assert batched_kmeans(torch.randint(0, 5, (10, 3)), None, k=3).shape == (10,)


def test_batched_kmeans_farthest_point_init():
    # 1-D points: mean 2.5; farthest from the mean is 10 (index 3), then 0 (index 0)
    x = torch.tensor([[0.0], [0.1], [0.2], [10.0]])
    labels = batched_kmeans(x, None, k=2, num_iters=0)
    assert labels.tolist() == [1, 1, 1, 0]


def test_unknown_method():
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="valid: 'kmeans', 'ward'"):
        cluster_nodes(x, None, 2, method="spectral")
    with pytest.raises(ValueError, match="valid: 'ward', 'kmeans', 'birch'"):
        sklearn_cluster(x, None, 2, method="sklearn-kmeans")
    with pytest.raises(ValueError, match="'k' must be at least 1"):
        batched_kmeans(x, None, k=0)


@pytest.mark.parametrize("method", ["kmeans", "ward", "sklearn-kmeans"])
def test_nodes_per_cluster_caps_clusters_per_graph(method):
    from mdgr_graph.nn.cluster import clusters_per_graph

    # graph sizes 1, 3, 5, 8, 40 with k = 8 and s = 2: at most 1, 1, 2, 4, 8 clusters
    sizes, k = [1, 3, 5, 8, 40], 8
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(sum(sizes), 6, generator=gen)
    batch = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    counts = torch.tensor(sizes)
    assert clusters_per_graph(counts, k, None) is None
    assert clusters_per_graph(counts, k, 2).tolist() == [1, 1, 2, 4, 8]
    assert clusters_per_graph(counts, k, 1).tolist() == [1, 3, 5, 8, 8]
    capped = cluster_nodes(x, batch, k, method, nodes_per_cluster=2)
    free = cluster_nodes(x, batch, k, method)
    for g, (lab, full) in enumerate(zip(split(capped, batch), split(free, batch), strict=True)):
        assert lab.unique().numel() == [1, 1, 2, 4, 8][g]
        assert full.unique().numel() == min(sizes[g], k)
    # s = 1 allows as many clusters as nodes: the labels of fixed k, exactly
    assert torch.equal(cluster_nodes(x, batch, k, method, nodes_per_cluster=1), free)
    with pytest.raises(ValueError, match="nodes_per_cluster"):
        cluster_nodes(x, batch, k, method, nodes_per_cluster=0)


def _ward_cases(seed: int, count: int):
    """Random batches of small graphs with duplicates, exact distance ties (integer
    grids), signed zeros, one-node graphs and ``nodes_per_cluster`` caps."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for _ in range(count):
        sizes = rng.integers(1, 30, size=int(rng.integers(1, 8)))
        dim = int(rng.integers(1, 6))
        parts = []
        for n in sizes:
            rows = rng.normal(size=(int(n), dim))
            if rng.random() < 0.5:
                rows = rows[rng.integers(0, max(1, n // 2), size=n)]
            if rng.random() < 0.3:  # integer grid; entry signs flipped: mixed -0.0 / 0.0
                rows = np.round(rows) * rng.choice([-1.0, 1.0], size=rows.shape)
            parts.append(rows)
        x = torch.tensor(np.concatenate(parts), dtype=torch.float32)
        batch = torch.arange(len(sizes)).repeat_interleave(torch.as_tensor(sizes))
        cap = None if rng.random() < 0.7 else int(rng.integers(1, 4))
        yield x, batch, int(rng.integers(1, 10)), cap


def test_ward_cluster_equals_sklearn_label_for_label():
    """The fast Ward path gives scikit-learn's labels exactly, numbering included."""
    from mdgr_graph.nn.cluster import ward_cluster

    for x, batch, k, cap in _ward_cases(seed=0, count=150):
        expected = sklearn_cluster(x, batch, k, "ward", nodes_per_cluster=cap)
        assert torch.equal(ward_cluster(x, batch, k, nodes_per_cluster=cap), expected)
        assert torch.equal(cluster_nodes(x, batch, k, "ward", nodes_per_cluster=cap),
                           expected)


def test_ward_cluster_edge_cases():
    from mdgr_graph.nn.cluster import ward_cluster

    assert ward_cluster(torch.zeros(0, 3), None, 4).shape == (0,)
    assert ward_cluster(torch.randn(1, 3), None, 4).tolist() == [0]
    same = torch.ones(5, 2)
    assert ward_cluster(same, None, 3).tolist() == [0] * 5
    x = torch.randn(6, 2)
    assert sorted(ward_cluster(x, None, 8).tolist()) == list(range(6))  # n < k
    nan_graph = torch.tensor([[0.0], [float("nan")], [1.0]])
    with pytest.raises(ValueError, match="finite"):
        ward_cluster(nan_graph, None, 2)
    with pytest.raises(ValueError):  # scikit-learn refuses it too
        sklearn_cluster(nan_graph, None, 2, "ward")
    # a graph that is not clustered (k = 1, one node) may hold NaN, as with scikit-learn
    assert ward_cluster(nan_graph, None, 1).tolist() == [0, 0, 0]
    assert sklearn_cluster(nan_graph, None, 1, "ward").tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="nodes_per_cluster"):
        ward_cluster(torch.zeros(0, 3), None, 4, nodes_per_cluster=0)
    with pytest.raises(ValueError, match="'k' must be at least 1"):
        ward_cluster(x, None, 0)
