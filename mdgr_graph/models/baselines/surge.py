r"""SURGE: sequential recommendation with graph neural networks (Chang et al., SIGIR 2021).

Chang, Gao, Zheng, Hui, Niu, Song, Jin, Li, "Sequential Recommendation with Graph Neural
Networks", SIGIR 2021 (arXiv 2106.14226). One user sequence becomes an item-item *interest
graph*; graph convolution fuses related behaviours, graph pooling extracts the core
interests, and a target-attentive GRU reads the pooled interests in time order:

1. **Interest graph** (Sec. 3.2): weighted cosine metric with :math:`\phi` learnable heads,
   :math:`M_{ij} = \frac{1}{\phi} \sum_\delta \cos(\mathbf{w}_\delta \odot \mathbf{h}_i,
   \mathbf{w}_\delta \odot \mathbf{h}_j)` over the item embeddings (the same weighted
   cosine as MDGR's Eq. 7-8, :func:`mdgr_graph.nn.metric.weighted_cosine`), sparsified by a
   *relative ranking of the whole graph*: the :math:`\varepsilon n^2` largest entries of
   :math:`M` become edges (:func:`interest_graph`).
2. **Interest fusion** (Sec. 3.3): graph convolution with cluster-aware attention
   :math:`\alpha_i` (node vs. the centre of its :math:`k`-hop neighbourhood) and query-aware
   attention :math:`\beta_j` (neighbour vs. the query item) (:class:`InterestFusionConv`).
3. **Interest extraction** (Sec. 3.4): node importance :math:`\gamma_i = \mathrm{softmax}_i
   (\alpha_i + \beta_i)`, soft assignment :math:`S = \mathrm{softmax}(W_p \mathbf{h}')` of
   the ``n`` nodes to ``pool_size`` clusters, pooled nodes :math:`H^* = S^\top (\gamma
   \odot H')`, pooled graph :math:`A^* = S^\top A S`, readout :math:`\mathbf{h}_g = \sum_i
   \gamma_i \mathbf{h}'_i`, and three regularisers of :math:`S` (:class:`SoftAssignmentPool`).
4. **Prediction** (Sec. 3.5): the pooled nodes, in cluster order, go through an AUGRU whose
   update gate is scaled by the attention of the query on each pooled node
   (:class:`AUGRU`); a two-layer MLP maps
   :math:`[\mathbf{h}_s, \mathbf{h}_g, \mathbf{e}_c, \mathbf{h}_g \odot \mathbf{e}_c]` to the
   logit of candidate :math:`c`.

All of it runs on the whole batch at once: dense per-graph tensors ``[G, n, ...]`` (``n``
the longest history, at most ``max_len``) for the metric, the ranking and the pooling, and
a :class:`~torch_geometric.nn.MessagePassing` edge list with
:func:`torch_geometric.utils.softmax` for the convolution. The deviations from the paper
are listed in :class:`SURGE` and in ``docs/baselines.md``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn import LeakyReLU, Linear, Parameter, Sequential
from torch_geometric.data import Batch
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax, to_dense_adj, to_dense_batch

from mdgr_graph.models.base import (
    SequentialRecommender,
    catalogue_softmax_loss,
    check_train_sample,
    sample_candidates,
)
from mdgr_graph.models.baselines.sasrec import dense_recent
from mdgr_graph.nn.metric import edge_budget, weighted_cosine

#: Where the query of the fusion, extraction and AUGRU attention comes from.
QUERIES = ("last", "candidate")


# ---------------------------------------------------------------------- interest graph
def pair_budget(num_nodes: Tensor, epsilon: float) -> Tensor:
    r"""Unordered pairs kept per graph: :math:`\min(\lceil \varepsilon n^2 / 2 \rceil,
    n(n-1)/2)`, i.e. :math:`\varepsilon n^2` entries of the symmetric :math:`M`, as a
    LongTensor like ``num_nodes``."""
    budget = edge_budget(num_nodes, epsilon / 2)
    return torch.minimum(budget, num_nodes * (num_nodes - 1) // 2)


def interest_graph(sim: Tensor, mask: Tensor, epsilon: float) -> Tensor:
    r"""Graph sparsification by relative ranking of the whole graph (SURGE Eq. 3).

    Within each graph, the unordered pairs :math:`\{i, j\}`, :math:`i \ne j`, of real nodes
    are ranked by :math:`M_{ij}` (ties: lower row-major :math:`(i, j)` with :math:`i < j`
    first, so the result is reproducible), and the :func:`pair_budget` largest become
    edges in both directions. :math:`M` is symmetric, so this is the ranking of its
    :math:`n^2` entries with the diagonal left out and each pair counted once: the graph
    is symmetric, has no self-loops and exactly ``2 * pair_budget(n)`` directed edges.
    The budget is relative to the graph's size, never a threshold on the value.

    Args:
        sim: ``[B, n, n]`` symmetric metric (only its upper triangle is read; not
            differentiated through).
        mask: ``[B, n]`` real nodes (a prefix of each row).
        epsilon: sparsity :math:`\varepsilon \in [0, 1]`.

    Returns:
        ``[B, n, n]`` bool adjacency.
    """
    num_graphs, n = mask.shape
    budget = pair_budget(mask.sum(dim=1), epsilon)
    adj = torch.zeros(num_graphs, n * n, dtype=torch.bool, device=sim.device)
    num_keep = int(budget.max()) if num_graphs else 0
    if num_keep == 0:
        return adj.view(num_graphs, n, n)
    upper = torch.ones(n, n, dtype=torch.bool, device=sim.device).triu(1)
    cand = (upper & mask.unsqueeze(2) & mask.unsqueeze(1)).view(num_graphs, -1)
    scores = sim.detach().reshape(num_graphs, -1).masked_fill(~cand, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :num_keep]
    keep = torch.arange(num_keep, device=sim.device).unsqueeze(0) < budget.unsqueeze(1)
    rows = torch.arange(num_graphs, device=sim.device).unsqueeze(1).expand_as(order)
    adj[rows[keep], order[keep]] = True
    adj = adj.view(num_graphs, n, n)
    return adj | adj.transpose(1, 2)


def _attention_mlp(channels: int, heads: int, negative_slope: float) -> Sequential:
    return Sequential(Linear(3 * channels, channels), LeakyReLU(negative_slope),
                      Linear(channels, heads))


# ---------------------------------------------------------------------- fusion layer
class InterestFusionConv(MessagePassing):
    r"""SURGE's interest-fusion graph convolution with cluster- and query-aware attention
    (Sec. 3.3 of "Sequential Recommendation with Graph Neural Networks", SIGIR 2021).

    With :math:`\mathcal{N}(i)` the in-neighbours of node :math:`i`,
    :math:`\mathbf{c}_i` the mean of the nodes within ``hops`` hops of :math:`i` (node
    :math:`i` included: the centre of its local cluster), :math:`\mathbf{q}` the query of
    node :math:`i`'s graph and :math:`\mathrm{MLP}` two linear layers with a LeakyReLU
    between them:

    .. math::
        \alpha_i &= \mathrm{MLP}_c([\mathbf{W}_c \mathbf{x}_i \,\Vert\, \mathbf{c}_i
        \,\Vert\, \mathbf{W}_c \mathbf{x}_i \odot \mathbf{c}_i])

        \beta_j &= \mathrm{MLP}_q([\mathbf{W}_q \mathbf{x}_j \,\Vert\, \mathbf{q}
        \,\Vert\, \mathbf{W}_q \mathbf{x}_j \odot \mathbf{q}])

        E^h_{ij} &= \mathrm{softmax}_{j \in \mathcal{N}(i)}
        \big(\mathrm{LeakyReLU}(\alpha^h_i + \beta^h_j)\big)

        \mathbf{x}'_i &= \frac{1}{H} \sum_{h=1}^{H} \mathrm{LeakyReLU}\Big(\mathbf{W}^h_a
        \sum_{j \in \mathcal{N}(i)} E^h_{ij}\, w_{ij}\, \mathbf{x}_j + \mathbf{x}_i\Big)

    with edge weights :math:`w_{ij}` (1 on a binary graph). The paper's Eq. 7 reads
    :math:`\mathrm{softmax}_j(\alpha_i + \beta_j)`, in which :math:`\alpha_i` cancels; the
    LeakyReLU before the softmax (as in the authors' released code) keeps it in play. The
    paper concatenates heads; their mean (as in the released code) keeps the width
    :math:`d`. A node without in-neighbours gets :math:`\mathrm{LeakyReLU}(\mathbf{x}_i)`.

    :meth:`scores` returns :math:`\alpha` and :math:`\beta` of any node features, so the
    extraction step can reuse the same attention networks (as SURGE does).

    Args:
        channels (int): node width :math:`d` (input = output).
        heads (int, optional): attention heads :math:`H`. (default: :obj:`1`)
        hops (int, optional): radius of the cluster centre. (default: :obj:`2`)
        negative_slope (float, optional): LeakyReLU slope. (default: :obj:`0.2`)

    Shapes:
        - **input:** node features ``x [N, d]``, ``edge_index [2, E]`` (``j -> i``
          stored as ``[j, i]``, inside one graph), one query per graph ``query [G, d]``,
          sorted ``batch [N]`` with values in ``0..G-1``, ``edge_weight [E]`` *(optional)*
        - **output:** ``[N, d]``
    """

    def __init__(self, channels: int, heads: int = 1, hops: int = 2,
                 negative_slope: float = 0.2) -> None:
        super().__init__(aggr="add", node_dim=0)
        if channels < 1 or heads < 1 or hops < 1:
            raise ValueError(f"'channels', 'heads' and 'hops' must be positive "
                             f"(got {channels}, {heads}, {hops})")
        self.channels, self.heads, self.hops = channels, heads, hops
        self.negative_slope = negative_slope
        self.lin_c = Linear(channels, channels, bias=False)  # W_c
        self.lin_q = Linear(channels, channels, bias=False)  # W_q
        self.att_c = _attention_mlp(channels, heads, negative_slope)
        self.att_q = _attention_mlp(channels, heads, negative_slope)
        self.weight_a = Parameter(torch.empty(heads, channels, channels))  # W_a per head
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.lin_c.reset_parameters()
        self.lin_q.reset_parameters()
        for mlp in (self.att_c, self.att_q):
            mlp[0].reset_parameters()
            mlp[2].reset_parameters()
        for head in self.weight_a:
            nn.init.kaiming_uniform_(head, a=math.sqrt(5))  # as nn.Linear

    def cluster_centre(self, x: Tensor, edge_index: Tensor, batch: Tensor,
                       num_graphs: int) -> Tensor:
        r"""Mean of the nodes within ``hops`` hops of each node, itself included: ``[N, d]``.

        Dense per graph: the reachability :math:`R = ((I + A)^{hops} > 0)` of the
        adjacency ``A[g, i, j] = 1`` for ``j -> i``, then :math:`R X / R \mathbf{1}`.
        """
        xd, mask = to_dense_batch(x, batch, batch_size=num_graphs)
        n = xd.size(1)
        adj = to_dense_adj(edge_index.flip(0), batch, batch_size=num_graphs, max_num_nodes=n)
        reach = torch.eye(n, dtype=x.dtype, device=x.device).expand_as(adj) * mask.unsqueeze(-1)
        step = (adj > 0).to(x.dtype)
        for _ in range(self.hops):
            reach = ((reach + reach @ step) > 0).to(x.dtype)
        centre = (reach @ xd) / reach.sum(-1, keepdim=True).clamp(min=1)
        return centre[mask]

    def scores(self, x: Tensor, edge_index: Tensor, query: Tensor,
               batch: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha [N, H]`` (cluster-aware) and ``beta [N, H]`` (query-aware) of ``x``."""
        centre = self.cluster_centre(x, edge_index, batch, query.size(0))
        xc = self.lin_c(x)
        alpha = self.att_c(torch.cat([xc, centre, xc * centre], dim=-1))
        xq, q = self.lin_q(x), query[batch]
        beta = self.att_q(torch.cat([xq, q, xq * q], dim=-1))
        return alpha, beta

    def forward(self, x: Tensor, edge_index: Tensor, query: Tensor, batch: Tensor,
                edge_weight: Tensor | None = None) -> Tensor:
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(f"'x' must be [N, {self.channels}], got {tuple(x.shape)}")
        if query.dim() != 2 or query.size(1) != self.channels:
            raise ValueError(f"'query' must be [G, {self.channels}], got {tuple(query.shape)}")
        if edge_weight is None:
            edge_weight = x.new_ones(edge_index.size(1))
        alpha, beta = self.scores(x, edge_index, query, batch)
        agg = self.propagate(edge_index, x=x, alpha=alpha, beta=beta,
                             edge_weight=edge_weight)  # [N, H, d]
        out = torch.einsum("nhd,hed->nhe", agg, self.weight_a) + x.unsqueeze(1)
        return F.leaky_relu(out, self.negative_slope).mean(dim=1)

    def message(self, x_j: Tensor, alpha_i: Tensor, beta_j: Tensor, edge_weight: Tensor,
                index: Tensor, ptr: Tensor | None, size_i: int | None) -> Tensor:
        logit = F.leaky_relu(alpha_i + beta_j, self.negative_slope)  # [E, H]
        att = softmax(logit, index, ptr, size_i) * edge_weight.unsqueeze(-1)
        return att.unsqueeze(-1) * x_j.unsqueeze(1)  # [E, H, d]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.channels}, heads={self.heads}, "
                f"hops={self.hops})")


