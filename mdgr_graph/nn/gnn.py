"""A small graph classifier that composes :class:`DynamicClusterConv` with PyG layers.

Not part of MDGR: it shows the layer outside recommendation (``examples/compose_gnn.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Linear, ReLU, Sequential
from torch_geometric.nn import GCNConv, global_max_pool, global_mean_pool

from mdgr_graph.nn.dynamic_cluster_conv import DynamicClusterConv


class DynamicClusterGNN(torch.nn.Module):
    r"""Graph classification: a :class:`~torch_geometric.nn.conv.GCNConv` on the given
    edges, a :class:`~mdgr_graph.nn.DynamicClusterConv` on the graph it rebuilds from
    those features, global mean and max pooling, and a two-layer MLP.

    .. code-block:: text

        x, edge_index -> GCNConv -> ReLU -> DynamicClusterConv (own edges, no query)
          -> [global_mean_pool || global_max_pool] -> Linear -> ReLU -> Linear -> logits

    Args:
        in_channels (int): Size of each input node feature.
        num_classes (int): Number of graph classes.
        hidden (int, optional): Width of the node states. (default: :obj:`32`)
        k (int, optional): Clusters per graph of the dynamic layer. (default: :obj:`4`)
        gamma (float, optional): Its edge budget :math:`\gamma`. (default: :obj:`0.2`)
        sparse (bool, optional): Run the dynamic layer's message-passing path.
            (default: :obj:`False`)

    Shapes:
        - **input:** node features :math:`(|\mathcal{V}|, F)`, edges
          :math:`(2, |\mathcal{E}|)`, sorted batch vector :math:`(|\mathcal{V}|)`
        - **output:** class logits :math:`(B, \text{num\_classes})`
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int = 32, k: int = 4,
                 gamma: float = 0.2, sparse: bool = False):
        super().__init__()
        self.gcn = GCNConv(in_channels, hidden)
        self.dynamic = DynamicClusterConv(hidden, k=k, gamma=gamma, sparse=sparse)
        self.head = Sequential(Linear(2 * hidden, hidden), ReLU(), Linear(hidden, num_classes))

    def reset_parameters(self):
        self.gcn.reset_parameters()
        self.dynamic.reset_parameters()
        self.head[0].reset_parameters()
        self.head[2].reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor,
                num_graphs: int | None = None) -> Tensor:
        h = self.gcn(x, edge_index).relu()
        h = self.dynamic(h, batch)
        pooled = torch.cat([global_mean_pool(h, batch, num_graphs),
                            global_max_pool(h, batch, num_graphs)], dim=-1)
        return self.head(pooled)
