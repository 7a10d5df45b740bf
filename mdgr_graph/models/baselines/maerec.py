r"""MAERec: graph masked autoencoder for sequential recommendation (Ye et al., SIGIR 2023).

Ye, Xia, Huang, "Graph Masked Autoencoder for Sequential Recommendation", SIGIR 2023 (the
MDGR paper's reference [35]; the authors' code is HKUDS/MAERec, read for every detail
below). One global item *transition graph* is built from the training sequences; each
training step masks paths of it, encodes the masked graph with a parameter-free GCN,
reconstructs the masked edges, and feeds the graph-enhanced item embeddings to a SASRec-style
transformer that predicts the next items:

1. **Transition graph** (:func:`transition_graph`): items ``i`` and ``j`` are linked when
   one follows the other within ``distance`` steps in some user's *training* interactions
   (:meth:`~mdgr_graph.data.prepare.PreparedDataset.training_interactions`), symmetric,
   binary, with a self-loop on every item (the authors' ``A + I``).
2. **Learning to mask** (:func:`semantic_scores`): every item scores the cosine between its
   embedding and a *subgraph embedding* aggregated over ``mask_depth`` hops of the graph with
   randomly dropped edges (drop probability ``path_prob ** k`` at hop ``k``, compounding);
   Gumbel noise is added and the ``num_anchors`` best items become the anchors.
3. **Path masking** (:func:`mask_paths`): the edges touching the anchors are masked; the
   endpoints of the masked edges, subsampled to a fraction ``path_prob ** k``, are the seeds
   of hop ``k + 1``, for ``mask_depth`` hops.
4. **Encoder** (:class:`TransitionConv`): ``gcn_layers`` rounds of
   :math:`H^{l+1} = \hat{A} H^l` with the symmetric-normalised adjacency
   :math:`\hat{A} = D^{-1/2} A D^{-1/2}` of the *remaining* edges; item table
   :math:`E = \sum_l H^l` (layer 0, the ego embeddings, included).
5. **Decoder** (:class:`EdgeDecoder`): an MLP with a sigmoid output on
   :math:`[H^i_u \odot H^j_v]_{i, j < L}` scores an edge; ``recon_edges`` masked edges are
   sampled, each against ``recon_negatives`` non-edges (half with a new tail, half with a
   new head), loss :math:`-\sum_{(u,v)} \frac{e^{s^+}}{e^{s^+} + \sum e^{s^-}}`.
6. **Recommender** (:class:`MAERecBlock`): :math:`h^0 = \mathrm{Drop}(\mathrm{LN}(E_{s_j} +
   P_j))`, ``num_blocks`` causal post-LN transformer blocks, the *sum* of all block outputs
   (input included) is the state; score :math:`\langle h_{n-1}, E_i \rangle`.

Loss: recommendation + ``recon_weight`` x reconstruction + ``mask_weight`` x the task-adaptive
regulariser :math:`-r \cdot \mathrm{mean}_i(\mathrm{score}_i)` (the learning-to-mask scores,
reward :math:`r = 1` when the recommendation loss fell by more than its average fall over the
``reward_window - 1`` steps before, else ``reward_eps``) + ``l2_weight`` x the squared norm of all
parameters. At evaluation (``score_candidates``, ``score_all``) the unmasked graph is used.

All randomness (edge dropout, Gumbel noise, seed subsampling, edge and negative sampling)
comes from torch's global generator, which :func:`~mdgr_graph.train.fit` seeds every epoch.
The deviations from the authors' code are listed in :class:`MAERec`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import coalesce, cumsum, degree, is_sparse

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import (
    check_interactions,
    check_positive,
)
from mdgr_graph.models.baselines.sasrec import CausalSequenceRecommender, check_transformer_options


# ---------------------------------------------------------------------- graph
def transition_graph(user: Tensor, item: Tensor, num_items: int, distance: int) -> Tensor:
    """The symmetric item transition graph with self-loops, as a sorted ``edge_index``.

    Args:
        user: ``[M]`` owner of every interaction; a user's interactions are contiguous and
            in time order (:meth:`PreparedDataset.training_interactions`).
        item: ``[M]`` item ids in ``1..num_items``.
        num_items: number of real items; the graph has ``num_items + 1`` nodes (0 = padding).
        distance: link items at most this many steps apart in a user's sequence.

    Returns:
        ``[2, E]``: both directions of every linked pair plus a self-loop on every node
        ``0..num_items``, without duplicates, sorted by (row, column).
    """
    if distance < 1:
        raise ValueError(f"distance must be >= 1, got {distance}")
    user, item = check_interactions(user, item, num_items)
    rows, cols = [], []
    for dist in range(1, min(distance, max(item.numel() - 1, 0)) + 1):
        same = user[dist:] == user[:-dist]
        a, b = item[:-dist][same], item[dist:][same]
        rows += [a, b]
        cols += [b, a]
    loops = torch.arange(num_items + 1)
    edge_index = torch.stack([torch.cat([*rows, loops]), torch.cat([*cols, loops])])
    return coalesce(edge_index, num_nodes=num_items + 1)


def csr(row: Tensor, col: Tensor, value: Tensor, num_nodes: int) -> Tensor:
    """A ``[num_nodes, num_nodes]`` CSR matrix from entries sorted by ``row``."""
    counts = torch.bincount(row, minlength=num_nodes)
    crow = cumsum(counts)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support.*")
        return torch.sparse_csr_tensor(crow, col, value, (num_nodes, num_nodes),
                                       check_invariants=False)


class _SparseMatmul(torch.autograd.Function):
    """``adj @ x`` with the gradient ``adj_t @ grad`` (CSR on both sides: the autograd of
    ``torch.sparse.mm`` would transpose ``adj`` on every backward pass)."""

    @staticmethod
    def forward(ctx, adj: Tensor, adj_t: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj_t = adj_t
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.adj_t, grad)


def sparse_matmul(adj: Tensor, x: Tensor, adj_t: Tensor | None = None) -> Tensor:
    """``adj @ x`` for a CSR ``adj`` ``[n, n]`` and dense ``x [n, d]``; ``adj_t`` is the
    transpose (``None``: ``adj`` is symmetric)."""
    return _SparseMatmul.apply(adj, adj if adj_t is None else adj_t, x)


def transpose_order(edge_index: Tensor, num_nodes: int) -> Tensor:
    """``[E]`` permutation listing the edges sorted by (column, row), for transposes."""
    row, col = edge_index
    return torch.argsort(col * num_nodes + row)


def _kept_csr(row: Tensor, col: Tensor, value: Tensor | None, keep: Tensor,
              num_nodes: int) -> Tensor:
    """CSR of the kept entries of a row-sorted list, without boolean gathers of ``row``:
    the row pointer is the running count of kept entries at each row's start."""
    counts = torch.bincount(row, minlength=num_nodes)
    start = cumsum(counts)
    kept = cumsum(keep.long())
    idx = keep.nonzero().view(-1)
    val = torch.ones(idx.numel(), device=row.device) if value is None else value[idx]
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support.*")
        return torch.sparse_csr_tensor(kept[start], col[idx], val, (num_nodes, num_nodes),
                                       check_invariants=False)


