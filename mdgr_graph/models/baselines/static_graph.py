"""Control model: MDGR with its graph layers run on a fixed sequence graph.

SURGE (Chang et al., "Sequential Recommendation with Graph Neural Networks", SIGIR
2021) starts from the graph of a sequence in which consecutive interactions are linked.
:class:`StaticGraphRec` puts that fixed, consecutive-item graph in place of MDGR's
dynamic weighted-cosine top-k graph and changes nothing else, to measure what the
dynamic graph adds.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Batch

from mdgr_graph.models.mdgr import MDGR


def consecutive_edges(batch: Tensor | None = None, ptr: Tensor | None = None) -> Tensor:
    """Edges between consecutive nodes of every graph, in both directions.

    Give exactly one of ``batch`` (sorted batch vector ``[N]``) or ``ptr`` (first node
    of every graph plus the node count, ``[B + 1]``). For every pair of neighbouring
    nodes ``i, i + 1`` of the same graph, in node order, the result holds ``i -> i + 1``
    then ``i + 1 -> i``; nothing else (no self-loops, nothing across graphs). A graph of
    one node gets no edge.

    Returns:
        ``edge_index [2, E]`` (LongTensor, ``E = 2 * (N - number of non-empty graphs)``).
    """
    if (batch is None) == (ptr is None):
        raise ValueError("give exactly one of 'batch' or 'ptr'")
    if ptr is not None:
        if ptr.dim() != 1 or ptr.numel() < 1:
            raise ValueError(f"'ptr' must be a non-empty 1-D tensor (got {tuple(ptr.shape)})")
        counts = ptr.diff()
        if bool((counts < 0).any()):
            raise ValueError("'ptr' must be non-decreasing")
        batch = torch.repeat_interleave(torch.arange(counts.numel(), device=ptr.device), counts)
    elif batch.dim() != 1:
        raise ValueError(f"'batch' must be 1-D (got {tuple(batch.shape)})")
    elif batch.numel() > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("'batch' must be sorted (as produced by PyG's 'Batch')")
    src = (batch[1:] == batch[:-1]).nonzero().view(-1)  # i with i + 1 in its graph
    dst = src + 1
    forward = torch.stack([src, dst])
    backward = torch.stack([dst, src])
    return torch.stack([forward, backward], dim=2).reshape(2, -1).long()


class StaticGraphRec(MDGR):
    r"""MDGR on a fixed consecutive-item sequence graph: a control, not SURGE.

    The same encoder, :class:`~mdgr_graph.nn.DynamicClusterConv` layers, final
    clustering, interest pooling, interest weights and scoring as :class:`MDGR`; the only
    change is the graph each of the ``m`` layers runs on. Instead of rebuilding a
    weighted-cosine top-:math:`\lceil\gamma n^2\rceil` graph from the node features at
    every iteration (Eq. 7-9), every layer gets the same fixed edges
    :math:`i \rightarrow i+1` and :math:`i+1 \rightarrow i` between consecutive items of
    each sequence (:func:`consecutive_edges`), with unit weights. The layers still
    cluster their nodes: the cluster vector of Eq. 10 aggregates the fixed neighbours of
    the node's own cluster, and the cluster- and query-aware attention (Eq. 10-13) runs
    over all fixed neighbours.

    The consecutive-item sequence graph follows SURGE (Chang et al., "Sequential
    Recommendation with Graph Neural Networks", SIGIR 2021). This model is **not** a
    reimplementation of SURGE, which builds a metric-learned item graph and pools it
    with cluster-aware attention; that would be a separate baseline. It is the control
    "MDGR with static edges".

    Since no metric graph is built, the metric weights :math:`\mathbf{w}_h` of Eq. 7-8
    would never be used; they are removed from the layers (so every parameter is
    trained and :meth:`num_parameters` counts only parameters in use). ``gamma``,
    ``delta`` and ``binary`` are therefore accepted but have no effect.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        **kwargs: the keywords of :class:`MDGR` (``dim``, ``k``, ``m``, ``max_len``,
            ...). ``dynamic=False`` is refused: without graph layers there is nothing
            to fix (use ``MDGR(dynamic=False)``, the ``mdgr-dgc`` variant).
    """

    def __init__(self, num_items: int, **kwargs) -> None:
        if not kwargs.get("dynamic", True):
            raise ValueError(
                "StaticGraphRec needs its graph layers (dynamic=True); "
                "for no graph layers use MDGR(dynamic=False)"
            )
        if kwargs.get("query", "last") != "last":
            raise ValueError("StaticGraphRec supports query='last' only")
        if kwargs.get("cluster_on", "state") != "state":
            raise ValueError("StaticGraphRec supports cluster_on='state' only (its edges "
                             "are fixed; the option changes MDGR's metric graph)")
        super().__init__(num_items, **kwargs)
        for conv in self.convs:
            conv.register_parameter("metric_weight", None)  # unused without Eq. 7-8

    def node_states(self, batch: Batch, return_graphs: bool = False):
        """Encode the nodes and run the ``m`` layers on the consecutive-item edges.

        Returns:
            ``x [N, d]``; with ``return_graphs``, also a list of
            ``(edge_index, edge_weight, cluster)`` per iteration (the same edges each
            time).
        """
        self._check_batch(batch)
        batch_size = batch.num_graphs
        x = self.encoder(self.item_emb(batch.x), batch.t, batch.pos, batch.batch, batch_size)
        last = batch.ptr[1:] - 1
        edge_index = consecutive_edges(ptr=batch.ptr)
        graphs = []
        for conv in self.convs:
            out = conv(
                x, batch.batch, query=x[last], return_graph=return_graphs,
                edge_index=edge_index,
            )
            if return_graphs:
                x, edges, edge_weight, cluster = out
                graphs.append((edges, edge_weight, cluster))
            else:
                x = out
        return (x, graphs) if return_graphs else x

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, dim={self.dim}, "
            f"k={self.k}, m={self.m}, cluster='{self.cluster}', "
            f"graph='consecutive items (static control)', weights={self.use_weights})"
        )
