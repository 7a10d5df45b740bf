"""A repeat-consumption term: how strongly a candidate is "this again" for a sequence.

Not in the MDGR paper (issue 30). The idea is RepeatNet's (Ren et al., AAAI 2019): a
user-dependent gate decides how much an item already in the history is worth; here it is
one additive logit term instead of a mixture of two distributions, so it composes with any
model that produces logits.

.. math::
    r(v) = \\lambda(u)\\, \\log\\Big(1 + \\sum_{i:\\ x_i = v} e^{-\beta\\, \rho_i}\\Big),
    \\qquad \\lambda(u) = \\mathrm{softplus}(w^\top u + c), \\quad
    \beta = \\mathrm{softplus}(b)

with :math:`\rho_i` the steps from history node :math:`i` to the end of its sequence (0
for the last item), :math:`u` a summary of the sequence (e.g. the mean of its interests)
and :math:`w, c, b` learned. With :math:`\beta \to 0` the evidence is
:math:`\\log(1 + \text{count})`, S-POP's signal; a larger :math:`\beta` favours recent items.
An item not in the history gets exactly 0, so on logs without repeats (or when earlier
items are excluded from the ranking) the term changes no score and its parameters get no
gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

#: Repeat terms a model can add to its logits (``"none"``: the paper's scores).
REPEAT_MODES: tuple[str, ...] = ("none", "gate")


def check_repeat_mode(mode: str) -> None:
    """Raise a ``ValueError`` unless ``mode`` is one of :data:`REPEAT_MODES`."""
    if mode not in REPEAT_MODES:
        raise ValueError(f"unknown repeat mode {mode!r}; choose from {', '.join(REPEAT_MODES)}")


def graph_of_nodes(ptr: Tensor) -> Tensor:
    """Graph of every node of a batch whose graph ``g`` owns nodes ``ptr[g]:ptr[g+1]``:
    ``[N]`` (the batch vector)."""
    return torch.repeat_interleave(torch.arange(ptr.numel() - 1, device=ptr.device),
                                   ptr[1:] - ptr[:-1])


def steps_to_end(ptr: Tensor, graph: Tensor | None = None) -> Tensor:
    """For the nodes of a batch of sequence graphs (nodes in time order, graph ``g`` owning
    ``ptr[g]:ptr[g+1]``): how many nodes follow each one in its graph, ``[N]``. ``graph``
    is :func:`graph_of_nodes` of ``ptr`` when already at hand."""
    graph = graph_of_nodes(ptr) if graph is None else graph
    return ptr[1:][graph] - 1 - torch.arange(graph.numel(), device=ptr.device)


def interest_summary(z: Tensor, mask: Tensor) -> Tensor:
    """Mean of the non-empty interests of each row, ``z [B, k, d]``, ``mask [B, k]`` ->
    ``[B, d]``: the summary :math:`u` that a multi-interest model gives the gate."""
    keep = mask.unsqueeze(-1).to(z.dtype)
    return (z * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class RepeatScore(nn.Module):
    r"""The repeat term :math:`r(v)` above, for candidates or for the whole catalogue.

    Its parameters start at zero (gate :math:`\lambda = \log 2`, decay
    :math:`\beta = \mathrm{softplus}(-3) \approx 0.05`) and are set without random draws,
    so adding the module to a model leaves every other parameter's initialisation, and
    therefore a seeded run on a repeat-free log, bit for bit as it was.

    Args:
        channels: width :math:`d` of the summary :math:`u`.

    Shapes:
        - **evidence:** items ``[N]``, ptr ``[B + 1]``, candidates ``[B, C]`` (or
          ``None`` with ``num_items``: every item ``0..num_items``) ->
          ``[B, C]`` (``[B, num_items + 1]``)
        - **forward:** summary ``[B, d]``, evidence ``[B, C]`` -> ``[B, C]``
    """

    #: Initial value of the decay's pre-activation :math:`b`.
    DECAY_INIT = -3.0

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gate_weight = nn.Parameter(torch.empty(channels))
        self.gate_bias = nn.Parameter(torch.empty(()))
        self.decay = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.gate_weight.zero_()
            self.gate_bias.zero_()
            self.decay.fill_(self.DECAY_INIT)

    def node_weights(self, ptr: Tensor, graph: Tensor | None = None) -> Tensor:
        r""":math:`e^{-\beta \rho_i}` of every history node, ``[N]`` (``graph``: the batch
        vector, derived from ``ptr`` when not given)."""
        beta = nn.functional.softplus(self.decay)
        return torch.exp(-beta * steps_to_end(ptr, graph).to(self.decay.dtype))

    def evidence(self, items: Tensor, ptr: Tensor, candidates: Tensor | None = None,
                 num_items: int | None = None) -> Tensor:
        r""":math:`\log(1 + \sum_{i: x_i = v} e^{-\beta \rho_i})` of each candidate ``v``
        of each sequence (``candidates [B, C]``), or of every item ``0..num_items`` when
        ``candidates`` is ``None``."""
        num_seq = ptr.numel() - 1
        graph = graph_of_nodes(ptr)
        weight = self.node_weights(ptr, graph)
        if candidates is None:
            if num_items is None:
                raise ValueError("evidence needs candidates or num_items")
            total = weight.new_zeros(num_seq, num_items + 1)
            total = total.index_put((graph, items), weight, accumulate=True)
            return torch.log1p(total)
        dense_items, present = to_dense_batch(items, graph, fill_value=-1,
                                              batch_size=num_seq)  # [B, n]
        dense_weight, _ = to_dense_batch(weight, graph, batch_size=num_seq)
        same = (candidates.unsqueeze(-1) == dense_items.unsqueeze(1)) & present.unsqueeze(1)
        total = (same.to(weight.dtype) * dense_weight.unsqueeze(1)).sum(-1)  # [B, C]
        return torch.log1p(total)

    def forward(self, summary: Tensor, evidence: Tensor) -> Tensor:
        gate = nn.functional.softplus(summary @ self.gate_weight + self.gate_bias)  # [B]
        return gate.unsqueeze(-1) * evidence

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.channels})"