def subset_csr(edge_index: Tensor, keep: Tensor, value: Tensor | None, num_nodes: int,
               order_t: Tensor) -> tuple[Tensor, Tensor]:
    """The CSR matrix of the kept edges and its transpose, without sorting.

    Args:
        edge_index: ``[2, E]`` sorted by (row, column).
        keep: ``[E]`` bool, edges kept.
        value: ``[E]`` entry of every edge (``None``: ones).
        num_nodes: size of the matrix.
        order_t: :func:`transpose_order` of ``edge_index``.
    """
    row, col = edge_index
    adj = _kept_csr(row, col, value, keep, num_nodes)
    adj_t = _kept_csr(col[order_t], row[order_t], None if value is None else value[order_t],
                      keep[order_t], num_nodes)
    return adj, adj_t


def gcn_norm_values(edge_index: Tensor, keep: Tensor, num_nodes: int) -> Tensor:
    r"""``[E]`` entries :math:`d_u^{-1/2} d_v^{-1/2}` of :math:`D^{-1/2} A D^{-1/2}` over
    the kept edges (0 at the others), degrees counted over the kept edges."""
    row, col = edge_index
    deg = torch.bincount(row, weights=keep.float(), minlength=num_nodes).float()
    inv = (deg + 1e-12).pow(-0.5)
    return inv[row] * inv[col] * keep.float()