# ---------------------------------------------------------------------- extraction
class Pooled(NamedTuple):
    """Output of :class:`SoftAssignmentPool` (``G`` graphs, ``n`` nodes, ``m`` clusters)."""

    nodes: Tensor  # [G, m, d] pooled nodes H* = S^T (gamma * H)
    adj: Tensor  # [G, m, m] pooled graph A* = S^T A S
    readout: Tensor  # [G, d] h_g = sum_i gamma_i h_i
    assignment: Tensor  # [G, n, m] S (zero rows at padding)


class SoftAssignmentPool(nn.Module):
    r"""SURGE's interest-extraction graph pooling (Sec. 3.4) and its regularisers.

    :math:`S_{i:} = \mathrm{softmax}(W_p \mathbf{h}_i) \in \mathbb{R}^m`,
    :math:`H^* = S^\top (\gamma \odot H)`, :math:`A^* = S^\top A S`,
    :math:`\mathbf{h}_g = \sum_i \gamma_i \mathbf{h}_i`, with node importance
    :math:`\gamma` (a distribution over each graph's nodes). Regularisers
    (:meth:`regularisers`), each averaged over graphs:

    - same mapping :math:`L_M = \lVert A - S S^\top \rVert_F / n`;
    - single affiliation :math:`L_A = \frac{1}{n} \sum_i H(S_{i:})` (entropy);
    - relative position :math:`L_P = \lVert \bar p - P_m \rVert_2 / \sqrt{m}`, with
      :math:`\bar p_c = \sum_i p_i S_{ic} / \sum_i S_{ic}` the mean position of cluster
      :math:`c` (positions :math:`p_i = i / (n-1)`) and :math:`P_m = c / (m-1)`.

    Deviations: the paper's :math:`L_M` and :math:`L_P` are not normalised; dividing by
    :math:`n` and :math:`\sqrt{m}` makes them independent of the sequence length, and the
    paper's :math:`\lVert P_n S - P_m \rVert_2` compares position sums with cluster
    indices, which only match on average, so the mean position per cluster is compared
    with evenly spread targets on the same :math:`[0, 1]` scale.

    Args:
        channels: node width :math:`d`.
        clusters: pooled graph size :math:`m`.

    Shapes:
        - **input:** ``x [G, n, d]``, ``mask [G, n]``, ``importance [G, n]`` (zero at
          padding), ``adj [G, n, n]``
        - **output:** :class:`Pooled`
    """

    def __init__(self, channels: int, clusters: int) -> None:
        super().__init__()
        if clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {clusters}")
        self.channels, self.clusters = channels, clusters
        self.lin_p = Linear(channels, clusters)  # W_p
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_p.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor, importance: Tensor, adj: Tensor) -> Pooled:
        s = torch.softmax(self.lin_p(x), dim=-1) * mask.unsqueeze(-1).to(x.dtype)
        nodes = s.transpose(1, 2) @ (importance.unsqueeze(-1) * x)
        pooled_adj = s.transpose(1, 2) @ adj.to(x.dtype) @ s
        readout = (importance.unsqueeze(-1) * x).sum(dim=1)
        return Pooled(nodes, pooled_adj, readout, s)

    def regularisers(self, s: Tensor, adj: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(L_M, L_A, L_P)``, each a scalar averaged over graphs."""
        maskf = mask.to(s.dtype)
        n = maskf.sum(dim=1).clamp(min=1)  # [G]
        same = (adj.to(s.dtype) - s @ s.transpose(1, 2)).pow(2).sum(dim=(1, 2)).sqrt() / n
        entropy = -(s * torch.log(s.clamp(min=1e-12))).sum(-1)  # [G, n], 0 at padding
        affiliation = (entropy * maskf).sum(1) / n
        m = self.clusters
        pos = torch.arange(mask.size(1), device=s.device, dtype=s.dtype).unsqueeze(0)
        pos = pos / (n - 1).clamp(min=1).unsqueeze(1) * maskf  # [G, n] in [0, 1]
        mean_pos = (pos.unsqueeze(-1) * s).sum(1) / s.sum(1).clamp(min=1e-12)  # [G, m]
        target = torch.arange(m, device=s.device, dtype=s.dtype) / max(m - 1, 1)
        position = (mean_pos - target).pow(2).mean(-1).sqrt()
        return same.mean(), affiliation.mean(), position.mean()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, clusters={self.clusters})"


# ---------------------------------------------------------------------- prediction
class AUGRU(nn.Module):
    r"""GRU with attentional update gate (AUGRU, Zhou et al., DIEN, AAAI 2019).

    .. math::
        \mathbf{u}_t &= \sigma(W_u \mathbf{x}_t + U_u \mathbf{h}_{t-1} + b_u), \quad
        \mathbf{r}_t = \sigma(W_r \mathbf{x}_t + U_r \mathbf{h}_{t-1} + b_r)

        \tilde{\mathbf{h}}_t &= \tanh(W_h \mathbf{x}_t + \mathbf{r}_t \odot
        (U_h \mathbf{h}_{t-1}) + b_h), \quad
        \mathbf{h}_t = (1 - a_t \mathbf{u}_t) \odot \mathbf{h}_{t-1}
        + a_t \mathbf{u}_t \odot \tilde{\mathbf{h}}_t

    starting from :math:`\mathbf{h}_0 = 0`; returns the last state.

    Shapes:
        - **input:** ``x [G, T, d_in]``, attention ``a [G, T]``
        - **output:** ``[G, d]``
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.in_channels, self.channels = in_channels, channels
        self.lin_x = Linear(in_channels, 3 * channels)
        self.lin_h = Linear(channels, 3 * channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_x.reset_parameters()
        self.lin_h.reset_parameters()

    def forward(self, x: Tensor, att: Tensor) -> Tensor:
        gates_x = self.lin_x(x)  # [G, T, 3d], all steps at once
        h = x.new_zeros(x.size(0), self.channels)
        for t in range(x.size(1)):
            xu, xr, xh = gates_x[:, t].chunk(3, dim=-1)
            hu, hr, hh = self.lin_h(h).chunk(3, dim=-1)
            update = torch.sigmoid(xu + hu) * att[:, t].unsqueeze(-1)
            reset = torch.sigmoid(xr + hr)
            cand = torch.tanh(xh + reset * hh)
            h = (1 - update) * h + update * cand
        return h

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.in_channels}, {self.channels})"


