"""MDGR: multi-interest embedding with dynamic graph clustering (Xiao et al.).

encoder (Eq. 1-6) -> m x DynamicClusterConv (Eq. 7-13) -> final clustering and interest
pooling (Eq. 14) -> interest weights (Eq. 15) -> score (Eq. 16) -> BCE (Eq. 17).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_batch

from mdgr_graph.models.base import SequentialRecommender
from mdgr_graph.nn.cluster import cluster_nodes
from mdgr_graph.nn.dynamic_cluster_conv import DynamicClusterConv
from mdgr_graph.nn.encoding import sinusoidal_encoding
from mdgr_graph.nn.interest import (
    InterestPooling,
    InterestQueries,
    InterestScore,
    InterestWeight,
    group_index,
)

#: The paper's Table 3 variants as constructor overrides.
VARIANTS: dict[str, dict] = {
    "mdgr": {},
    "mdgr-w": {"use_weights": False},
    "mdgr-dgc": {"dynamic": False, "cluster": "ward"},
    "mdgr-p": {"use_position": False},
    "mdgr-t": {"use_time": False},
    "mdgr-pt": {"use_position": False, "use_time": False},
}


class SequenceEncoder(nn.Module):
    r"""Item, time and position encoding followed by a transformer block (Eq. 1-6).

    :math:`e_i = W_e [p_i \,\|\, \tau(t_i) \,\|\, \rho(i)]`, then multi-head
    self-attention without causal mask (every position sees every other, Eq. 4-5),
    dropout, and a two-layer FFN (Eq. 6), each with a residual connection and layer norm.

    Shapes:
        - **input:** item embeddings ``[N, d]``, t ``[N]`` (days), pos ``[N]``, batch ``[N]``
        - **output:** ``[N, d]``
    """

    def __init__(
        self,
        dim: int,
        time_dim: int = 16,
        pos_dim: int = 16,
        heads: int = 2,
        dropout: float = 0.1,
        use_time: bool = True,
        use_position: bool = True,
    ) -> None:
        super().__init__()
        self.dim, self.time_dim, self.pos_dim = dim, time_dim, pos_dim
        self.use_time, self.use_position = use_time, use_position
        in_dim = dim + (time_dim if use_time else 0) + (pos_dim if use_position else 0)
        self.proj = nn.Linear(in_dim, dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, item_emb: Tensor, t: Tensor, pos: Tensor, batch: Tensor, batch_size: int
    ) -> Tensor:
        parts = [item_emb]
        if self.use_time:
            parts.append(sinusoidal_encoding(t, self.time_dim))
        if self.use_position:
            parts.append(sinusoidal_encoding(pos, self.pos_dim))
        e = self.proj(torch.cat(parts, dim=-1))
        dense, mask = to_dense_batch(e, batch, batch_size=batch_size)
        attended, _ = self.attn(dense, dense, dense, key_padding_mask=~mask, need_weights=False)
        h = self.norm1(dense + self.dropout(attended))
        h = self.norm2(h + self.dropout(self.ffn(h)))
        return h[mask]


class MDGR(SequentialRecommender):
    r"""The MDGR model on batches of sequence graphs.

    Args:
        num_items: number of real items (ids ``1..num_items``, 0 is padding).
        dim: model width :math:`d`. (default: :obj:`32`)
        k: number of interests. (default: :obj:`8`)
        m: number of DynamicClusterConv iterations. (default: :obj:`5`)
        max_len: longest history (slots of the interest-weight head). (default: :obj:`50`)
        time_dim: width of the time encoding. (default: :obj:`16`)
        pos_dim: width of the position encoding. (default: :obj:`16`)
        attn_heads: heads of the encoder's self-attention. (default: :obj:`2`)
        conv_heads: attention heads :math:`H` of each iteration. (default: :obj:`2`)
        delta: weighted-cosine heads :math:`\delta`. (default: :obj:`4`)
        gamma: edge budget :math:`\gamma` (top :math:`\lceil\gamma n^2\rceil` per graph).
            (default: :obj:`0.1`)
        hops: hops of the cluster vector. (default: :obj:`2`)
        dropout: dropout of the encoder. (default: :obj:`0.1`)
        cluster: ``"kmeans"`` (batched, default), ``"ward"``, ``"sklearn-kmeans"``,
            ``"birch"``.
        kmeans_iters: Lloyd steps of the batched k-means. (default: :obj:`10`)
        pool: interest pooling, ``"attention"``, ``"last"`` or ``"mean"``.
        binary: use the paper's binary adjacency instead of weighted edges.
        use_weights: learn interest weights (False: all equal, ``mdgr-w``).
        weighting: how weights enter the score: ``"paper"`` (Eq. 16, multiplies the
            logit) or ``"log"`` (adds ``log w``; see :class:`InterestScore`).
        dynamic: iterate DynamicClusterConv (False: one static clustering of the encoder
            output, ``mdgr-dgc``).
        use_time, use_position: include the time / position encodings in the encoder.
    """

    def __init__(
        self,
        num_items: int,
        dim: int = 32,
        k: int = 8,
        m: int = 5,
        max_len: int = 50,
        time_dim: int = 16,
        pos_dim: int = 16,
        attn_heads: int = 2,
        conv_heads: int = 2,
        delta: int = 4,
        gamma: float = 0.1,
        hops: int = 2,
        dropout: float = 0.1,
        cluster: str = "kmeans",
        kmeans_iters: int = 10,
        pool: str = "attention",
        binary: bool = False,
        use_weights: bool = True,
        weighting: str = "paper",
        dynamic: bool = True,
        use_time: bool = True,
        use_position: bool = True,
    ) -> None:
        super().__init__(num_items)
        if m < 0:
            raise ValueError(f"m must be >= 0, got {m}")
        self.dim, self.k, self.m, self.max_len = dim, k, m, max_len
        self.time_dim = time_dim
        self.cluster, self.kmeans_iters = cluster, kmeans_iters
        self.use_weights, self.dynamic = use_weights, dynamic
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.encoder = SequenceEncoder(
            dim, time_dim, pos_dim, attn_heads, dropout, use_time, use_position
        )
        self.convs = nn.ModuleList(
            DynamicClusterConv(
                dim, k=k, gamma=gamma, delta=delta, heads=conv_heads, hops=hops,
                cluster=cluster, kmeans_iters=kmeans_iters, binary=binary,
            )
            for _ in range(m if dynamic else 0)
        )
        self.pooling = InterestPooling(dim, k, pool)
        self.weight_head = InterestWeight(dim, time_dim, max_len) if use_weights else None
        self.scorer = InterestScore(dim, weighting)
        self.reset_parameters()

    @classmethod
    def from_variant(cls, name: str, num_items: int, **kwargs) -> MDGR:
        """Build a Table 3 variant: ``mdgr``, ``mdgr-w``, ``mdgr-dgc``, ``mdgr-p``, ..."""
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        return cls(num_items, **{**kwargs, **VARIANTS[name]})

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                if not isinstance(module, (nn.Embedding, MDGR)):
                    module.reset_parameters()

    # ------------------------------------------------------------------ interests
    def node_states(self, batch: Batch, return_graphs: bool = False):
        """Encode the nodes and run the ``m`` iterations.

        Returns:
            ``x [N, d]``; with ``return_graphs``, also a list of
            ``(edge_index, edge_weight, cluster)`` per iteration.
        """
        self._check_batch(batch)
        batch_size = batch.num_graphs
        x = self.encoder(self.item_emb(batch.x), batch.t, batch.pos, batch.batch, batch_size)
        last = batch.ptr[1:] - 1
        graphs = []
        for conv in self.convs:
            out = conv(x, batch.batch, query=x[last], return_graph=return_graphs)
            if return_graphs:
                x, edge_index, edge_weight, cluster = out
                graphs.append((edge_index, edge_weight, cluster))
            else:
                x = out
        return (x, graphs) if return_graphs else x

    def interests(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Interest vectors and weights of every sequence.

        Returns:
            ``Z [B, k, d]``, ``weight [B, k]``, ``mask [B, k]`` (non-empty groups) and the
            final cluster label of every node ``[N]``.
        """
        x = self.node_states(batch)
        batch_size = batch.num_graphs
        cluster = cluster_nodes(
            x.detach(), batch.batch, self.k, self.cluster,
            num_iters=self.kmeans_iters, batch_size=batch_size,
        )
        z, mask = self.pooling(x, batch.batch, cluster, batch.pos, batch_size)
        if self.weight_head is None:
            weight = torch.ones_like(mask, dtype=z.dtype)
        else:
            group = group_index(batch.batch, cluster, self.k)
            time_enc = sinusoidal_encoding(batch.t, self.time_dim)
            weight = self.weight_head(z, time_enc, group, batch.pos)
        return z, weight, mask, cluster

    def interest_queries(self, batch: Batch) -> InterestQueries:
        r"""Eq. 16 as inner products, :math:`s(p) = \max_{j:\,\mathrm{mask}_j} q_j^\top p
        + c_j` (:meth:`InterestScore.queries`), for retrieval over the item table.

        Returns:
            :class:`~mdgr_graph.nn.interest.InterestQueries`: queries ``[B, k, d]``,
            offsets ``[B, k]``, mask ``[B, k]``, interests ``[B, k, d]``, weights ``[B, k]``.
        """
        z, weight, mask, _ = self.interests(batch)
        return self.scorer.queries(z, weight, mask)

    # ------------------------------------------------------------------ scores
    def score_candidates(self, batch: Batch) -> Tensor:
        """Logits of ``batch.candidates``: ``[B, C]``."""
        z, weight, mask, _ = self.interests(batch)
        return self.scorer(z, weight, mask, self.item_emb(batch.candidates))

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]``, computed in item chunks."""
        z, weight, mask, _ = self.interests(batch)
        return self.score_item_chunks(
            lambda items: self.scorer(z, weight, mask, items), self.item_emb.weight, chunk_size
        )

    def _check_batch(self, batch: Batch) -> None:
        for key in ("x", "t", "pos", "batch", "ptr"):
            if getattr(batch, key, None) is None:
                raise ValueError(f"MDGR needs a batch of SequenceData with field '{key}'")
        if batch.x.numel() and int(batch.x.max()) > self.num_items:
            raise ValueError(
                f"item id {int(batch.x.max())} exceeds num_items={self.num_items}"
            )
        if int(batch.pos.max()) >= self.max_len:
            raise ValueError(
                f"a sequence has {int(batch.pos.max()) + 1} items; this model was built with "
                f"max_len={self.max_len}"
            )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, dim={self.dim}, "
            f"k={self.k}, m={self.m}, cluster='{self.cluster}', dynamic={self.dynamic}, "
            f"weights={self.use_weights})"
        )
