"""What MDGR's clusters, graphs and interests look like: diagnostics over a batch or a split.

Every function is vectorised over a batch of sequence graphs (PyG convention: ``batch``
sorted, ``pos`` the position ``0..n-1`` of each node in its sequence, cluster labels local
to a graph, ``edge_index`` global node indices with edges ``j -> i`` stored as
``[j, i]``). Unless said otherwise a metric is computed **per sequence** and then averaged
over the sequences where it is defined; every result says how many sequences (or users,
or nodes) went into the mean.

- :func:`consecutive_same_cluster`: how often items ``i`` and ``i + 1`` share a cluster,
  against the exact chance level of the same cluster sizes.
- :func:`edge_position_gap`: how far apart in the sequence the kept edges reach, against
  random distinct pairs.
- :func:`kept_share_of_same_cluster_pairs`: how much of the same-cluster pairs the
  :math:`\\lceil\\gamma n^2\\rceil` budget keeps.
- :func:`encoder_input_norms`: the size of the item, time and position parts of the
  encoder input, before and after the encoder's projection.
- :func:`interest_cosine`, :func:`interest_weight_spread`: how alike the interests are and
  how different their weights.
- :func:`iteration_drift`: how far each iteration moves the node states.
- :func:`genre_purity`: genre purity of the clusters against contiguous time segments and
  random partitions of the same sizes (:func:`read_item_genres` reads MovieLens genres).
- :func:`readout_ranking`: leave-one-out full-ranking metrics of a trained model's
  interests read out in other ways (their mean, the most weighted one, the one holding
  the last item, the last node's state): whether Eq. 16's max over interests is what
  the scores rest on.
- :func:`query_dependence`: how much a candidate-query model (Eq. 11) uses the candidate
  as the graph's query: its sampled metrics with the query swapped for another candidate
  of the window or for the last item, and how much the candidate moves the clusters.
- :func:`diagnose`: all of the above over a split of a prepared dataset, per iteration and
  for the final clustering (``benchmarks/diagnostics.py`` is its command line).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.utils import cumsum, scatter, to_dense_batch

from mdgr_graph.data.dataset import SequenceDataset, SequenceLoader
from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.data.titles import read_movielens_titles
from mdgr_graph.metrics import auc_per_row, full_ranking_metrics, rank_of_target
from mdgr_graph.models.mdgr import MDGR
from mdgr_graph.nn.dynamic_cluster_conv import DynamicClusterConv, SharedIteration

__all__ = [
    "ConsecutiveShare",
    "EdgeGap",
    "GenrePurity",
    "InterestCosine",
    "IterationDrift",
    "KeptShare",
    "WeightSpread",
    "consecutive_same_cluster",
    "diagnose",
    "edge_position_gap",
    "encoder_input_norms",
    "genre_matrix",
    "genre_purity",
    "interest_cosine",
    "interest_weight_spread",
    "iteration_drift",
    "kept_share_of_same_cluster_pairs",
    "query_dependence",
    "read_item_genres",
    "readout_ranking",
]


class ConsecutiveShare(NamedTuple):
    share: float  #: mean over sequences of the share of consecutive pairs in one cluster
    chance: float  #: the same for labels shuffled within each sequence (exact)
    sequences: int  #: sequences averaged (those with at least two nodes)


class EdgeGap(NamedTuple):
    gap: float  #: mean over sequences of the mean |pos_i - pos_j| of its kept edges
    random: float  #: the same for uniformly random distinct pairs of the sequence (exact)
    sequences: int  #: sequences averaged (those with at least one kept edge)


class KeptShare(NamedTuple):
    share: float  #: mean over sequences of kept same-cluster edges / same-cluster pairs
    sequences: int  #: sequences averaged (those with at least one same-cluster pair)


class InterestCosine(NamedTuple):
    cosine: float  #: mean over users of the mean pairwise cosine of their interests
    users: int  #: users averaged (those with at least two non-empty interests)


class WeightSpread(NamedTuple):
    max_min: float  #: mean over users of max / min of their interests' weights
    std_mean: float  #: mean over users of std / mean (population std) of the weights
    users: int  #: users averaged (those with at least two non-empty interests)


class IterationDrift(NamedTuple):
    to_encoder: list[float]  #: per iteration m: mean over nodes of cos(x_m, x_0)
    to_previous: list[float]  #: per iteration m: mean over nodes of cos(x_m, x_{m-1})


class InterestUse(NamedTuple):
    auc: float  # mean per-window AUC of the model's scores (max over interests, Eq. 16)
    auc_mean_interest: float  # the same with one interest: the mean of the window's interests
    positive_interests: float  # distinct interests that win (argmax) over a window's positives
    windows: int


class GenrePurity(NamedTuple):
    clusters: float  #: mean over sequences of the size-weighted purity of the clusters
    time_segments: float  #: contiguous time segments of the same sizes
    random: float  #: random partitions of the same sizes (seeded)
    sequences: int  #: sequences averaged


# ---------------------------------------------------------------------- helpers
def _num_graphs(batch: Tensor, num_graphs: int | None) -> int:
    if num_graphs is not None:
        return num_graphs
    return int(batch.max()) + 1 if batch.numel() else 0


def _rank_in_sequence(batch: Tensor, key: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """``(rank [N], order [N])``: the rank of every node among the nodes of its sequence
    by ``key`` (ties by node index), and the node order sorted by (sequence, key)."""
    order = torch.sort(key, stable=True).indices
    order = order[torch.sort(batch[order], stable=True).indices]
    counts = torch.bincount(batch, minlength=num_graphs)
    ptr = cumsum(counts)
    rank = torch.empty_like(batch)
    rank[order] = torch.arange(batch.numel(), device=batch.device) - ptr[batch[order]]
    return rank, order


def _cluster_sizes(cluster: Tensor, batch: Tensor, num_graphs: int, k: int) -> Tensor:
    """``[B, k]`` number of nodes of every cluster of every sequence."""
    return torch.bincount(batch * k + cluster, minlength=num_graphs * k).view(num_graphs, k)


def _num_labels(cluster: Tensor) -> int:
    if cluster.numel() and int(cluster.min()) < 0:
        raise ValueError("cluster labels must be >= 0")
    return int(cluster.max()) + 1 if cluster.numel() else 1


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` as float, NaN where ``den == 0``."""
    den = den.to(torch.float64)
    out = num.to(torch.float64) / den.clamp(min=1e-300)
    return out.masked_fill(den == 0, float("nan"))


def _mean(values: Tensor) -> tuple[float, int]:
    """Mean of the non-NaN entries and their number (NaN, 0 when there are none)."""
    valid = ~torch.isnan(values)
    count = int(valid.sum())
    return (float(values[valid].mean()) if count else float("nan")), count


