r"""BIGCF: individual and collective intents for graph collaborative filtering.

Zhang, Sang, Zhang, "Exploring the Individuality and Collectivity of Intents behind
Interactions for Graph Collaborative Filtering", SIGIR 2024 (arXiv 2405.09042; the MDGR
paper's reference [38]); read together with the authors' released code
(``BlueGhostYi/BIGCF``, ``BIGCF.py``), whose defaults are used here.

BIGCF is a collaborative-filtering model on the user-item bipartite graph:

1. **Graph propagation** (LightGCN): :math:`E^{(l+1)} = \hat A E^{(l)}` with
   :math:`\hat A = D^{-1/2} A D^{-1/2}` the symmetric-normalised bipartite adjacency (no
   self-loops), and :math:`\mu = \sum_{l=0}^{L} E^{(l)}` (the released code sums the
   layers).
2. **Individual intents**: every user and item has a Gaussian intent distribution
   :math:`\mathcal{N}(\mu, \mathrm{diag}(\sigma^2))` whose mean is its propagated
   embedding; its sample :math:`z = \mu + \sigma \odot \varepsilon`,
   :math:`\varepsilon \sim \mathcal{N}(0, I)` (reparameterisation) is the representation
   that is scored.
3. **Collective intents**: :math:`K` intent prototypes shared by all users
   (:math:`C_u \in \mathbb{R}^{d \times K}`) and :math:`K` shared by all items
   (:math:`C_i`); a node mixes them by attention, :math:`\sigma = \mathrm{softmax}(\mu
   C) C^\top`, and this mixture is the scale of its individual intent distribution (the
   "bilateral intent-guided" reconstruction: individuality in :math:`\mu`, collectivity
   in :math:`\sigma`).
4. **Objective**: the reconstruction (BPR) loss of :math:`\langle z_u, z_i\rangle`, an
   :math:`L_2` penalty on the ego embeddings (``emb_reg``) and on the intent prototypes
   (``cen_reg``), and a graph contrastive regulariser (``ssl_reg``, temperature
   ``temperature``): InfoNCE over the batch between normalised users/users, items/items
   and users/their positive items on :math:`z`, and users/users, items/items on
   :math:`\sigma`.

The score of an item is :math:`\langle z_u, z_i \rangle`: BIGCF mixes its intents into
one vector per node, so there is a single user vector (no max over several interests).

**Inductive users** (the main deviation; see :class:`BIGCF`): the released model learns
one free embedding per user, which cannot exist for the unseen test users of the
``paper`` protocol. Here a user's ego embedding is computed from its items,
:math:`e^{(0)}_u = W\,\mathrm{mean}_{i \in N(u)} e^{(0)}_i`, the same function for the
users of the global training graph (:math:`N(u)`: their training items) and for the
sequence of a batch (:math:`N(u)`: the distinct items of its history); the batch's user
then takes LightGCN's user-side steps from the propagated item layers of the training
graph, :math:`e^{(l+1)}_u = \sum_{i \in N(u)} e^{(l)}_i / \sqrt{|N(u)|\,|N(i)|}`, i.e.
exactly what propagation gives an existing node of the graph with the same items (a new
node would also add 1 to its items' degrees), without adding it to the graph.
Everything is vectorised over the batch; the global graph is a sparse CSR
adjacency propagated with PyG's :class:`~torch_geometric.nn.conv.LGConv`.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Batch
from torch_geometric.nn.conv import LGConv
from torch_geometric.utils import coalesce, degree, scatter, to_torch_csr_tensor

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import SequentialRecommender
from mdgr_graph.models.baselines.sasrec import recent_nodes

#: Reconstruction losses of the candidates: the project's BCE or BIGCF's own BPR.
MAIN_LOSSES = ("bce", "bpr")


class Representations(NamedTuple):
    """One forward pass of :class:`BIGCF` (``B`` sequences, ``I = num_items + 1`` rows)."""

    user_z: Tensor  # [B, d] scored user representation (sample in training, mean in eval)
    user_sigma: Tensor  # [B, d] collective-intent scale of the users
    user_ego: Tensor  # [B, d] inductive ego embedding e_u^(0)
    item_z: Tensor  # [I, d] scored item representations (row 0: padding)
    item_sigma: Tensor  # [I, d]


def info_nce(anchor: Tensor, positive: Tensor, temperature: float) -> Tensor:
    r"""Mean InfoNCE of row ``p`` of ``anchor`` against row ``p`` of ``positive``, the
    other rows of ``positive`` being the negatives (BIGCF's ``cal_loss``).

    :math:`\frac{1}{P}\sum_p -\log \frac{\exp(a_p^\top b_p / \tau)}{\sum_q
    \exp(a_p^\top b_q / \tau)}` on L2-normalised rows, computed stably as a cross-entropy
    (the released code adds :math:`10^{-8}` inside the logarithms instead).

    Args:
        anchor: ``[P, d]``.
        positive: ``[P, d]`` (may be ``anchor`` itself: then every row is pushed away from
            the others, a uniformity term).
        temperature: :math:`\tau > 0`.

    Returns:
        ``[]``.
    """
    a, b = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    logits = a @ b.t() / temperature
    return F.cross_entropy(logits, torch.arange(a.size(0), device=a.device))


def _as_long(value: Tensor | np.ndarray, name: str) -> Tensor:
    tensor = torch.as_tensor(value)
    if tensor.dim() != 1 or tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer array, got {tensor.dtype} "
                         f"{tuple(tensor.shape)}")
    return tensor.long()


class BIGCF(SequentialRecommender):
    r"""BIGCF (Zhang et al., SIGIR 2024) on the sequence interface, with inductive users.

    Global graph: the bipartite graph of the training interactions only
    (:meth:`~mdgr_graph.data.prepare.PreparedDataset.training_interactions`; repeated
    (user, item) pairs count once, as in the released binary adjacency), users
    ``0..num_users-1`` then items ``0..num_items`` (item 0 is padding and isolated).
    Items take the propagated mean :math:`\mu_i` of the released code. A batch sequence
    is an inductive user (module docstring): its ego embedding is the transformed mean of
    its distinct history items (the most recent ``max_len``), its layers are LightGCN's
    user-side steps over the training graph's item layers with the training degrees.
    Then :math:`\sigma = \mathrm{softmax}(\mu C)C^\top`, :math:`z = \mu + \sigma \odot
    \varepsilon` in training and :math:`z = \mu` in evaluation, and
    :math:`s(u, i) = \langle z_u, z_i \rangle`.

    Loss: the reconstruction loss of the candidates (``main_loss="bce"``: the project's
    candidate binary cross-entropy, Eq. 17 of the MDGR paper, default, as every model
    here; ``"bpr"``: BIGCF's own BPR, the mean of :math:`\mathrm{softplus}(s^- - s^+)`
    over every (positive, negative) candidate pair of a row), plus

    - ``emb_reg`` times the squared norms of the ego embeddings of the batch (users and
      candidate items), divided by the batch size;
    - ``cen_reg`` times :math:`\lVert C_u\rVert^2 + \lVert C_i\rVert^2`;
    - ``ssl_reg`` times the graph contrastive regulariser: :func:`info_nce` of users with
      themselves, of the distinct positive items with themselves and of each (user,
      positive item) pair, on :math:`z`, plus users and positive items with themselves
      on :math:`\sigma` (the released ``cal_ssl_loss``); the positive items are
      ``ssl_positives`` drawn per sequence (:meth:`contrastive_pairs`).

    Deviations from the paper and the released code (and why):

    - **inductive users** instead of a learned embedding per user (test users of the
      ``paper`` protocol are never seen in training): the ego embedding is
      :math:`W\,\mathrm{mean}_{i \in N(u)} e^{(0)}_i` (``user_transform=False``: no
      :math:`W`), the same function for the graph's users and the batch's, under both
      protocols; the batch's user is not a node of the graph (its interactions reach
      the items only if they are training interactions);
    - the project's candidate BCE is the default reconstruction loss (the protocol's
      training examples are windows with sampled negatives; BPR over the same pairs is
      ``main_loss="bpr"``);
    - evaluation scores the means :math:`\mu` (deterministic ranking); the released code
      also samples :math:`\varepsilon` at test time;
    - ``emb_reg`` is divided by the batch size (the released code sums over a batch of
      10,240); the contrastive terms draw ``ssl_positives`` (default one) of a window's
      positives (a paper-protocol window has 50: all of them would make the in-batch
      InfoNCE a 6,400 x 6,400 matrix and the epoch several times slower; the released
      code has one positive per (user, item) training instance), and its item terms use
      the *distinct* drawn items (the same item twice would be its own negative);
      InfoNCE is computed as a cross-entropy (no :math:`10^{-8}` terms);
    - the propagation is recomputed at every forward pass, as in the released code's
      training, also in evaluation (cheap at these catalogue sizes).

    Args:
        num_items: number of real items (ids ``1..num_items``; 0 is padding).
        train_users: ``[M]`` user id of each training interaction.
        train_items: ``[M]`` item id (``1..num_items``) of each training interaction.
        num_users: users of the graph (default: ``max(train_users) + 1``).
        max_len: most recent history items a sequence reads. (default: :obj:`50`)
        dim: embedding width :math:`d` (released: 32). (default: :obj:`32`)
        layers: LightGCN layers :math:`L` (released: 2). (default: :obj:`2`)
        intents: collective intents :math:`K` per side (released: 64). (default: :obj:`64`)
        temperature: InfoNCE temperature :math:`\tau` (released: 0.2). (default: :obj:`0.2`)
        ssl_reg: weight of the contrastive regulariser (released: 0.4 on Gowalla and
            Amazon-Book, 0.2 on Tmall, with BPR). Chosen on validation under the candidate
            BCE (ml-1m-subset, paper protocol, stride 25, seed 0, lr 5e-3, ``fit`` for 4
            epochs in a throwaway script, valid AUC: 0.4 -> 0.672, 0.1 -> 0.684,
            0.01 -> 0.863, 0 -> 0.855). (default: :obj:`0.01`)
        emb_reg: weight of the ego-embedding penalty (released: 1e-5). (default: :obj:`1e-5`)
        cen_reg: weight of the intent-prototype penalty (released: 1e-5).
            (default: :obj:`1e-5`)
        user_transform: learn :math:`W` of the inductive user ego embedding.
            (default: :obj:`True`)
        main_loss: ``"bce"`` or ``"bpr"`` (see above). (default: :obj:`"bce"`)
        ssl_positives: positives per sequence drawn for the contrastive terms (0: all).
            (default: :obj:`1`)
    """

    #: Trains with its own reconstruction loss (``main_loss``), not a candidate loss.
    SUPPORTED_LOSSES: tuple[str, ...] = ("bce",)

    def __init__(
        self,
        num_items: int,
        train_users: Tensor | np.ndarray,
        train_items: Tensor | np.ndarray,
        num_users: int | None = None,
        max_len: int = 50,
        dim: int = 32,
        layers: int = 2,
        intents: int = 64,
        temperature: float = 0.2,
        ssl_reg: float = 0.01,
        emb_reg: float = 1e-5,
        cen_reg: float = 1e-5,
        user_transform: bool = True,
        main_loss: str = "bce",
        ssl_positives: int = 1,
    ) -> None:
        super().__init__(num_items)
        if max_len < 1 or dim < 1 or intents < 1:
            raise ValueError(f"max_len, dim and intents must be >= 1, got {max_len}, {dim}, "
                             f"{intents}")
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if min(ssl_reg, emb_reg, cen_reg) < 0:
            raise ValueError(f"ssl_reg, emb_reg and cen_reg must be >= 0, got {ssl_reg}, "
                             f"{emb_reg}, {cen_reg}")
        if ssl_positives < 0:
            raise ValueError(f"ssl_positives must be >= 0, got {ssl_positives}")
        if main_loss not in MAIN_LOSSES:
            raise ValueError(f"unknown main_loss {main_loss!r}; choose from "
                             f"{', '.join(MAIN_LOSSES)}")
        users, items = _as_long(train_users, "train_users"), _as_long(train_items, "train_items")
        if users.shape != items.shape or users.numel() == 0:
            raise ValueError(f"train_users and train_items must be non-empty and of equal "
                             f"length, got {tuple(users.shape)} and {tuple(items.shape)}")
        if int(items.min()) < 1 or int(items.max()) > num_items:
            raise ValueError(f"training item ids must lie in 1..{num_items}, got "
                             f"{int(items.min())}..{int(items.max())}")
        if num_users is None:
            num_users = int(users.max()) + 1
        if int(users.min()) < 0 or int(users.max()) >= num_users:
            raise ValueError(f"training user ids must lie in 0..{num_users - 1}, got "
                             f"{int(users.min())}..{int(users.max())}")
        self.num_users, self.max_len, self.dim = num_users, max_len, dim
        self.num_layers, self.num_intents, self.temperature = layers, intents, temperature
        self.ssl_reg, self.emb_reg, self.cen_reg = ssl_reg, emb_reg, cen_reg
        self.main_loss, self.ssl_positives = main_loss, ssl_positives

        # binary bipartite graph: (user, item) pairs once each, sorted by user
        pairs = coalesce(torch.stack([users, items]), num_nodes=max(num_users, num_items + 1))
        # graph buffers are rebuilt from the data, so they stay out of the state dict
        self.register_buffer("edge_user", pairs[0], persistent=False)
        self.register_buffer("edge_item", pairs[1], persistent=False)
        self.register_buffer("item_degree", degree(pairs[1], num_items + 1), persistent=False)
        self._graph_cache: tuple[torch.device, Tensor, Tensor] | None = None

        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.user_lin = nn.Linear(dim, dim, bias=False) if user_transform else None
        self.user_intent = nn.Parameter(torch.empty(dim, intents))  # C_u
        self.item_intent = nn.Parameter(torch.empty(dim, intents))  # C_i
        self.conv = LGConv(normalize=False)  # the normalised weights are precomputed
        self.reset_parameters()

    @classmethod
    def from_prepared(cls, prepared: PreparedDataset, max_len: int, **kwargs) -> BIGCF:
        """BIGCF on the training interactions of ``prepared`` (never valid/test targets)."""
        users, items = prepared.training_interactions()
        return cls(prepared.num_items, torch.from_numpy(users), torch.from_numpy(items),
                   num_users=prepared.num_users, max_len=max_len, **kwargs)

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.item_emb.weight)  # as the released code
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if self.user_lin is not None:
            nn.init.eye_(self.user_lin.weight)  # start at the plain mean of the items
        nn.init.xavier_normal_(self.user_intent)
        nn.init.xavier_normal_(self.item_intent)
        self.conv.reset_parameters()

    # ------------------------------------------------------------------ global graph
    @property
    def num_edges(self) -> int:
        """Distinct (user, item) training pairs of the graph."""
        return self.edge_user.numel()

    def graph_matrices(self) -> tuple[Tensor, Tensor]:
        r"""Sparse CSR matrices of the training graph, cached per device.

        Returns:
            ``adj [U + I, U + I]``: :math:`D^{-1/2} A D^{-1/2}` of the bipartite graph
            (users ``0..U-1``, item ``i`` at ``U + i``), and ``mean [U, I]``: the
            row-normalised user-item matrix (each user's mean over its items).
        """
        device = self.edge_user.device
        if self._graph_cache is not None and self._graph_cache[0] == device:
            return self._graph_cache[1], self._graph_cache[2]
        num_u, num_i = self.num_users, self.num_items + 1
        user_deg = degree(self.edge_user, num_u)
        norm = (user_deg[self.edge_user] * self.item_degree[self.edge_item]).rsqrt()
        item_node = self.edge_item + num_u
        edge_index = torch.cat([torch.stack([self.edge_user, item_node]),
                                torch.stack([item_node, self.edge_user])], dim=1)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            edge_index, weight = coalesce(edge_index, torch.cat([norm, norm]), num_u + num_i)
            adj = to_torch_csr_tensor(edge_index, weight, size=(num_u + num_i, num_u + num_i))
            mean = to_torch_csr_tensor(torch.stack([self.edge_user, self.edge_item]),
                                       user_deg[self.edge_user].reciprocal(),
                                       size=(num_u, num_i))
        self._graph_cache = (device, adj, mean)
        return adj, mean

    def _apply(self, fn, recurse: bool = True):  # drop the cache on .to(), .cuda(), ...
        self._graph_cache = None
        return super()._apply(fn, recurse)

    def user_ego(self, item_mean: Tensor) -> Tensor:
        """Inductive ego embedding ``[N, d]`` of users from their item means ``[N, d]``."""
        return item_mean if self.user_lin is None else self.user_lin(item_mean)

    def item_layers(self) -> list[Tensor]:
        r"""Item rows of the LightGCN layers :math:`E^{(0)}, \dots, E^{(L)}`, each ``[I, d]``.

        :math:`E^{(0)}` holds the inductive ego embeddings of the graph's users and the
        item table; each layer is one :class:`~torch_geometric.nn.conv.LGConv` step on
        the normalised adjacency.
        """
        adj, mean = self.graph_matrices()
        item0 = self.item_emb.weight
        x = torch.cat([self.user_ego(mean @ item0), item0])
        out = [item0]
        for _ in range(self.num_layers):
            x = self.conv(x, adj)
            out.append(x[self.num_users:])
        return out

    # ------------------------------------------------------------------ batch users
    def history_sets(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``(graph [M], item [M])``: each distinct item among the most recent ``max_len``
        of each sequence, once, sorted by graph."""
        self._check_batch(batch)
        x, index = recent_nodes(batch.x, batch.batch, batch.num_graphs, self.max_len)
        key = torch.unique(index * (self.num_items + 1) + x)
        return key // (self.num_items + 1), key % (self.num_items + 1)

    def user_means(self, graph: Tensor, item: Tensor, layers: list[Tensor],
                   num_graphs: int) -> tuple[Tensor, Tensor]:
        r"""LightGCN layers of the batch's inductive users, summed.

        Args:
            graph, item: the history sets (:meth:`history_sets`), ``[M]`` each.
            layers: the item layers (:meth:`item_layers`), ``L + 1`` tensors ``[I, d]``.
            num_graphs: ``B``.

        Returns:
            ``mu [B, d]`` (:math:`\sum_{l=0}^{L} e^{(l)}_u`) and ``ego [B, d]``
            (:math:`e^{(0)}_u`).
        """
        ego = self.user_ego(scatter(layers[0][item], graph, 0, num_graphs, reduce="mean"))
        size = torch.bincount(graph, minlength=num_graphs).to(ego.dtype)
        norm = (size[graph] * self.item_degree[item].clamp(min=1)).rsqrt().unsqueeze(-1)
        mu = ego
        for layer in layers[: self.num_layers]:
            mu = mu + scatter(norm * layer[item], graph, 0, num_graphs, reduce="sum")
        return mu, ego

    # ------------------------------------------------------------------ intents
    @staticmethod
    def collective(mu: Tensor, intent: Tensor) -> Tensor:
        r""":math:`\sigma = \mathrm{softmax}(\mu C) C^\top`: ``[N, d]`` from ``mu [N, d]``
        and the prototypes ``C [d, K]``."""
        return torch.softmax(mu @ intent, dim=-1) @ intent.t()

    def _sample(self, mu: Tensor, sigma: Tensor) -> Tensor:
        if not self.training:
            return mu
        return mu + sigma * torch.randn_like(mu)

    def forward(self, batch: Batch) -> Representations:
        """Users of the batch and every item: :class:`Representations`."""
        layers = self.item_layers()
        item_mu = torch.stack(layers).sum(dim=0)
        graph, item = self.history_sets(batch)
        user_mu, user_ego = self.user_means(graph, item, layers, batch.num_graphs)
        user_sigma = self.collective(user_mu, self.user_intent)
        item_sigma = self.collective(item_mu, self.item_intent)
        return Representations(self._sample(user_mu, user_sigma), user_sigma, user_ego,
                               self._sample(item_mu, item_sigma), item_sigma)

    # ------------------------------------------------------------------ scores
    def score_candidates(self, batch: Batch) -> Tensor:
        """:math:`\\langle z_u, z_i \\rangle` of ``batch.candidates``: ``[B, C]``."""
        self._check_candidates(batch)
        rep = self(batch)
        return torch.einsum("bd,bcd->bc", rep.user_z, rep.item_z[batch.candidates])

    def score_all(self, batch: Batch, chunk_size: int = 8192) -> Tensor:
        """Scores of every item ``[B, num_items + 1]`` (column 0 included), in item chunks."""
        rep = self(batch)
        return self.score_item_chunks(lambda chunk: rep.user_z @ chunk.t(), rep.item_z,
                                      chunk_size)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: Batch) -> Tensor:
        """Reconstruction loss + ``emb_reg``, ``cen_reg`` and ``ssl_reg`` terms."""
        self._check_candidates(batch)
        labels = self.candidate_labels(batch)
        rep = self(batch)
        cand = batch.candidates
        logits = torch.einsum("bd,bcd->bc", rep.user_z, rep.item_z[cand])
        positive = labels > 0
        if self.main_loss == "bce":
            loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            pair = positive.unsqueeze(2) & ~positive.unsqueeze(1)  # [B, pos, neg]
            diff = logits.unsqueeze(1) - logits.unsqueeze(2)  # s_neg - s_pos
            loss = F.softplus(diff[pair]).mean() if bool(pair.any()) else logits.sum() * 0.0
        if self.emb_reg:
            ego = rep.user_ego.pow(2).sum() + self.item_emb(cand).pow(2).sum()
            loss = loss + self.emb_reg * ego / cand.size(0)
        if self.cen_reg:
            loss = loss + self.cen_reg * (self.user_intent.pow(2).sum()
                                          + self.item_intent.pow(2).sum())
        if self.ssl_reg:
            loss = loss + self.ssl_reg * self.contrastive_loss(rep, cand, positive)
        return loss

    def contrastive_pairs(self, candidates: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
        """The (user, positive item) pairs of the contrastive terms: ``(row [P], item [P])``.

        ``ssl_positives = k > 0``: ``k`` positives of each row drawn uniformly without
        replacement (all of them when a row has fewer), with torch's global generator;
        ``k = 0``: every positive. Sorted by row.
        """
        if self.ssl_positives == 0 or positive.size(1) == 0:
            row, col = positive.nonzero(as_tuple=True)
        else:
            draw = torch.rand(positive.shape, device=positive.device).masked_fill(~positive, -1)
            k = min(self.ssl_positives, positive.size(1))
            col = draw.topk(k, dim=1).indices  # [B, k]
            keep = positive.gather(1, col)
            row = torch.arange(positive.size(0), device=positive.device).unsqueeze(1)
            row, col = row.expand_as(col)[keep], col[keep]
        return row, candidates[row, col]

    def contrastive_loss(self, rep: Representations, candidates: Tensor,
                         positive: Tensor) -> Tensor:
        """BIGCF's graph contrastive regulariser (five :func:`info_nce` terms).

        Args:
            rep: the forward pass.
            candidates: ``[B, C]``; positive: ``[B, C]`` their positive labels.

        Returns:
            ``[]``; the users/users terms only when no row has a positive.
        """
        tau = self.temperature
        loss = info_nce(rep.user_z, rep.user_z, tau) + info_nce(rep.user_sigma,
                                                                rep.user_sigma, tau)
        row, pos_item = self.contrastive_pairs(candidates, positive)
        if row.numel():
            distinct = torch.unique(pos_item)
            loss = loss + info_nce(rep.item_z[distinct], rep.item_z[distinct], tau)
            loss = loss + info_nce(rep.item_sigma[distinct], rep.item_sigma[distinct], tau)
            loss = loss + info_nce(rep.user_z[row], rep.item_z[pos_item], tau)
        return loss

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(num_items={self.num_items}, "
            f"num_users={self.num_users}, edges={self.num_edges}, max_len={self.max_len}, "
            f"dim={self.dim}, layers={self.num_layers}, intents={self.num_intents}, "
            f"ssl_reg={self.ssl_reg}, main_loss='{self.main_loss}')"
        )
