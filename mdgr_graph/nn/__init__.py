"""Graph layers of MDGR: batched clustering and the dynamic cluster convolution."""

from mdgr_graph.nn.cluster import (
    CLUSTER_METHODS,
    batched_kmeans,
    cluster_nodes,
    sklearn_cluster,
    ward_cluster,
)
from mdgr_graph.nn.dynamic_cluster_conv import DynamicClusterConv, edge_budget
from mdgr_graph.nn.encoding import SinusoidalEncoding, sinusoidal_encoding
from mdgr_graph.nn.gnn import DynamicClusterGNN
from mdgr_graph.nn.interest import InterestPooling, InterestScore, InterestWeight
from mdgr_graph.nn.metric import top_pairs, weighted_cosine

__all__ = [
    "CLUSTER_METHODS",
    "DynamicClusterConv",
    "DynamicClusterGNN",
    "batched_kmeans",
    "cluster_nodes",
    "edge_budget",
    "InterestPooling",
    "InterestScore",
    "InterestWeight",
    "SinusoidalEncoding",
    "sinusoidal_encoding",
    "sklearn_cluster",
    "ward_cluster",
    "top_pairs",
    "weighted_cosine",
]