# ---------------------------------------------------------------------- per sequence
def _consecutive_per_sequence(
    cluster: Tensor, batch: Tensor, pos: Tensor, num_graphs: int
) -> tuple[Tensor, Tensor]:
    _, order = _rank_in_sequence(batch, pos, num_graphs)
    b, c, p = batch[order], cluster[order], pos[order]
    pair = (b[1:] == b[:-1]) & (p[1:] == p[:-1] + 1)
    same = pair & (c[1:] == c[:-1])
    pairs = torch.bincount(b[:-1][pair], minlength=num_graphs)
    shared = torch.bincount(b[:-1][same], minlength=num_graphs)
    share = _ratio(shared, pairs)
    k = _num_labels(cluster)
    sizes = _cluster_sizes(cluster, batch, num_graphs, k)
    n = sizes.sum(1)
    chance = _ratio((sizes * (sizes - 1)).sum(1), n * (n - 1))
    return share, chance.masked_fill(pairs == 0, float("nan"))


def _edge_gap_per_sequence(
    edge_index: Tensor, pos: Tensor, batch: Tensor, num_graphs: int
) -> tuple[Tensor, Tensor]:
    src, dst = edge_index
    graph = batch[dst]
    gap = (pos[src] - pos[dst]).abs().to(torch.float64)
    total = torch.zeros(num_graphs, dtype=torch.float64, device=pos.device)
    total.index_add_(0, graph, gap)
    edges = torch.bincount(graph, minlength=num_graphs)
    mean = _ratio(total, edges)
    # exact mean |p_i - p_j| over ordered distinct pairs: with r the rank by position,
    # sum_{i<j} (p_j - p_i) = sum_r p_r (2 r - (n - 1)); (n + 1) / 3 for p = 0..n-1
    rank, _ = _rank_in_sequence(batch, pos, num_graphs)
    n = torch.bincount(batch, minlength=num_graphs)
    term = pos.to(torch.float64) * (2 * rank - (n[batch] - 1)).to(torch.float64)
    half = torch.zeros(num_graphs, dtype=torch.float64, device=pos.device).index_add_(
        0, batch, term)
    random = _ratio(2 * half, n * (n - 1))
    return mean, random.masked_fill(edges == 0, float("nan"))


def _kept_share_per_sequence(
    edge_index: Tensor, cluster: Tensor, batch: Tensor, num_graphs: int
) -> tuple[Tensor, Tensor]:
    """``(share [B], kept edges [B])``."""
    src, dst = edge_index
    inside = (cluster[src] == cluster[dst]) & (src != dst)
    kept = torch.bincount(batch[dst][inside], minlength=num_graphs)
    k = _num_labels(cluster)
    sizes = _cluster_sizes(cluster, batch, num_graphs, k)
    pairs = (sizes * (sizes - 1)).sum(1)
    return _ratio(kept, pairs), torch.bincount(batch[dst], minlength=num_graphs)


def _interest_cosine_per_user(z: Tensor, mask: Tensor) -> Tensor:
    zn = F.normalize(z.to(torch.float64), dim=-1)
    gram = zn @ zn.transpose(1, 2)
    eye = torch.eye(mask.size(1), dtype=torch.bool, device=mask.device)
    pair = mask.unsqueeze(2) & mask.unsqueeze(1) & ~eye
    return _ratio((gram * pair).sum((1, 2)), pair.sum((1, 2)))