class UserState(NamedTuple):
    """What the scorer needs from the history, for ``Q`` queries per sequence."""

    final: Tensor  # [B, Q, d] AUGRU state h_s
    readout: Tensor  # [B, Q, d] graph readout h_g
    regularisers: tuple[Tensor, Tensor, Tensor]  # L_M, L_A, L_P (scalars)


# ---------------------------------------------------------------------- the model
class SURGE(SequentialRecommender):
    r"""SURGE (Chang et al., SIGIR 2021) on batches of sequence graphs.

    The nodes are the item embeddings of the history (cut to the most recent ``max_len``).
    :func:`weighted_cosine` with ``metric_heads`` heads and :func:`interest_graph` build
    the interest graph; one :class:`InterestFusionConv`, node importance :math:`\gamma =
    \mathrm{softmax}_i(\bar\alpha_i + \bar\beta_i)` (head means, from the same attention
    networks on the fused nodes), :class:`SoftAssignmentPool` to ``pool_size`` clusters,
    target attention :math:`a_t = \mathrm{softmax}_t(\mathbf{h}^{*\top}_t W \mathbf{q})`,
    an :class:`AUGRU` over the pooled nodes in cluster order, and
    :math:`\hat y_c = \mathrm{MLP}([\mathbf{h}_s, \mathbf{h}_g, \mathbf{e}_c,
    \mathbf{h}_g \odot \mathbf{e}_c])` (Linear, ReLU, Linear).

    Loss: the project's BCE over the candidates (the paper's log loss) plus
    :math:`\lambda_M L_M + \lambda_A L_A + \lambda_P L_P` (:class:`SoftAssignmentPool`);
    the paper's L2 term is left to the optimiser's weight decay.

    **The query.** SURGE is a click-through model: the target item is the query of the
    query-aware attention, the node importance and the AUGRU attention, so the whole graph
    is rebuilt per candidate. ``query="candidate"`` does exactly that (``B * C`` graphs
    per batch; exact but about ``C`` times slower, and ``score_all`` runs the graph for
    every item, in chunks of ``candidate_chunk``). ``query="last"`` (default) uses the
    last item of the history as the query instead, as MDGR does (DESIGN.md decision 6),
    so the graph runs once per sequence and only the final MLP sees the candidate;
    ``score_all`` is then exact and cheap (the MLP's first layer is split into a user part
    and an item part, the same map as on the concatenation).

    Other deviations from the paper (docs/baselines.md):

    - nodes are item embeddings only (no category embeddings in our data);
    - the ranking keeps the :math:`\varepsilon n^2` largest entries of :math:`M` off the
      diagonal, counting each symmetric pair once, so the graph is exactly symmetric and
      self-similarity (always maximal) does not use up the budget;
    - edges carry :math:`M_{ij}` as weight in the convolution (``binary=False``, MDGR's
      DESIGN.md decision 2): with the paper's binary :math:`A` the metric weights get no
      gradient at all; ``binary=True`` is the literal form;
    - the LeakyReLU before the attention softmax and the mean over heads (see
      :class:`InterestFusionConv`); normalised :math:`L_M`, :math:`L_P` (see
      :class:`SoftAssignmentPool`);
    - one fusion/extraction layer (the released code's default) and a bilinear target
      attention in the AUGRU; :math:`\lambda`s, :math:`\varepsilon` and ``pool_size`` are
      our defaults, not tuned values from the paper.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: longest history read (longer ones are cut to the most recent).
            (default: :obj:`50`)
        dim: width :math:`d`. (default: :obj:`32`)
        metric_heads: heads :math:`\phi` of the weighted cosine. (default: :obj:`4`)
        epsilon: sparsity :math:`\varepsilon` (share of :math:`M`'s entries kept; the
            released code's relative threshold). (default: :obj:`0.5`)
        conv_heads: attention heads of the fusion layer. (default: :obj:`1`)
        hops: radius of the cluster centre. (default: :obj:`2`)
        pool_size: clusters :math:`m` of the pooled graph. (default: :obj:`10`)
        mlp_hidden: hidden width of the prediction MLP. (default: :obj:`64`)
        query: ``"last"`` or ``"candidate"`` (see above). (default: :obj:`"last"`)
        binary: unweighted edges (paper's literal Eq. 3). (default: :obj:`False`)
        lambda_m, lambda_a, lambda_p: weights of the three regularisers.
            (default: :obj:`0.1` each)
        candidate_chunk: candidates per graph pass with ``query="candidate"`` (in
            ``score_candidates`` and ``score_all``). (default: :obj:`64`)
        train_positives, train_negatives: with ``query="candidate"``, the positives and
            negatives of each window drawn per training step
            (:func:`~mdgr_graph.models.base.sample_candidates`), as the official code's
            1 positive + 4 negatives; both :obj:`None`: all candidates. Ignored with
            ``query="last"``. (default: :obj:`1`, :obj:`4`)
    """

    def __init__(
        self,
        num_items: int,
        max_len: int = 50,
        dim: int = 32,
        metric_heads: int = 4,
        epsilon: float = 0.5,
        conv_heads: int = 1,
        hops: int = 2,
        pool_size: int = 10,
        mlp_hidden: int = 64,
        query: str = "last",
        binary: bool = False,
        lambda_m: float = 0.1,
        lambda_a: float = 0.1,
        lambda_p: float = 0.1,
        candidate_chunk: int = 64,
        train_positives: int | None = 1,
        train_negatives: int | None = 4,
    ) -> None:
        super().__init__(num_items)
        self.train_sample = check_train_sample(train_positives, train_negatives)
        if max_len < 1 or dim < 1 or metric_heads < 1 or mlp_hidden < 1 or candidate_chunk < 1:
            raise ValueError("max_len, dim, metric_heads, mlp_hidden and candidate_chunk must "
                             "be positive")
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
        if query not in QUERIES:
            raise ValueError(f"unknown query {query!r}; choose from {', '.join(QUERIES)}")
        if min(lambda_m, lambda_a, lambda_p) < 0:
            raise ValueError("the regulariser weights must be >= 0")
        self.max_len, self.dim, self.epsilon = max_len, dim, epsilon
        self.query, self.binary = query, binary
        self.lambdas = (lambda_m, lambda_a, lambda_p)
        self.candidate_chunk = candidate_chunk
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.metric_weight = Parameter(torch.empty(metric_heads, dim))
        self.conv = InterestFusionConv(dim, heads=conv_heads, hops=hops)
        self.pool = SoftAssignmentPool(dim, pool_size)
        self.target_att = Parameter(torch.empty(dim, dim))  # W of a_t
        self.augru = AUGRU(dim, dim)
        self.mlp_hidden = Linear(4 * dim, mlp_hidden)
        self.mlp_out = Linear(mlp_hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        # close to the plain cosine at the start, heads slightly apart (as MDGR's metric)
        nn.init.normal_(self.metric_weight, mean=1.0, std=0.1)
        nn.init.xavier_uniform_(self.target_att)
        for module in (self.conv, self.pool, self.augru, self.mlp_hidden, self.mlp_out):
            module.reset_parameters()

    # ------------------------------------------------------------------ inputs
    def dense_history(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Right-padded item ids ``[B, n]`` and mask ``[B, n]``, cut to the last ``max_len``."""
        self._check_batch(batch)
        return dense_recent(batch.x, batch.batch, batch.num_graphs, self.max_len)

    # ------------------------------------------------------------------ the graph part
    def graph(self, items: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Node embeddings ``[B, n, d]``, metric ``M [B, n, n]``, adjacency ``[B, n, n]``."""
        h = self.item_emb(items)
        sim = weighted_cosine(h, self.metric_weight)
        return h, sim, interest_graph(sim, mask, self.epsilon)

    def user_state(self, items: Tensor, mask: Tensor, queries: Tensor) -> UserState:
        """Fusion, extraction and the AUGRU for every (sequence, query) pair.

        Args:
            items: ``[B, n]`` right-padded history; mask ``[B, n]``.
            queries: ``[B, Q, d]`` query embeddings (the last item, ``Q = 1``, or the
                candidates).

        Returns:
            :class:`UserState` with ``[B, Q, d]`` tensors.
        """
        h, sim, adj = self.graph(items, mask)
        num_seq, n, d = h.shape
        num_q = queries.size(1)
        num_graphs = num_seq * num_q
        # graph g = b * Q + q: the history of b with the query q (shared parts expanded)
        hd = h.unsqueeze(1).expand(num_seq, num_q, n, d).reshape(num_graphs, n, d)
        mask_g = mask.unsqueeze(1).expand(num_seq, num_q, n).reshape(num_graphs, n)
        adj_g = adj.unsqueeze(1).expand(num_seq, num_q, n, n).reshape(num_graphs, n, n)
        query = queries.reshape(num_graphs, d)

        x = hd[mask_g]  # [N, d]
        node = torch.cumsum(mask_g.reshape(-1), 0).view(num_graphs, n) - 1
        g, i, j = adj_g.nonzero(as_tuple=True)  # edge j -> i
        edge_index = torch.stack([node[g, j], node[g, i]])
        batch = mask_g.nonzero(as_tuple=True)[0]
        edge_weight = None
        if not self.binary:
            edge_weight = sim.unsqueeze(1).expand(num_seq, num_q, n, n).reshape(
                num_graphs, n, n)[g, i, j]

        fused = self.conv(x, edge_index, query, batch, edge_weight)  # Sec. 3.3
        alpha, beta = self.conv.scores(fused, edge_index, query, batch)
        importance = softmax((alpha + beta).mean(dim=-1), batch, num_nodes=x.size(0))
        fused_d, _ = to_dense_batch(fused, batch, batch_size=num_graphs, max_num_nodes=n)
        imp_d, _ = to_dense_batch(importance, batch, batch_size=num_graphs, max_num_nodes=n)
        pooled = self.pool(fused_d, mask_g, imp_d, adj_g)  # Sec. 3.4

        logit = torch.einsum("gmd,de,ge->gm", pooled.nodes, self.target_att, query)
        final = self.augru(pooled.nodes, torch.softmax(logit, dim=-1))  # Sec. 3.5
        regs = self.pool.regularisers(pooled.assignment, adj_g, mask_g)
        return UserState(final.view(num_seq, num_q, d),
                         pooled.readout.view(num_seq, num_q, d), regs)

    def _last_query(self, items: Tensor, mask: Tensor) -> Tensor:
        last = items.gather(1, (mask.sum(dim=1) - 1).unsqueeze(1))  # [B, 1]
        return self.item_emb(last)

    # ------------------------------------------------------------------ scores
    def _logits(self, state: UserState, items: Tensor) -> Tensor:
        r"""MLP over ``[h_s, h_g, e, h_g * e]``; ``items`` is ``[B, C, d]`` or ``[K, d]``.

        The first layer is applied block by block (user part once per query, item part
        once per item), which is the same map as on the concatenation. For items shared
        by every sequence (``[K, d]``: the catalogue) the two item blocks are folded into
        one matrix per sequence, :math:`W_e + W_{ge}\,\mathrm{diag}(\mathbf{h}_g)`, since
        :math:`(\mathbf{h}_g \odot \mathbf{e}) W_{ge}^\top = \mathbf{e}\,(W_{ge}
        \mathrm{diag}(\mathbf{h}_g))^\top`: one batched product instead of a ``[B, K, d]``
        elementwise product and two (with the blocks of :meth:`score_all`, 3.4x faster
        scoring of the catalogue; the same values up to float rounding).
        """
        w_s, w_g, w_e, w_ge = self.mlp_hidden.weight.split(self.dim, dim=1)
        user = state.final @ w_s.t() + state.readout @ w_g.t() + self.mlp_hidden.bias
        if items.dim() == 2 and state.readout.size(1) == 1:  # one state per sequence
            per_user = w_e + w_ge * state.readout  # [B, h, d]
            hidden = torch.baddbmm(user, items.expand(user.size(0), -1, -1),
                                   per_user.transpose(1, 2))  # [B, K, h]
        else:
            if items.dim() == 2:
                items = items.unsqueeze(0)  # [1, K, d], shared by every sequence
            hidden = user + items @ w_e.t() + (state.readout * items) @ w_ge.t()  # [B, C, h]
        return self.mlp_out(torch.relu(hidden)).squeeze(-1)

    def _scores_and_state(self, batch: Batch, candidates: Tensor) -> tuple[Tensor, UserState]:
        items, mask = self.dense_history(batch)
        cand = self.item_emb(candidates)
        queries = cand if self.query == "candidate" else self._last_query(items, mask)
        state = self.user_state(items, mask, queries)
        return self._logits(state, cand), state

    def score_candidates(self, batch: Batch) -> Tensor:
        """Logits of ``batch.candidates``: ``[B, C]`` (candidate mode: in chunks of
        ``candidate_chunk`` candidates)."""
        self._check_candidates(batch)
        if self.query == "last":
            return self._scores_and_state(batch, batch.candidates)[0]
        chunk = self.candidate_chunk
        return torch.cat([self._scores_and_state(batch, batch.candidates[:, i : i + chunk])[0]
                          for i in range(0, batch.candidates.size(1), chunk)], dim=1)

    @property
    def ranks_catalogue_in_one_pass(self) -> bool:
        return self.query == "last"

    #: Hidden activations ``[sequences, items, mlp_hidden]`` per block of ``score_all``
    #: (8 MiB: small enough to stay in cache; evaluation on amazon-beauty ran 1.7x faster
    #: than with all 256 sequences of a batch at a time).
    SCORE_BLOCK_FLOATS = 2**21

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` (column 0 included), exact.

        ``query="last"``: one graph pass, then the MLP in item chunks of ``chunk_size``
        (at most 1,024) and blocks of sequences (:attr:`SCORE_BLOCK_FLOATS`).
        ``query="candidate"``: one graph pass per item, in chunks of ``candidate_chunk``.
        """
        items, mask = self.dense_history(batch)
        table = self.item_emb.weight
        if self.query == "last":
            state = self.user_state(items, mask, self._last_query(items, mask))
            chunk_size = min(chunk_size, 1024)
            block = max(1, self.SCORE_BLOCK_FLOATS // (chunk_size * self.mlp_hidden.out_features))

            def logits(chunk: Tensor) -> Tensor:  # sequences in blocks: [block, chunk, h]
                return torch.cat([
                    self._logits(state._replace(final=state.final[s : s + block],
                                                readout=state.readout[s : s + block]), chunk)
                    for s in range(0, state.final.size(0), block)])

            return self.score_item_chunks(logits, table, chunk_size)

        def per_item(chunk: Tensor) -> Tensor:
            queries = chunk.unsqueeze(0).expand(items.size(0), -1, -1)
            return self._logits(self.user_state(items, mask, queries), queries)

        return self.score_item_chunks(per_item, table, min(chunk_size, self.candidate_chunk))

    def loss(self, batch: Batch) -> Tensor:
        """The candidate loss (:attr:`candidate_loss_kind`, BCE by default; ``"ce"``,
        last-item mode only: a softmax over every item, :data:`CE_CHUNK` positives at a
        time) + the weighted regularisers of the assignment."""
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        candidates = batch.candidates
        if self.candidate_loss_kind == "ce":
            return self._catalogue_loss(batch, labels)
        if self.query == "candidate" and self.train_sample is not None:
            candidates, labels = sample_candidates(candidates, labels, *self.train_sample)
        logits, state = self._scores_and_state(batch, candidates)
        return self._add_regularisers(self.loss_over_candidates(logits, labels), state)

    #: Positives per checkpointed chunk of the catalogue softmax (``[chunk, items, hidden]``).
    CE_CHUNK = 16

    def _catalogue_loss(self, batch: Batch, labels: Tensor) -> Tensor:
        if self.query == "candidate":
            raise ValueError("loss 'ce' scores every item against one user state: use "
                             "query='last' (candidate mode runs one graph per candidate)")
        items, mask = self.dense_history(batch)
        state = self.user_state(items, mask, self._last_query(items, mask))
        rows, column = labels.bool().nonzero(as_tuple=True)

        def logits(chunk: Tensor) -> Tensor:
            part = state._replace(final=state.final[chunk], readout=state.readout[chunk])
            return self._logits(part, self.item_emb.weight)

        loss = catalogue_softmax_loss(logits, rows, batch.candidates[rows, column],
                                      chunk_size=self.CE_CHUNK)
        return self._add_regularisers(loss, state)

    def _add_regularisers(self, loss: Tensor, state: UserState) -> Tensor:
        for weight, reg in zip(self.lambdas, state.regularisers, strict=True):
            if weight:
                loss = loss + weight * reg
        return loss

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, dim={self.dim}, "
            f"metric_heads={self.metric_weight.size(0)}, epsilon={self.epsilon}, "
            f"pool_size={self.pool.clusters}, query='{self.query}', binary={self.binary}"
            + (f", train_sample={self.train_sample}" if self.query == "candidate" else "")
            + ")"
        )