# ---------------------------------------------------------------------- masking
def semantic_scores(edge_index: Tensor, order_t: Tensor, x: Tensor, depth: int,
                    path_prob: float) -> Tensor:
    r"""The learning-to-mask score of every node (the authors' ``LocalGraph``, no noise).

    With the 0/1 adjacency :math:`A` (self-loops included) and degrees :math:`o`:
    :math:`e_0 = A x - x`, :math:`n_0 = o`; for :math:`k = 1..` ``depth``, :math:`A` loses
    each of its remaining entries with probability ``path_prob ** k`` (``torch.rand``),
    :math:`e_k = A e_{k-1} - e_{k-1} - o\, e_{k-1}`,
    :math:`n_k = A n_{k-1} - n_{k-1} - o`, then :math:`o` becomes the degrees of the
    dropped :math:`A`. The subgraph embedding :math:`s = \sum_k e_k / (\sum_k n_k +
    10^{-8})` and the score is :math:`\cos(s, x)`.

    Args:
        edge_index: ``[2, E]`` the graph, sorted by (row, column).
        order_t: :func:`transpose_order` of ``edge_index``.
        x: ``[n, d]`` node embeddings (the gradient flows into them).
        depth: hops ``mask_depth``.
        path_prob: base of the drop probabilities.

    Returns:
        ``[n]`` scores in ``[-1, 1]``.
    """
    n = x.shape[0]
    row = edge_index[0]
    keep = torch.ones(row.numel(), dtype=torch.bool, device=x.device)
    adj = _kept_csr(row, edge_index[1], None, keep, n)  # symmetric: its own transpose
    order = degree(row, n, dtype=x.dtype).unsqueeze(-1)
    emb = [sparse_matmul(adj, x) - x]
    num = [order]
    for k in range(1, depth + 1):
        idx = keep.nonzero().view(-1)
        keep = keep.clone()
        keep[idx] = torch.rand(idx.numel(), device=x.device) >= path_prob ** k
        adj, adj_t = subset_csr(edge_index, keep, None, n, order_t)
        emb.append(sparse_matmul(adj, emb[-1], adj_t) - emb[-1] - order * emb[-1])
        num.append(torch.sparse.mm(adj, num[-1]) - num[-1] - order)
        order = torch.bincount(row, weights=keep.to(x.dtype), minlength=n)
        order = order.to(x.dtype).unsqueeze(-1)
    sub = torch.stack(emb).sum(0) / (torch.stack(num).sum(0) + 1e-8)
    return (F.normalize(sub, dim=-1) * F.normalize(x, dim=-1)).sum(-1)


def mask_paths(edge_index: Tensor, anchors: Tensor, depth: int,
               path_prob: float) -> tuple[Tensor, Tensor]:
    """Mask the edges on paths of up to ``depth`` hops from the anchors.

    Hop ``k = 0..depth-1`` masks every remaining edge with an endpoint among the seeds (the
    anchors at hop 0); the distinct endpoints of the edges masked at hop ``k`` are permuted
    (``torch.randperm``) and the first ``int(count * path_prob ** (k + 1))`` become the seeds
    of hop ``k + 1``.

    Args:
        edge_index: ``[2, E]`` the graph (symmetric, so the masking is too).
        anchors: ``[A]`` node ids.
        depth: number of hops.
        path_prob: base of the fraction of endpoints kept as the next seeds.

    Returns:
        ``remaining [E]`` and ``masked [E]`` (bool, complementary).
    """
    row, col = edge_index
    num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
    num_nodes = max(num_nodes, int(anchors.max()) + 1 if anchors.numel() else 0)
    seeds = torch.zeros(num_nodes, dtype=torch.bool, device=row.device)
    seeds[anchors] = True
    remaining = torch.ones(row.numel(), dtype=torch.bool, device=row.device)
    for k in range(depth):
        hit = remaining & (seeds[row] | seeds[col])
        remaining = remaining & ~hit
        if k == depth - 1:
            break
        ends = torch.zeros_like(seeds)
        ends[row[hit]] = True
        ends[col[hit]] = True
        ends = ends.nonzero().view(-1)  # the distinct endpoints, ascending
        chosen = ends[torch.randperm(ends.numel(), device=row.device)]
        chosen = chosen[: int(ends.numel() * path_prob ** (k + 1))]
        seeds = torch.zeros_like(seeds)
        seeds[chosen] = True
    return remaining, ~remaining