def _weight_spread_per_user(weight: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    w = weight.to(torch.float64)
    count = mask.sum(1)
    biggest = w.masked_fill(~mask, float("-inf")).max(1).values
    smallest = w.masked_fill(~mask, float("inf")).min(1).values
    mean = _ratio((w * mask).sum(1), count)
    var = _ratio((((w - mean.unsqueeze(1)) ** 2) * mask).sum(1), count)
    few = count < 2
    return (_ratio(biggest, smallest).masked_fill(few, float("nan")),
            _ratio(var.sqrt(), mean).masked_fill(few, float("nan")))


def _segments(sizes: Tensor, batch: Tensor, rank: Tensor) -> Tensor:
    """Label ``[N]`` of the segment holding the node of rank ``rank`` when each sequence
    is cut, in rank order, into consecutive segments of lengths ``sizes [B, k]`` (a row
    of ``sizes`` sums to the sequence length; empty segments get no node)."""
    ends = sizes.cumsum(1)
    return torch.searchsorted(ends[batch], rank.unsqueeze(1), right=True).squeeze(1)


def _purity_per_sequence(
    label: Tensor, batch: Tensor, node_genres: Tensor, num_graphs: int, k: int
) -> Tensor:
    """Size-weighted mean purity of the partition ``label`` in each sequence:
    ``sum_c max_g |{i in c : g in genres(i)}| / n``."""
    group = batch * k + label
    counts = torch.zeros(num_graphs * k, node_genres.size(1), dtype=torch.float64,
                         device=batch.device)
    counts.index_add_(0, group, node_genres.to(torch.float64))
    best = counts.max(1).values.view(num_graphs, k).sum(1)
    return _ratio(best, torch.bincount(batch, minlength=num_graphs))


def _genre_purity_per_sequence(
    cluster: Tensor, batch: Tensor, pos: Tensor, node_genres: Tensor, num_graphs: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    k = _num_labels(cluster)
    sizes = _cluster_sizes(cluster, batch, num_graphs, k)
    rank, _ = _rank_in_sequence(batch, pos, num_graphs)
    # time segments: the clusters' sizes in the order of their mean rank (empty ones last)
    mean_rank = torch.zeros(num_graphs * k, dtype=torch.float64, device=batch.device)
    mean_rank.index_add_(0, batch * k + cluster, rank.to(torch.float64))
    mean_rank = (mean_rank.view(num_graphs, k) / sizes.clamp(min=1)).masked_fill(
        sizes == 0, float("inf"))
    by_time = sizes.gather(1, torch.sort(mean_rank, dim=1, stable=True).indices)
    segment = _segments(by_time, batch, rank)
    # random partitions: the same sizes over a random order of the sequence's nodes
    noise = torch.rand(batch.numel(), generator=generator, dtype=torch.float64).to(batch.device)
    shuffled, _ = _rank_in_sequence(batch, noise, num_graphs)
    random = _segments(sizes, batch, shuffled)
    return tuple(_purity_per_sequence(lab, batch, node_genres, num_graphs, k)
                 for lab in (cluster, segment, random))


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------- public metrics
def consecutive_same_cluster(
    cluster: Tensor, batch: Tensor, pos: Tensor, num_graphs: int | None = None
) -> ConsecutiveShare:
    """How often consecutive items share a cluster, and how often they would by chance.

    A consecutive pair is two nodes of one sequence at positions ``p`` and ``p + 1``. Per
    sequence: (pairs in one cluster) / (pairs). The chance level is the expected value of
    that share if the labels were shuffled within the sequence (cluster sizes kept):
    :math:`\\sum_c n_c (n_c - 1) / (n (n - 1))` exactly. Both are averaged over the
    sequences with at least one consecutive pair.

    Args:
        cluster: ``[N]`` cluster label of every node (local to its sequence, ``>= 0``).
        batch: ``[N]`` sorted sequence index.
        pos: ``[N]`` position of the node in its sequence.
        num_graphs: number of sequences (default: ``batch.max() + 1``).
    """
    share, chance = _consecutive_per_sequence(cluster, batch, pos,
                                              _num_graphs(batch, num_graphs))
    mean, count = _mean(share)
    return ConsecutiveShare(mean, _mean(chance)[0], count)


def edge_position_gap(
    edge_index: Tensor, pos: Tensor, batch: Tensor, num_graphs: int | None = None
) -> EdgeGap:
    """How far apart in the sequence the kept edges reach.

    Per sequence: the mean of :math:`|pos_i - pos_j|` over its edges (directed, each
    counted once), and the exact mean of the same over all ordered pairs of distinct nodes
    of the sequence — :math:`(n + 1) / 3` for positions ``0..n-1``, what random pairs would
    give. Both are averaged over the sequences with at least one edge.

    Args:
        edge_index: ``[2, E]`` edges (global node indices, within sequences).
        pos: ``[N]`` position of every node in its sequence.
        batch: ``[N]`` sorted sequence index (the brief's ``edge_position_gap(edge_index,
            pos)`` needs it to know the sequences).
        num_graphs: number of sequences (default: ``batch.max() + 1``).
    """
    gap, random = _edge_gap_per_sequence(edge_index, pos, batch, _num_graphs(batch, num_graphs))
    mean, count = _mean(gap)
    return EdgeGap(mean, _mean(random)[0], count)


def kept_share_of_same_cluster_pairs(
    edge_index: Tensor, cluster: Tensor, batch: Tensor, num_graphs: int | None = None
) -> KeptShare:
    """Share of the same-cluster pairs that the sparsification keeps.

    Per sequence: (kept directed edges ``j -> i``, ``i != j``, whose ends share a
    cluster) / (ordered same-cluster pairs ``i != j``, :math:`\\sum_c n_c (n_c - 1)`),
    averaged over sequences with at least one same-cluster pair. Every edge of
    :class:`~mdgr_graph.nn.DynamicClusterConv` joins one cluster, so the numerator is all
    its kept edges; for the fixed edges of ``StaticGraphRec`` only those inside a cluster
    count.

    Args:
        edge_index: ``[2, E]`` edges (global node indices).
        cluster: ``[N]`` the clustering the edges were built from.
        batch: ``[N]`` sorted sequence index.
        num_graphs: number of sequences (default: ``batch.max() + 1``).
    """
    share, _ = _kept_share_per_sequence(edge_index, cluster, batch,
                                        _num_graphs(batch, num_graphs))
    return KeptShare(*_mean(share))


def _encoder_parts(model: MDGR, batch: Batch) -> dict[str, tuple[Tensor, Tensor]]:
    """``{part: (input norm [N], projected norm [N])}`` in the order of
    :meth:`SequenceEncoder.forward`: item embedding, time (``use_time``), position
    (``use_position``)."""
    enc = model.encoder
    values = enc.input_parts(model.item_emb(batch.x), batch.t, batch.pos)
    names = ["item"] + (["time"] if enc.use_time else []) + (
        ["position"] if enc.use_position else [])
    parts = dict(zip(names, values, strict=True))
    weight = enc.proj.weight  # [d, in_dim]; columns in the order of the concatenation
    out, start = {}, 0
    for name, part in parts.items():
        block = weight[:, start : start + part.size(1)]
        start += part.size(1)
        out[name] = (part.norm(dim=1), (part @ block.t()).norm(dim=1))
    if start != weight.size(1):
        raise ValueError(f"encoder input has {start} columns, its projection takes "
                         f"{weight.size(1)}: SequenceEncoder.forward changed?")
    return out


@torch.no_grad()
def encoder_input_norms(model: MDGR, batch: Batch) -> dict[str, dict[str, float] | None]:
    """Mean L2 norm per node of each part of the encoder input, before and after the
    encoder's projection.

    The encoder input is ``[emb(x) || tau(t) || rho(pos)]`` (time and position only when
    the encoder uses them), projected by ``encoder.proj`` (:math:`W x + b`). For each part
    ``P`` with columns ``W_P`` of the projection this reports the mean over nodes of
    :math:`\\|P_i\\|` (``"input"``) and of :math:`\\|W_P P_i\\|` (``"projected"``, the
    part's contribution to the projection's output, which can rescale a part); the three
    contributions plus the bias sum to the projection's output.

    Returns:
        ``{"item": {"input", "projected"}, "time": ... or None, "position": ... or None,
        "bias": norm of b}``.
    """
    parts = _encoder_parts(model, batch)
    out: dict[str, Any] = {name: None for name in ("item", "time", "position")}
    for name, (raw, proj) in parts.items():
        out[name] = {"input": float(raw.mean()), "projected": float(proj.mean())}
    out["bias"] = float(model.encoder.proj.bias.norm())
    return out


def interest_cosine(z: Tensor, mask: Tensor) -> InterestCosine:
    """Mean pairwise cosine between the non-empty interests of a user.

    Per user: the mean of :math:`\\cos(z_j, z_l)` over pairs ``j != l`` of non-empty
    interests (a zero vector has cosine 0), averaged over users with at least two.

    Args:
        z: ``[B, k, d]`` interest vectors.
        mask: ``[B, k]`` True for non-empty interests.
    """
    return InterestCosine(*_mean(_interest_cosine_per_user(z, mask)))


def interest_weight_spread(weight: Tensor, mask: Tensor) -> WeightSpread:
    """How different the weights of one user's interests are.

    Per user, over the non-empty interests: max / min of the weights, and their
    (population) standard deviation / mean; both averaged over users with at least two
    non-empty interests (1 and 0 mean equal weights).

    Args:
        weight: ``[B, k]`` interest weights (Eq. 15; positive).
        mask: ``[B, k]`` True for non-empty interests.
    """
    ratio, cv = _weight_spread_per_user(weight, mask)
    mean, count = _mean(ratio)
    return WeightSpread(mean, _mean(cv)[0], count)


def _interest_use_per_window(
    scorer: torch.nn.Module, z: Tensor, weight: Tensor, mask: Tensor, items: Tensor,
    labels: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per window: AUC with every interest, AUC with their mean only, and the number of
    distinct interests that give the max (Eq. 16) over the positives."""
    k = z.size(1)
    per_interest = torch.stack([  # [B, k, C], -inf for empty interests
        scorer(z[:, j : j + 1], weight[:, j : j + 1], mask[:, j : j + 1], items)
        for j in range(k)
    ], dim=1)
    scores = per_interest.max(dim=1).values
    count = mask.sum(1, keepdim=True).clamp(min=1)
    z_mean = (z * mask.unsqueeze(-1)).sum(1, keepdim=True) / count.unsqueeze(-1)
    w_mean = (weight * mask).sum(1, keepdim=True) / count
    one = scorer(z_mean, w_mean, torch.ones_like(mask[:, :1]), items)
    positive = labels > 0.5
    winner = per_interest.argmax(dim=1)  # [B, C]
    hits = torch.zeros(z.size(0), k, dtype=torch.bool, device=z.device)
    rows = torch.arange(z.size(0), device=z.device).unsqueeze(1).expand_as(winner)
    hits[rows[positive], winner[positive]] = True
    return auc_per_row(scores, positive), auc_per_row(one, positive), hits.sum(1).float()


def interest_use(
    scorer: torch.nn.Module, z: Tensor, weight: Tensor, mask: Tensor, items: Tensor,
    labels: Tensor,
) -> InterestUse:
    """Whether the scores use several interests: the per-window AUC of the candidates
    scored as the model scores them (Eq. 16, the max over the non-empty interests) against
    scored with a single interest, the mean of the window's non-empty interests (and the
    mean weight); and how many distinct interests win the max over a window's positives.
    A multi-interest model whose AUC barely moves with one interest does not need several.

    Args:
        scorer: the model's :class:`~mdgr_graph.nn.interest.InterestScore`.
        z: ``[B, k, d]`` interests, ``weight`` ``[B, k]``, ``mask`` ``[B, k]`` non-empty.
        items: ``[B, C, d]`` candidate embeddings; ``labels`` ``[B, C]`` (1 positive).
    """
    auc, one, winners = _interest_use_per_window(scorer, z, weight, mask, items, labels)
    return InterestUse(_mean(auc)[0], _mean(one)[0], _mean(winners)[0], int(auc.numel()))


def _trace(model: MDGR, batch: Batch) -> tuple[list[Tensor], list[tuple[Tensor, Tensor, Tensor]]]:
    """Node states ``[x_0, x_1, ..., x_m]`` (encoder output, then every iteration's
    output) and every iteration's ``(edge_index, edge_weight, cluster)``.

    The states are recorded with forward hooks on ``model.encoder`` and ``model.convs``
    during one ``model.node_states(batch, return_graphs=True)``, so the iterations run
    exactly as the model runs them (last-item query recomputed every iteration;
    ``StaticGraphRec``'s fixed edges).
    """
    states: list[Tensor] = []

    def keep(_module, _inputs, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    hooks = [model.encoder.register_forward_hook(keep)]
    hooks += [conv.register_forward_hook(keep) for conv in model.convs]
    try:
        x, graphs = model.node_states(batch, return_graphs=True)
    finally:
        for hook in hooks:
            hook.remove()
    if len(states) != len(model.convs) + 1 or states[-1] is not x:
        raise RuntimeError("node_states did not run the encoder and every conv once each")
    return states, graphs


@torch.no_grad()
def iteration_drift(model: MDGR, batch: Batch) -> IterationDrift:
    """How far each iteration moves the node states.

    Runs the model's encoder and its ``m`` iterations the way ``model.node_states`` does
    (last-item query; recorded with hooks, :func:`_trace`) and reports, for iteration
    ``m = 1..M``, the mean over nodes of :math:`\\cos(x_m, x_0)` (``x_0`` the encoder
    output) and of :math:`\\cos(x_m, x_{m-1})`. Empty lists when the model has no
    iterations.
    """
    states, _ = _trace(model, batch)
    return IterationDrift(
        [float(F.cosine_similarity(x, states[0], dim=1).mean()) for x in states[1:]],
        [float(F.cosine_similarity(states[i], states[i - 1], dim=1).mean())
         for i in range(1, len(states))],
    )


def genre_matrix(item_genres: Sequence[set[str] | frozenset[str]]) -> tuple[Tensor, list[str]]:
    """``([num_items + 1, G] bool, genre names)``: row ``i`` marks the genres of item ``i``
    (item ids index ``item_genres``; entry 0, padding, is usually empty)."""
    names = sorted({g for genres in item_genres for g in genres})
    column = {g: c for c, g in enumerate(names)}
    matrix = torch.zeros(len(item_genres), max(len(names), 1), dtype=torch.bool)
    rows = [(i, column[g]) for i, genres in enumerate(item_genres) for g in genres]
    if rows:
        index = torch.tensor(rows)
        matrix[index[:, 0], index[:, 1]] = True
    return matrix, names


def genre_purity(
    cluster: Tensor,
    batch: Tensor,
    pos: Tensor,
    items: Tensor,
    item_genres: Sequence[set[str] | frozenset[str]] | Tensor,
    seed: int | torch.Generator = 0,
    num_graphs: int | None = None,
) -> GenrePurity:
    """Genre purity of the clusters, of contiguous time segments and of random partitions
    of the same sizes.

    The purity of a group of items is the largest share of its items that have one genre,
    :math:`\\max_g |\\{i \\in c: g \\in G(i)\\}| / |c|` (a movie can have several
    genres; an item without genres counts in the size and has none). A partition's purity
    in a sequence is the size-weighted mean over its groups; each is averaged over the
    sequences. Baselines, per sequence, with the clusters' sizes:

    - **time segments**: the sequence cut (by position) into contiguous segments whose
      lengths are the cluster sizes in the order of the clusters' mean position; equal to
      the clusters' purity when the clusters are such segments;
    - **random**: the sequence's nodes in a random order (from ``seed``) cut into segments
      of the cluster sizes.

    Singleton groups are pure by definition, so the baselines share the clusters' sizes.

    Args:
        cluster: ``[N]`` cluster labels, batch: ``[N]`` sorted sequence index, pos: ``[N]``
            positions, items: ``[N]`` item ids of the nodes.
        item_genres: the genre set of every item id (:func:`read_item_genres`), or its
            :func:`genre_matrix`.
        seed: seed (or generator) of the random partitions.
        num_graphs: number of sequences (default: ``batch.max() + 1``).
    """
    matrix = item_genres if isinstance(item_genres, Tensor) else genre_matrix(item_genres)[0]
    node_genres = matrix.to(batch.device)[items]
    values = _genre_purity_per_sequence(cluster, batch, pos, node_genres,
                                        _num_graphs(batch, num_graphs), _generator(seed))
    mean, count = _mean(values[0])
    return GenrePurity(mean, _mean(values[1])[0], _mean(values[2])[0], count)


def read_item_genres(path: str | os.PathLike, item_ids: Sequence | Any) -> list[frozenset[str]]:
    """Genre set of every internal item id from a MovieLens ``movies.dat(.gz)``.

    Reads the file with :func:`mdgr_graph.data.titles.read_movielens_titles` (``id::title::
    genres``, UTF-8 or Latin-1) and maps it through ``item_ids`` (the raw id of every
    internal id, ``PreparedDataset.arrays["item_ids"]``; entry 0 is padding). Items
    missing from the file get an empty set.
    """
    titles = read_movielens_titles(path)
    genres = [frozenset(titles[str(raw)].genres) if str(raw) in titles else frozenset()
              for raw in list(item_ids)]
    if genres:
        genres[0] = frozenset()
    return genres


# ---------------------------------------------------------------------- over a split
class _Values:
    """Per-sequence (or per-node) values collected over batches, then NaN-aware means."""

    def __init__(self) -> None:
        self.values: dict[str, list[Tensor]] = defaultdict(list)

    def add(self, key: str, values: Tensor) -> None:
        self.values[key].append(values.detach().to("cpu", torch.float64))

    def mean(self, key: str) -> tuple[float, int]:
        values = self.values.get(key)
        return _mean(torch.cat(values)) if values else (float("nan"), 0)


def _clustering_values(acc: _Values, prefix: str, cluster: Tensor, batch: Batch,
                       node_genres: Tensor | None, generator: torch.Generator) -> None:
    num_graphs = batch.num_graphs
    share, chance = _consecutive_per_sequence(cluster, batch.batch, batch.pos, num_graphs)
    acc.add(f"{prefix}consecutive", share)
    acc.add(f"{prefix}chance", chance)
    sizes = _cluster_sizes(cluster, batch.batch, num_graphs, _num_labels(cluster))
    acc.add(f"{prefix}clusters", (sizes > 0).sum(1))
    if node_genres is not None:
        for name, values in zip(("clusters", "time_segments", "random"),
                                _genre_purity_per_sequence(cluster, batch.batch, batch.pos,
                                                           node_genres, num_graphs,
                                                           generator), strict=True):
            acc.add(f"{prefix}purity_{name}", values)


def _clustering_summary(acc: _Values, prefix: str, genres: bool) -> dict[str, Any]:
    share, count = acc.mean(f"{prefix}consecutive")
    out: dict[str, Any] = {
        "consecutive_same_cluster": share,
        "consecutive_chance": acc.mean(f"{prefix}chance")[0],
        "consecutive_sequences": count,
        "clusters": acc.mean(f"{prefix}clusters")[0],
    }
    if genres:
        purity, count = acc.mean(f"{prefix}purity_clusters")
        out["genre_purity"] = {
            "clusters": purity,
            "time_segments": acc.mean(f"{prefix}purity_time_segments")[0],
            "random": acc.mean(f"{prefix}purity_random")[0],
            "sequences": count,
        }
    return out


@torch.no_grad()
def diagnose(
    model: MDGR,
    prepared: PreparedDataset,
    split: str = "test",
    max_windows: int | None = None,
    item_genres: Sequence[set[str] | frozenset[str]] | Tensor | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Every diagnostic of this module over the sequences of one split.

    Runs the model in eval mode without gradients over the split's first ``max_windows``
    sequences (all by default; paper windows or leave-one-out users, in the dataset's
    order), ``batch_size`` at a time, and averages each metric over every sequence (user,
    node) where it is defined, pooled over batches.

    Per iteration ``i = 1..m``: the clustering iteration ``i`` computed (on its input
    :math:`x_{i-1}`) and the edges it kept — consecutive-same-cluster share and its chance
    level, non-empty clusters, kept edges, edge position gap and its random level, kept
    share of the same-cluster pairs, genre purity (with ``item_genres``) — and the drift
    of its output :math:`x_i` (:func:`iteration_drift`). For the final clustering
    (``MDGR.pool_interests`` on the last node states, the one pooled into interests):
    the clustering metrics, the interests' mean pairwise cosine and the spread of their
    weights. Once: :func:`encoder_input_norms`.

    Works for every :class:`~mdgr_graph.models.MDGR` (its Table 3 variants, MIP with no
    iterations) and ``StaticGraphRec``.

    Args:
        model: the model (moved nowhere; batches go to its device).
        prepared: the prepared dataset.
        split: ``train``, ``valid`` or ``test``. (default: ``"test"``)
        max_windows: use only the first this many sequences of the split.
        item_genres: genre set of every item id (:func:`read_item_genres`) or its
            :func:`genre_matrix`, for genre purity; None leaves purity out.
        batch_size: sequences per batch. (default: 64)
        seed: seed of the random-partition baseline of genre purity. (default: 0)

    Raises:
        TypeError: ``model`` is not an MDGR-family model.
        ValueError: a candidate-query model (``model.candidate_mode``), whose clusters and
            interests depend on the candidate.

    Returns:
        A JSON-serialisable dict: ``model``, ``split``, ``sequences``, ``k``, ``m``,
        ``cluster``, ``encoder`` (:func:`encoder_input_norms`), ``iterations`` (a list of
        dicts, one per iteration) and ``final``.
    """
    if not isinstance(model, MDGR):
        raise TypeError(f"diagnose needs an MDGR-family model (MDGR, a Table 3 variant, MIP, "
                        f"StaticGraphRec), got {type(model).__name__}")
    if model.candidate_mode:
        raise ValueError("diagnose does not support query='candidate': its clusters, graphs "
                         "and interests depend on the candidate; diagnose a query='last' "
                         "model")
    dataset = SequenceDataset(prepared, split)
    if max_windows is not None:
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        dataset = dataset[: min(max_windows, len(dataset))]
    device = next(model.parameters()).device
    matrix = None
    if item_genres is not None:
        matrix = item_genres if isinstance(item_genres, Tensor) else genre_matrix(item_genres)[0]
        if matrix.size(0) < prepared.num_items + 1:
            raise ValueError(f"item_genres covers {matrix.size(0)} item ids, the dataset has "
                             f"{prepared.num_items + 1} (with padding)")
        matrix = matrix.to(device)
    generator = _generator(seed)
    was_training = model.training
    model.eval()
    acc = _Values()
    sequences = 0
    try:
        for batch in SequenceLoader(dataset, batch_size=batch_size):
            batch = batch.to(device)
            sequences += batch.num_graphs
            node_genres = matrix[batch.x] if matrix is not None else None
            for name, (raw, proj) in _encoder_parts(model, batch).items():
                acc.add(f"enc_{name}_input", raw)
                acc.add(f"enc_{name}_projected", proj)
            states, graphs = _trace(model, batch)
            for i, (edge_index, _, cluster) in enumerate(graphs, 1):
                prefix = f"it{i}_"
                _clustering_values(acc, prefix, cluster, batch, node_genres, generator)
                gap, random = _edge_gap_per_sequence(edge_index, batch.pos, batch.batch,
                                                     batch.num_graphs)
                kept, edges = _kept_share_per_sequence(edge_index, cluster, batch.batch,
                                                       batch.num_graphs)
                acc.add(prefix + "gap", gap)
                acc.add(prefix + "gap_random", random)
                acc.add(prefix + "kept", kept)
                acc.add(prefix + "edges", edges)
                acc.add(prefix + "cos_encoder",
                        F.cosine_similarity(states[i], states[0], dim=1))
                acc.add(prefix + "cos_previous",
                        F.cosine_similarity(states[i], states[i - 1], dim=1))
            z, weight, mask, cluster = model.pool_interests(
                states[-1], batch.batch, batch.pos, batch.t, batch.num_graphs,
                cluster=model.item_clusters(batch)[1], values=model.pool_input(batch))
            _clustering_values(acc, "final_", cluster, batch, node_genres, generator)
            acc.add("final_cosine", _interest_cosine_per_user(z, mask))
            ratio, cv = _weight_spread_per_user(weight, mask)
            acc.add("final_max_min", ratio)
            acc.add("final_std_mean", cv)
            if getattr(batch, "candidates", None) is not None:
                auc, one, winners = _interest_use_per_window(
                    model.scorer, z, weight, mask, model.item_emb(batch.candidates),
                    batch.labels.view_as(batch.candidates))
                acc.add("final_auc", auc)
                acc.add("final_auc_mean_interest", one)
                acc.add("final_positive_interests", winners)
    finally:
        model.train(was_training)

    encoder: dict[str, Any] = {name: None for name in ("item", "time", "position")}
    for name in encoder:
        if f"enc_{name}_input" in acc.values:
            encoder[name] = {"input": acc.mean(f"enc_{name}_input")[0],
                             "projected": acc.mean(f"enc_{name}_projected")[0]}
    encoder["bias"] = float(model.encoder.proj.bias.norm())
    genres = matrix is not None
    iterations = []
    for i in range(1, len(model.convs) + 1):
        prefix = f"it{i}_"
        entry = {"iteration": i, **_clustering_summary(acc, prefix, genres)}
        gap, count = acc.mean(prefix + "gap")
        entry.update(
            edges=acc.mean(prefix + "edges")[0],
            edge_gap=gap,
            edge_gap_random=acc.mean(prefix + "gap_random")[0],
            edge_gap_sequences=count,
            kept_share_of_same_cluster_pairs=acc.mean(prefix + "kept")[0],
            cos_to_encoder=acc.mean(prefix + "cos_encoder")[0],
            cos_to_previous=acc.mean(prefix + "cos_previous")[0],
        )
        iterations.append(entry)
    final = _clustering_summary(acc, "final_", genres)
    cosine, users = acc.mean("final_cosine")
    ratio, _ = acc.mean("final_max_min")
    final.update(interest_cosine=cosine, interest_users=users, weight_max_min=ratio,
                 weight_std_mean=acc.mean("final_std_mean")[0])
    if "final_auc" in acc.values:
        final.update(auc=acc.mean("final_auc")[0],
                     auc_mean_interest=acc.mean("final_auc_mean_interest")[0],
                     positive_interests=acc.mean("final_positive_interests")[0])
    return {
        "model": repr(model),
        "split": split,
        "sequences": sequences,
        "k": model.k,
        "m": len(model.convs),
        "cluster": model.cluster,
        "encoder": encoder,
        "iterations": iterations,
        "final": final,
    }


# ---------------------------------------------------------------------- readouts
#: The readouts of :func:`readout_ranking`, in the order it reports them.
READOUTS: tuple[str, ...] = ("eq16", "unweighted", "mean_interest", "top_weight",
                             "last_item_interest", "last_state")


def _readout_scores(model: MDGR, batch: Batch, items: Tensor) -> dict[str, Tensor]:
    """``[B, I + 1]`` scores of every readout of :data:`READOUTS` for one batch."""
    x = model.node_states(batch)
    z, weight, mask, cluster = model.pool_interests(
        x, batch.batch, batch.pos, batch.t, batch.num_graphs,
        cluster=model.item_clusters(batch)[1], values=model.pool_input(batch))
    last = batch.ptr[1:] - 1
    one = torch.ones_like(mask[:, :1])

    def only(j: Tensor) -> Tensor:  # the mask of interest j of every row
        return torch.zeros_like(mask).scatter_(1, j.unsqueeze(1), True) & mask

    count = mask.sum(1, keepdim=True).clamp(min=1)
    z_mean = (z * mask.unsqueeze(-1)).sum(1, keepdim=True) / count.unsqueeze(-1)
    w_mean = (weight * mask).sum(1, keepdim=True) / count
    cases = {
        "eq16": (z, weight, mask),
        "unweighted": (z, torch.ones_like(weight), mask),
        "mean_interest": (z_mean, w_mean, one),
        "top_weight": (z, weight, only(weight.masked_fill(~mask, float("-inf")).argmax(1))),
        "last_item_interest": (z, weight, only(cluster[last])),
        "last_state": (x[last].unsqueeze(1), torch.ones_like(w_mean), one),
    }
    return {name: model.score_item_chunks(
        lambda chunk, c=case: model.scorer(*c, chunk), items, 2048)
        for name, case in cases.items()}


def _first_of_split(prepared: PreparedDataset, split: str, limit: int | None,
                    name: str) -> SequenceDataset:
    """The first ``limit`` sequences of the ``valid`` or ``test`` split (all when None)."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    dataset = SequenceDataset(prepared, split)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"{name} must be >= 1, got {limit}")
        dataset = dataset[: min(limit, len(dataset))]
    return dataset


@torch.no_grad()
def readout_ranking(
    model: MDGR,
    prepared: PreparedDataset,
    split: str = "valid",
    max_users: int | None = None,
    batch_size: int = 256,
    mask_seen: bool = True,
) -> dict[str, Any]:
    r"""Leave-one-out full-ranking metrics of one trained model under other readouts.

    The node states, clusters, interests :math:`z_j` and weights :math:`\omega_j` are the
    model's own (eval mode); only the step from interests to item scores changes, always
    through the model's :class:`~mdgr_graph.nn.interest.InterestScore`:

    - ``eq16``: the model's score, :math:`\max_j \omega_j \mathrm{Linear}(z_j \odot p)`
      over the non-empty interests (equals :func:`mdgr_graph.train.evaluate`);
    - ``unweighted``: the same max with every :math:`\omega_j = 1`;
    - ``mean_interest``: one interest, the mean of the non-empty ones, with their mean
      weight;
    - ``top_weight``: only the interest with the largest weight;
    - ``last_item_interest``: only the interest of the cluster that holds the most recent
      item;
    - ``last_state``: the most recent item's final node state as the only interest
      (weight 1), a SASRec-style readout without pooling.

    A post-hoc probe: the model was trained through ``eq16``, so a readout that scores
    close to it shows that the scores do not depend on the max over several interests
    (the multi-interest part carries no ranking signal), not what a model trained with
    that readout would reach.

    Args:
        model: an MDGR-family model with ``query="last"`` and no repeat term.
        prepared: a leave-one-out dataset.
        split: ``valid`` or ``test``. (default: ``"valid"``)
        max_users: only the split's first this many users (all when None).
        batch_size: users per batch. (default: 256)
        mask_seen: exclude each user's earlier items from the ranking, as
            :func:`~mdgr_graph.train.evaluate` does. (default: :obj:`True`)

    Returns:
        ``{"split", "users", "readouts": {name: metrics}}`` with the metrics of
        :func:`~mdgr_graph.metrics.full_ranking_metrics` (``hr@10/full``, ...).
    """
    from mdgr_graph.train import _seen_mask

    if not isinstance(model, MDGR):
        raise TypeError(f"readout_ranking needs an MDGR-family model, got "
                        f"{type(model).__name__}")
    if model.candidate_mode:
        raise ValueError("readout_ranking does not support query='candidate' (the "
                         "interests depend on the candidate)")
    if model.repeat_score is not None:
        raise ValueError("readout_ranking compares interest readouts; a model with "
                         "repeat='gate' adds a repeat term to every one of them")
    if prepared.protocol != "loo":
        raise ValueError(f"readout_ranking ranks the catalogue: it needs a leave-one-out "
                         f"dataset, got protocol {prepared.protocol!r}")
    dataset = _first_of_split(prepared, split, max_users, "max_users")
    device = next(model.parameters()).device
    seen = prepared.seen_items(split) if mask_seen else None
    ranks: dict[str, list[Tensor]] = {name: [] for name in READOUTS}
    was_training = model.training
    model.eval()
    try:
        for batch in SequenceLoader(dataset, batch_size=batch_size):
            batch = batch.to(device)
            exclude = (None if seen is None
                       else _seen_mask(seen, batch.sample.cpu(), prepared.num_items))
            target = batch.target.cpu()
            for name, scores in _readout_scores(model, batch, model.item_emb.weight).items():
                ranks[name].append(rank_of_target(scores.float().cpu(), target, exclude))
    finally:
        model.train(was_training)
    return {"split": split, "users": len(dataset),
            "readouts": {name: full_ranking_metrics(torch.cat(r)) for name, r in ranks.items()}}


# ---------------------------------------------------------------------- candidate query
#: The queries of :func:`query_dependence`, in the order it reports them.
QUERIES: tuple[str, ...] = ("own", "other_candidate", "last_item")


def _rand_agreement(a: Tensor, b: Tensor, graph: Tensor, num_graphs: int) -> Tensor:
    """Rand index of two labelings of the same nodes, per graph ``[G]``: the share of a
    graph's node pairs that both put in one cluster or both put apart (NaN for a graph of
    fewer than two nodes)."""
    la, real = to_dense_batch(a, graph, fill_value=-1, batch_size=num_graphs)
    lb, _ = to_dense_batch(b, graph, fill_value=-1, batch_size=num_graphs)
    n = la.size(1)
    upper = torch.ones(n, n, dtype=torch.bool, device=a.device).triu(1)
    pairs = real.unsqueeze(2) & real.unsqueeze(1) & upper
    agree = (la.unsqueeze(2) == la.unsqueeze(1)) == (lb.unsqueeze(2) == lb.unsqueeze(1))
    return _ratio((agree & pairs).sum((1, 2)).double(), pairs.sum((1, 2)).double())


def _attention_shift(conv: DynamicClusterConv, shared: SharedIteration,
                     query: Tensor) -> tuple[Tensor, Tensor] | None:
    """Eq. 12 attention of the iteration ``shared`` comes from under every query of
    ``query [B, c, d]``: per (node with in-edges, query, head) the total variation distance
    ``[M]`` to the attention under the next query (cyclic), and to the uniform distribution
    over the node's kept in-neighbours. None when no graph has an edge."""
    if shared.graph is None:
        return None
    att = conv.attention(shared, query)  # [E, c, H]
    dst, _ = shared.graph.nodes()
    num_nodes = shared.x.size(0)
    degree = torch.bincount(dst, minlength=num_nodes)
    uniform = (1.0 / degree.index_select(0, dst).to(att.dtype)).view(-1, 1, 1)
    has_edges = degree > 0

    def tv(a: Tensor, b: Tensor) -> Tensor:
        return 0.5 * scatter((a - b).abs(), dst, dim=0, dim_size=num_nodes, reduce="sum")

    between = tv(att, att.roll(-1, dims=1))[has_edges]
    to_uniform = tv(att, uniform.expand_as(att))[has_edges]
    return between.reshape(-1), to_uniform.reshape(-1)


def _query_scores(model: MDGR, batch: Batch) -> tuple[dict[str, Tensor], dict[str, list[Tensor]]]:
    """``[B, C]`` scores of ``batch.candidates`` under every query of :data:`QUERIES`, and
    per copy the Rand agreement of its final clustering with the next candidate's copy
    (``"rand"``) and the first iteration's attention shift of :func:`_attention_shift`
    between them (``"between_candidates"``, ``"to_uniform"``), neighbours taken inside a
    chunk of ``model.candidate_chunk`` candidates."""
    candidates = batch.candidates
    num_seq, d = batch.num_graphs, model.dim
    own, other = [], []
    per_copy: dict[str, list[Tensor]] = {"rand": [], "between_candidates": [], "to_uniform": []}
    for part in model.candidate_interests(batch, candidates):
        num_cand = part.query.size(1)
        flat_query = part.query.reshape(num_seq * num_cand, 1, d)
        own.append(model.scorer(part.z, part.weight, part.mask, flat_query)
                   .view(num_seq, num_cand))

        def rolled(t: Tensor, c: int = num_cand) -> Tensor:  # copy j gets copy j + 1's
            return t.view(num_seq, c, *t.shape[1:]).roll(-1, dims=1).flatten(0, 1)

        other.append(model.scorer(rolled(part.z), rolled(part.weight), rolled(part.mask),
                                  flat_query).view(num_seq, num_cand))
        if num_cand == 1:  # no neighbour to compare with
            continue
        # the copies of one sequence list its nodes in the same order, so the labels of
        # copy j + 1 line up with those of copy j after moving them one copy back
        counts = torch.bincount(part.graph, minlength=num_seq * num_cand)
        size = counts.view(num_seq, num_cand)[:, 0]
        shift = size.repeat_interleave(num_cand).repeat_interleave(counts)
        last_copy = (part.graph % num_cand) == num_cand - 1
        shift = torch.where(last_copy, -(num_cand - 1) * shift, shift)
        index = torch.arange(part.cluster.numel(), device=shift.device) + shift
        per_copy["rand"].append(_rand_agreement(part.cluster, part.cluster[index],
                                                part.graph, num_seq * num_cand))
        attention = _attention_shift(model.convs[0], part.shared, part.query)
        if attention is not None:
            per_copy["between_candidates"].append(attention[0])
            per_copy["to_uniform"].append(attention[1])
    last = batch.ptr[1:] - 1
    x = model.node_states(batch, query=model.item_emb(batch.x[last]))
    z, weight, mask, _ = model.pool_interests(
        x, batch.batch, batch.pos, batch.t, num_seq,
        cluster=model.item_clusters(batch)[1], values=model.pool_input(batch))
    fixed = model.scorer(z, weight, mask, model.item_emb(candidates))
    return ({"own": torch.cat(own, 1), "other_candidate": torch.cat(other, 1),
             "last_item": fixed}, per_copy)


@torch.no_grad()
def query_dependence(
    model: MDGR,
    prepared: PreparedDataset,
    split: str = "valid",
    max_windows: int | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    r"""How much a candidate-query model (Eq. 11, ``query="candidate"``) uses the candidate
    as its query: the split's sampled metrics with the graph's query swapped after
    training.

    - ``own``: every candidate the query of its own copy of the graph, the model's score
      (equals :func:`mdgr_graph.train.evaluate`);
    - ``other_candidate``: candidate :math:`c` scored against the interests of the copy
      built for another candidate of the same window (the next one of its chunk of
      ``model.candidate_chunk``): the queries keep their distribution, only the match
      between query and scored item goes;
    - ``last_item``: one query per window for every candidate, the embedding of the
      window's most recent item.

    If ``other_candidate`` scores as well as ``own``, the candidate reaches the score only
    through Eq. 16's product with the interests, not through the graph. ``score_shift`` is
    the mean absolute change of a window's scores against ``own``, in units of the standard
    deviation of its ``own`` scores over its candidates (0 for ``own``). ``attention_tv``
    says whether the query moves the first iteration's attention (Eq. 12) at all: the mean
    total variation distance, over nodes with kept in-edges, heads and candidates, between
    a node's attention under one candidate and under the next of its chunk, as for
    ``other_candidate`` (``between_candidates``; 0:
    the query is ignored, 1: disjoint), beside its distance from uniform weights over the
    same neighbours (``to_uniform``). Also reports the
    Rand agreement of the final clusterings of two candidates' copies of a window (1: the
    candidate does not change which items are grouped).

    Args:
        model: an MDGR-family model with ``query="candidate"`` and no repeat term.
        prepared: a dataset whose split carries candidates and labels (both protocols).
        split: ``valid`` or ``test``. (default: ``"valid"``)
        max_windows: only the split's first this many sequences (all when None).
        batch_size: sequences per batch. (default: 64)

    Returns:
        ``{"split", "windows", "queries": {name: {"auc/sampled", "recall@50/sampled",
        "score_shift"}},
        "cluster_rand_agreement", "identical_partitions", "copies"}``; recall only under
        the paper protocol.
    """
    from mdgr_graph.metrics import MetricAccumulator, window_metrics_per_row

    if not isinstance(model, MDGR):
        raise TypeError(f"query_dependence needs an MDGR-family model, got "
                        f"{type(model).__name__}")
    if not model.candidate_mode:
        raise ValueError("query_dependence needs a model with query='candidate' and at least "
                         "one graph iteration (m >= 1)")
    if model.repeat_score is not None:
        raise ValueError("query_dependence swaps the graph's query; a model with "
                         "repeat='gate' adds a term that reads the candidate directly")
    dataset = _first_of_split(prepared, split, max_windows, "max_windows")
    device = next(model.parameters()).device
    accs = {name: MetricAccumulator() for name in QUERIES}
    attention = MetricAccumulator()
    agreements: list[Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for batch in SequenceLoader(dataset, batch_size=batch_size):
            batch = batch.to(device)
            model._check_candidates(batch)
            scores, per_copy = _query_scores(model, batch)
            labels = batch.labels.view_as(batch.candidates).cpu()
            own = scores["own"].float().cpu()
            spread = own.std(1, keepdim=True)
            for name, s in scores.items():
                metrics = window_metrics_per_row(s.float().cpu(), labels, ks=(50,))
                if prepared.protocol != "paper":
                    metrics = {"auc/sampled": metrics["auc/sampled"]}
                metrics["score_shift"] = _ratio((s.float().cpu() - own).abs().mean(1),
                                                spread[:, 0])
                accs[name].update_many(metrics)
            agreements.extend(a.cpu() for a in per_copy.pop("rand"))
            for name, values in per_copy.items():
                for v in values:
                    attention.update(name, v.double().cpu())
    finally:
        model.train(was_training)
    rand = torch.cat(agreements) if agreements else torch.empty(0, dtype=torch.float64)
    rand = rand[~rand.isnan()]
    return {"split": split, "windows": len(dataset),
            "queries": {name: acc.compute() for name, acc in accs.items()},
            "cluster_rand_agreement": float(rand.mean()) if rand.numel() else float("nan"),
            "identical_partitions": float((rand == 1).double().mean()) if rand.numel()
            else float("nan"),
            "copies": int(rand.numel()),
            "attention_tv": attention.compute() if attention.state() else {}}
