"""Pictures of what MDGR learned for one user: interest sub-graphs and interest weights.

- :func:`trace_interests` runs a trained :class:`~mdgr_graph.models.MDGR` on one sequence
  and keeps, for every DynamicClusterConv iteration, the interest sub-graph it built
  (edges, weights, cluster of every node), plus the final interests and their weights.
- :func:`draw_interest_graphs` draws those sub-graphs side by side (networkx +
  matplotlib): one panel per iteration, the items on a circle in time order (the same
  place in every panel), nodes coloured by cluster, edge width by edge weight, item titles
  as labels when a title file is given.
- :func:`interest_weights_over_time` slides a window over a user's history and records the
  interest weights :math:`\\omega_j` (Eq. 15) after every step; interests of consecutive
  steps are matched by the cosine similarity of their vectors (Hungarian assignment), so a
  line follows one interest as it drifts. :func:`plot_interest_weights` draws them.

``examples/explain_user.py`` writes both pictures for a user of a trained model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import linear_sum_assignment  # noqa: E402
from torch import Tensor  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

from mdgr_graph.data.dataset import make_sequence_graph  # noqa: E402
from mdgr_graph.models.mdgr import MDGR  # noqa: E402

__all__ = [
    "InterestTrace",
    "align_clusters",
    "draw_interest_graphs",
    "interest_weights_over_time",
    "plot_interest_weights",
    "trace_interests",
]


@dataclass
class InterestTrace:
    """What MDGR computed for one sequence of ``n`` items.

    Attributes:
        items: ``[n]`` item ids, oldest first.
        days: ``[n]`` days since the first item.
        graphs: one ``(edge_index [2, E], edge_weight [E], cluster [n])`` per iteration,
            node indices ``0..n-1``.
        cluster: ``[n]`` final group of every item (the one pooled into interests).
        interests: ``[k, d]`` interest vectors :math:`z_j` (Eq. 14).
        weights: ``[k]`` interest weights :math:`\\omega_j` (Eq. 15).
        mask: ``[k]`` True for non-empty groups.
    """

    items: Tensor
    days: Tensor
    graphs: list[tuple[Tensor, Tensor, Tensor]]
    cluster: Tensor
    interests: Tensor
    weights: Tensor
    mask: Tensor


def _check_sequence(model: MDGR, items: Tensor, days: Tensor, whole_history: bool = False
                    ) -> None:
    if not isinstance(model, MDGR):
        raise TypeError(f"needs an MDGR model (or variant), got {type(model).__name__}")
    if items.dim() != 1 or items.shape != days.shape:
        raise ValueError(f"items and days must be 1-D of equal length, got "
                         f"{tuple(items.shape)} and {tuple(days.shape)}")
    if items.numel() == 0:
        raise ValueError("the sequence is empty")
    if not whole_history and items.numel() > model.max_len:
        raise ValueError(f"the sequence has {items.numel()} items; the model takes at most "
                         f"max_len={model.max_len}")
    if torch.isnan(days).any():
        raise ValueError("days contain NaN")


@torch.no_grad()
def trace_interests(model: MDGR, items: Tensor, days: Tensor) -> InterestTrace:
    """Run ``model`` (in eval mode) on one sequence and keep every interest sub-graph.

    Args:
        model: a trained MDGR.
        items: ``[n]`` item ids ``1..num_items``, oldest first.
        days: ``[n]`` days since the first item (as in the training windows).
    """
    items, days = torch.as_tensor(items).long(), torch.as_tensor(days).float()
    _check_sequence(model, items, days)
    was_training = model.training
    model.eval()
    try:
        batch = Batch.from_data_list([make_sequence_graph(items, days)])
        _, graphs = model.node_states(batch, return_graphs=True)
        z, weight, mask, cluster = model.interests(batch)
    finally:
        model.train(was_training)
    return InterestTrace(items, days, [tuple(t.cpu() for t in g) for g in graphs],
                         cluster.cpu(), z[0].cpu(), weight[0].cpu(), mask[0].cpu())


def align_clusters(reference: Tensor, cluster: Tensor, k: int) -> Tensor:
    """Relabel ``cluster [n]`` so it overlaps ``reference [n]`` as much as possible.

    k-means numbers its groups arbitrarily in every iteration; matching labels by the
    number of shared nodes (Hungarian assignment on the contingency table) keeps a group's
    colour from one panel to the next. Labels are in ``0..k-1``.
    """
    overlap = np.zeros((k, k))
    np.add.at(overlap, (cluster.numpy(), reference.numpy()), 1)
    rows, cols = linear_sum_assignment(-overlap)
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = cols
    return torch.from_numpy(mapping[cluster.numpy()])


def _short(label: str, width: int) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def draw_interest_graphs(
    trace: InterestTrace,
    labels: Sequence[str] | None = None,
    label_width: int = 22,
    panel_size: float = 5.5,
    title: str | None = None,
    columns: int = 3,
):
    """One panel per iteration: the interest sub-graph DynamicClusterConv built.

    Nodes are the sequence's items on a circle, oldest at the top and clockwise in time
    (same position in every panel); colour = cluster of that iteration; edge width and
    opacity grow with the edge weight, edges take their cluster's colour (DynamicClusterConv
    only links items of one cluster). ``labels[i]`` names item id ``i`` (e.g.
    :func:`mdgr_graph.data.titles.item_labels`); without it nodes show their position.
    Panels are laid out ``columns`` to a row; cluster labels are matched from panel to
    panel (:func:`align_clusters`) so a colour follows one group.

    Returns:
        the matplotlib ``Figure`` (save it with ``fig.savefig``).
    """
    if not trace.graphs:
        raise ValueError("the model has no DynamicClusterConv iterations (m = 0) to draw")
    n = int(trace.items.numel())
    angles = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    pos = {i: (np.cos(a), np.sin(a)) for i, a in enumerate(angles)}
    names = {i: (_short(labels[int(t)], label_width) if labels is not None else str(i))
             for i, t in enumerate(trace.items.tolist())}
    panels = len(trace.graphs)
    cols = max(1, min(columns, panels))
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols, panel_size * rows + 0.6),
                             squeeze=False)
    for ax in axes.flat[panels:]:
        ax.axis("off")
    k = int(max(int(g[2].max()) for g in trace.graphs)) + 1
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
    previous = None
    for it, (ax, (edge_index, edge_weight, cluster)) in enumerate(
        zip(axes.flat, trace.graphs, strict=False)
    ):
        if previous is not None:
            cluster = align_clusters(previous, cluster, k)
        previous = cluster
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        w = edge_weight.float()
        w_max = float(w.abs().max()) if w.numel() else 1.0
        for (src, dst), weight in zip(edge_index.t().tolist(), w.tolist(), strict=True):
            if src != dst:
                graph.add_edge(src, dst, weight=abs(weight) / (w_max or 1.0))
        colours = [cmap(int(c) % cmap.N) for c in cluster.tolist()]
        edges = list(graph.edges(data=True))
        nx.draw_networkx_edges(
            graph, pos, ax=ax, edgelist=[(u, v) for u, v, _ in edges],
            width=[0.3 + 2.5 * d["weight"] for _, _, d in edges],
            alpha=[0.15 + 0.6 * d["weight"] for _, _, d in edges],
            edge_color=[colours[u] for u, _, _ in edges],
        )
        nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=colours, node_size=80,
                               edgecolors="black", linewidths=0.4)
        for i, (x, y) in pos.items():
            ax.annotate(names[i], (x, y), xytext=(1.12 * x, 1.12 * y), fontsize=6,
                        ha="left" if x >= 0 else "right", va="center",
                        rotation=np.degrees(np.arctan2(y, x)) if x >= 0
                        else np.degrees(np.arctan2(y, x)) + 180,
                        rotation_mode="anchor")
        ax.set_title(f"iteration {it + 1}: {graph.number_of_edges()} edges, "
                     f"{len(set(cluster.tolist()))} clusters", fontsize=9)
        ax.set_xlim(-1.9, 1.9)
        ax.set_ylim(-1.9, 1.9)
        ax.set_aspect("equal")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


@torch.no_grad()
def interest_weights_over_time(
    model: MDGR, items: Tensor, days: Tensor, window: int | None = None, step: int = 1,
    min_length: int | None = None, chunk_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interest weights after each step of a user's history, interests tracked by identity.

    At step ``s`` the model sees the last ``window`` items up to position ``s`` (days
    re-based to the first of them, as in training). Interests of step ``s`` are matched to
    those of the previous step by the cosine similarity of their vectors (Hungarian
    assignment over the non-empty ones), so column ``j`` follows one interest over time.

    Args:
        model: a trained MDGR.
        items, days: the user's whole history ``[L]``, oldest first (days: any origin).
        window: items the model sees per step (default ``model.max_len``).
        step: positions between consecutive steps.
        min_length: first step's window length (default ``min(window, model.k)``).
        chunk_size: windows scored per forward pass.

    Returns:
        ``(end [S], day [S], weight [S, k])``: the number of items seen at each step (the
        1-based position of its last item), that item's day, and the weights of the
        tracked interests (NaN where an interest is empty at that step).
    """
    items, days = torch.as_tensor(items).long(), torch.as_tensor(days).double()
    _check_sequence(model, items, days, whole_history=True)
    window = model.max_len if window is None else window
    if not 1 <= window <= model.max_len:
        raise ValueError(f"window must be in 1..{model.max_len}, got {window}")
    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    first = min(window, model.k) if min_length is None else min_length
    first = max(1, min(first, items.numel()))
    ends = list(range(first, items.numel() + 1, step))
    if ends[-1] != items.numel():
        ends.append(items.numel())
    graphs = []
    for end in ends:
        start = max(0, end - window)
        d = days[start:end]
        graphs.append(make_sequence_graph(items[start:end], (d - d[0]).float()))
    was_training = model.training
    model.eval()
    try:
        parts = [model.interests(Batch.from_data_list(graphs[i : i + chunk_size]))[:3]
                 for i in range(0, len(graphs), chunk_size)]
    finally:
        model.train(was_training)
    z, weight, mask = (torch.cat(t).cpu() for t in zip(*parts, strict=True))
    k = z.shape[1]
    order = np.arange(k)
    tracked = np.full((len(ends), k), np.nan)
    previous = None
    for s in range(len(ends)):
        zs = torch.nn.functional.normalize(z[s], dim=-1)
        if previous is not None:
            cost = -(previous @ zs.t()).numpy()
            cost[:, ~mask[s].numpy()] = 1e3  # keep empty groups last
            _, order = linear_sum_assignment(cost)
        w = torch.where(mask[s], weight[s], torch.nan).numpy()
        tracked[s] = w[order]
        previous = zs[torch.as_tensor(order)]
    ends_array = np.asarray(ends)
    return ends_array, days[torch.as_tensor(ends) - 1].numpy(), tracked


