"""One iteration of MDGR's dynamic graph clustering as a PyG ``MessagePassing`` layer."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import LayerNorm, Linear, Parameter, Sequential, Tanh
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import cumsum, scatter, softmax, to_dense_batch

from mdgr_graph.nn.cluster import CLUSTER_METHODS, check_nodes_per_cluster, cluster_nodes
from mdgr_graph.nn.metric import (
    edge_budget,
    pow2_rescale,
    top_pairs,
    weighted_cosine,
)

#: Inputs of the attention MLPs are clamped to this magnitude. Far above anything a
#: trained layer sees (its tanh saturates near 10), it keeps the first linear map of
#: every MLP finite when the product term of features near 1e30 would overflow.
_MLP_INPUT_LIMIT = 2.0**64
#: Rows above :math:`2^{40}` are scaled down by a power of two before the LayerNorm, whose
#: variance would overflow from about 1e19 on; at that size its eps is negligible.
_NORM_INPUT_EXPONENT = 40


class _DenseGraph(NamedTuple):
    """The kept pairs of Eq. 9 with the dense tensors they were chosen from."""

    xd: Tensor  # [B, n_max, d] node features, zero padding
    mask: Tensor  # [B, n_max] real nodes
    sim: Tensor  # [B, n_max, n_max] metric L (differentiable)
    ptr: Tensor  # [B + 1] first node of every graph
    graph: Tensor  # [E] graph of every kept pair
    flat: Tensor  # [E] i * n_max + j of the kept pair (edge j -> i)
    pair: Tensor  # [E] graph * n_max² + flat: the pair's position in sim.view(-1)
    n_max: int

    def nodes(self) -> tuple[Tensor, Tensor]:
        """Global ``(dst, src)`` node ids of the kept edges ``j -> i``, ``[E]`` each."""
        offset = self.ptr.index_select(0, self.graph)
        return offset + self.flat // self.n_max, offset + self.flat % self.n_max

    def kept_sim(self) -> Tensor:
        """:math:`L_{ij}` of the kept pairs, ``[E]`` (differentiable)."""
        return self.sim.view(-1).index_select(0, self.pair)


class SharedIteration(NamedTuple):
    """What one iteration computes before the query enters (Eq. 7-10): shared by every
    candidate of a graph in candidate mode (:meth:`DynamicClusterConv.prepare`)."""

    x: Tensor  # [N, d] input node features
    batch: Tensor  # [N] sorted batch vector
    num_graphs: int
    cluster: Tensor  # [N] cluster labels
    graph: _DenseGraph | None  # kept pairs; None when no graph has two nodes
    alpha: Tensor | None  # [N, H] cluster-aware scores (None without graph)


def candidate_graphs(batch: Tensor, num_graphs: int, num_candidates: int) -> tuple[Tensor, Tensor]:
    r"""Layout of candidate mode: graph :math:`g = b C + c` is a copy of graph :math:`b`
    for its candidate :math:`c`.

    Returns:
        ``(node, batch)``, both :math:`(C N)`: ``node`` the original node every copied
        node comes from (so ``x[node]`` copies the features), ``batch`` the sorted batch
        vector of the :math:`B C` copies.
    """
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = cumsum(counts)
    graph = torch.arange(num_graphs * num_candidates, device=batch.device)
    counts_e = counts.repeat_interleave(num_candidates)
    new_batch = graph.repeat_interleave(counts_e)
    ptr_e = cumsum(counts_e)
    local = torch.arange(new_batch.numel(), device=batch.device) - ptr_e[new_batch]
    return ptr[new_batch // num_candidates] + local, new_batch


def _bounded(t: Tensor) -> Tensor:
    return t.clamp(-_MLP_INPUT_LIMIT, _MLP_INPUT_LIMIT)


def _attention_mlp(channels: int, heads: int) -> Sequential:
    return Sequential(Linear(3 * channels, channels), Tanh(), Linear(channels, heads))


class DynamicClusterConv(MessagePassing):
    r"""One iteration of the dynamic graph clustering of MDGR, from the paper
    "Learning Multi-interest Embedding with Dynamic Graph Cluster for Sequential
    Recommendation" (Section 3.4).

    Each graph is one user sequence; each node one interaction. The layer rebuilds the
    graph from the current node features on every call:

    1. **Clustering** (Sec. 3.4.1): the nodes of each graph are split into ``k`` groups
       (:func:`~mdgr_graph.nn.cluster.cluster_nodes` on detached features), unless
       labels are given.

    2. **Weighted cosine metric** (Eq. 7-8) with :math:`\delta` learnable weight vectors
       :math:`\mathbf{w}_h`:

       .. math::
           L_{ij} = \frac{1}{\delta} \sum_{h=1}^{\delta}
           \cos(\mathbf{w}_h \odot \mathbf{x}_i, \mathbf{w}_h \odot \mathbf{x}_j)

    3. **Sparsification** (Eq. 9), per graph: among the candidate pairs (same graph, same
       cluster, :math:`i \neq j`) keep the :math:`\lceil \gamma n^2 \rceil` largest
       :math:`L_{ij}` of the graph (:math:`n` its node count). A kept pair gives the edge
       :math:`j \rightarrow i` with weight :math:`L_{ij}` (``binary=False``, DESIGN.md
       decision 2, so that :math:`\mathbf{w}_h` receives a gradient) or 1
       (``binary=True``, the paper's literal form). :math:`L` is exactly symmetric, so
       :math:`(i, j)` and :math:`(j, i)` tie; ties are broken towards the lower
       row-major position :math:`(i, j)`, so at the budget boundary one direction of a
       pair can be kept without the other. Pairs of *identical* rows also tie in exact
       arithmetic, but the batched matrix product behind :math:`L` may round a row
       differently depending on its position; such ties are decided by that rounding.

    4. **Cluster vector** (Eq. 10, DESIGN.md decision 5), with :math:`\hat{\mathbf{A}}`
       the row-normalised binary adjacency of the kept edges (isolated nodes get 0):

       .. math::
           \boldsymbol{\phi}_{i_c} = \frac{1}{S} \sum_{s=1}^{S}
           (\hat{\mathbf{A}}^s \mathbf{X})_i

    5. **Cluster- and query-aware attention** (Eq. 10-13) with :math:`H` heads, the
       query :math:`\mathbf{q}_{g(j)}` of node :math:`j`'s graph, and
       :math:`\mathrm{MLP}(\cdot) = \mathbf{W}_2 \tanh(\mathbf{W}_1 \cdot)` mapping to
       :math:`H` scores:

       .. math::
           \alpha_i &= \mathrm{MLP}_c([\mathbf{W}_c \mathbf{x}_i \,\Vert\,
           \boldsymbol{\phi}_{i_c} \,\Vert\, \mathbf{W}_c \mathbf{x}_i \odot
           \boldsymbol{\phi}_{i_c}])

           \beta_j &= \mathrm{MLP}_q([\mathbf{W}_q \mathbf{x}_j \,\Vert\,
           \mathbf{q}_{g(j)} \,\Vert\, \mathbf{W}_q \mathbf{x}_j \odot
           \mathbf{q}_{g(j)}])

           E^h_{ij} &= \mathrm{softmax}_{j \in \mathcal{N}(i)}
           \left(\mathrm{LeakyReLU}(\alpha^h_i + \beta^h_j)\right)

           \mathbf{x}'_i &= \mathrm{LayerNorm}\left(\mathbf{x}_i + \frac{1}{H}
           \sum_{h=1}^{H} \sum_{j \in \mathcal{N}(i)} E^h_{ij} \, L_{ij} \,
           \mathbf{W}^h_v \mathbf{x}_j\right)

       **Deviation from Eq. 12:** the paper writes
       :math:`\mathrm{softmax}_j(\alpha_i + \beta_j)`, in which :math:`\alpha_i` is
       constant over :math:`j` and cancels, so the cluster-aware score would have no
       effect. As in GAT, a LeakyReLU is applied to the sum before the softmax, which
       keeps :math:`\alpha_i` in play. Without a query, :math:`\beta = 0`. The residual
       connection and the layer norm are switchable (DESIGN.md decision 7); a node
       without incoming edges aggregates 0.

    The metric weights :math:`\mathbf{w}_h` are initialised as :math:`\mathcal{N}(1,
    0.1^2)`: the metric starts close to the plain cosine (a meaningful graph from the
    first step) while the heads differ slightly, so they can specialise. Linear layers
    use PyTorch's default (Kaiming-uniform) initialisation.

    **Two paths, one function.** Both build the graph of steps 1-3 the same way: the
    weighted cosine :math:`L` of every graph in dense form
    (:func:`~mdgr_graph.nn.metric.weighted_cosine`, :math:`O(B \, n_{\max}^2)`) and the
    per-graph top pairs (:func:`~mdgr_graph.nn.metric.top_pairs`), so they keep the same
    edges with the same weights, bit for bit. By default (``sparse=False``) steps 4-5
    are batched matrix products on dense per-graph tensors (the adjacency and the
    attention coefficients, :math:`O(B \, C \, n_{\max}^2 H)`), fast on the CPU for
    :math:`n` up to a few hundred. With ``sparse=True`` the layer passes messages on the
    rebuilt ``edge_index`` (:meth:`build_graph`): the cluster vector is a scatter-mean
    over it (:meth:`cluster_vector`) and :meth:`propagate` runs :meth:`message` =
    :math:`E^h_{ij} L_{ij} \mathbf{W}^h_v \mathbf{x}_j`, with :math:`E` normalised by
    PyG's :func:`~torch_geometric.utils.softmax` over the incoming edges of :math:`i`
    (memory :math:`O(|\mathcal{E}| \, C H d)`). The outputs and gradients of the two
    paths are equal up to float rounding (tested, also against a slow per-graph
    reference in ``tests/nn/reference_conv.py``). :meth:`prepare` and :meth:`update`
    are the dense path's.

    **Magnitudes.** The clustering and :math:`L` are computed on copies scaled by a power
    of two per graph and per node (exact, so the same labels, edges and weights, bit for
    bit, on ordinary inputs), the inputs of the two attention MLPs are clamped to
    :math:`\pm 2^{64}` and rows above :math:`2^{40}` are scaled down by a power of two
    before the LayerNorm (both no-ops below those sizes). Outputs and gradients are
    then finite for features and queries of any magnitude from 1e-38 to 1e36 in float32
    (tested); only the linear maps themselves are left: beyond about
    :math:`3 \cdot 10^{38} / \lVert \mathbf{W} \rVert`, :math:`\mathbf{W}
    \mathbf{x}` is not a float32 number.

    Args:
        channels (int): Size :math:`d` of each node feature (input = output).
        k (int, optional): Number of clusters per graph. (default: :obj:`8`)
        gamma (float, optional): Sparsity :math:`\gamma` of Eq. 9, in :math:`[0, 1]`.
            (default: :obj:`0.1`)
        delta (int, optional): Number :math:`\delta` of metric heads of Eq. 8.
            (default: :obj:`4`)
        heads (int, optional): Number :math:`H` of attention heads of Eq. 13.
            (default: :obj:`2`)
        hops (int, optional): Number :math:`S` of hops of the cluster vector.
            (default: :obj:`2`)
        cluster (str, optional): Clustering method, one of ``"kmeans"`` (batched,
            deterministic), ``"ward"``, ``"sklearn-kmeans"``, ``"birch"`` (scikit-learn,
            per graph, slow). (default: :obj:`"kmeans"`)
        kmeans_iters (int, optional): Lloyd steps of the batched k-means.
            (default: :obj:`10`)
        binary (bool, optional): If :obj:`True`, kept edges have weight 1 (Eq. 9
            literally) and the metric weights receive no gradient. (default: :obj:`False`)
        residual (bool, optional): Add the input to the aggregation. (default: :obj:`True`)
        norm (bool, optional): Apply :class:`~torch.nn.LayerNorm` to the output.
            (default: :obj:`True`)
        negative_slope (float, optional): LeakyReLU slope of the attention logits.
            (default: :obj:`0.2`)
        dropout (float, optional): Dropout probability of the attention coefficients
            :math:`E`. (default: :obj:`0.0`)
        sparse (bool, optional): Build the graph as an edge list and update the nodes
            with :meth:`propagate` instead of the dense batched path.
            (default: :obj:`False`)
        nodes_per_cluster (int, optional): A graph of :math:`n` nodes gets at most
            :math:`\max(1, \lfloor n / s \rfloor)` clusters (and at most ``k``;
            :func:`~mdgr_graph.nn.cluster.clusters_per_graph`), so that a sequence with
            no more items than ``k`` is not cut into singletons, which share no cluster
            and so keep no edge. **Not in the paper** (fixed ``k``); only for the
            clustering this layer runs itself. (default: :obj:`None`)

    Shapes:
        - **input:**
          node features :math:`(|\mathcal{V}|, d)`,
          batch vector :math:`(|\mathcal{V}|)` *(optional, sorted)*,
          query :math:`(B, d)` or :math:`(B, C, d)` *(optional; candidate mode)*,
          cluster labels :math:`(|\mathcal{V}|)` *(optional)*
        - **output:** node features :math:`(|\mathcal{V}|, d)` (candidate mode:
          :math:`(C |\mathcal{V}|, d)`); with
          ``return_graph=True`` also edge indices :math:`(2, |\mathcal{E}|)`, edge
          weights :math:`(|\mathcal{E}|)` and cluster labels :math:`(|\mathcal{V}|)`
    """

    def __init__(
        self,
        channels: int,
        k: int = 8,
        gamma: float = 0.1,
        delta: int = 4,
        heads: int = 2,
        hops: int = 2,
        cluster: str = "kmeans",
        kmeans_iters: int = 10,
        binary: bool = False,
        residual: bool = True,
        norm: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        sparse: bool = False,
        nodes_per_cluster: int | None = None,
    ):
        super().__init__(aggr="add", flow="source_to_target", node_dim=0)
        if channels < 1 or k < 1 or delta < 1 or heads < 1 or hops < 1:
            raise ValueError(
                "'channels', 'k', 'delta', 'heads' and 'hops' must be positive "
                f"(got {channels}, {k}, {delta}, {heads}, {hops})"
            )
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"'gamma' must lie in [0, 1] (got {gamma})")
        if cluster not in CLUSTER_METHODS:
            raise ValueError(
                f"Unknown clustering method '{cluster}' "
                f"(valid: {', '.join(repr(m) for m in CLUSTER_METHODS)})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"'dropout' must lie in [0, 1) (got {dropout})")
        check_nodes_per_cluster(nodes_per_cluster)

        self.channels = channels
        self.k = k
        self.gamma = gamma
        self.delta = delta
        self.heads = heads
        self.hops = hops
        self.cluster = cluster
        self.kmeans_iters = kmeans_iters
        self.binary = binary
        self.residual = residual
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.sparse = sparse
        self.nodes_per_cluster = nodes_per_cluster

        self.metric_weight = Parameter(torch.empty(delta, channels))
        self.lin_c = Linear(channels, channels, bias=False)  # W_c
        self.lin_q = Linear(channels, channels, bias=False)  # W_q
        self.lin_v = Linear(channels, heads * channels, bias=False)  # W_v, all heads
        self.att_c = _attention_mlp(channels, heads)
        self.att_q = _attention_mlp(channels, heads)
        self.norm = LayerNorm(channels) if norm else None

        self.reset_parameters()

    def reset_parameters(self):
        super().reset_parameters()
        if self.metric_weight is not None:  # None: removed by a fixed-edge model
            torch.nn.init.normal_(self.metric_weight, mean=1.0, std=0.1)
        self.lin_c.reset_parameters()
        self.lin_q.reset_parameters()
        self.lin_v.reset_parameters()
        for mlp in (self.att_c, self.att_q):
            mlp[0].reset_parameters()
            mlp[2].reset_parameters()
        if self.norm is not None:
            self.norm.reset_parameters()

    # ------------------------------------------------------------------ helpers
    def _check_inputs(
        self,
        x: Tensor,
        batch: Tensor | None,
        query: Tensor | None,
        cluster: Tensor | None,
    ) -> tuple[Tensor, int]:
        """Validate the inputs; return the batch vector and the number of graphs."""
        if x.dim() != 2:
            raise ValueError(
                f"'x' must be a 2-D tensor [num_nodes, channels] (got shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise ValueError(f"'x' must be a floating point tensor (got {x.dtype})")
        if x.size(1) != self.channels:
            raise ValueError(f"'x' has {x.size(1)} channels but the layer expects {self.channels}")
        num_nodes = x.size(0)
        if batch is None:
            batch = torch.zeros(num_nodes, dtype=torch.long, device=x.device)
        elif batch.dim() != 1 or batch.numel() != num_nodes:
            raise ValueError(
                f"'batch' must have shape [{num_nodes}] to match 'x' (got {tuple(batch.shape)})"
            )
        elif batch.dtype != torch.long:
            raise ValueError(f"'batch' must be a LongTensor (got {batch.dtype})")
        elif num_nodes > 1 and bool((batch[1:] < batch[:-1]).any()):
            raise ValueError("'batch' must be sorted (as produced by PyG's 'Batch')")
        num_graphs = int(batch.max()) + 1 if num_nodes > 0 else 0
        if query is not None:
            if query.dim() not in (2, 3) or query.size(-1) != self.channels:
                raise ValueError(
                    f"'query' must have shape [num_graphs, {self.channels}] or, one graph "
                    f"per candidate, [num_graphs, C, {self.channels}] "
                    f"(got {tuple(query.shape)})"
                )
            if query.dim() == 3 and query.size(1) < 1:
                raise ValueError("'query' of shape [num_graphs, C, d] needs C >= 1")
            if query.size(0) < num_graphs:
                raise ValueError(
                    f"'query' has {query.size(0)} rows but 'batch' holds {num_graphs} graphs"
                )
            num_graphs = query.size(0)
        if cluster is not None and (
            cluster.dim() != 1 or cluster.numel() != num_nodes or cluster.is_floating_point()
        ):
            raise ValueError(
                f"'cluster' must be an integer tensor of shape [{num_nodes}] "
                f"(got {cluster.dtype}, {tuple(cluster.shape)})"
            )
        return batch, num_graphs

    def _alpha(self, x: Tensor, phi_c: Tensor) -> Tensor:
        """Cluster-aware scores ``alpha [N, H]`` (Eq. 10)."""
        xc = self.lin_c(x)
        return self.att_c(_bounded(torch.cat([xc, phi_c, xc * phi_c], dim=-1)))

    def _beta(self, x: Tensor, query: Tensor, batch: Tensor) -> Tensor:
        r"""Query-aware scores (Eq. 11): ``[N, H]`` for ``query [B, d]``, ``[N, C, H]`` for
        one query per candidate ``[B, C, d]``.

        With candidates, the first linear map of :math:`\mathrm{MLP}_q` is applied block by
        block (node part once per node, query part once per candidate, only the product
        term per pair): the same map as on the concatenation, :math:`C` times cheaper in
        the two shared blocks.
        """
        xq = self.lin_q(x)
        if query.dim() == 2:
            q = query[batch]
            return self.att_q(_bounded(torch.cat([xq, q, xq * q], dim=-1)))
        first, act, last = self.att_q
        w_x, w_q, w_xq = first.weight.split(self.channels, dim=1)
        per_query = _bounded(query) @ w_q.t() + first.bias  # [B, C, d]
        pair = _bounded(xq.unsqueeze(1) * query[batch]) @ w_xq.t()  # [N, C, d]
        return last(act((_bounded(xq) @ w_x.t()).unsqueeze(1) + per_query[batch] + pair))

    def _output(self, x: Tensor, agg: Tensor) -> Tensor:
        out = x + agg if self.residual else agg
        if self.norm is not None:
            out = self.norm(pow2_rescale(out, -1, _NORM_INPUT_EXPONENT, only_down=True))
        return out

    # ------------------------------------------------------------------ forward
    def _sparsify(
        self, x: Tensor, batch: Tensor, cluster: Tensor, num_graphs: int,
        graph_x: Tensor | None = None,
    ) -> _DenseGraph | None:
        """Eq. 7-9 in dense per-graph form (the metric on ``graph_x`` when given);
        :obj:`None` when no graph has two nodes."""
        counts = torch.bincount(batch, minlength=num_graphs)
        n_max = int(counts.max()) if counts.numel() > 0 else 0
        if n_max < 2:
            return None
        ptr = cumsum(counts)
        xd, mask = to_dense_batch(x, batch, batch_size=num_graphs, max_num_nodes=n_max)
        cd, _ = to_dense_batch(
            cluster, batch, fill_value=-1, batch_size=num_graphs, max_num_nodes=n_max
        )
        gxd = xd if graph_x is None else to_dense_batch(
            graph_x, batch, batch_size=num_graphs, max_num_nodes=n_max)[0]
        sim = weighted_cosine(gxd, self.metric_weight)  # [B, n, n]

        eye = torch.eye(n_max, dtype=torch.bool, device=x.device)
        cand = (cd.unsqueeze(2) == cd.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
        # Candidates in row-major order of (graph, i, j): ties go to the lower (i, j).
        # Gathers use flat positions (index_select), faster than multi-index indexing.
        pair = (cand & ~eye).view(-1).nonzero().squeeze(1)
        graph = pair // (n_max * n_max)
        kept = top_pairs(sim.detach().view(-1).index_select(0, pair), graph,
                         edge_budget(counts, self.gamma))
        pair, graph = pair[kept], graph[kept]
        # flat = i * n_max + j for the edge j -> i, by graph in ranking order
        return _DenseGraph(xd, mask, sim, ptr, graph, pair - graph * (n_max * n_max), pair,
                           n_max)

    def _edges(self, graph: _DenseGraph | None, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(edge_index, edge_weight)`` of the kept pairs, in ranking order."""
        if graph is None:
            return torch.empty(2, 0, dtype=torch.long, device=x.device), x.new_empty(0)
        dst, src = graph.nodes()
        edge_index = torch.stack([src, dst], dim=0)
        if self.binary:
            edge_weight = graph.xd.new_ones(graph.flat.numel())
        else:
            edge_weight = graph.kept_sim()
        return edge_index, edge_weight

    def build_graph(
        self, x: Tensor, batch: Tensor, cluster: Tensor, num_graphs: int,
        graph_x: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The metric graph of Eq. 7-9 as an edge list: the graph the sparse path passes
        messages on. It is the dense path's computation (the weighted cosine per graph
        and :func:`~mdgr_graph.nn.metric.top_pairs`), so both paths keep the same edges
        in the same order with the same weights, bit for bit, ties included.

        Args:
            x: node features ``[N, d]``.
            batch: sorted batch vector ``[N]``.
            cluster: cluster labels ``[N]``.
            num_graphs: number of graphs :math:`B`.
            graph_x: features the metric is computed on (default: ``x``).

        Returns:
            ``(edge_index [2, E], edge_weight [E])``, edges ``j -> i`` stored as
            ``[j, i]``, by graph in ranking order, with weight :math:`L_{ij}`
            (differentiable) or 1 when ``binary``.
        """
        if self.metric_weight is None:
            raise ValueError("this layer has no metric weights; pass 'edge_index'")
        return self._edges(self._sparsify(x, batch, cluster, num_graphs, graph_x), x)

    def cluster_vector(self, x: Tensor, edge_index: Tensor) -> Tensor:
        r""":math:`\boldsymbol{\phi}_{i_c}`: mean over :math:`s = 1..S` of
        :math:`\hat{\mathbf{A}}^s \mathbf{X}` (row-normalised binary adjacency).

        Sparse form on an edge list; :meth:`forward` computes the same quantity on the
        dense per-graph adjacency (faster for ``n`` up to a few hundred).
        """
        src, dst = edge_index
        h = x
        acc = torch.zeros_like(x)
        for _ in range(self.hops):
            h = scatter(h[src], dst, dim=0, dim_size=x.size(0), reduce="mean")
            acc = acc + h
        return acc / self.hops

    def cluster_labels(self, x: Tensor, batch: Tensor, batch_size: int) -> Tensor:
        """Cluster label of every node ``[N]`` with this layer's method (on detached ``x``)."""
        return cluster_nodes(
            x.detach(), batch, self.k, self.cluster,
            num_iters=self.kmeans_iters, batch_size=batch_size,
            nodes_per_cluster=self.nodes_per_cluster,
        )

    def forward(
        self,
        x: Tensor,
        batch: Tensor | None = None,
        query: Tensor | None = None,
        cluster: Tensor | None = None,
        return_graph: bool = False,
        edge_index: Tensor | None = None,
        edge_weight: Tensor | None = None,
        graph_x: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor]:
        """Run one MDGR iteration.

        The kept edges never leave their graph, so the sums of steps 4-5 run as batched
        matrix products on dense per-graph tensors (the adjacency ``[B, n, n]`` and the
        attention coefficients ``[B, n, H, n]``) instead of gathering and scattering
        ``[E, H, d]`` messages; the softmax itself runs on the ``[E, H]`` edge logits.
        Same edges, same sums in another order (equal up to float rounding), faster on
        CPU, and still :math:`O(B \\, n_{\\max}^2)` memory. Attention dropout draws one
        mask entry per edge and head, as before.

        Args:
            x (Tensor): Node features :math:`(N, d)`.
            batch (LongTensor, optional): Sorted batch vector :math:`(N)`.
            query (Tensor, optional): One query per graph :math:`(B, d)` (Eq. 11);
                :obj:`None` drops the query-aware term. **Candidate mode:** one query per
                candidate :math:`(B, C, d)` (DESIGN.md decision 6): every graph is copied
                once per candidate (graph :math:`bC + c`, :func:`candidate_graphs`), the
                clustering, metric graph and :math:`\alpha_i` are computed once and shared
                (:meth:`prepare`), and the output is :math:`(C N, d)`; equal to :math:`C`
                calls with :math:`(B, d)` queries, up to float rounding.
            cluster (LongTensor, optional): Precomputed cluster labels :math:`(N)`.
            return_graph (bool, optional): Also return ``edge_index``, ``edge_weight``
                and the cluster labels. (default: :obj:`False`)
            edge_index (LongTensor, optional): Fixed edges :math:`(2, E)`, ``j -> i``
                stored as ``[j, i]``, each inside one graph. When given, steps 2-3 are
                skipped (no metric graph): the attention of steps 4-5 runs on these
                edges, see :meth:`forward_fixed`. (default: :obj:`None`)
            edge_weight (Tensor, optional): Weights :math:`(E)` of ``edge_index``, in
                place of :math:`L_{ij}`; :obj:`None` gives unit weights.
                (default: :obj:`None`)
            graph_x (Tensor, optional): Features :math:`(N, d)` that the clustering
                (step 1) and the metric graph (steps 2-3, and so :math:`L_{ij}`) are
                built from, while steps 4-5 update ``x``. **Not in the paper**, which
                builds both from the node states; e.g. the item embeddings alone, so that
                time and position do not decide who is whose neighbour.
                (default: :obj:`None`, ``x`` itself)
        """
        batch, num_graphs = self._check_inputs(x, batch, query, cluster)
        self._check_graph_x(x, graph_x)
        if edge_index is None and edge_weight is not None:
            raise ValueError("'edge_weight' needs 'edge_index'")
        if edge_index is not None:
            if query is not None and query.dim() == 3:
                raise ValueError("candidate queries [B, C, d] need the metric graph; with "
                                 "'edge_index' give one query per graph [B, d]")
            if cluster is None:
                cluster = self.cluster_labels(x if graph_x is None else graph_x, batch,
                                              num_graphs)
            return self.forward_fixed(
                x, batch, query, cluster, edge_index, edge_weight, return_graph
            )
        if self.sparse:
            return self._forward_sparse(x, batch, query, cluster, num_graphs, graph_x,
                                        return_graph)
        shared = self._prepare(x, batch, cluster, num_graphs, graph_x)
        out = self.update(shared, query)
        if return_graph:
            edge_index, edge_weight = self._edges(shared.graph, x)
            return out, edge_index, edge_weight, shared.cluster
        return out

    def prepare(
        self, x: Tensor, batch: Tensor | None = None, cluster: Tensor | None = None,
        num_graphs: int | None = None, graph_x: Tensor | None = None,
    ) -> SharedIteration:
        """Steps 1-4 and :math:`\alpha_i` (Eq. 7-10): everything of the iteration that does
        not depend on the query. :meth:`update` finishes it for one or many queries, so
        in candidate mode the clustering, the metric graph and :math:`\alpha_i` are
        computed once per sequence and shared by all its candidates.

        ``num_graphs`` (default: from ``batch``) counts trailing empty graphs as well;
        ``graph_x`` as in :meth:`forward`.
        """
        batch, found = self._check_inputs(x, batch, None, cluster)
        self._check_graph_x(x, graph_x)
        return self._prepare(x, batch, cluster, max(found, num_graphs or 0), graph_x)

    def _check_graph_x(self, x: Tensor, graph_x: Tensor | None) -> None:
        if graph_x is not None and (graph_x.shape != x.shape
                                    or not graph_x.is_floating_point()):
            raise ValueError(f"'graph_x' must be a floating point tensor of the shape of "
                             f"'x' {tuple(x.shape)} (got {graph_x.dtype}, "
                             f"{tuple(graph_x.shape)})")

    def _prepare(
        self, x: Tensor, batch: Tensor, cluster: Tensor | None, num_graphs: int,
        graph_x: Tensor | None = None,
    ) -> SharedIteration:
        if cluster is None:
            cluster = self.cluster_labels(x if graph_x is None else graph_x, batch,
                                          num_graphs)
        if self.metric_weight is None:
            raise ValueError("this layer has no metric weights; pass 'edge_index'")
        graph = self._sparsify(x, batch, cluster, num_graphs, graph_x)
        if graph is None:  # no graph has an edge
            return SharedIteration(x, batch, num_graphs, cluster, None, None)
        n = graph.n_max
        adj = x.new_zeros(num_graphs, n, n)
        adj.view(-1).index_fill_(0, graph.pair, 1.0)  # adj[b, i, j] = 1 for the edge j -> i
        # Eq. 10, cluster vector: mean over s of (row-normalised A)^s X, isolated -> 0.
        adj_hat = adj / adj.sum(-1, keepdim=True).clamp(min=1)
        h, acc = graph.xd, torch.zeros_like(graph.xd)
        for _ in range(self.hops):
            h = adj_hat @ h
            acc = acc + h
        phi_c = (acc / self.hops)[graph.mask]
        return SharedIteration(x, batch, num_graphs, cluster, graph, self._alpha(x, phi_c))

    def update(self, shared: SharedIteration | Tensor, query: Tensor | None = None) -> Tensor:
        """Eq. 11-13 on the output of :meth:`prepare`.

        ``update`` is also the hook :meth:`propagate` calls on the aggregated messages
        (:class:`~torch_geometric.nn.conv.MessagePassing`); given a tensor, it returns
        it unchanged, as the base class does.

        Args:
            shared: the output of :meth:`prepare`.
            query: :obj:`None` (no query-aware term), one query per graph ``[B, d]``, or
                candidate mode ``[B, C, d]``: graph :math:`b` is copied once per
                candidate :math:`c` as graph :math:`bC + c` (see :func:`candidate_graphs`)
                and each copy is updated with its own query.

        Returns:
            ``[N, d]``, or ``[C N, d]`` in the layout of :func:`candidate_graphs`.
        """
        if isinstance(shared, Tensor):  # called by propagate
            return shared
        x, batch, num_graphs, graph = shared.x, shared.batch, shared.num_graphs, shared.graph
        num_cand = 1 if query is None or query.dim() == 2 else query.size(1)
        if query is not None:
            if query.size(-1) != self.channels or query.size(0) < num_graphs:
                raise ValueError(f"'query' must have {num_graphs} rows of width "
                                 f"{self.channels} (got {tuple(query.shape)})")
            query = query[:num_graphs]
        if graph is None:  # phi = 0 and every node aggregates 0
            if num_cand > 1:
                x = x[candidate_graphs(batch, num_graphs, num_cand)[0]]
            return self._output(x, torch.zeros_like(x))

        n, heads, d = graph.n_max, self.heads, self.channels
        row, col = graph.flat // n, graph.flat % n
        att = F.dropout(self.attention(shared, query), p=self.dropout, training=self.training)
        if not self.binary:  # E_ij * L_ij
            att = att * graph.kept_sim().view(-1, 1, 1)

        # Eq. 13: the coefficients go into a dense [B, C, n_i, H, n_j] tensor (by flat
        # position, an index_copy), and the sum over heads and neighbours is one batched
        # product [B, C n, H n] @ [B, H n, d].
        block = n * heads * n  # entries of one candidate's [n_i, H, n_j] block
        at = (graph.graph * (num_cand * block) + row * (heads * n) + col).view(-1, 1, 1)
        at = (at + (torch.arange(num_cand, device=x.device) * block).view(1, -1, 1)
              + (torch.arange(heads, device=x.device) * n).view(1, 1, -1))
        coef = x.new_zeros(num_graphs * num_cand * block).index_copy(
            0, at.view(-1), att.reshape(-1)).view(num_graphs, num_cand, n, heads, n)
        v = self.lin_v(graph.xd).view(num_graphs, n, heads, d)
        v = v.transpose(1, 2).reshape(num_graphs, heads * n, d)
        agg = (coef.view(num_graphs, num_cand * n, heads * n) @ v) / heads
        agg = agg.view(num_graphs, num_cand, n, d)
        if num_cand == 1:
            return self._output(x, agg[:, 0][graph.mask])
        mask = graph.mask.unsqueeze(1).expand(num_graphs, num_cand, n)
        xe = graph.xd.unsqueeze(1).expand(num_graphs, num_cand, n, d)[mask]
        return self._output(xe, agg[mask])

    def attention(self, shared: SharedIteration, query: Tensor | None = None) -> Tensor:
        r"""Eq. 11-12 on the kept edges of :meth:`prepare`: :math:`E^h_{ij}` ``[E, C, H]``
        (``C = 1`` for no query or one query per graph), edges in the order of
        ``shared.graph.nodes()``, before dropout and :math:`L_{ij}`."""
        graph, x, batch = shared.graph, shared.x, shared.batch
        if graph is None:
            raise ValueError("no kept edges: no graph has two nodes")
        num_cand = 1 if query is None or query.dim() == 2 else query.size(1)
        dst, src = graph.nodes()
        alpha = shared.alpha
        if query is None:
            beta = alpha.new_zeros(alpha.size(0), 1, self.heads)
        else:
            beta = self._beta(x, query, batch).view(alpha.size(0), num_cand, self.heads)
        # Eq. 12 on the edge list: E_ij = softmax over the in-neighbours j of i.
        logit = F.leaky_relu(alpha.index_select(0, dst).unsqueeze(1) + beta.index_select(0, src),
                             self.negative_slope)
        return softmax(logit, dst, num_nodes=x.size(0))

    def forward_fixed(
        self,
        x: Tensor,
        batch: Tensor,
        query: Tensor | None,
        cluster: Tensor,
        edge_index: Tensor,
        edge_weight: Tensor | None = None,
        return_graph: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Steps 4-5 on given edges instead of the metric graph of Eq. 7-9.

        The cluster vector (Eq. 10) is computed as in :meth:`forward` on the given edges
        that join two nodes of the same cluster (:meth:`cluster_vector`; a node without
        such an in-neighbour gets 0), so the labels still define whose features form
        :math:`\boldsymbol{\phi}_{i_c}`. The attention of Eq. 11-13 runs on all given
        edges, with ``edge_weight`` in place of :math:`L_{ij}` (unit weights when
        :obj:`None`). Given the edges, weights and labels that :meth:`forward` returns,
        the result equals :meth:`forward`'s up to float rounding. Inputs are those of
        :meth:`forward` after its checks (``batch`` and ``cluster`` not :obj:`None`).
        """
        num_nodes = x.size(0)
        if (
            edge_index.dim() != 2
            or edge_index.size(0) != 2
            or edge_index.dtype != torch.long
        ):
            raise ValueError(
                f"'edge_index' must be a LongTensor of shape [2, E] "
                f"(got {edge_index.dtype}, {tuple(edge_index.shape)})"
            )
        num_edges = edge_index.size(1)
        if num_edges and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"'edge_index' holds node ids outside [0, {num_nodes})")
        src, dst = edge_index
        if num_edges and bool((batch[src] != batch[dst]).any()):
            raise ValueError("'edge_index' has edges between different graphs")
        if edge_weight is None:
            edge_weight = x.new_ones(num_edges)
        elif edge_weight.shape != (num_edges,) or not edge_weight.is_floating_point():
            raise ValueError(
                f"'edge_weight' must be a floating point tensor of shape [{num_edges}] "
                f"(got {edge_weight.dtype}, {tuple(edge_weight.shape)})"
            )

        same = cluster[src] == cluster[dst]
        phi_c = self.cluster_vector(x, edge_index[:, same])  # Eq. 10
        out = self._attend(x, batch, query, edge_index, edge_weight, phi_c)
        if return_graph:
            return out, edge_index, edge_weight, cluster
        return out

    def _forward_sparse(
        self, x: Tensor, batch: Tensor, query: Tensor | None, cluster: Tensor | None,
        num_graphs: int, graph_x: Tensor | None, return_graph: bool,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor, Tensor]:
        """The message-passing path (``sparse=True``) of :meth:`forward`."""
        gx = x if graph_x is None else graph_x
        if cluster is None:
            cluster = self.cluster_labels(gx, batch, num_graphs)  # step 1
        edge_index, edge_weight = self.build_graph(x, batch, cluster, num_graphs,
                                                   graph_x)  # steps 2-3
        phi_c = self.cluster_vector(x, edge_index)  # Eq. 10: the kept edges are in-cluster
        out = self._attend(x, batch, query, edge_index, edge_weight, phi_c)
        if return_graph:
            return out, edge_index, edge_weight, cluster
        return out

    def _attend(
        self, x: Tensor, batch: Tensor, query: Tensor | None, edge_index: Tensor,
        edge_weight: Tensor | None, phi_c: Tensor,
    ) -> Tensor:
        """Eq. 10-13 by message passing on ``edge_index``: ``[N, d]``, or with
        candidate queries ``[B, C, d]`` ``[C N, d]`` in the layout of
        :func:`candidate_graphs` (the messages of all candidates travel together)."""
        num_nodes = x.size(0)
        alpha = self._alpha(x, phi_c).unsqueeze(1)  # [N, 1, H]
        if query is None:
            beta = alpha.new_zeros(alpha.shape)
        else:
            beta = self._beta(x, query, batch)  # [N, H] or [N, C, H]
            beta = beta.unsqueeze(1) if beta.dim() == 2 else beta
        v = self.lin_v(x).view(num_nodes, self.heads, self.channels)
        agg = self.propagate(edge_index, v=v, alpha=alpha, beta=beta,
                             edge_weight=edge_weight, size=(num_nodes, num_nodes))
        agg = agg.mean(dim=2)  # [N, C, d]: mean over the heads (Eq. 13)
        if query is None or query.dim() == 2:
            return self._output(x, agg[:, 0])
        num_cand = query.size(1)
        node, new_batch = candidate_graphs(batch, query.size(0), num_cand)
        return self._output(x[node], agg[node, new_batch % num_cand])

    def message(self, v_j: Tensor, alpha_i: Tensor, beta_j: Tensor,
                edge_weight: Tensor | None, index: Tensor, ptr: Tensor | None,
                size_i: int | None) -> Tensor:
        r"""Eq. 12-13 on the edges ``j -> i``: :math:`E^h_{ij} L_{ij} \mathbf{W}^h_v
        \mathbf{x}_j`, ``[E, C, H, d]``."""
        logit = F.leaky_relu(alpha_i + beta_j, self.negative_slope)  # [E, C, H]
        coef = softmax(logit, index, ptr, size_i)  # over the in-neighbours j of i
        coef = F.dropout(coef, p=self.dropout, training=self.training)
        if edge_weight is not None:
            coef = coef * edge_weight.view(-1, 1, 1)
        return coef.unsqueeze(-1) * v_j.unsqueeze(1)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, k={self.k}, gamma={self.gamma}, "
            f"delta={self.delta}, heads={self.heads}, cluster='{self.cluster}'"
            + (f", nodes_per_cluster={self.nodes_per_cluster}"
               if self.nodes_per_cluster is not None else "")
            + f"{', sparse=True' if self.sparse else ''})"
        )