def sample_negative_edges(pos: Tensor, edge_key: Tensor, num_nodes: int, num: int,
                          max_tries: int = 20) -> Tensor:
    """Non-edges for each positive edge: ``num // 2`` with a new tail, ``num // 2`` with a
    new head, drawn uniformly from ``1..num_nodes-1`` and redrawn (up to ``max_tries``
    times, all at once) while they are edges of the graph.

    Args:
        pos: ``[P, 2]`` positive edges ``(u, v)``.
        edge_key: ``[E]`` sorted keys ``u * num_nodes + v`` of the graph's edges.
        num_nodes: nodes of the graph (0 is padding and never drawn).
        num: negatives per positive edge.

    Returns:
        ``[P, 2 * (num // 2), 2]``.
    """
    half = num // 2
    u = pos[:, :1].expand(-1, half)
    v = pos[:, 1:].expand(-1, half)
    heads = torch.cat([u, torch.zeros_like(u)], 1)
    tails = torch.cat([torch.zeros_like(v), v], 1)
    free = torch.cat([torch.zeros_like(u), torch.ones_like(u)], 1).bool()  # True: new head
    draw = torch.ones_like(heads, dtype=torch.bool)
    for _ in range(max_tries):
        count = int(draw.sum())
        if count == 0:
            break
        new = torch.randint(1, num_nodes, (count,), device=pos.device)
        heads[draw & free] = new[free[draw]]
        tails[draw & ~free] = new[~free[draw]]
        key = heads * num_nodes + tails
        found = torch.searchsorted(edge_key, key).clamp(max=max(edge_key.numel() - 1, 0))
        draw = (edge_key[found] == key) if edge_key.numel() else torch.zeros_like(draw)
    return torch.stack([heads, tails], -1)


# ---------------------------------------------------------------------- layers
class TransitionConv(MessagePassing):
    r"""The parameter-free graph convolution of MAERec's encoder,
    :math:`\mathbf{x}'_i = \sum_{j} \hat{a}_{ij} \mathbf{x}_j` (LightGCN-style, no weight,
    no non-linearity), with :math:`\hat{a}` the normalised adjacency.

    ``edge_index`` is either a ``[2, E]`` edge list with ``edge_weight [E]`` (messages
    :math:`\hat{a}_{ij} \mathbf{x}_j`, then a sum: the reference path) or a *symmetric* CSR
    matrix (one sparse product, and its own transpose in the backward pass: the fast path).

    Shapes:
        - **input:** ``x [n, d]``, ``edge_index [2, E]`` or CSR ``[n, n]``,
          ``edge_weight [E]``
        - **output:** ``[n, d]``
    """

    def __init__(self) -> None:
        super().__init__(aggr="add")

    def reset_parameters(self) -> None:
        super().reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None
                ) -> Tensor:
        if not is_sparse(edge_index) and edge_weight is None:
            raise ValueError("TransitionConv needs edge_weight with an edge list")
        return self.propagate(edge_index, x=x, edge_weight=edge_weight)

    def message(self, x_j: Tensor, edge_weight: Tensor) -> Tensor:
        return edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        return sparse_matmul(adj_t, x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class EdgeDecoder(nn.Module):
    r"""MAERec's edge decoder: an MLP on the products of the endpoints' layer embeddings.

    :math:`s(u, v) = \sigma(\mathrm{MLP}([H^i_u \odot H^j_v]_{i, j = 0..L-1}))` with
    ``L = layers`` (the ego embeddings and the first ``L - 1`` GCN outputs, as the authors'
    loops), MLP :math:`L^2 d \to L d \to d \to 1` with ReLU.

    Args:
        dim: embedding width ``d``.
        layers: number ``L`` of layer embeddings read.
    """

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.dim, self.layers = dim, layers
        self.mlp = nn.Sequential(
            nn.Linear(dim * layers**2, dim * layers), nn.ReLU(),
            nn.Linear(dim * layers, dim), nn.ReLU(),
            nn.Linear(dim, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def score(self, embeds: list[Tensor], u: Tensor, v: Tensor) -> Tensor:
        """Scores in ``(0, 1)`` of the edges ``(u, v)`` (any equal shapes ``[...]``)."""
        feats = [embeds[i][u] * embeds[j][v]
                 for i in range(self.layers) for j in range(self.layers)]
        return torch.sigmoid(self.mlp(torch.cat(feats, -1))).squeeze(-1)

    def forward(self, embeds: list[Tensor], pos: Tensor, neg: Tensor) -> Tensor:
        r"""Reconstruction loss :math:`-\sum_p e^{s_p} / (e^{s_p} + \sum_k e^{s_{pk}})`.

        Args:
            embeds: the encoder's layer embeddings, each ``[n, d]`` (at least ``L``).
            pos: ``[P, 2]`` masked edges.
            neg: ``[P, K, 2]`` non-edges.

        Returns:
            ``[]`` (a sum over the ``P`` edges, as the authors').
        """
        pos_scr = torch.exp(self.score(embeds, pos[:, 0], pos[:, 1]))
        neg_scr = torch.exp(self.score(embeds, neg[..., 0], neg[..., 1]))
        return -(pos_scr / (neg_scr.sum(-1) + pos_scr + 1e-8)).sum()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.dim}, layers={self.layers})"


class MAERecBlock(nn.Module):
    r"""One block of MAERec's recommender (post-LN, as the authors' ``TransformerLayer``).

    :math:`a = \mathrm{LN}_1(h + \mathrm{Drop}(\mathrm{MHA}(h, h, h)))` under a causal mask,
    then :math:`\mathrm{LN}_2(\mathrm{Drop}(W_2\, \mathrm{GELU}(W_1 a)))` with
    :math:`W_1: d \to 4d`. As in the authors' ``IntermediateLayer``, the feed-forward part
    has **no** residual connection.

    Shapes:
        - **input:** ``h [B, L, d]``, ``attn_mask [L, L]`` (True: masked)
        - **output:** ``[B, L, d]``
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
            nn.Dropout(dropout), nn.LayerNorm(dim),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases (the authors' ``init_weights``)."""
        for chunk in self.attn.in_proj_weight.data.chunk(3):
            nn.init.xavier_uniform_(chunk)
        nn.init.zeros_(self.attn.in_proj_bias)
        nn.init.xavier_uniform_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)
        self.norm1.reset_parameters()
        for module in self.ffn:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()

    def forward(self, h: Tensor, attn_mask: Tensor) -> Tensor:
        attended, _ = self.attn(h, h, h, attn_mask=attn_mask, need_weights=False)
        a = self.norm1(h + self.drop(attended))
        return self.ffn(a)


