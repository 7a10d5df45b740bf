"""Item-to-item baselines fitted in closed form: ItemKNN and EASE.

Both score a candidate by a linear function of the user's history,
:math:`s(u, j) = \\sum_{i \\in H_u} W_{ij}`, with ``H_u`` the *set* of items in the input
sequence and ``W`` an item-item matrix fitted on the training interactions
(:meth:`~mdgr_graph.data.prepare.PreparedDataset.training_interactions`: the training
windows under the paper protocol, the sequences without their last two items under
leave-one-out). Neither uses validation or test data; their hyper-parameters are chosen on
the validation split by the caller (``benchmarks/compare.py``).

``W`` is kept dense, ``[num_items + 1, num_items + 1]`` float32 (index 0 is padding and
scores nothing): about 4 bytes x items^2, i.e. 36 MB for 3,000 items and 0.6 GB for
12,000. Catalogues far larger than that need a sparse ``W`` and are not supported here.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.models.base import SequentialRecommender

#: Largest catalogue for which the dense item-item matrix is built.
MAX_DENSE_ITEMS = 40_000


def _check_catalogue(num_items: int) -> None:
    if num_items + 1 > MAX_DENSE_ITEMS:
        raise ValueError(
            f"{num_items} items: the dense item-item matrix would need "
            f"{4 * (num_items + 1) ** 2 / 2**30:.1f} GiB; at most {MAX_DENSE_ITEMS - 1} items "
            "are supported"
        )


def training_matrix(prepared: PreparedDataset) -> Tensor:
    """Binary user-item matrix ``X [num_users, num_items + 1]`` (float64) of the training data.

    ``X[u, i] = 1`` when user ``u`` has item ``i`` among its training interactions.
    """
    _check_catalogue(prepared.num_items)
    user, item = prepared.training_interactions()
    x = torch.zeros(prepared.num_users, prepared.num_items + 1, dtype=torch.float64)
    x[torch.from_numpy(user), torch.from_numpy(item)] = 1.0
    return x


def cooccurrence(prepared: PreparedDataset) -> Tensor:
    """``X^T X [num_items + 1, num_items + 1]`` (float64) of :func:`training_matrix`: the
    number of training users who have both items (diagonal: each item's user count).

    Built from the sparse ``X``, so its cost follows the interactions, not users x items^2
    (the dense product takes minutes on Amazon Beauty's 22,363 x 12,102); the counts are
    exact integers, equal to the dense product's.
    """
    _check_catalogue(prepared.num_items)
    user, item = prepared.training_interactions()
    size = (prepared.num_users, prepared.num_items + 1)
    index = torch.from_numpy(np.stack([user, item]).astype(np.int64))
    x = torch.sparse_coo_tensor(index, torch.ones(index.shape[1], dtype=torch.float64), size,
                                check_invariants=True).coalesce()
    x = torch.sparse_coo_tensor(x.indices(), torch.ones_like(x.values()), size,  # binary
                                is_coalesced=True, check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse.mm(x.t(), x).to_dense()


def history_sets(batch: Batch) -> tuple[Tensor, Tensor]:
    """``(graph [M], item [M])``: each distinct item of each graph's sequence, once."""
    num_rows = int(batch.x.max()) + 1 if batch.x.numel() else 1
    key = torch.unique(batch.batch * num_rows + batch.x)
    return key // num_rows, key % num_rows


class ItemSimilarityRecommender(SequentialRecommender):
    """Scores ``s = h W``: ``h`` the binary history vector, ``W`` a fitted buffer.

    Args:
        weights: ``[num_items + 1, num_items + 1]`` item-item matrix, ``weights[i, j]``
            the contribution of history item ``i`` to the score of item ``j``.
    """

    def __init__(self, weights: Tensor) -> None:
        if weights.dim() != 2 or weights.shape[0] != weights.shape[1]:
            raise ValueError(f"weights must be square, got {tuple(weights.shape)}")
        super().__init__(weights.shape[0] - 1)
        weights = weights.float().clone()
        weights[0] = 0.0
        weights[:, 0] = 0.0
        self.register_buffer("weights", weights)

    def loss(self, batch: Batch) -> None:
        return None

    def _check_batch(self, batch: Batch) -> None:
        if batch.x.numel() and (int(batch.x.min()) < 1 or int(batch.x.max()) > self.num_items):
            raise ValueError(f"item ids must lie in 1..{self.num_items}")

    def score_candidates(self, batch: Batch) -> Tensor:
        """``[B, C]``: ``s[b, c] = sum over distinct history items i of W[i, cand[b, c]]``."""
        self._check_batch(batch)
        graph, item = history_sets(batch)
        cand = batch.candidates
        contrib = self.weights[item[:, None], cand[graph]]  # [M, C]
        out = torch.zeros(cand.shape, dtype=contrib.dtype, device=contrib.device)
        return out.index_add_(0, graph, contrib)

    def score_all(self, batch: Batch) -> Tensor:
        """``[B, num_items + 1]``: ``h W`` for every graph's binary history ``h``, with ``h``
        sparse (the cost follows the history lengths, not ``B x items^2``)."""
        self._check_batch(batch)
        graph, item = history_sets(batch)
        hist = torch.sparse_coo_tensor(
            torch.stack([graph, item]), torch.ones(len(item), device=self.weights.device),
            (batch.num_graphs, self.num_items + 1), is_coalesced=True, check_invariants=False,
        )
        return torch.sparse.mm(hist, self.weights)


class ItemKNN(ItemSimilarityRecommender):
    r"""Item-based nearest neighbours with cosine similarity (Sarwar et al., WWW 2001).

    :math:`\mathrm{sim}(i, j) = \frac{x_i \cdot x_j}{\lVert x_i \rVert \lVert x_j \rVert +
    \lambda}` over the binary training columns, with shrinkage :math:`\lambda` damping
    pairs seen together rarely and a zero diagonal. Each candidate ``j`` keeps only its
    ``neighbours`` most similar items; its score is the sum of its similarities to the
    history items among them. Deviation: none beyond using the training windows of the
    protocol as the "users" of the similarity.

    Args:
        weights: see :class:`ItemSimilarityRecommender` (use :meth:`from_prepared`).
        neighbours: neighbourhood size kept per candidate (``None`` keeps all).
        shrink: shrinkage :math:`\lambda`.
    """

    def __init__(self, weights: Tensor, neighbours: int | None = None, shrink: float = 0.0):
        super().__init__(weights)
        self.neighbours, self.shrink = neighbours, shrink

    @classmethod
    def similarity(cls, x: Tensor, neighbours: int | None = 100, shrink: float = 10.0) -> Tensor:
        """``W [I, I]`` from the binary matrix ``x [users, I]``: ``W[i, j] = sim(i, j)``
        when ``i`` is among the ``neighbours`` most similar items of ``j``, else 0."""
        return cls.similarity_from_cooccurrence(x.T @ x, neighbours, shrink)

    @staticmethod
    def similarity_from_cooccurrence(co: Tensor, neighbours: int | None = 100,
                                     shrink: float = 10.0) -> Tensor:
        """:meth:`similarity` from ``co = x^T x [I, I]`` (:func:`cooccurrence`)."""
        if neighbours is not None and neighbours < 1:
            raise ValueError(f"neighbours must be >= 1 or None, got {neighbours}")
        if shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {shrink}")
        norm = co.diagonal().sqrt()
        sim = co / (norm[:, None] * norm[None, :] + shrink).clamp_min(1e-12)
        sim.fill_diagonal_(0.0)
        if neighbours is not None and neighbours < sim.shape[0]:
            top = sim.topk(neighbours, dim=0).indices  # [neighbours, I]: per column j
            keep = torch.zeros_like(sim, dtype=torch.bool).scatter_(0, top, True)
            sim = sim * keep
        return sim

    @classmethod
    def from_prepared(
        cls, prepared: PreparedDataset, neighbours: int | None = 100, shrink: float = 10.0
    ) -> ItemKNN:
        co = cooccurrence(prepared)
        return cls(cls.similarity_from_cooccurrence(co, neighbours, shrink), neighbours, shrink)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(num_items={self.num_items}, "
                f"neighbours={self.neighbours}, shrink={self.shrink})")


class EASE(ItemSimilarityRecommender):
    r"""Embarrassingly Shallow Autoencoder (Steck, WWW 2019), closed form.

    :math:`\hat B = \arg\min_B \lVert X - XB \rVert_F^2 + \lambda \lVert B \rVert_F^2`
    subject to :math:`\mathrm{diag}(B) = 0`, solved by :math:`P = (X^\top X + \lambda
    I)^{-1}`, :math:`\hat B_{ij} = -P_{ij} / P_{jj}` (:math:`i \ne j`), in float64.

    Args:
        weights: see :class:`ItemSimilarityRecommender` (use :meth:`from_prepared`).
        l2: the L2 weight :math:`\lambda`.
    """

    def __init__(self, weights: Tensor, l2: float = 500.0) -> None:
        super().__init__(weights)
        self.l2 = l2

    @classmethod
    def solve(cls, x: Tensor, l2: float = 500.0) -> Tensor:
        """``B [I, I]`` from the binary matrix ``x [users, I]``."""
        return cls.solve_gram(x.T.double() @ x.double(), l2)

    @staticmethod
    def solve_gram(gram: Tensor, l2: float = 500.0) -> Tensor:
        """:meth:`solve` from ``gram = x^T x [I, I]`` (:func:`cooccurrence`; not modified)."""
        if not l2 > 0:
            raise ValueError(f"l2 must be > 0, got {l2}")
        gram = gram.double().clone()
        gram.diagonal().add_(l2)
        p = torch.linalg.inv(gram)
        b = -p / p.diagonal()[None, :]
        b.fill_diagonal_(0.0)
        return b

    @classmethod
    def from_prepared(cls, prepared: PreparedDataset, l2: float = 500.0) -> EASE:
        return cls(cls.solve_gram(cooccurrence(prepared), l2), l2)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_items={self.num_items}, l2={self.l2})"
