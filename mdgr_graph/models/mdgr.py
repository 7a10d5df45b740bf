"""MDGR: multi-interest embedding with dynamic graph clustering (Xiao et al.).

encoder (Eq. 1-6) -> m x DynamicClusterConv (Eq. 7-13) -> final clustering and interest
pooling (Eq. 14) -> interest weights (Eq. 15) -> score (Eq. 16) -> BCE (Eq. 17).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.utils import to_dense_batch

from mdgr_graph.models.base import (
    SequentialRecommender,
    check_train_sample,
    sample_candidates,
)
from mdgr_graph.nn.cluster import check_nodes_per_cluster, cluster_nodes
from mdgr_graph.nn.dynamic_cluster_conv import (
    DynamicClusterConv,
    SharedIteration,
    candidate_graphs,
)
from mdgr_graph.nn.encoding import sinusoidal_encoding
from mdgr_graph.nn.interest import (
    InterestPooling,
    InterestQueries,
    InterestScore,
    InterestWeight,
    group_index,
)
from mdgr_graph.nn.repeat import RepeatScore, check_repeat_mode, interest_summary

#: The paper's Table 3 variants as constructor overrides.
VARIANTS: dict[str, dict] = {
    "mdgr": {},
    "mdgr-w": {"use_weights": False},
    "mdgr-dgc": {"dynamic": False, "cluster": "ward"},
    "mdgr-p": {"use_position": False},
    "mdgr-t": {"use_time": False},
    "mdgr-pt": {"use_position": False, "use_time": False},
}

#: How the encoder balances its input parts (:class:`SequenceEncoder`).
INPUT_NORMS: tuple[str, ...] = ("none", "scale", "layer")

#: What the clustering and the metric graph are built from (``MDGR(cluster_on=...)``).
CLUSTER_INPUTS: tuple[str, ...] = ("state", "item")

#: Where the query :math:`\phi_t` of Eq. 11 comes from (DESIGN.md decision 6).
QUERIES: tuple[str, ...] = ("last", "candidate")
#: What the interest pooling mixes (``pool_values``): the node states (the paper) or the
#: item embeddings of the group's nodes.
POOL_VALUES: tuple[str, ...] = ("state", "item")


class CandidateChunk(NamedTuple):
    """One chunk of :meth:`MDGR.candidate_interests`: the candidates ``start`` to
    ``start + c`` of every one of the ``B`` sequences."""

    start: int
    query: Tensor  #: ``[B, c, d]`` the candidates' embeddings
    z: Tensor  #: ``[B c, k, d]`` interests of every copy
    weight: Tensor  #: ``[B c, k]``
    mask: Tensor  #: ``[B c, k]`` non-empty groups
    cluster: Tensor  #: ``[c N]`` final cluster label of every copied node
    graph: Tensor  #: ``[c N]`` the copy (``b c + j``) of every copied node
    shared: SharedIteration  #: the first iteration's query-free part, the same every chunk


class SequenceEncoder(nn.Module):
    r"""Item, time and position encoding followed by a transformer block (Eq. 1-6).

    :math:`e_i = W_e [p_i \,\|\, \tau(t_i) \,\|\, \rho(i)]`, then multi-head
    self-attention without causal mask (every position sees every other, Eq. 4-5),
    dropout, and a two-layer FFN (Eq. 6), each with a residual connection and layer norm.

    **Balancing the parts** (``input_norm``, not in the paper). The sinusoids have norm
    :math:`\sqrt{d_t / 2}` (2.8 for width 16) while a Xavier-initialised item embedding
    has norm :math:`\sqrt{2d / (I + d)}`, which shrinks with the catalogue size :math:`I`
    (0.15 for 2,986 items and width 32), so at the start the encoder input, and the
    states the layers cluster, are nearly all time and position
    (``benchmarks/diagnostics.py``).
    ``"none"`` (default) is the paper's plain concatenation; ``"scale"`` multiplies the
    item embedding by :math:`\sqrt{d}` (as the Transformer and SASRec do); ``"layer"``
    applies a LayerNorm (with its own gain and bias) to each part before concatenating,
    so each part enters with unit scale per coordinate.

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
        input_norm: str = "none",
    ) -> None:
        super().__init__()
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {input_norm!r}; choose from "
                             f"{', '.join(INPUT_NORMS)}")
        self.dim, self.time_dim, self.pos_dim = dim, time_dim, pos_dim
        self.use_time, self.use_position = use_time, use_position
        self.input_norm = input_norm
        widths = [dim] + ([time_dim] if use_time else []) + ([pos_dim] if use_position else [])
        self.part_norms = (nn.ModuleList(nn.LayerNorm(w) for w in widths)
                           if input_norm == "layer" else None)
        in_dim = sum(widths)
        self.proj = nn.Linear(in_dim, dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)

    def forward(
        self, item_emb: Tensor, t: Tensor, pos: Tensor, batch: Tensor, batch_size: int
    ) -> Tensor:
        e = self.proj(torch.cat(self.input_parts(item_emb, t, pos), dim=-1))
        h = self.norm1(e + self.dropout(self.self_attention(e, batch, batch_size)))
        return self.norm2(h + self.dropout(self.ffn(h)))

    def self_attention(self, e: Tensor, batch: Tensor, batch_size: int) -> Tensor:
        """:attr:`attn` (Eq. 4-5) over each sequence's nodes ``e [N, d]``, ``[N, d]``.

        The computation of ``nn.MultiheadAttention`` on the padded ``[B, L, d]`` batch with
        a key padding mask, and with its parameters, but only the attention itself runs
        padded: the input and output projections, like the FFN and layer norms around
        them, run on the ``N`` real nodes (6x fewer rows than ``B x L`` on amazon-beauty,
        half the encoder's time). Equal to the module's composite path, which evaluation
        also takes (the fused inference path rounds differently)."""
        attn = self.attn
        heads, dim = attn.num_heads, self.dim
        qkv = nn.functional.linear(e, attn.in_proj_weight, attn.in_proj_bias)
        dense, mask = to_dense_batch(qkv, batch, batch_size=batch_size)  # [B, L, 3d]
        length = dense.size(1)
        q, k, v = dense.view(batch_size, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask.view(batch_size, 1, 1, length),
            dropout_p=attn.dropout if self.training else 0.0)
        return attn.out_proj(out.transpose(1, 2).reshape(batch_size, length, dim)[mask])

    def input_parts(self, item_emb: Tensor, t: Tensor, pos: Tensor) -> list[Tensor]:
        """The parts concatenated before the projection: item embedding, then the time and
        position encodings (those in use), after ``input_norm``."""
        if self.input_norm == "scale":
            item_emb = item_emb * math.sqrt(self.dim)
        parts = [item_emb]
        if self.use_time:
            parts.append(sinusoidal_encoding(t, self.time_dim))
        if self.use_position:
            parts.append(sinusoidal_encoding(pos, self.pos_dim))
        if self.part_norms is not None:
            parts = [norm(part) for norm, part in zip(self.part_norms, parts, strict=True)]
        return parts


