r"""DCRec: debiased contrastive learning for sequential recommendation.

Yuhao Yang, Chao Huang, Lianghao Xia, Chunzhen Huang, Da Luo, Kangyi Lin, "Debiased
Contrastive Learning for Sequential Recommendation", WWW 2023 (the MDGR paper's reference
[34]); authors' code: ``HKUDS/DCRec`` (RecBole, ``recbole/model/sequential_recommender/
dcrec.py`` and ``run_DCRec.py``), which this module follows where the two can differ.

Three views of a user's most recent item :math:`v` (the last item of the history):

1. **Sequence view**: a bidirectional Transformer over the history (item + learned position
   embedding, layer norm, dropout, post-LN GELU layers, padding masked as keys); the state
   at the last real position is :math:`s`.
2. **Transition-graph view**: a global item graph of consecutive items of the training
   sequences (:func:`transition_graph`), encoded with a weightless two-layer light GCN
   (:class:`LightGraphEncoder`): :math:`g^{adj}_v`.
3. **Co-interaction-graph view**: a global item graph linking every item to its ``k + 1``
   most cosine-similar items over the training user-item matrix
   (:func:`similarity_graph`), encoded by the same light GCN: :math:`g^{sim}_v`.

**Conformity weighting** (:meth:`DCRec.conformity_weights`, the authors'
``_subgraph_agreement``): the transition graph is re-encoded without the transitions of
the batch's own histories (the *augmented* graph, :math:`\tilde g_v`); the neighbours of
:math:`v` split into *civil* ones (whose edge with :math:`v` is among the consecutive pairs
of any history of the batch, even if other users' transitions also feed it) and *foreign*
ones (the rest), so in training a sequence's weight depends on the other sequences of its
batch, as in the authors' code; with :math:`c_v, f_v` the means of their
transition-graph views, the agreement
:math:`\sigma\big((\cos(g^{adj}_v, \tilde g_v) + \cos(g^{adj}_v, f_v) +
\cos(c_v, f_v)) / 3\big)`, min-max scaled over the batch and rescaled to mean
``weight_mean``, is the conformity weight :math:`w^{c}`; :math:`w^{p} = \max w^{c} - w^{c}`
is the interest (personalisation) weight. A KL term pulls the sorted weights towards
sorted draws of :math:`\mathcal N(\text{weight\_mean}, 0.1)`.

**Cross-view contrast**: InfoNCE over the batch (cosine / temperature) between the
sequence view of a second (differently dropped-out) Transformer pass and
:math:`g^{adj}_v` weighted by :math:`w^c`, and between :math:`g^{adj}_v` and
:math:`g^{sim}_v` weighted by :math:`w^p`.

**Scores**: the three views :math:`x_k \in \{s, g^{adj}_v, g^{sim}_v\}` are fused by
attention, :math:`\alpha = \mathrm{softmax}_k((x_k W) \cdot a)`,
:math:`u = \sum_k \alpha_k x_k`, and :math:`r(i) = \langle u, E_i\rangle` with the item
table :math:`E`. The deviations from the paper and the authors' code are listed in
:class:`DCRec`.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import scatter, spmm

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import (
    SequentialRecommender,
    check_interactions,
    check_positive,
)
from mdgr_graph.models.baselines.sasrec import (
    CausalSequenceRecommender,
    check_transformer_options,
)


# ---------------------------------------------------------------------- global graphs
def transition_graph(user: Tensor, item: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    r"""The authors' item transition graph (``build_adj_graph``) of training interactions.

    :math:`A_{ab} = 2\,\#\{\text{consecutive } (a, b) \text{ or } (b, a)\}` for
    :math:`a \ne b` (the authors' code counts every adjacency twice in each direction),
    :math:`A_{aa} = 1` (also for padding and items without transitions, which overwrites
    repeat transitions :math:`a \to a`), and :math:`\hat A = D^{-1/2} A D^{-1/2}` with the
    weighted degrees :math:`D = \mathrm{diag}(A\mathbf 1)`.

    Args:
        user: ``[M]`` owner of each interaction; one user's interactions are contiguous and
            in sequence order (as :meth:`PreparedDataset.training_interactions`).
        item: ``[M]`` item ids ``1..num_items``.
        num_items: number of real items (nodes ``0..num_items``, 0 is padding).

    Returns:
        ``edge_index [2, E]`` (row 0 source, row 1 target, sorted by target then source;
        symmetric) and ``edge_weight [E]`` (the entries of :math:`\hat A`).
    """
    user, item = check_interactions(user, item, num_items)
    n = num_items + 1
    same = user[1:] == user[:-1]
    a, b = item[:-1][same], item[1:][same]
    off = a != b
    a, b = a[off], b[off]
    keys, counts = torch.unique(torch.cat([b * n + a, a * n + b]), return_counts=True)
    loops = torch.arange(n) * (n + 1)
    keys = torch.cat([keys, loops])
    weight = torch.cat([2.0 * counts.double(), torch.ones(n, dtype=torch.float64)])
    keys, order = torch.sort(keys)
    weight = weight[order]
    target, source = keys // n, keys % n
    deg = torch.zeros(n, dtype=torch.float64).index_add_(0, target, weight)
    inv = deg.pow(-0.5)
    weight = inv[target] * weight * inv[source]
    return torch.stack([source, target]), weight.float()


def similarity_graph(user: Tensor, item: Tensor, num_items: int, neighbours: int = 4,
                     chunk_size: int = 512) -> tuple[Tensor, Tensor]:
    r"""The authors' item co-interaction graph (``build_sim_graph``) of training interactions.

    With :math:`X` the user-item count matrix (an item a user has twice counts 2, as the
    authors' ``csr_matrix`` sums duplicates) and :math:`S_{ij} = \cos(X_{:i}, X_{:j})`,
    item :math:`i` links to its ``neighbours + 1`` most similar items :math:`j` (itself
    included, as its similarity 1 ranks first), edge :math:`i \to j` weighted
    :math:`S_{ij} / \sum_{j'} S_{ij'}` over the kept :math:`j'`. Only positive similarities
    are kept (the authors' top-k also keeps zero-weight pairs of items with few
    co-occurrences, which only change the edge-count normalisation of their GCN); padding
    and items without training interactions get no edges. Built ``chunk_size`` items at a
    time (fewer when users or items number millions: each chunk's dense blocks stay under
    about 256 MB), so no dense ``items x items`` matrix is held.

    Returns:
        ``edge_index [2, E]`` (source, target; sorted by target then source) and
        ``edge_weight [E]``.
    """
    user, item = check_interactions(user, item, num_items)
    if neighbours < 1:
        raise ValueError(f"neighbours must be >= 1, got {neighbours}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = num_items + 1
    if item.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long), torch.zeros(0)
    _, user = torch.unique(user, return_inverse=True)
    num_users = int(user.max()) + 1
    counts = torch.sparse_coo_tensor(torch.stack([item, user]), torch.ones(item.numel(),
                                     dtype=torch.float64), (n, num_users),
                                     check_invariants=False).coalesce()
    norm = torch.zeros(n, dtype=torch.float64).index_add_(
        0, counts.indices()[0], counts.values() ** 2).sqrt()
    inv = torch.where(norm > 0, 1.0 / norm.clamp_min(1e-300), torch.zeros_like(norm))
    k = min(neighbours + 1, n)
    # a chunk holds [c, users] and [c, items] float64 blocks: at most ~2^25 entries each
    chunk_size = max(1, min(chunk_size, 2**25 // max(num_users, n)))
    sources, targets, weights = [], [], []
    for start in range(0, n, chunk_size):
        rows = torch.arange(start, min(start + chunk_size, n))
        dense = counts.index_select(0, rows).to_dense()  # [c, U]
        sim = torch.sparse.mm(counts, dense.t()).t()  # [c, n]
        sim = sim * inv[rows].unsqueeze(1) * inv.unsqueeze(0)
        value, col = sim.topk(k, dim=1)
        keep = value > 0
        value = value * keep
        value = value / value.sum(dim=1, keepdim=True).clamp_min(1e-300)
        sources.append(rows.unsqueeze(1).expand_as(col)[keep])
        targets.append(col[keep])
        weights.append(value[keep])
    source, target, weight = torch.cat(sources), torch.cat(targets), torch.cat(weights)
    order = torch.argsort(target * n + source)
    return torch.stack([source[order], target[order]]), weight[order].float()


# ---------------------------------------------------------------------- graph encoder
class ItemGraph(nn.Module):
    r"""A fixed global item graph, stored for :class:`LightGraphEncoder`.

    The edges of the given graph get a self-loop of weight 1 added at every node (as the
    authors' ``dgl.add_self_loop``; where the graph has a stored self-loop already, the
    two are merged into one entry of multiplicity 2 and summed weight). Entries are kept
    in CSR order by target (``crow``, ``source``), so :meth:`adj_t` is a
    ``torch.sparse_csr_tensor`` without sorting.

    Normalisation (:meth:`normalised`) is DGL's ``GraphConv(norm="both")`` with edge
    weights, which the authors use: :math:`w_{ji} / \sqrt{d^{out}_j d^{in}_i}` with
    *edge-count* degrees (multiplicities, clamped at 1), over the entries present.

    Args:
        edge_index: ``[2, E]`` (source, target) without duplicates.
        edge_weight: ``[E]``.
        num_nodes: number of nodes ``N``.

    Shapes:
        - buffers ``crow [N + 1]``, ``source [E']``, ``target [E']``, ``weight [E']``,
          ``multiplicity [E']``, ``key [E']`` (``target * N + source``, sorted),
          ``crow_t [N + 1]`` and ``perm_t [E']`` (the entries in CSR order by source).
    """

    def __init__(self, edge_index: Tensor, edge_weight: Tensor, num_nodes: int) -> None:
        super().__init__()
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must be [2, E], got {tuple(edge_index.shape)}")
        if edge_weight.shape != (edge_index.shape[1],):
            raise ValueError("edge_weight must hold one weight per edge")
        if edge_index.numel() and (int(edge_index.min()) < 0
                                   or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"edge_index must lie in 0..{num_nodes - 1}")
        n = num_nodes
        source, target = edge_index.long()
        loops = torch.arange(n)
        key = torch.cat([target * n + source, loops * (n + 1)])
        weight = torch.cat([edge_weight.float(), torch.ones(n)])
        key, inverse = torch.unique(key, return_inverse=True)
        if key.numel() != inverse.numel() - int((source == target).sum()):
            raise ValueError("edge_index holds duplicate edges")
        merged = torch.zeros(key.numel()).index_add_(0, inverse, weight)
        multiplicity = torch.zeros(key.numel()).index_add_(0, inverse, torch.ones(len(weight)))
        target, source = key // n, key % n
        crow = torch.zeros(n + 1, dtype=torch.long)
        crow[1:] = torch.cumsum(torch.bincount(target, minlength=n), 0)
        perm_t = torch.argsort(source * n + target)  # the same entries in CSR order by source
        crow_t = torch.zeros(n + 1, dtype=torch.long)
        crow_t[1:] = torch.cumsum(torch.bincount(source, minlength=n), 0)
        self.num_nodes = n
        for name, value in (("crow", crow), ("source", source), ("target", target),
                            ("weight", merged), ("multiplicity", multiplicity), ("key", key),
                            ("crow_t", crow_t), ("perm_t", perm_t)):
            self.register_buffer(name, value, persistent=False)
        self.register_buffer("full_norm", self.normalised(None), persistent=False)

    @property
    def num_edges(self) -> int:
        """Stored entries, self-loops included."""
        return int(self.source.numel())

    def normalised(self, removed: Tensor | None) -> Tensor:
        """``[E']`` normalised weights with the entries where ``removed [E']`` left out."""
        count = self.multiplicity if removed is None else self.multiplicity * ~removed
        n = self.num_nodes
        deg_in = torch.zeros(n, device=count.device).index_add_(0, self.target, count)
        deg_out = torch.zeros(n, device=count.device).index_add_(0, self.source, count)
        scale = deg_out.clamp_min(1).pow(-0.5)[self.source] * deg_in.clamp_min(1).pow(-0.5)[
            self.target]
        weight = self.weight * scale
        return weight if removed is None else weight * ~removed

    def adj_t(self, values: Tensor) -> Tensor:
        """The transposed adjacency (rows: targets) with ``values [E']`` as a CSR tensor."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR is in beta"
            return torch.sparse_csr_tensor(self.crow, self.source, values,
                                           (self.num_nodes, self.num_nodes),
                                           check_invariants=False)

    def adj(self, values: Tensor) -> Tensor:
        """The adjacency itself (rows: sources) with ``values [E']``, as a CSR tensor."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow_t, self.target[self.perm_t],
                                           values[self.perm_t],
                                           (self.num_nodes, self.num_nodes),
                                           check_invariants=False)

    def dense(self, values: Tensor) -> Tensor:
        """``[N, N]`` dense transposed adjacency (tests and small graphs only)."""
        out = torch.zeros(self.num_nodes, self.num_nodes, device=values.device)
        return out.index_put_((self.target, self.source), values, accumulate=True)

    def edge_keys(self, source: Tensor, target: Tensor) -> Tensor:
        """Keys ``target * N + source`` comparable with the ``key`` buffer."""
        return target * self.num_nodes + source

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_nodes={self.num_nodes}, entries={self.num_edges})"


class _TransposedSpmm(torch.autograd.Function):
    """``adj_t @ x`` whose backward multiplies by the given ``adj`` (no transpose per step)."""

    @staticmethod
    def forward(ctx, adj_t: Tensor, adj: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.adj = adj
        return torch.sparse.mm(adj_t, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, None, Tensor]:  # type: ignore[override]
        return None, None, torch.sparse.mm(ctx.adj, grad)


class ItemGraphConv(MessagePassing):
    r"""Weightless propagation on a weighted graph, :math:`\mathbf{x}'_i = \sum_{j \to i}
    w_{ji}\, \mathbf{x}_j` (LightGCN's step with the normalisation left to the caller, as
    :class:`~torch_geometric.nn.conv.LGConv` with ``normalize=False``; the authors' DGL
    ``GraphConv(weight=False, bias=False)`` with precomputed weights).

    With a sparse ``edge_index`` (the transposed adjacency, rows = targets) it is one
    sparse-dense product; passing ``adj`` (the same entries, rows = sources) lets the
    backward pass use it instead of transposing ``edge_index`` at every step, which
    PyTorch's sparse CSR product does (several times slower on CPU).

    Shapes:
        - **input:** ``x [N, d]``; ``edge_index [2, E]`` with ``edge_weight [E]``, or a
          sparse ``[N, N]`` ``adj_t`` (and optionally ``adj``)
        - **output:** ``[N, d]``
    """

    def __init__(self) -> None:
        super().__init__(aggr="add")

    def reset_parameters(self) -> None:
        super().reset_parameters()  # no parameters of its own

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None,
                adj: Tensor | None = None) -> Tensor:
        return self.propagate(edge_index, x=x, edge_weight=edge_weight, adj=adj)

    def message(self, x_j: Tensor, edge_weight: Tensor | None) -> Tensor:
        return x_j if edge_weight is None else edge_weight.view(-1, 1) * x_j

    def message_and_aggregate(self, edge_index: Tensor, x: Tensor,
                              adj: Tensor | None = None) -> Tensor:
        if adj is None:
            return spmm(edge_index, x, reduce="sum")
        return _TransposedSpmm.apply(edge_index, adj, x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class LightGraphEncoder(nn.Module):
    r"""The authors' graph encoder (``GCN`` + ``gcn_forward``) over a whole item table.

    :math:`H^0 = \mathrm{Drop}(E)`, :math:`H^{l+1} = \hat A H^l` (:class:`ItemGraphConv`
    on a sparse CSR :math:`\hat A` from :meth:`ItemGraph.normalised`), ``layers`` times,
    then :math:`\mathrm{LN}(\frac{1}{L+1}\sum_l H^l + H^0)`. In training, every stored entry
    of :math:`\hat A` is zeroed with probability ``edge_dropout`` (the degrees stay those
    of the undropped graph, as in the authors' ``graph_dropout``).

    Args:
        dim: width :math:`d`.
        layers: propagation steps. (default: :obj:`2`)
        edge_dropout: the authors' ``graph_dropout_prob``. (default: :obj:`0.3`)
        dropout: dropout of the input table. (default: :obj:`0.3`)

    Shapes:
        - **input:** ``table [N, d]``, an :class:`ItemGraph` with ``N`` nodes,
          ``removed [E']`` *(optional)*
        - **output:** ``[N, d]``
    """

    def __init__(self, dim: int, layers: int = 2, edge_dropout: float = 0.3,
                 dropout: float = 0.3, eps: float = 1e-12) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"graph_layers must be >= 1, got {layers}")
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError(f"graph_dropout must lie in [0, 1), got {edge_dropout}")
        self.layers, self.edge_dropout = layers, edge_dropout
        self.conv = ItemGraphConv()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def reset_parameters(self) -> None:
        self.conv.reset_parameters()
        self.norm.reset_parameters()

    def edge_values(self, graph: ItemGraph, removed: Tensor | None = None) -> Tensor:
        """``[E']`` normalised weights, entries dropped at random in training."""
        values = graph.full_norm if removed is None else graph.normalised(removed)
        if self.training and self.edge_dropout > 0:
            keep = torch.rand(values.shape, device=values.device) >= self.edge_dropout
            values = values * keep
        return values

    def forward(self, table: Tensor, graph: ItemGraph, removed: Tensor | None = None) -> Tensor:
        values = self.edge_values(graph, removed)
        adj_t, adj = graph.adj_t(values), graph.adj(values)
        h = self.dropout(table)
        total = h
        out = h
        for _ in range(self.layers):
            out = self.conv(out, adj_t, adj=adj)
            total = total + out
        return self.norm(total / (self.layers + 1) + h)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(layers={self.layers}, "
                f"edge_dropout={self.edge_dropout})")


# ---------------------------------------------------------------------- losses
def info_nce(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    r"""The authors' ``vanilla_loss``: per row :math:`-\log(10^{-8} +
    \mathrm{softmax}_j(\cos(z1_i, z2_j)/\tau)_i)`, ``[B]`` from ``z1, z2 [B, d]``."""
    logits = F.normalize(z1, dim=-1) @ F.normalize(z2, dim=-1).t() / temperature
    return -torch.log(1e-8 + torch.softmax(logits, dim=1).diagonal())


def weight_kl(weights: Tensor, mean: float, std: float = 0.1) -> Tensor:
    r"""The authors' ``cal_kl_1``: KL between sorted draws of :math:`\mathcal N(mean, std)`
    (clamped at :math:`10^{-8}`, used as unnormalised target probabilities) and
    :math:`\mathrm{log\,softmax}` of the sorted weights, summed and divided by ``B``."""
    target = torch.normal(mean, std, weights.shape, device=weights.device).sort().values
    target = target.clamp_min(1e-8)
    log_input = torch.log_softmax(weights.sort().values + 1e-8, dim=0)
    return F.kl_div(log_input, torch.log(target + 1e-8), reduction="batchmean",
                    log_target=True)


# ---------------------------------------------------------------------- the model
class DCRec(SequentialRecommender):
    r"""DCRec (Yang et al., WWW 2023) on batches of sequence graphs (see the module doc).

    Build it with :meth:`from_prepared` (global graphs from
    :meth:`PreparedDataset.training_interactions` only) or :meth:`from_interactions`.

    **Loss.** The sampled softmax of :math:`r` over each row's candidates (``loss=``;
    ``"bce"`` gives the project's Eq. 17), plus
    ``cl_weight`` :math:`\cdot` mean over the batch of
    :math:`w^c_b\, \mathrm{InfoNCE}(s'_b, g^{adj}_{v_b}) + w^p_b\,
    \mathrm{InfoNCE}(g^{adj}_{v_b}, g^{sim}_{v_b})` plus ``kl_weight`` :math:`\cdot` the KL
    of the weights (:func:`weight_kl`), as ``calculate_loss_graphcl`` of the authors.

    Deviations from the paper / the authors' code (docs/baselines.md):

    - the authors train with softmax cross-entropy over all items at the last position of
      every prefix of the training sequences; here the next-item part is that softmax
      over the protocol's candidates (each positive against the row's sampled negatives;
      the contrastive and KL terms are theirs). With the project's BCE instead, DCRec
      stayed below popularity under leave-one-out (better with the auxiliary terms off);
      the softmax was also ahead on the paper protocol's validation (docs/baselines.md);
    - the graphs are always the *training* graphs; the authors' evaluation swaps in graphs
      rebuilt from the test sessions (``adj_graph_test``), which the ``paper`` protocol's
      unseen test users and the leakage rule of this project forbid;
    - the "user's own" transitions removed for the augmented graph and the civil/foreign
      split are those of the histories in the batch (inductive; the authors look them up
      by user id over the whole training sequence of each batch user), and the repeat
      self-loops are never removed;
    - neighbour readouts sample at most ``neighbour_sample`` civil and foreign neighbours
      per sequence with a vectorised random ranking (the authors' Python ``random.sample``),
      and an empty set reads out a zero vector (the authors' foreign mean would be NaN);
    - graph edge dropout zeroes each entry with probability ``graph_dropout`` (the authors
      draw ``p E`` indices with replacement, slightly fewer distinct), the merged
      self-loop entries drop together, and it is off at evaluation (the authors' GCN also
      drops edges at test time, a bug); the authors' discarded ``F.dropout(p=0.2)`` in the
      GCN is left out;
    - a single-item history gets conformity weight ``weight_mean`` (the authors
      hard-code 0.5, their ``weight_mean`` on 3 of 4 datasets); a batch whose agreements
      are all equal gets ``weight_mean`` everywhere instead of the authors' 0/0;
    - the Transformer layers are PyTorch's (post-LN, GELU, width ``4d``: one dropout rate
      for attention, residual and the FFN inside, where RecBole has no FFN-inner dropout);
      the unused projection head of the authors' ``CLLayer`` is left out;
    - ``dim=32`` as every model here (the authors: 64); defaults of the weights follow the
      authors' best settings for Amazon Beauty / Sports and ML-20M (``cl_weight=0.1``,
      ``kl_weight=0.01``) and their defaults for the rest.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        max_len: longest history read (longer ones are cut to the most recent).
        transition: ``(edge_index, edge_weight)`` of :func:`transition_graph`.
        similarity: ``(edge_index, edge_weight)`` of :func:`similarity_graph`.
        dim: width :math:`d`. (default: :obj:`32`)
        num_blocks: Transformer layers. (default: :obj:`2`)
        heads: attention heads (must divide ``dim``). (default: :obj:`2`)
        dropout: dropout of embeddings, attention and FFN. (default: :obj:`0.3`)
        graph_layers: light-GCN steps. (default: :obj:`2`)
        graph_dropout: edge dropout of the GCN in training. (default: :obj:`0.3`)
        cl_weight: weight of the contrastive loss (``graphcl_coefficient``).
            (default: :obj:`0.1`)
        kl_weight: weight of the KL term of the conformity weights. (default: :obj:`0.01`)
        weight_mean: mean conformity weight. (default: :obj:`0.5`)
        temperature: InfoNCE temperature (``cl_temp``). (default: :obj:`1.0`)
        neighbour_sample: civil / foreign neighbours read per sequence (``None``: all).
            (default: :obj:`10`)
        fusion: fuse the three views for scoring (``graph_view_fusion``); ``False``
            scores with the sequence view alone. (default: :obj:`True`)
        causal: causal attention instead of the authors' bidirectional one.
            (default: :obj:`False`)
        loss: the next-item part, ``"sampled_softmax"``
            (:func:`~mdgr_graph.models.base.sampled_softmax_loss`, the authors' softmax
            over all items restricted to the candidates) or ``"bce"`` (the project's
            Eq. 17). (default: :obj:`"sampled_softmax"`)
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        transition: tuple[Tensor, Tensor],
        similarity: tuple[Tensor, Tensor],
        dim: int = 32,
        num_blocks: int = 2,
        heads: int = 2,
        dropout: float = 0.3,
        graph_layers: int = 2,
        graph_dropout: float = 0.3,
        cl_weight: float = 0.1,
        kl_weight: float = 0.01,
        weight_mean: float = 0.5,
        temperature: float = 1.0,
        neighbour_sample: int | None = 10,
        fusion: bool = True,
        causal: bool = False,
        loss: str = "sampled_softmax",
    ) -> None:
        super().__init__(num_items)
        check_positive(max_len=max_len, dim=dim)
        check_transformer_options(dim, num_blocks, heads, dropout)
        self.candidate_loss_kind = loss
        if cl_weight < 0 or kl_weight < 0:
            raise ValueError(f"cl_weight and kl_weight must be >= 0, got {cl_weight} and "
                             f"{kl_weight}")
        if not 0.0 < weight_mean <= 1.0:
            raise ValueError(f"weight_mean must lie in (0, 1], got {weight_mean}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if neighbour_sample is not None and neighbour_sample < 1:
            raise ValueError(f"neighbour_sample must be >= 1 or None, got {neighbour_sample}")
        self.max_len, self.dim = max_len, dim
        self.num_blocks, self.heads, self.dropout_p = num_blocks, heads, dropout
        self.cl_weight, self.kl_weight = cl_weight, kl_weight
        self.weight_mean, self.temperature = weight_mean, temperature
        self.neighbour_sample, self.fusion, self.causal = neighbour_sample, fusion, causal
        n = num_items + 1
        self.transition = ItemGraph(*transition, num_nodes=n)
        self.similarity = ItemGraph(*similarity, num_nodes=n)
        if not torch.equal(self.transition.key.sort().values,
                           (self.transition.source * n + self.transition.target).sort().values):
            raise ValueError("the transition graph must be symmetric")

        self.item_emb = nn.Embedding(n, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.input_norm = nn.LayerNorm(dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout, activation="gelu",
                                       layer_norm_eps=1e-12, batch_first=True)
            for _ in range(num_blocks)
        )
        self.graph_encoder = LightGraphEncoder(dim, graph_layers, graph_dropout, dropout)
        self.fusion_weight = nn.Parameter(torch.empty(dim, dim))  # W
        self.fusion_query = nn.Parameter(torch.empty(dim))  # a
        self.reset_parameters()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_interactions(cls, user: Tensor | np.ndarray, item: Tensor | np.ndarray,
                          num_items: int, max_len: int, sim_neighbours: int = 4,
                          **kwargs) -> DCRec:
        """Both global graphs from ``(user, item)`` training interactions (each user's
        contiguous, in sequence order), then the model; ``kwargs`` go to :class:`DCRec`."""
        user, item = torch.as_tensor(user).long(), torch.as_tensor(item).long()
        return cls(num_items, max_len, transition_graph(user, item, num_items),
                   similarity_graph(user, item, num_items, sim_neighbours), **kwargs)

    @classmethod
    def from_prepared(cls, prepared: PreparedDataset, max_len: int, sim_neighbours: int = 4,
                      **kwargs) -> DCRec:
        """DCRec for ``prepared``: graphs from its training interactions only.

        Args:
            prepared: the dataset.
            max_len: history length (``history_length(prepared)``).
            sim_neighbours: :math:`k` of the co-interaction graph (the authors'
                ``sim_group``). (default: :obj:`4`)
            **kwargs: options of :class:`DCRec`.
        """
        user, item = prepared.training_interactions()
        return cls.from_interactions(torch.from_numpy(user), torch.from_numpy(item),
                                     prepared.num_items, max_len, sim_neighbours, **kwargs)

    def reset_parameters(self) -> None:
        """The authors' initialisation: normal (std 0.02) weights, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.normal_(module.in_proj_weight, std=0.02)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
        nn.init.normal_(self.fusion_weight, std=0.02)
        nn.init.normal_(self.fusion_query, std=0.02)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    # the input helpers of the causal models do not depend on causality
    dense_items = CausalSequenceRecommender.dense_items

    # ------------------------------------------------------------------ views
    def encode(self, items: Tensor, mask: Tensor) -> Tensor:
        """Sequence view: the Transformer state at each row's last real item, ``[B, d]``.

        Args:
            items: ``[B, L]`` right-padded item ids; mask ``[B, L]`` True at real items.
        """
        length = items.shape[1]
        positions = torch.arange(length, device=items.device)
        h = self.dropout(self.input_norm(self.item_emb(items) + self.pos_emb(positions)))
        causal = None
        if self.causal:
            causal = torch.ones(length, length, dtype=torch.bool, device=items.device).triu(1)
        for layer in self.layers:
            h = layer(h, src_mask=causal, src_key_padding_mask=~mask)
        last = mask.sum(dim=1) - 1
        return h[torch.arange(h.shape[0], device=h.device), last]

    def graph_views(self, removed: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``[N, d]`` transition- and co-interaction-graph views of every item."""
        table = self.item_emb.weight
        return (self.graph_encoder(table, self.transition, removed),
                self.graph_encoder(table, self.similarity))

    @staticmethod
    def last_items(items: Tensor, mask: Tensor) -> Tensor:
        """``[B]`` the last real item of each row."""
        return items.gather(1, (mask.sum(dim=1) - 1).unsqueeze(1)).squeeze(1)

    def fuse(self, views: Tensor) -> Tensor:
        r"""``[3, B, d] -> [B, d]``: :math:`\sum_k \mathrm{softmax}_k((x_k W)\cdot a)\, x_k`."""
        logits = (views @ self.fusion_weight * self.fusion_query).sum(-1)  # [3, B]
        return (torch.softmax(logits, dim=0).unsqueeze(-1) * views).sum(0)

    def _user(self, items: Tensor, mask: Tensor, adj_view: Tensor | None = None,
              sim_view: Tensor | None = None) -> Tensor:
        seq = self.encode(items, mask)
        if not self.fusion:
            return seq
        if adj_view is None or sim_view is None:
            adj_view, sim_view = self.graph_views()
        last = self.last_items(items, mask)
        return self.fuse(torch.stack([seq, adj_view[last], sim_view[last]]))

    def user_vectors(self, batch: Batch) -> Tensor:
        """The fused user vector :math:`u`, ``[B, d]``."""
        return self._user(*self.dense_items(batch))

    # ------------------------------------------------------------------ scores
    def score_candidates(self, batch: Batch) -> Tensor:
        """Logits of ``batch.candidates``: ``[B, C]``."""
        self._check_candidates(batch)
        return torch.einsum("bd,bcd->bc", self.user_vectors(batch),
                            self.item_emb(batch.candidates))

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]`` (column 0 included), in item chunks."""
        user = self.user_vectors(batch)
        return self.score_item_chunks(lambda table: user @ table.t(), self.item_emb.weight,
                                      chunk_size)

    # ------------------------------------------------------------------ conformity
    def batch_transitions(self, items: Tensor, mask: Tensor) -> Tensor:
        """``[E']`` True at the transition-graph entries of the batch's own consecutive
        pairs (both directions; self-loops never)."""
        a, b = items[:, :-1], items[:, 1:]
        pair = mask[:, 1:] & (a != b)
        a, b = a[pair], b[pair]
        graph = self.transition
        keys = torch.cat([graph.edge_keys(a, b), graph.edge_keys(b, a)])
        pos = torch.searchsorted(graph.key, keys).clamp_max(graph.num_edges - 1)
        found = graph.key[pos] == keys
        removed = torch.zeros(graph.num_edges, dtype=torch.bool, device=keys.device)
        removed[pos[found]] = True
        return removed

    def neighbour_readout(self, last: Tensor, removed: Tensor, table: Tensor) -> tuple[
            Tensor, Tensor]:
        """Mean ``table`` rows of the civil and foreign neighbours of each ``last [B]`` item.

        Neighbours are the entries of the item's row in the transition graph (its stored
        self-loop included, as the authors' ``out_edges``); civil ones are ``removed``
        (the batch's own transitions), foreign ones are not. At most
        ``neighbour_sample`` of each, drawn at random, are read; an empty set gives zeros.

        Returns:
            ``civil [B, d]``, ``foreign [B, d]``.
        """
        graph = self.transition
        num = last.numel()
        start, end = graph.crow[last], graph.crow[last + 1]
        counts = end - start
        owner = torch.repeat_interleave(torch.arange(num, device=last.device), counts)
        offset = torch.arange(owner.numel(), device=last.device) - (
            torch.cumsum(counts, 0) - counts)[owner]
        entry = start[owner] + offset
        group = owner * 2 + (~removed[entry]).long()  # 2b: civil, 2b + 1: foreign
        if self.neighbour_sample is not None and entry.numel():
            rank_key = group.double() + torch.rand(group.shape, dtype=torch.float64,
                                                   device=group.device)
            order = torch.argsort(rank_key)
            sorted_group = group[order]
            size = torch.bincount(sorted_group, minlength=2 * num)
            first = torch.cumsum(size, 0) - size
            rank = torch.arange(order.numel(), device=order.device) - first[sorted_group]
            keep = order[rank < self.neighbour_sample]
            entry, group = entry[keep], group[keep]
        feats = scatter(table[graph.source[entry]], group, dim=0, dim_size=2 * num,
                        reduce="mean")
        feats = feats.view(num, 2, -1)
        return feats[:, 0], feats[:, 1]

    def conformity_weights(self, items: Tensor, mask: Tensor, adj_view: Tensor,
                           removed: Tensor) -> Tensor:
        r"""Conformity weights :math:`w^c` ``[B]`` (the authors' ``_subgraph_agreement``).

        Args:
            items, mask: ``[B, L]`` dense batch.
            adj_view: ``[N, d]`` transition-graph view of the full graph.
            removed: ``[E']`` the batch's own transition entries.
        """
        last = self.last_items(items, mask)
        aug_view = self.graph_encoder(self.item_emb.weight, self.transition, removed)
        civil, foreign = self.neighbour_readout(last, removed, adj_view)
        raw = adj_view[last]
        agreement = (F.cosine_similarity(raw, aug_view[last], eps=1e-12)
                     + F.cosine_similarity(raw, foreign, eps=1e-12)
                     + F.cosine_similarity(civil, foreign, eps=1e-12)) / 3
        agreement = torch.sigmoid(agreement)
        spread = agreement.max() - agreement.min()
        if float(spread.detach()) > 1e-12:
            scaled = (agreement - agreement.min()) / spread
            weights = self.weight_mean / scaled.mean().clamp_min(1e-12) * scaled
        else:
            weights = torch.full_like(agreement, self.weight_mean)
        single = mask.sum(dim=1) == 1
        return torch.where(single, torch.full_like(weights, self.weight_mean), weights)

    # ------------------------------------------------------------------ loss
    def auxiliary_losses(self, items: Tensor, mask: Tensor, adj_view: Tensor,
                         sim_view: Tensor) -> tuple[Tensor, Tensor]:
        """``(cl, kl)``: the weighted cross-view InfoNCE and the KL of the weights, each
        already multiplied by its weight."""
        removed = self.batch_transitions(items, mask)
        conformity = self.conformity_weights(items, mask, adj_view, removed)
        interest = conformity.max() - conformity
        last = self.last_items(items, mask)
        seq_view = self.encode(items, mask)  # a second pass: other dropout masks
        cl_adj = info_nce(seq_view, adj_view[last], self.temperature)
        cl_sim = info_nce(adj_view[last], sim_view[last], self.temperature)
        cl = self.cl_weight * (conformity * cl_adj + interest * cl_sim).mean()
        kl = self.kl_weight * weight_kl(conformity, self.weight_mean)
        return cl, kl

    def loss(self, batch: Batch) -> Tensor:
        """Candidate loss (:attr:`candidate_loss_kind`) + ``cl_weight`` x contrastive +
        ``kl_weight`` x KL."""
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        items, mask = self.dense_items(batch)
        adj_view, sim_view = self.graph_views()
        user = self._user(items, mask, adj_view, sim_view)
        if self.candidate_loss_kind == "ce":  # issue 27: softmax over every item
            loss = self.catalogue_loss(batch, labels, user @ self.item_emb.weight.t())
        else:
            logits = torch.einsum("bd,bcd->bc", user, self.item_emb(batch.candidates))
            loss = self.loss_over_candidates(logits, labels)
        if self.cl_weight or self.kl_weight:
            cl, kl = self.auxiliary_losses(items, mask, adj_view, sim_view)
            loss = loss + cl + kl
        return loss

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, max_len={self.max_len}, "
            f"dim={self.dim}, num_blocks={self.num_blocks}, heads={self.heads}, "
            f"dropout={self.dropout_p}, graph_layers={self.graph_encoder.layers}, "
            f"graph_dropout={self.graph_encoder.edge_dropout}, cl_weight={self.cl_weight}, "
            f"kl_weight={self.kl_weight}, weight_mean={self.weight_mean}, "
            f"temperature={self.temperature}, neighbour_sample={self.neighbour_sample}, "
            f"fusion={self.fusion}, causal={self.causal}, loss={self.candidate_loss_kind!r}, "
            f"transition_entries={self.transition.num_edges}, "
            f"similarity_entries={self.similarity.num_edges})"
        )
