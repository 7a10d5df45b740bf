"""k-nearest-neighbour graphs within each graph of a batch.

PyG 2.8 routes :func:`torch_geometric.nn.knn_graph` through pyg-lib; this module calls
``torch_cluster.knn_graph`` directly when torch-cluster is installed and otherwise uses a
dense torch fallback (``O(B n^2)`` memory), with the same output.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import to_dense_batch

from mdgr_graph import typing as mdgr_typing


def knn_graph_dense(x: Tensor, k: int, batch: Tensor | None = None, loop: bool = False) -> Tensor:
    """Pure-torch kNN graph: ``edge_index [2, E]``, source = neighbour, target = node.

    Each node receives edges from its ``k`` nearest nodes (Euclidean) of the same graph,
    ties broken by the lower node index; fewer when the graph has fewer other nodes.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be [N, d], got shape {tuple(x.shape)}")
    if batch is None:
        batch = torch.zeros(x.size(0), dtype=torch.long, device=x.device)
    dense, mask = to_dense_batch(x, batch)
    n_max = dense.size(1)
    dist = torch.cdist(dense, dense, compute_mode="donot_use_mm_for_euclid_dist")
    invalid = ~(mask.unsqueeze(1) & mask.unsqueeze(2))
    if not loop:
        invalid |= torch.eye(n_max, dtype=torch.bool, device=x.device)
    dist = dist.masked_fill(invalid, float("inf"))
    kk = min(k, n_max)
    order = torch.sort(dist, dim=-1, stable=True)
    nbr, d = order.indices[..., :kk], order.values[..., :kk]
    keep = torch.isfinite(d) & mask.unsqueeze(-1)
    ptr = torch.cumsum(mask.sum(1), 0) - mask.sum(1)
    target = (ptr.view(-1, 1, 1) + torch.arange(n_max, device=x.device).view(1, -1, 1))
    source = ptr.view(-1, 1, 1) + nbr
    target = target.expand_as(source)
    return torch.stack([source[keep], target[keep]])


def knn_graph(x: Tensor, k: int, batch: Tensor | None = None, loop: bool = False) -> Tensor:
    """kNN graph per batch element; torch-cluster when available, else :func:`knn_graph_dense`.

    Args:
        x: ``[N, d]`` node features.
        k: neighbours per node.
        batch: ``[N]`` sorted graph assignment (None: one graph).
        loop: allow self loops.

    Returns:
        ``edge_index [2, E]`` (flow source to target, as PyG's ``knn_graph``).
    """
    if mdgr_typing.WITH_TORCH_CLUSTER:
        import torch_cluster

        return torch_cluster.knn_graph(x, k, batch=batch, loop=loop, flow="source_to_target")
    return knn_graph_dense(x, k, batch, loop)