# ---------------------------------------------------------------------- model
class MAERec(CausalSequenceRecommender):
    r"""MAERec (Ye, Xia & Huang, SIGIR 2023) on batches of sequence graphs.

    See the module docstring for the model. Build it with :meth:`from_prepared`, which
    builds the transition graph from the training interactions only.

    **Deviations from the authors' code** (HKUDS/MAERec), and why:

    - *Loss*: the recommendation term is over the protocol's candidates, so that MAERec
      learns the protocol's task like every other model here: a sampled softmax by default
      (the authors' binary cross-entropy, ``loss="bce"``, stayed below popularity under
      leave-one-out; ``history_targets`` adds the authors' next-item loss with one negative
      at every history position).
    - *Masking schedule*: the authors redraw the mask and add the regulariser on one step in
      ``mask_steps = 10`` only; here both happen on every step (the loop has no step
      counter a model could rely on for exact resumption), so ``mask_weight`` defaults to
      0.1 = 1/10 to keep the regulariser's total weight. The reward compares the latest
      decrease of the recommendation loss with the mean decrease over the
      ``reward_window - 1`` steps before it (the authors': the steps since the last mask),
      and its history is a buffer of the model, so a resumed run continues it exactly.
    - *Next seeds of the path masking*: the authors' code computes them as
      ``nxtRows + nxtCols``, an element-wise *sum* of the masked edges' endpoint ids (a
      bug: most sums are not neighbours, and many are no item at all); here they are the
      endpoints themselves, as the paper describes paths growing from the anchors.
    - Item 0 (padding) is never an anchor, a negative or part of the regulariser's mean;
      the Gumbel noise is left out of the regulariser's value (it has no gradient).
    - The transition distance ``distance`` (the authors' ``ii_dis``, not in their
      released parameters) defaults to 3.
    - Positions count from the oldest kept item (the authors left-pad, so their last item
      always has position ``max_len - 1``), as every sequence model here.
    - The L2 term (``l2_weight``, the authors' ``reg``) covers all parameters, as theirs;
      the loop's gradient clipping applies.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: positions of the position embedding; longer sequences are cut.
        edge_index: ``[2, E]`` the transition graph over nodes ``0..num_items``
            (:func:`transition_graph`); made symmetric, deduplicated and given self-loops.
        dim: width :math:`d`. (default: :obj:`32`, the authors' ``latdim``)
        num_blocks: transformer blocks. (default: :obj:`2`)
        heads: attention heads. (default: :obj:`4`)
        dropout: attention and hidden dropout. (default: :obj:`0.3`)
        gcn_layers: GCN layers :math:`L` of the encoder. (default: :obj:`2`)
        num_anchors: anchors of the path masking. (default: :obj:`50`)
        mask_depth: hops of the masked paths and of the semantic scores. (default: :obj:`3`)
        path_prob: base of the edge drop probability and the seed fraction. (default:
            :obj:`0.5`)
        recon_edges: masked edges reconstructed per step. (default: :obj:`2048`)
        recon_negatives: non-edges per reconstructed edge. (default: :obj:`40`)
        recon_weight: weight of the reconstruction loss. (default: :obj:`1.0`)
        mask_weight: weight of the task-adaptive regulariser. (default: :obj:`0.1`)
        reward_eps: reward when the recommendation loss fell less than on average.
            (default: :obj:`0.2`)
        reward_window: steps of the reward's average decrease. (default: :obj:`10`)
        l2_weight: weight of the squared norm of the parameters. (default: :obj:`1e-6`)
        history_targets: add the next-item loss inside the history. (default: :obj:`False`)
        distance: the transition distance the graph was built with (recorded only).
        loss: the recommendation term over the candidates, ``"sampled_softmax"``
            (:func:`~mdgr_graph.models.base.sampled_softmax_loss`; chosen on leave-one-out
            validation, where BCE stayed below popularity) or ``"bce"`` (the project's
            Eq. 17). (default: :obj:`"sampled_softmax"`)
    """

    #: Its candidate loss runs on the candidates only (no softmax over the catalogue).
    SUPPORTED_LOSSES: tuple[str, ...] = ("bce", "sampled_softmax", "gbce")

    def __init__(
        self,
        num_items: int,
        max_len: int,
        edge_index: Tensor,
        dim: int = 32,
        num_blocks: int = 2,
        heads: int = 4,
        dropout: float = 0.3,
        gcn_layers: int = 2,
        num_anchors: int = 50,
        mask_depth: int = 3,
        path_prob: float = 0.5,
        recon_edges: int = 2048,
        recon_negatives: int = 40,
        recon_weight: float = 1.0,
        mask_weight: float = 0.1,
        reward_eps: float = 0.2,
        reward_window: int = 10,
        l2_weight: float = 1e-6,
        history_targets: bool = False,
        distance: int | None = None,
        loss: str = "sampled_softmax",
    ) -> None:
        super().__init__(num_items, max_len, dim, history_targets)
        check_transformer_options(dim, num_blocks, heads, dropout)
        self.candidate_loss_kind = loss
        check_positive(gcn_layers=gcn_layers, num_anchors=num_anchors, mask_depth=mask_depth,
                       recon_edges=recon_edges, reward_window=reward_window)
        if recon_negatives < 2:
            raise ValueError(f"recon_negatives must be >= 2, got {recon_negatives}")
        if not 0.0 <= path_prob <= 1.0:
            raise ValueError(f"path_prob must lie in [0, 1], got {path_prob}")
        if not 0.0 <= reward_eps <= 1.0:
            raise ValueError(f"reward_eps must lie in [0, 1], got {reward_eps}")
        for name, value in (("recon_weight", recon_weight), ("mask_weight", mask_weight),
                            ("l2_weight", l2_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        edge_index = torch.as_tensor(edge_index).long()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be [2, E], got {tuple(edge_index.shape)}")
        if edge_index.numel() and (int(edge_index.min()) < 0
                                   or int(edge_index.max()) > num_items):
            raise ValueError(f"edge_index node ids must lie in 0..{num_items}")
        n = num_items + 1
        loops = torch.arange(n)
        edge_index = torch.cat([edge_index, edge_index.flip(0), torch.stack([loops, loops])], 1)
        edge_index = coalesce(edge_index, num_nodes=n)

        self.num_blocks, self.heads, self.dropout_p = num_blocks, heads, dropout
        self.gcn_layers, self.num_anchors, self.mask_depth = gcn_layers, num_anchors, mask_depth
        self.path_prob, self.recon_edges, self.recon_negatives = (path_prob, recon_edges,
                                                                   recon_negatives)
        self.recon_weight, self.mask_weight, self.l2_weight = recon_weight, mask_weight, l2_weight
        self.reward_eps, self.reward_window, self.distance = reward_eps, reward_window, distance

        self.register_buffer("edge_index", edge_index, persistent=False)  # from the data
        self.register_buffer("edge_key", edge_index[0] * n + edge_index[1], persistent=False)
        self.register_buffer("order_t", transpose_order(edge_index, n), persistent=False)
        full = torch.ones(edge_index.shape[1], dtype=torch.bool)
        self.register_buffer("norm_value", gcn_norm_values(edge_index, full, n),
                             persistent=False)
        #: The recommendation losses of the last ``reward_window + 1`` training steps.
        self.register_buffer("loss_history",
                             torch.full((reward_window + 1,), math.nan, dtype=torch.float64))

        self.item_emb = nn.Embedding(n, dim, padding_idx=0)
        self.convs = nn.ModuleList(TransitionConv() for _ in range(gcn_layers))
        self.decoder = EdgeDecoder(dim, gcn_layers)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.input_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(MAERecBlock(dim, heads, dropout) for _ in range(num_blocks))
        self.reset_parameters()

    @classmethod
    def from_prepared(cls, prepared: PreparedDataset, max_len: int, distance: int = 3,
                      **kwargs) -> MAERec:
        """Build the model with the transition graph of ``prepared``'s training interactions
        (items at most ``distance`` steps apart in a user's training sequence)."""
        user, item = prepared.training_interactions()
        edge_index = transition_graph(torch.from_numpy(np.asarray(user)),
                                      torch.from_numpy(np.asarray(item)),
                                      prepared.num_items, distance)
        return cls(prepared.num_items, max_len, edge_index, distance=distance, **kwargs)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for key in ("edge_index",):  # saved by earlier versions; rebuilt from the data now
            state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.item_emb.weight)
        nn.init.xavier_uniform_(self.pos_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        self.input_norm.reset_parameters()
        self.decoder.reset_parameters()
        for block in self.blocks:
            block.reset_parameters()
        self.loss_history.fill_(math.nan)

    # ------------------------------------------------------------------ graph encoder
    @property
    def num_nodes(self) -> int:
        return self.num_items + 1

    def adjacency(self, keep: Tensor | None = None) -> Tensor:
        """Normalised CSR adjacency of the kept edges (``None``: the whole graph)."""
        row, col = self.edge_index
        if keep is None:
            return csr(row, col, self.norm_value, self.num_nodes)
        value = gcn_norm_values(self.edge_index, keep, self.num_nodes)
        return _kept_csr(row, col, value, keep, self.num_nodes)

    def graph_layers(self, adj: Tensor | None = None) -> list[Tensor]:
        """``[H^0, ..., H^L]`` (each ``[num_items + 1, d]``) on ``adj`` (default: the
        unmasked graph)."""
        adj = self.adjacency() if adj is None else adj
        layers = [self.item_emb.weight]
        for conv in self.convs:
            layers.append(conv(layers[-1], adj))
        return layers

    def item_table(self, adj: Tensor | None = None) -> Tensor:
        """Graph-enhanced item embeddings :math:`\\sum_l H^l`: ``[num_items + 1, d]``."""
        return torch.stack(self.graph_layers(adj)).sum(0)

    # ------------------------------------------------------------------ recommender
    def encode(self, items: Tensor, mask: Tensor, table: Tensor | None = None) -> Tensor:
        """States ``[B, L, d]`` of right-padded ``items [B, L]`` with the item ``table``
        (default: the unmasked graph's): the sum of the input and every block's output."""
        table = self.item_table() if table is None else table
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        h = self.dropout(self.input_norm(table[items] + self.pos_emb(positions)))
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        out = h
        for block in self.blocks:
            h = block(h, causal)
            out = out + h
        return out

    def _user_and_table(self, batch: Batch, table: Tensor | None = None
                        ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        items, mask = self.dense_items(batch)
        table = self.item_table() if table is None else table
        states = self.encode(items, mask, table) * mask.unsqueeze(-1).to(table.dtype)
        return self._last(states, mask), table, states, mask, items

    def score_candidates(self, batch: Batch) -> Tensor:
        """Logits of ``batch.candidates`` on the unmasked graph: ``[B, C]``."""
        self._check_candidates(batch)
        user, table = self._user_and_table(batch)[:2]
        return torch.einsum("bd,bcd->bc", user, table[batch.candidates])

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` on the unmasked graph."""
        user, table = self._user_and_table(batch)[:2]
        return self.score_item_chunks(lambda rows: user @ rows.t(), table, chunk_size)

    # ------------------------------------------------------------------ training
    def draw_mask(self) -> tuple[Tensor, Tensor, Tensor]:
        """One draw of the adaptive path masking.

        Returns:
            ``scores [num_items + 1]`` (the semantic scores, with their gradient),
            ``remaining [E]`` and ``masked [E]`` (bool masks of the graph's edges).
        """
        scores = semantic_scores(self.edge_index, self.order_t, self.item_emb.weight,
                                 self.mask_depth, self.path_prob)
        uniform = torch.rand(scores.shape, device=scores.device).clamp(1e-10, 1 - 1e-7)
        noisy = scores.detach() - torch.log(-torch.log(uniform))
        noisy[0] = -math.inf
        anchors = torch.topk(noisy, min(self.num_anchors, self.num_items)).indices
        remaining, masked = mask_paths(self.edge_index, anchors, self.mask_depth,
                                       self.path_prob)
        return scores, remaining, masked

    def reconstruction_loss(self, layers: list[Tensor], masked: Tensor) -> Tensor:
        """Decoder loss on up to ``recon_edges`` masked edges (a random subset)."""
        edges = self.edge_index[:, masked].t()
        if edges.shape[0] == 0:
            return layers[0].sum() * 0.0
        edges = edges[torch.randperm(edges.shape[0], device=edges.device)[: self.recon_edges]]
        neg = sample_negative_edges(edges, self.edge_key, self.num_nodes, self.recon_negatives)
        return self.decoder(layers, edges, neg)

    def reward(self, rec_loss: float) -> float:
        """Append ``rec_loss`` to the history and return the task-adaptive reward."""
        with torch.no_grad():
            history = torch.roll(self.loss_history, -1)
            history[-1] = rec_loss
            self.loss_history.copy_(history)
        past = self.loss_history[~torch.isnan(self.loss_history)].tolist()
        if len(past) < 3:
            return 1.0
        latest = past[-2] - past[-1]
        average = sum(past[i] - past[i + 1] for i in range(len(past) - 2)) / (len(past) - 2)
        return 1.0 if latest > average else self.reward_eps

    def _history_loss(self, states: Tensor, mask: Tensor, items: Tensor, table: Tensor
                      ) -> Tensor:
        target = items[:, 1:]
        valid = mask[:, 1:] & (target > 0)
        if not bool(valid.any()):
            return states.sum() * 0.0
        h = states[:, :-1][valid]
        pos = target[valid]
        neg = torch.randint(1, self.num_items + 1, pos.shape, device=pos.device)
        pos_logit = (h * table[pos]).sum(-1)
        neg_logit = (h * table[neg]).sum(-1)
        return (F.softplus(-pos_logit) + F.softplus(neg_logit)).mean()

    def recommendation_loss(self, batch: Batch, table: Tensor) -> Tensor:
        """Candidate loss (:attr:`candidate_loss_kind`) with item ``table`` (+ the history
        next-item loss if enabled)."""
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        user, _, states, mask, items = self._user_and_table(batch, table)
        logits = torch.einsum("bd,bcd->bc", user, table[batch.candidates])
        loss = self.loss_over_candidates(logits, labels)
        if self.history_targets:
            loss = loss + self._history_loss(states, mask, items, table)
        return loss

    def loss_terms(self, batch: Batch) -> dict[str, Tensor]:
        """The training terms on a freshly masked graph: ``rec``, ``recon``, ``mask`` (the
        regulariser, reward included) and ``l2``, each ``[]`` and unweighted."""
        scores, remaining, masked = self.draw_mask()
        layers = self.graph_layers(self.adjacency(remaining))
        table = torch.stack(layers).sum(0)
        rec = self.recommendation_loss(batch, table)
        recon = self.reconstruction_loss(layers, masked)
        reward = self.reward(float(rec.detach())) if self.training else 1.0
        mask_reg = -reward * scores[1:].mean()
        l2 = sum(p.square().sum() for p in self.parameters())
        return {"rec": rec, "recon": recon, "mask": mask_reg, "l2": l2}

    def loss(self, batch: Batch) -> Tensor:
        """Training: rec + ``recon_weight`` recon + ``mask_weight`` mask + ``l2_weight`` l2
        on a masked graph. In eval mode: the recommendation loss on the unmasked graph."""
        if not self.training:
            return self.recommendation_loss(batch, self.item_table())
        terms = self.loss_terms(batch)
        return (terms["rec"] + self.recon_weight * terms["recon"]
                + self.mask_weight * terms["mask"] + self.l2_weight * terms["l2"])

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"edges={self.edge_index.shape[1]}, distance={self.distance}, dim={self.dim}, "
            f"num_blocks={self.num_blocks}, heads={self.heads}, dropout={self.dropout_p}, "
            f"gcn_layers={self.gcn_layers}, num_anchors={self.num_anchors}, "
            f"mask_depth={self.mask_depth}, path_prob={self.path_prob}, "
            f"recon_edges={self.recon_edges}, recon_negatives={self.recon_negatives}, "
            f"recon_weight={self.recon_weight}, mask_weight={self.mask_weight}, "
            f"reward_eps={self.reward_eps}, reward_window={self.reward_window}, "
            f"l2_weight={self.l2_weight}, history_targets={self.history_targets}, "
            f"loss={self.candidate_loss_kind!r})"
        )