def plot_interest_weights(
    day: np.ndarray, weight: np.ndarray, title: str | None = None,
    position: np.ndarray | None = None,
):
    """Line per tracked interest: its weight :math:`\\omega_j` at each step.

    ``day``/``weight`` come from :func:`interest_weights_over_time`. The x axis is days
    since the first step, or ``position`` (e.g. the interaction number of each step) when
    given: logs such as MovieLens hold bursts of many ratings within minutes, where a time
    axis squeezes most steps together. Returns the Figure.
    """
    if weight.ndim != 2 or len(day) != weight.shape[0]:
        raise ValueError(f"day [S] and weight [S, k] expected, got {day.shape} and "
                         f"{weight.shape}")
    if position is not None and len(position) != len(day):
        raise ValueError(f"position must have one entry per step ({len(day)}), got "
                         f"{len(position)}")
    x = day - day[0] if position is None else position
    fig, ax = plt.subplots(figsize=(9, 3.6))
    cmap = plt.get_cmap("tab10")
    for j in range(weight.shape[1]):
        if np.isnan(weight[:, j]).all():
            continue
        ax.plot(x, weight[:, j], marker=".", markersize=3, linewidth=1.2,
                color=cmap(j % 10), label=f"interest {j + 1}")
    ax.set_xlabel("days since the first step" if position is None else "interaction")
    ax.set_ylabel("interest weight ω")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
