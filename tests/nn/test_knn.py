import pytest
import torch

from mdgr_graph import typing as mdgr_typing
from mdgr_graph.nn.knn import knn_graph, knn_graph_dense


def edge_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def naive_knn(x, k, batch):
    edges = set()
    for i in range(x.size(0)):
        same = [j for j in range(x.size(0)) if batch[j] == batch[i] and j != i]
        same.sort(key=lambda j: (float((x[i] - x[j]).norm()), j))
        edges |= {(j, i) for j in same[:k]}
    return edges


def test_dense_knn_matches_naive():
    torch.manual_seed(0)
    x = torch.randn(23, 4)
    batch = torch.tensor([0] * 10 + [1] * 2 + [2] * 1 + [3] * 10)
    assert edge_set(knn_graph_dense(x, 3, batch)) == naive_knn(x, 3, batch)
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        knn_graph_dense(torch.randn(3), 2)


@pytest.mark.skipif(not mdgr_typing.WITH_TORCH_CLUSTER, reason="torch-cluster not installed")
def test_torch_cluster_path_matches_fallback(monkeypatch):
    torch.manual_seed(1)
    x = torch.randn(40, 8)
    batch = torch.arange(4).repeat_interleave(10)
    fast = knn_graph(x, 4, batch)
    monkeypatch.setattr(mdgr_typing, "WITH_TORCH_CLUSTER", False)
    assert edge_set(fast) == edge_set(knn_graph(x, 4, batch))