#: Interest scores ``[B, k, chunk]`` per item chunk in :meth:`MDGR.score_all` (2 MiB of
#: float32), so that each chunk's product, bias, weight, mask and max stay in cache.
SCORE_CHUNK_FLOATS = 1 << 19


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
        nodes_per_cluster: every clustering (each iteration's, the final one of the
            pooling, and ``cluster_on="item"``'s) gives a sequence of :math:`n` items at
            most :math:`\max(1, \lfloor n / s \rfloor)` clusters, :math:`s` =
            ``nodes_per_cluster``, and at most ``k``
            (:func:`~mdgr_graph.nn.cluster.clusters_per_graph`). With the paper's fixed
            ``k`` a history of at most ``k`` items becomes ``k`` singletons, no pair shares
            a cluster and Eq. 9 keeps no edge (docs/results.md: 77 % of amazon-beauty's
            users); with ``s = 2`` it gets pairs. Sequences of ``s k`` items or more are
            unchanged. Not in the paper. (default: :obj:`None`, fixed ``k``)
        pool: interest pooling, ``"attention"``, ``"last"`` or ``"mean"``.
        pool_values: what the pooling of Eq. 14 mixes. ``"state"`` (default, the paper):
            the node states :math:`\varphi_i`. ``"item"``: the item embeddings
            :math:`e_{x_i}` of the group's nodes, with the attention weights the states
            give (clusters and each group's last item are chosen as before), so that an
            interest is a mix of the item table's own rows, as ComiRec-SA's are, and
            Eq. 16 compares items with items. Needs ``pool="attention"``: with
            ``"last"`` or ``"mean"`` nothing would train the encoder. Not in the paper.
        binary: use the paper's binary adjacency instead of weighted edges.
        conv_residual, conv_norm: the residual connection and the LayerNorm around each
            iteration's aggregation (Eq. 13, DESIGN.md decision 7; the paper has
            neither). (default: :obj:`True`, :obj:`True`)
        use_weights: learn interest weights (False: all equal, ``mdgr-w``).
        weighting: how weights enter the score: ``"paper"`` (Eq. 16, multiplies the
            logit) or ``"log"`` (adds ``log w``; see :class:`InterestScore`).
        dynamic: iterate DynamicClusterConv (False: one static clustering of the encoder
            output, ``mdgr-dgc``).
        use_time, use_position: include the time / position encodings in the encoder.
        input_norm: balance of the encoder's input parts, ``"none"`` (the paper),
            ``"scale"`` or ``"layer"`` (see :class:`SequenceEncoder`; not in the paper).
        cluster_on: what the clustering of every iteration, its metric graph (Eq. 7-9)
            and the final clustering of the interest pooling are built from.
            ``"state"`` (default, the paper): the current node states. ``"item"``: the
            item embeddings alone (:obj:`graph_x` of :class:`DynamicClusterConv`), so
            that clusters and neighbours are decided by what was consumed, not by when
            (the states mix in time and position); the states are still what the
            layers update and the pooling averages. Not in the paper.
        query: the query :math:`\phi_t` of Eq. 11 (DESIGN.md decision 6). ``"last"``
            (default): the state of the last history item, recomputed every iteration;
            the interests do not depend on the candidate, so one pass scores the whole
            catalogue (retrieval, leave-one-out, FAISS). ``"candidate"``: the paper's
            target-aware form, the embedding of each candidate item; every (sequence,
            candidate) pair is its own graph. The encoder, the first iteration's
            clustering, metric graph and :math:`\alpha_i` run once per sequence and are
            shared; :math:`\beta_j` and every later iteration, the final clustering, the
            interests and their weights are per candidate. For ranking a given candidate
            set (the paper protocol, re-ranking); ``score_all`` is exact but runs the
            graph once per item. Without graph layers (``m = 0`` or ``dynamic=False``)
            the two modes are the same model.
        train_positives, train_negatives: in candidate mode, the positives and
            negatives of each window drawn per training step
            (:func:`~mdgr_graph.models.base.sample_candidates`; SURGE's 1 + 4). Both
            :obj:`None`: train on all candidates. Ignored with ``query="last"``, which
            trains on all candidates as before. (default: :obj:`1`, :obj:`4`)
        candidate_chunk: candidates per graph pass in candidate mode (memory grows as
            ``batch x candidate_chunk`` graphs). (default: :obj:`16`)
        repeat: ``"none"`` (default, the paper) or ``"gate"``: add
            :class:`~mdgr_graph.nn.repeat.RepeatScore`'s term to every logit, a learned,
            user-gated bonus for a candidate already in the input sequence (more for
            more and more recent occurrences), so the model can say "this again" on logs
            with repeat consumption (issue 30). Not in the paper. An item absent from the
            sequence gets exactly 0, so on a log without repeats, or when earlier items are
            excluded from the ranking (leave-one-out's default, and FAISS retrieval, which
            uses :meth:`interest_queries` without the term), nothing changes.
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
        nodes_per_cluster: int | None = None,
        pool: str = "attention",
        pool_values: str = "state",
        binary: bool = False,
        conv_residual: bool = True,
        conv_norm: bool = True,
        use_weights: bool = True,
        weighting: str = "paper",
        dynamic: bool = True,
        use_time: bool = True,
        use_position: bool = True,
        input_norm: str = "none",
        cluster_on: str = "state",
        query: str = "last",
        train_positives: int | None = 1,
        train_negatives: int | None = 4,
        candidate_chunk: int = 16,
        repeat: str = "none",
    ) -> None:
        super().__init__(num_items)
        if m < 0:
            raise ValueError(f"m must be >= 0, got {m}")
        if query not in QUERIES:
            raise ValueError(f"unknown query {query!r}; choose from {', '.join(QUERIES)}")
        if cluster_on not in CLUSTER_INPUTS:
            raise ValueError(f"unknown cluster_on {cluster_on!r}; choose from "
                             f"{', '.join(CLUSTER_INPUTS)}")
        if pool_values not in POOL_VALUES:
            raise ValueError(f"unknown pool_values {pool_values!r}; choose from "
                             f"{', '.join(POOL_VALUES)}")
        if pool_values == "item" and pool != "attention":
            raise ValueError(
                f"pool_values='item' needs pool='attention' (got {pool!r}): with 'last' or "
                "'mean' the states would only choose the (detached) clusters, and the "
                "encoder and graph layers would get no gradient")
        if candidate_chunk < 1:
            raise ValueError(f"candidate_chunk must be >= 1, got {candidate_chunk}")
        check_nodes_per_cluster(nodes_per_cluster)
        self.query = query
        self.cluster_on = cluster_on
        self.pool_values = pool_values
        self.train_sample = check_train_sample(train_positives, train_negatives)
        self.candidate_chunk = candidate_chunk
        self.dim, self.k, self.m, self.max_len = dim, k, m, max_len
        self.time_dim = time_dim
        self.cluster, self.kmeans_iters = cluster, kmeans_iters
        self.nodes_per_cluster = nodes_per_cluster
        self.use_weights, self.dynamic = use_weights, dynamic
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.encoder = SequenceEncoder(
            dim, time_dim, pos_dim, attn_heads, dropout, use_time, use_position, input_norm
        )
        self.convs = nn.ModuleList(
            DynamicClusterConv(
                dim, k=k, gamma=gamma, delta=delta, heads=conv_heads, hops=hops,
                cluster=cluster, kmeans_iters=kmeans_iters, binary=binary,
                residual=conv_residual, norm=conv_norm, nodes_per_cluster=nodes_per_cluster,
            )
            for _ in range(m if dynamic else 0)
        )
        self.pooling = InterestPooling(dim, k, pool)
        self.weight_head = InterestWeight(dim, time_dim, max_len) if use_weights else None
        self.scorer = InterestScore(dim, weighting)
        check_repeat_mode(repeat)
        self.repeat = repeat
        # created last and initialised without random draws: the other parameters, and a
        # seeded run on a repeat-free log, stay exactly as without it
        self.repeat_score = RepeatScore(dim) if repeat == "gate" else None
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
    def encode(self, batch: Batch) -> Tensor:
        """Node states of the encoder (Eq. 1-6), ``[N, d]``, after checking the batch."""
        self._check_batch(batch)
        return self.encoder(
            self.item_emb(batch.x), batch.t, batch.pos, batch.batch, batch.num_graphs
        )

    def node_states(
        self, batch: Batch, return_graphs: bool = False, query: Tensor | None = None
    ):
        """Encode the nodes and run the ``m`` iterations.

        Args:
            query: ``[B, d]``, one fixed query per sequence for every iteration (one
                candidate's embedding; candidate mode scores through
                :meth:`candidate_scores`, which equals a call per candidate). Default:
                the current state of the last item, recomputed every iteration.

        Returns:
            ``x [N, d]``; with ``return_graphs``, also a list of
            ``(edge_index, edge_weight, cluster)`` per iteration.
        """
        x = self.encode(batch)
        graph_x, item_cluster = self.item_clusters(batch)
        last = batch.ptr[1:] - 1
        graphs = []
        for conv in self.convs:
            q = x[last] if query is None else query
            out = conv(x, batch.batch, query=q, cluster=item_cluster, graph_x=graph_x,
                       return_graph=return_graphs)
            if return_graphs:
                x, edge_index, edge_weight, labels = out
                graphs.append((edge_index, edge_weight, labels))
            else:
                x = out
        return (x, graphs) if return_graphs else x

    def interests(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Interest vectors and weights of every sequence.

        Returns:
            ``Z [B, k, d]``, ``weight [B, k]``, ``mask [B, k]`` (non-empty groups) and the
            final cluster label of every node ``[N]``.
        """
        if self.candidate_mode:
            raise ValueError("with query='candidate' the interests depend on the candidate: "
                             "use candidate_scores, or query='last' for candidate-free "
                             "interests (retrieval)")
        x = self.node_states(batch)
        return self.pool_interests(x, batch.batch, batch.pos, batch.t, batch.num_graphs,
                                   cluster=self.item_clusters(batch)[1],
                                   values=self.pool_input(batch))

    def pool_input(self, batch: Batch) -> Tensor | None:
        """What the pooling mixes besides the states: the item embeddings ``[N, d]`` with
        ``pool_values="item"``, :obj:`None` (the states) with ``"state"``."""
        return self.item_emb(batch.x) if self.pool_values == "item" else None

    def item_clusters(self, batch: Batch) -> tuple[Tensor | None, Tensor | None]:
        """With ``cluster_on="item"``: the item embeddings ``[N, d]`` the graph is built
        from and their cluster labels ``[N]`` (the same in every iteration, so computed
        once); :obj:`None, None` with ``"state"``."""
        if self.cluster_on == "state":
            return None, None
        graph_x = self.item_emb(batch.x)
        cluster = cluster_nodes(graph_x.detach(), batch.batch, self.k, self.cluster,
                                num_iters=self.kmeans_iters, batch_size=batch.num_graphs,
                                nodes_per_cluster=self.nodes_per_cluster)
        return graph_x, cluster

    def pool_interests(
        self, x: Tensor, batch: Tensor, pos: Tensor, t: Tensor | None, batch_size: int,
        time_terms: Tensor | None = None, cluster: Tensor | None = None,
        values: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Final clustering, interest pooling (Eq. 14) and weights (Eq. 15) of node states
        ``x [N, d]``; returns what :meth:`interests` returns. ``time_terms``
        (:meth:`InterestWeight.node_terms`, computed once per original node in candidate
        mode) replaces ``t``; given labels ``cluster [N]`` replace the final clustering;
        ``values [N, d]`` (:meth:`pool_input`) are mixed in place of the states."""
        if cluster is None:
            cluster = cluster_nodes(
                x.detach(), batch, self.k, self.cluster,
                num_iters=self.kmeans_iters, batch_size=batch_size,
                nodes_per_cluster=self.nodes_per_cluster,
            )
        z, mask = self.pooling(x, batch, cluster, pos, batch_size, values)
        if self.weight_head is None:
            weight = torch.ones_like(mask, dtype=z.dtype)
        else:
            group = group_index(batch, cluster, self.k)
            if time_terms is None:
                time_terms = self.weight_head.node_terms(
                    sinusoidal_encoding(t, self.time_dim), pos)
            weight = self.weight_head(z, None, group, None, node_terms=time_terms)
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
    @property
    def candidate_mode(self) -> bool:
        """True when the candidate is the query of graph layers (``query="candidate"``
        and at least one iteration)."""
        return self.query == "candidate" and len(self.convs) > 0

    @property
    def ranks_catalogue_in_one_pass(self) -> bool:
        return not self.candidate_mode

    def candidate_interests(self, batch: Batch, candidates: Tensor) -> Iterator[CandidateChunk]:
        """Candidate mode, ``candidate_chunk`` candidates of every sequence at a time: the
        interests of each (sequence, candidate) copy of the sequence graph, the candidate's
        embedding the fixed query of every iteration (Eq. 11).

        The encoder and the first iteration's query-free part (:meth:`DynamicClusterConv.
        prepare`) run once per sequence; the rest runs on ``B x candidate_chunk`` graphs
        at a time (copy ``g = b c + j`` of sequence ``b`` for its ``j``-th candidate of the
        chunk, :func:`~mdgr_graph.nn.dynamic_cluster_conv.candidate_graphs`).
        """
        x = self.encode(batch)
        num_seq, d = batch.num_graphs, self.dim
        graph_x, cluster = self.item_clusters(batch)
        shared = self.convs[0].prepare(x, batch.batch, cluster, num_seq, graph_x)
        values = self.pool_input(batch)
        time_terms = None
        if self.weight_head is not None:  # a node's time term is the same in every copy
            time_terms = self.weight_head.node_terms(
                sinusoidal_encoding(batch.t, self.time_dim), batch.pos)
        for start in range(0, candidates.size(1), self.candidate_chunk):
            query = self.item_emb(candidates[:, start : start + self.candidate_chunk])
            num_cand = query.size(1)
            node, graph = candidate_graphs(batch.batch, num_seq, num_cand)
            flat_query = query.reshape(num_seq * num_cand, d)
            h = self.convs[0].update(shared, query)
            for conv in self.convs[1:]:
                h = conv(h, graph, query=flat_query,
                         cluster=None if cluster is None else cluster[node],
                         graph_x=None if graph_x is None else graph_x[node])
            z, weight, mask, final = self.pool_interests(
                h, graph, batch.pos[node], None, num_seq * num_cand,
                None if time_terms is None else time_terms[node],
                None if cluster is None else cluster[node],
                None if values is None else values[node],
            )
            yield CandidateChunk(start, query, z, weight, mask, final, graph, shared)

    def candidate_scores(self, batch: Batch, candidates: Tensor) -> Tensor:
        """Candidate mode: logits ``[B, C]`` of ``candidates [B, C]``, each candidate the
        query of its own copy of the sequence graph (:meth:`candidate_interests`). Equal,
        up to float rounding, to one :meth:`node_states` pass per candidate with that
        candidate's embedding as the fixed query.
        """
        num_seq, d = batch.num_graphs, self.dim
        scores = []
        for part in self.candidate_interests(batch, candidates):
            num_cand = part.query.size(1)
            flat_query = part.query.reshape(num_seq * num_cand, 1, d)
            logit = self.scorer(part.z, part.weight, part.mask, flat_query)
            logit = logit.view(num_seq, num_cand)
            if self.repeat_score is not None:  # the gate reads each pair's own interests
                chunk = candidates[:, part.start : part.start + num_cand]
                evidence = self.repeat_score.evidence(batch.x, batch.ptr, chunk)
                logit = logit + self.repeat_score(
                    interest_summary(part.z, part.mask), evidence.reshape(-1, 1)
                ).view(num_seq, num_cand)
            scores.append(logit)
        return torch.cat(scores, dim=1)

    def score_candidates(self, batch: Batch) -> Tensor:
        """Logits of ``batch.candidates``: ``[B, C]``."""
        if self.candidate_mode:
            self._check_candidates(batch)
            return self.candidate_scores(batch, batch.candidates)
        z, weight, mask, _ = self.interests(batch)
        logit = self.scorer(z, weight, mask, self.item_emb(batch.candidates))
        if self.repeat_score is not None:
            evidence = self.repeat_score.evidence(batch.x, batch.ptr, batch.candidates)
            logit = logit + self.repeat_score(interest_summary(z, mask), evidence)
        return logit

    def loss(self, batch: Batch) -> Tensor:
        """Eq. 17 (or :attr:`candidate_loss_kind`) over the candidates; in candidate mode
        over ``train_positives + train_negatives`` of them drawn per window."""
        if not self.candidate_mode or self.train_sample is None:
            return super().loss(batch)
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        candidates, labels = sample_candidates(batch.candidates, labels, *self.train_sample)
        return self.loss_over_candidates(self.candidate_scores(batch, candidates), labels)

    @property
    def catalogue_by_interests(self) -> bool:
        """``loss="ce"`` through :meth:`interest_catalogue_loss`, except in candidate mode
        and with the repeat term (those go through :meth:`score_all`)."""
        return not self.candidate_mode and self.repeat_score is None

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Logits of every item ``[B, num_items + 1]``, computed in item chunks (candidate
        mode: one graph pass per item, exact but slow).

        The ``[B, k, chunk]`` interest scores of a chunk are reduced by the max before the
        next chunk, so the chunk is also capped at about 2 MiB of them
        (:data:`SCORE_CHUNK_FLOATS`): without autograd the product and its in-place bias,
        weight and mask then stay in cache (1.6x faster scoring at B = 256, k = 8, 3,266
        items than one chunk; the same values)."""
        if self.candidate_mode:
            items = torch.arange(self.num_items + 1, device=batch.x.device)
            return self.candidate_scores(batch, items.expand(batch.num_graphs, -1))
        z, weight, mask, _ = self.interests(batch)
        cached = max(128, SCORE_CHUNK_FLOATS // max(1, z.size(0) * z.size(1)) // 128 * 128)
        logit = self.score_item_chunks(
            lambda items: self.scorer(z, weight, mask, items), self.item_emb.weight,
            min(chunk_size, cached),
        )
        if self.repeat_score is not None:
            evidence = self.repeat_score.evidence(batch.x, batch.ptr, num_items=self.num_items)
            logit = logit + self.repeat_score(interest_summary(z, mask), evidence)
        return logit

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
            f"weights={self.use_weights}"
            + (f", input_norm='{self.encoder.input_norm}'"
               if self.encoder.input_norm != "none" else "")
            + (f", cluster_on='{self.cluster_on}'" if self.cluster_on != "state" else "")
            + (f", pool_values='{self.pool_values}'" if self.pool_values != "state" else "")
            + (f", nodes_per_cluster={self.nodes_per_cluster}"
               if self.nodes_per_cluster is not None else "")
            + (f", query='candidate', train_sample={self.train_sample}"
               if self.query == "candidate" else "")
            + (f", repeat='{self.repeat}'" if self.repeat != "none" else "")
            + ")"
        )
