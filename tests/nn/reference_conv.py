"""Slow, per-graph reference of :meth:`mdgr_graph.nn.DynamicClusterConv.forward`.

The oracle the tests compare both paths of the layer against, and the baseline of
``benchmarks/speed.py`` (which loads this file by its path). It is test code, not part of
the package: it follows the equations literally, one graph at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mdgr_graph.nn import DynamicClusterConv, edge_budget


def dynamic_cluster_conv_reference(
    conv: DynamicClusterConv,
    x: Tensor,
    batch: Tensor | None = None,
    query: Tensor | None = None,
    cluster: Tensor | None = None,
    graph_x: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Slow, per-graph reference of :meth:`DynamicClusterConv.forward`.

    Uses the parameters of ``conv`` and follows the equations literally: a Python loop
    over graphs, a dense metric per graph, an explicit sort of the candidate pairs for
    Eq. 9 (ties broken by the lower ``(i, j)``, as in the fast path), dense
    :math:`\\hat{A}^s` products for the cluster vector, and an explicit softmax per
    node. Attention dropout is not modelled: call it with ``conv.eval()`` or
    ``dropout=0``.

    Returns:
        ``(out, edge_index, edge_weight, cluster)`` as ``forward(..., return_graph=True)``.
    """
    if conv.training and conv.dropout > 0:
        raise ValueError("the reference does not model dropout; call conv.eval() first")
    batch, num_graphs = conv._check_inputs(x, batch, query, cluster)
    conv._check_graph_x(x, graph_x)
    gx = x if graph_x is None else graph_x
    if cluster is None:
        cluster = conv.cluster_labels(gx, batch, num_graphs)
    d, heads = conv.channels, conv.heads
    outs, edges, weights = [], [], []
    offset = 0
    for b in range(num_graphs):
        nodes = (batch == b).nonzero().view(-1)
        n = nodes.numel()
        if n == 0:
            continue
        xg = x[nodes]
        cg = cluster[nodes].tolist()

        # Eq. 7-9: metric, candidates, explicit ranking.
        sim = xg.new_zeros(n, n)
        for w_h in conv.metric_weight:  # Eq. 7, one head at a time
            a = gx[nodes] * w_h
            a = a / a.norm(dim=1, keepdim=True).clamp(min=1e-12)
            sim = sim + a @ a.t()
        sim = sim / conv.delta  # Eq. 8
        sim = 0.5 * (sim + sim.t())  # symmetric up to rounding -> exactly symmetric
        values = sim.detach().tolist()
        pairs = [
            (-values[i][j], i, j) for i in range(n) for j in range(n) if i != j and cg[i] == cg[j]
        ]
        pairs.sort()
        budget = int(edge_budget(torch.tensor([n]), conv.gamma)[0])
        kept = [(i, j) for _, i, j in pairs[:budget]]

        # Eq. 10: cluster vector from the dense row-normalised adjacency.
        adj = xg.new_zeros(n, n)
        for i, j in kept:
            adj[i, j] = 1.0
        deg = adj.sum(1, keepdim=True)
        adj = torch.where(deg > 0, adj / deg.clamp(min=1), adj)
        h, acc = xg, torch.zeros_like(xg)
        for _ in range(conv.hops):
            h = adj @ h
            acc = acc + h
        phi_c = acc / conv.hops

        qg = None if query is None else query[b].expand(n, d)
        xc = conv.lin_c(xg)
        alpha = conv.att_c(torch.cat([xc, phi_c, xc * phi_c], dim=-1))
        if qg is None:
            beta = torch.zeros_like(alpha)
        else:
            xq = conv.lin_q(xg)
            beta = conv.att_q(torch.cat([xq, qg, xq * qg], dim=-1))
        v = conv.lin_v(xg).view(n, heads, d)

        # Eq. 12-13: explicit softmax over the in-neighbours of each node.
        agg_rows = []
        for i in range(n):
            nbrs = [j for (ii, j) in kept if ii == i]
            if not nbrs:
                agg_rows.append(xg.new_zeros(d))
                continue
            idx = torch.tensor(nbrs, device=x.device)
            w = xg.new_ones(len(nbrs)) if conv.binary else sim[i, idx]
            logit = F.leaky_relu(alpha[i].unsqueeze(0) + beta[idx], conv.negative_slope)
            e = torch.exp(logit - logit.max(dim=0, keepdim=True)[0])
            att = e / e.sum(dim=0, keepdim=True)  # [deg, H]
            msg = (att * w.unsqueeze(-1)).unsqueeze(-1) * v[idx]  # [deg, H, d]
            agg_rows.append(msg.sum(0).mean(0))
        outs.append(conv._output(xg, torch.stack(agg_rows)))

        for i, j in kept:
            edges.append((offset + j, offset + i))
            weights.append(xg.new_ones(()) if conv.binary else sim[i, j])
        offset += n

    out = torch.cat(outs) if outs else x.new_zeros(0, d)
    edge_index = torch.tensor(edges, dtype=torch.long, device=x.device).view(-1, 2).t()
    edge_weight = torch.stack(weights) if weights else x.new_empty(0)
    return out, edge_index, edge_weight, cluster
