"""MDGR's interest heads: pooling groups into interests, interest weights, scores.

Paper Sections 3.4.3 (Eq. 14), 3.5.1 (Eq. 15) and 3.5.2 (Eq. 16); DESIGN.md 8-9.
Every function works on a whole batch at once: a group is addressed by the flat index
``batch * k + cluster``, so pooling is one :func:`torch_geometric.utils.scatter`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter, softmax, to_dense_batch

POOLS = ("attention", "last", "mean")


def group_index(batch: Tensor, cluster: Tensor, k: int) -> Tensor:
    """Flat id ``batch * k + cluster`` of every node's group: ``[N]``."""
    if cluster.min() < 0 or cluster.max() >= k:
        raise ValueError(
            f"cluster labels must lie in [0, {k}), got {int(cluster.min())}..{int(cluster.max())}"
        )
    return batch * k + cluster


def last_of_group(pos: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """Bool ``[N]``: is the node the most recent (largest ``pos``) of its group?"""
    latest = scatter(pos, group, dim=0, dim_size=num_groups, reduce="max")
    return pos == latest[group]


class InterestPooling(nn.Module):
    r"""Pool the nodes of each group into an interest vector :math:`z_j` (Eq. 14).

    ``pool="attention"`` (default) attends over the group with its most recent item as
    query, :math:`z_j = \sum_{i \in g_j} \mathrm{softmax}_i
    (q^\top W_k \varphi_i / \sqrt{d})\, \varphi_i` with :math:`q = W_q \varphi_{last(j)}`;
    ``"last"`` takes the most recent item; ``"mean"`` averages the group.

    ``values`` (optional, ``[N, d_v]``) are what the pool mixes in place of the node states
    :math:`\varphi_i`, with the same weights: the attention logits still read the states.
    :class:`~mdgr_graph.models.MDGR`'s ``pool_values="item"`` passes the item embeddings
    (not in the paper).

    Args:
        channels: node width :math:`d`.
        k: number of groups per graph.
        pool: ``"attention"``, ``"last"`` or ``"mean"``. (default: :obj:`"attention"`)

    Shapes:
        - **input:** x ``[N, d]``, batch ``[N]``, cluster ``[N]``, pos ``[N]``, values
          ``[N, d_v]`` (optional; default ``x``)
        - **output:** Z ``[B, k, d_v]``, mask ``[B, k]`` (True for non-empty groups)
    """

    def __init__(self, channels: int, k: int, pool: str = "attention") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose from {', '.join(POOLS)}")
        self.channels, self.k, self.pool = channels, k, pool
        if pool == "attention":
            self.query = nn.Linear(channels, channels, bias=False)
            self.key = nn.Linear(channels, channels, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.pool == "attention":
            self.query.reset_parameters()
            self.key.reset_parameters()

    def forward(
        self, x: Tensor, batch: Tensor, cluster: Tensor, pos: Tensor, batch_size: int,
        values: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        if values is None:
            values = x
        elif values.dim() != 2 or values.size(0) != x.size(0):
            raise ValueError(f"values must be [N, d_v] with N = {x.size(0)} nodes, got "
                             f"{tuple(values.shape)}")
        num_groups = batch_size * self.k
        group = group_index(batch, cluster, self.k)
        count = scatter(torch.ones_like(group), group, dim=0, dim_size=num_groups, reduce="sum")
        mask = (count > 0).view(batch_size, self.k)
        if self.pool == "mean":
            z = scatter(values, group, dim=0, dim_size=num_groups, reduce="mean")
        else:
            is_last = last_of_group(pos, group, num_groups).unsqueeze(-1)
            if self.pool == "last":
                z = scatter(values * is_last, group, dim=0, dim_size=num_groups)
            else:
                last = scatter(x * is_last, group, dim=0, dim_size=num_groups)
                q = self.query(last)[group]
                logit = (q * self.key(x)).sum(-1) / math.sqrt(self.channels)
                attn = softmax(logit, group, num_nodes=num_groups)
                z = scatter(attn.unsqueeze(-1) * values, group, dim=0, dim_size=num_groups)
        return z.view(batch_size, self.k, values.size(-1)), mask

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, k={self.k}, pool='{self.pool}')"


class InterestWeight(nn.Module):
    r"""Interest weights :math:`\omega_j` from the group and its items' times (Eq. 15).

    .. math::
        \omega_j = \mathrm{softplus}\big(W_2\, \sigma(W_1 [z_j ;
        1_{[c_1 = j]} \tau_1; \dots; 1_{[c_l = j]} \tau_l] + b_1) + b_2\big)

    The concatenation has a slot per position ``1..max_len``; its product with
    :math:`W_1` is computed as a per-position projection of :math:`\tau_i` summed over
    the group, which is the same linear map without materialising ``[B, k, l * d_t]``.

    Args:
        channels: interest width :math:`d`.
        time_channels: width of the time encoding :math:`d_t`.
        max_len: number of position slots :math:`l` (longest sequence).
        hidden: hidden width of the FFN. (default: :obj:`channels`)

    Shapes:
        - **input:** z ``[B, k, d]``, time_enc ``[N, d_t]``, group ``[N]``,
          slot ``[N]`` (position of the node in its sequence)
        - **output:** ``[B, k]`` non-negative weights
    """

    def __init__(
        self, channels: int, time_channels: int, max_len: int, hidden: int | None = None
    ) -> None:
        super().__init__()
        hidden = hidden or channels
        self.channels, self.time_channels, self.max_len, self.hidden = (
            channels, time_channels, max_len, hidden,
        )
        self.lin_z = nn.Linear(channels, hidden)
        self.time_weight = nn.Parameter(torch.empty(max_len, time_channels, hidden))
        self.lin_out = nn.Linear(hidden, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin_z.reset_parameters()
        self.lin_out.reset_parameters()
        fan_in = self.channels + self.max_len * self.time_channels
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.time_weight, -bound, bound)

    def node_terms(self, time_enc: Tensor, slot: Tensor) -> Tensor:
        """Each node's share of :math:`W_1`'s time block, ``[N, hidden]``: its time
        encoding projected by its position's slot (summed over the group in
        :meth:`forward`). Depends on the node alone, so copies of a sequence (candidate
        mode) can share it."""
        if slot.numel() and int(slot.max()) >= self.max_len:
            raise ValueError(
                f"a sequence has {int(slot.max()) + 1} items but InterestWeight was built for "
                f"max_len={self.max_len}"
            )
        if slot.numel() == 0:
            return time_enc.new_zeros(0, self.hidden)
        # Nodes sorted by slot and padded to [max_len, M, d_t] (M: the most nodes in one
        # slot, at most B when slots are positions): one [M, d_t] @ [d_t, hidden] product
        # per slot instead of gathering a [d_t, hidden] matrix per node ([N, d_t, hidden],
        # 24 MB at N = 12,000, and its scatter-add backward).
        order = torch.sort(slot, stable=True).indices
        per_slot = torch.bincount(slot, minlength=self.max_len)
        if int(per_slot.max()) * self.max_len > 4 * slot.numel():  # very uneven slots
            return torch.einsum("nt,nth->nh", time_enc, self.time_weight[slot])
        dense, mask = to_dense_batch(time_enc[order], slot[order], batch_size=self.max_len)
        terms = (dense @ self.time_weight)[mask]  # [N, hidden] in slot order
        return terms.new_empty(terms.shape).index_copy(0, order, terms)  # node order

    def forward(
        self, z: Tensor, time_enc: Tensor | None, group: Tensor, slot: Tensor | None,
        node_terms: Tensor | None = None,
    ) -> Tensor:
        """Weights ``[B, k]``; ``node_terms`` (:meth:`node_terms`) replaces ``time_enc``
        and ``slot`` when given."""
        batch_size, k, _ = z.shape
        per_node = self.node_terms(time_enc, slot) if node_terms is None else node_terms
        time_part = scatter(per_node, group, dim=0, dim_size=batch_size * k, reduce="sum")
        hidden = torch.sigmoid(self.lin_z(z) + time_part.view(batch_size, k, -1))
        return nn.functional.softplus(self.lin_out(hidden)).squeeze(-1)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, time_channels={self.time_channels}, "
            f"max_len={self.max_len})"
        )


class InterestScore(nn.Module):
    r"""Score items against weighted interests (Eq. 16, DESIGN.md 9).

    .. math::
        s(p) = \max_{j:\ \text{group } j \text{ non-empty}} \ \omega_j \,
        \mathrm{Linear}(z_j \odot p)

    Returns the logit :math:`s`; the model's probability is :math:`\sigma(s)` (Eq. 17 is
    then binary cross-entropy with logits). Without autograd the scores are computed as
    written, in place; with autograd in the inner-product form of :meth:`queries` (one
    fused product per interest, faster to differentiate), equal up to float rounding.

    With ``weighting="log"`` the weight enters additively in log space instead,
    :math:`s(p) = \max_j \ \mathrm{Linear}(z_j \odot p) + \log \omega_j`, i.e. it scales
    :math:`e^{s}` by :math:`\omega_j`. Eq. 16 multiplies the *logit*, so for an item that
    matches no interest (negative logits) a larger weight lowers the score and the max
    favours the *least* weighted interest; the log form keeps "more weight, higher score"
    for every item. Not in the paper; off by default.

    Args:
        channels: width :math:`d`.
        weighting: ``"paper"`` (Eq. 16, default) or ``"log"``.

    Shapes:
        - **input:** z ``[B, k, d]``, weight ``[B, k]``, mask ``[B, k]``, items
          ``[B, C, d]`` (per-row candidates) or ``[I, d]`` (the same items for every row)
        - **output:** ``[B, C]`` or ``[B, I]``
    """

    def __init__(self, channels: int, weighting: str = "paper") -> None:
        super().__init__()
        if weighting not in ("paper", "log"):
            raise ValueError(f"weighting must be 'paper' or 'log', got {weighting!r}")
        self.channels, self.weighting = channels, weighting
        self.lin = nn.Linear(channels, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()

    def forward(self, z: Tensor, weight: Tensor, mask: Tensor, items: Tensor) -> Tensor:
        if torch.is_grad_enabled() and any(t.requires_grad for t in
                                           (z, weight, items, *self.parameters())):
            # Training: the inner-product form of :meth:`queries`, one fused product
            # plus offset per interest, instead of three passes (bias, weight, mask) over
            # the [B, k, I] scores and their backward; equal up to float rounding.
            # Masked interests: zero query and -inf offset, so neither their values nor
            # any gradient reaches them, as with the mask of Eq. 16.
            q = self.queries(z, weight, mask)
            queries = q.queries.masked_fill(~mask.unsqueeze(-1), 0.0)
            offsets = q.offsets.masked_fill(~mask, float("-inf")).unsqueeze(-1)
            if items.dim() == 3:
                logit = torch.baddbmm(offsets, queries, items.transpose(1, 2))
            else:
                logit = torch.matmul(queries, items.t()) + offsets
            return logit.amax(dim=1)
        zw = z * self.lin.weight.view(1, 1, -1)
        if items.dim() == 3:
            raw = torch.einsum("bkd,bcd->bkc", zw, items)
        else:
            raw = torch.einsum("bkd,cd->bkc", zw, items)
        # Without autograd (evaluation, full ranking): Eq. 16 as written, in place on the
        # fresh [B, k, I] product, without allocating more tensors of that size.
        logit = raw.add_(self.lin.bias)
        if self.weighting == "paper":
            logit.mul_(weight.unsqueeze(-1))
        else:
            logit.add_(torch.log(weight.clamp_min(1e-12)).unsqueeze(-1))
        # the mask as an added 0 / -inf per interest: exact, and a broadcast add is far
        # cheaper than masked_fill_ over [B, k, I] (a fifth of MDGR's evaluation time)
        logit.add_(torch.zeros_like(weight).masked_fill_(~mask, float("-inf")).unsqueeze(-1))
        return logit.amax(dim=1)

    def queries(self, z: Tensor, weight: Tensor, mask: Tensor) -> InterestQueries:
        r"""Eq. 16 as one inner product per interest, for retrieval over the catalogue.

        :math:`\mathrm{Linear}(z_j \odot p) = (z_j \odot a)^\top p + b` with the scorer's
        weight :math:`a` and bias :math:`b`, so every score of :meth:`forward` is

        .. math::
            s(p) = \max_{j:\ \text{group } j \text{ non-empty}}\ q_j^\top p + c_j,
            \qquad
            \begin{cases}
            q_j = \omega_j\, (z_j \odot a),\ c_j = \omega_j b & \text{paper}, \\
            q_j = z_j \odot a,\ c_j = b + \log \omega_j & \text{log},
            \end{cases}

        equal to :meth:`forward` up to float rounding. Inside one interest the items
        rank by :math:`q_j^\top p` alone, so a maximum-inner-product index searched with
        every :math:`q_j`, plus :math:`c_j`, merged by the max, retrieves the exact top
        items (see :mod:`mdgr_graph.retrieval`).

        Shapes:
            - **input:** z ``[B, k, d]``, weight ``[B, k]``, mask ``[B, k]``
            - **output:** :class:`InterestQueries` (queries ``[B, k, d]``, offsets
              ``[B, k]``, mask ``[B, k]``, and z and weight as given)
        """
        zw = z * self.lin.weight.view(1, 1, -1)
        bias = self.lin.bias.to(z.dtype)
        if self.weighting == "paper":
            queries = weight.unsqueeze(-1) * zw
            offsets = weight * bias
        else:
            queries = zw
            offsets = bias + torch.log(weight.clamp_min(1e-12))
        return InterestQueries(queries, offsets, mask, z, weight)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels}, weighting={self.weighting!r})"


class InterestQueries(NamedTuple):
    r"""A multi-interest score written as inner products: :math:`s(p) = \max_{j:\,
    \mathrm{mask}_j} q_j^\top p + c_j` (Eq. 16 for MDGR, :math:`c_j = 0` for ComiRec).

    Attributes:
        queries: :math:`q_j`, ``[B, k, d]``.
        offsets: :math:`c_j`, ``[B, k]``.
        mask: ``[B, k]``, True for the interests that take part in the max.
        interests: the raw interest vectors :math:`z_j`, ``[B, k, d]``.
        weights: the interest weights :math:`\omega_j`, ``[B, k]`` (ones when the model
            has none).
    """

    queries: Tensor
    offsets: Tensor
    mask: Tensor
    interests: Tensor
    weights: Tensor
