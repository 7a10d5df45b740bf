"""Graph layers of MDGR: batched clustering and the dynamic cluster convolution."""

from mdgr_graph.nn.cluster import (
    CLUSTER_METHODS,
    batched_kmeans,
    cluster_nodes,
    sklearn_cluster,
)
from mdgr_graph.nn.dynamic_cluster_conv import (
    DynamicClusterConv,
    dynamic_cluster_conv_reference,
    edge_budget,
)

__all__ = [
    "CLUSTER_METHODS",
    "DynamicClusterConv",
    "batched_kmeans",
    "cluster_nodes",
    "dynamic_cluster_conv_reference",
    "edge_budget",
    "sklearn_cluster",
]
