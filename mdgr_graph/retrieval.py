r"""Retrieve the top items of the whole catalogue for every user, one interest at a time.

A multi-interest model scores an item :math:`p` by its best interest,

.. math::
    s(p) = \max_{j:\ \mathrm{mask}_j}\ q_j^\top p + c_j,

which is Eq. 16 of MDGR rewritten by :meth:`~mdgr_graph.nn.interest.InterestScore.queries`
(``paper`` weighting: :math:`q_j = \omega_j (z_j \odot a)`, :math:`c_j = \omega_j b`;
``log``: :math:`q_j = z_j \odot a`, :math:`c_j = b + \log\omega_j`) and ComiRec's
:math:`\max_k v_k^\top p` with :math:`c = 0`. Inside one interest the offset :math:`c_j`
is a constant, so the items rank by the inner product :math:`q_j^\top p` alone and a
maximum-inner-product index answers each interest. :func:`retrieve` searches every
interest for its top ``n`` (plus the number of excluded items), adds :math:`c_j`, and
merges the lists of a user by the max, keeping each item once (ComiRec's serving merge).

The merge is exact with an exact index: if :math:`p` is in the true top ``n`` and
:math:`j^*` is its best interest, every item above :math:`p` in interest :math:`j^*`'s
ranking also scores above :math:`s(p)` overall, so at most ``n - 1`` (plus the excluded
items) are above it there and :math:`p` is in :math:`j^*`'s list with its true score; an
item reached only through a worse interest gets a score below its true one and so cannot
displace a true top item.

Pieces:

- :func:`export_interests` runs a model over a split and keeps queries, offsets, mask,
  raw interests :math:`z`, weights and the item table (without padding row 0);
- :class:`TorchIndex` (exact, chunked matmul + top-k, bounded memory, no dependency) and
  :class:`FaissIndex` (``kind="exact"``: ``IndexFlatIP``; ``kind="ivf"``: IVF-Flat with
  ``nlist``/``nprobe``, approximate), both on the inner product; :func:`build_index`
  picks one by backend name;
- :func:`retrieve`, and :func:`topk_of_scores`, the slow reference (top ``n`` of a full
  score matrix such as ``model.score_all``).

FAISS is optional (``pip install faiss-cpu``, or the ``retrieval`` extra): it is probed
once at import (:data:`WITH_FAISS`) and only a FAISS index asks for it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor
from torch_geometric.utils import cumsum

from mdgr_graph.data.protocols import ragged_ranges
from mdgr_graph.io import atomic_torch_save

try:
    import faiss

    WITH_FAISS = True
except (ImportError, OSError):  # OSError: a broken binary wheel
    faiss = None
    WITH_FAISS = False

#: Index backends by name; ``auto`` is ``faiss-exact`` when faiss imports, else ``torch``.
BACKENDS: tuple[str, ...] = ("auto", "torch", "faiss-exact", "faiss-approx")

#: The kinds of :class:`FaissIndex`.
FAISS_KINDS: tuple[str, ...] = ("exact", "ivf")


def require_faiss(feature: str):
    """The ``faiss`` module, or a clear ImportError naming what needs it."""
    if not WITH_FAISS:
        raise ImportError(
            f"'{feature}' requires 'faiss' (pip install faiss-cpu, or install this project "
            "with its 'retrieval' extra: pip install -e '.[retrieval]'); the 'torch' "
            "backend needs nothing"
        )
    return faiss


# ---------------------------------------------------------------------- checks
def _check_items(items: Tensor) -> Tensor:
    if not isinstance(items, Tensor) or items.dim() != 2:
        shape = tuple(items.shape) if isinstance(items, Tensor) else type(items).__name__
        raise ValueError(f"items must be a 2-D tensor [num_items, d], got {shape}")
    if not items.is_floating_point():
        raise TypeError(f"items must be a floating-point tensor, got {items.dtype}")
    if items.shape[0] == 0:
        raise ValueError("the item catalogue is empty (items has 0 rows)")
    if items.shape[1] == 0:
        raise ValueError("items have width d = 0")
    if not bool(torch.isfinite(items).all()):
        raise ValueError("items contain NaN or infinite values")
    return items.detach()


def _check_n(n: int, num_items: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 1 <= n <= num_items:
        raise ValueError(f"n must lie in [1, {num_items}] (the catalogue size), got {n}")
    return int(n)


def _check_search(index: Index, queries: Tensor, n: int) -> int:
    if not isinstance(queries, Tensor) or queries.dim() != 2:
        shape = tuple(queries.shape) if isinstance(queries, Tensor) else type(queries).__name__
        raise ValueError(f"queries must be a 2-D tensor [Q, d], got {shape}")
    if queries.shape[1] != index.dim:
        raise ValueError(f"queries have width {queries.shape[1]}, the index {index.dim}")
    if not queries.is_floating_point():
        raise TypeError(f"queries must be a floating-point tensor, got {queries.dtype}")
    return _check_n(n, index.num_items)


# ---------------------------------------------------------------------- indexes
class Index(Protocol):
    """A maximum-inner-product index over ``num_items`` vectors of width ``dim``.

    ``search(queries [Q, d], n)`` returns ``(scores [Q, n], ids [Q, n])``: for every query
    the ``n`` largest inner products, best first, and the 0-based rows of those items;
    an approximate index may return fewer, marked by id ``-1`` and score ``-inf``.
    """

    num_items: int
    dim: int

    def search(self, queries: Tensor, n: int) -> tuple[Tensor, Tensor]: ...


class TorchIndex:
    r"""Exact maximum inner product search in pure torch: chunked matmul + top-k.

    Scores :math:`Q C^\top` for ``query_chunk`` queries against ``item_chunk`` items at a
    time and keeps a running top ``n``, so memory stays at about
    ``query_chunk * (item_chunk + 2n)`` floats whatever the catalogue size.

    Args:
        items: the item table ``[num_items, d]`` (row ``i`` is item ``i + 1`` of the
            model); kept on its device, as float32.
        item_chunk: items scored per step. (default: :obj:`65536`)
        query_chunk: queries scored per step. (default: :obj:`256`)

    Shapes:
        - **search input:** queries ``[Q, d]``, ``n``
        - **search output:** scores ``[Q, n]`` (float32), ids ``[Q, n]`` (int64, 0-based)
    """

    def __init__(self, items: Tensor, item_chunk: int = 65536, query_chunk: int = 256) -> None:
        if item_chunk < 1 or query_chunk < 1:
            raise ValueError(
                f"item_chunk and query_chunk must be >= 1, got {item_chunk}, {query_chunk}"
            )
        self.items = _check_items(items).float().contiguous()
        self.num_items, self.dim = self.items.shape
        self.item_chunk, self.query_chunk = item_chunk, query_chunk

    @torch.no_grad()
    def search(self, queries: Tensor, n: int) -> tuple[Tensor, Tensor]:
        n = _check_search(self, queries, n)
        queries = queries.detach().to(self.items.device, torch.float32)
        scores, ids = [], []
        for qs in range(0, queries.shape[0], self.query_chunk):
            q = queries[qs : qs + self.query_chunk]
            best_s = q.new_empty(q.shape[0], 0)
            best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)
            for cs in range(0, self.num_items, self.item_chunk):
                chunk = q @ self.items[cs : cs + self.item_chunk].T
                top = chunk.topk(min(n, chunk.shape[1]), dim=1)
                best_s = torch.cat([best_s, top.values], dim=1)
                best_i = torch.cat([best_i, top.indices + cs], dim=1)
                if best_s.shape[1] > n:
                    keep = best_s.topk(n, dim=1)
                    best_s, best_i = keep.values, best_i.gather(1, keep.indices)
            scores.append(best_s)
            ids.append(best_i)
        if not scores:  # no queries
            return queries.new_empty(0, n), torch.empty(0, n, dtype=torch.long)
        return torch.cat(scores), torch.cat(ids)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(num_items={self.num_items}, dim={self.dim}, "
                f"item_chunk={self.item_chunk}, query_chunk={self.query_chunk})")


def default_nlist(num_items: int) -> int:
    r"""IVF lists for ``num_items`` items: :math:`\mathrm{round}(\sqrt{N})`, at least 1."""
    return max(1, round(math.sqrt(num_items)))


class FaissIndex:
    r"""FAISS inner-product index on the CPU: exact (``IndexFlatIP``) or IVF-Flat.

    ``kind="ivf"`` clusters the items into ``nlist`` lists by k-means on the inner product
    (FAISS's ``IndexIVFFlat`` with ``METRIC_INNER_PRODUCT``) and scans only the
    ``nprobe`` lists whose centroids best match each query: approximate (an item in an
    unscanned list is missed), much faster on large catalogues; the scores it returns are
    exact inner products. ``nprobe = nlist`` scans everything.

    Args:
        items: the item table ``[num_items, d]`` (row ``i`` is item ``i + 1``).
        kind: ``"exact"`` or ``"ivf"``. (default: :obj:`"exact"`)
        nlist: IVF lists (None: :func:`default_nlist`). (default: :obj:`None`)
        nprobe: IVF lists scanned per query. (default: :obj:`16`)
        seed: seed of the IVF k-means. (default: :obj:`0`)

    Raises:
        ImportError: when faiss is not installed.

    Shapes:
        - **search input:** queries ``[Q, d]``, ``n``
        - **search output:** scores ``[Q, n]`` (float32), ids ``[Q, n]`` (int64, 0-based;
          ``-1`` with score ``-inf`` where an IVF search found fewer than ``n`` items)
    """

    def __init__(
        self,
        items: Tensor,
        kind: str = "exact",
        nlist: int | None = None,
        nprobe: int = 16,
        seed: int = 0,
    ) -> None:
        lib = require_faiss(f"FaissIndex(kind={kind!r})")
        if kind not in FAISS_KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(FAISS_KINDS)}")
        x = _check_items(items).cpu().float().contiguous().numpy()
        self.num_items, self.dim = x.shape
        self.kind = kind
        self.nlist = self.nprobe = None
        if kind == "exact":
            self.index = lib.IndexFlatIP(self.dim)
        else:
            nlist = default_nlist(self.num_items) if nlist is None else nlist
            if not 1 <= nlist <= self.num_items:
                raise ValueError(f"nlist must lie in [1, {self.num_items}], got {nlist}")
            if nprobe < 1:
                raise ValueError(f"nprobe must be >= 1, got {nprobe}")
            self.nlist, self.nprobe = nlist, min(nprobe, nlist)
            self._quantizer = lib.IndexFlatIP(self.dim)  # must outlive the IVF index
            self.index = lib.IndexIVFFlat(self._quantizer, self.dim, nlist,
                                          lib.METRIC_INNER_PRODUCT)
            self.index.cp.seed = seed
            self.index.cp.min_points_per_centroid = 1  # small tables: no warning spam
            self.index.train(x)
            self.index.nprobe = self.nprobe
        self.index.add(x)

    @torch.no_grad()
    def search(self, queries: Tensor, n: int) -> tuple[Tensor, Tensor]:
        n = _check_search(self, queries, n)
        q = queries.detach().cpu().float().contiguous().numpy()
        scores, ids = self.index.search(q, n)
        scores, ids = torch.from_numpy(scores), torch.from_numpy(ids).long()
        return scores.masked_fill(ids < 0, float("-inf")), ids

    def __repr__(self) -> str:
        ivf = f", nlist={self.nlist}, nprobe={self.nprobe}" if self.kind == "ivf" else ""
        return (f"{self.__class__.__name__}(num_items={self.num_items}, dim={self.dim}, "
                f"kind='{self.kind}'{ivf})")


def build_index(items: Tensor, backend: str = "auto", **options: Any) -> Index:
    """An index over ``items [num_items, d]`` for ``backend``.

    ``torch``: :class:`TorchIndex` (options ``item_chunk``, ``query_chunk``);
    ``faiss-exact``: :class:`FaissIndex` ``kind="exact"``; ``faiss-approx``:
    :class:`FaissIndex` ``kind="ivf"`` (options ``nlist``, ``nprobe``, ``seed``);
    ``auto``: ``faiss-exact`` when faiss imports, else ``torch``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "faiss-exact" if WITH_FAISS else "torch"
    if backend == "torch":
        return TorchIndex(items, **options)
    if backend == "faiss-exact":
        return FaissIndex(items, kind="exact", **options)
    return FaissIndex(items, kind="ivf", **options)


# ---------------------------------------------------------------------- retrieval
class Retrieved(NamedTuple):
    """Top items per user.

    Attributes:
        items: ``[U, n]`` item ids as the model numbers them (``1..num_items``), best
            first; ``0`` where fewer than ``n`` items could be returned.
        scores: ``[U, n]`` their scores :math:`s(p)`; ``-inf`` where ``items`` is 0.
    """

    items: Tensor
    scores: Tensor


def _exclusion_csr(exclude: Tensor | tuple[Tensor, Tensor] | None, num_users: int,
                   num_items: int) -> tuple[Tensor, Tensor] | None:
    """``exclude`` as ``(ptr [U + 1], items [M])`` with 1-based ids (0 dropped)."""
    if exclude is None:
        return None
    if isinstance(exclude, Tensor):
        if exclude.dtype != torch.bool or exclude.shape != (num_users, num_items + 1):
            raise ValueError(
                f"a dense exclude must be a bool tensor [U, num_items + 1] = "
                f"[{num_users}, {num_items + 1}], got {exclude.dtype} {tuple(exclude.shape)}"
            )
        exclude = exclude.cpu().clone()
        exclude[:, 0] = False
        counts = exclude.sum(dim=1)
        ptr = cumsum(counts)
        return ptr, exclude.nonzero()[:, 1]
    if not isinstance(exclude, (tuple, list)) or len(exclude) != 2:
        raise TypeError("exclude must be None, a bool tensor [U, num_items + 1] or a "
                        "(ptr [U + 1], items [M]) pair")
    ptr, items = (torch.as_tensor(t).cpu() for t in exclude)
    if ptr.shape != (num_users + 1,) or items.dim() != 1:
        raise ValueError(f"exclude ptr must have shape [{num_users + 1}] and items be 1-D, "
                         f"got {tuple(ptr.shape)} and {tuple(items.shape)}")
    if ptr.is_floating_point() or items.is_floating_point():
        raise TypeError("exclude ptr and items must be integer tensors")
    ptr, items = ptr.long(), items.long()
    if int(ptr[0]) != 0 or int(ptr[-1]) != items.numel() or bool((ptr.diff() < 0).any()):
        raise ValueError("exclude ptr must start at 0, never decrease and end at len(items)")
    if items.numel() and (int(items.min()) < 0 or int(items.max()) > num_items):
        raise ValueError(f"exclude items must lie in [0, {num_items}] (0 is ignored)")
    return ptr, items


@torch.no_grad()
def retrieve(
    queries: Tensor,
    offsets: Tensor,
    mask: Tensor,
    index: Index,
    n: int,
    exclude: Tensor | tuple[Tensor, Tensor] | None = None,
    batch_size: int = 1024,
) -> Retrieved:
    r"""Top ``n`` items of the catalogue per user, :math:`s(p) = \max_{j:\,\mathrm{mask}_j}
    q_j^\top p + c_j`, by searching each interest and merging (exact with an exact index).

    Every interest :math:`j` of a user with ``mask[u, j]`` is searched for its top
    ``n + e_u`` items (:math:`e_u`: the most items excluded for a user of the same batch
    of ``batch_size`` users; users are batched in order of their exclusion counts); the
    candidates get :math:`q_j^\top p + c_j`, excluded items are dropped, each item keeps
    its best score across interests, and the top ``n`` remain.

    Args:
        queries: :math:`q_j`, ``[U, k, d]`` floating point.
        offsets: :math:`c_j`, ``[U, k]`` floating point.
        mask: ``[U, k]`` bool, the interests that take part (at least one per user).
        index: an :class:`Index` over the item table (row ``i`` = item ``i + 1``).
        n: items per user, ``1 <= n <= index.num_items``.
        exclude: items never to return (e.g. the user's history): a bool tensor
            ``[U, num_items + 1]`` (column 0, padding, ignored) or a pair
            ``(ptr [U + 1], items [M])`` listing user ``u``'s items in
            ``items[ptr[u]:ptr[u + 1]]`` (1-based ids). (default: :obj:`None`)
        batch_size: users searched together (bounds memory). (default: :obj:`1024`)

    Returns:
        :class:`Retrieved`: ``items [U, n]`` (1-based, ``0`` where a user has fewer
        than ``n`` retrievable items) and ``scores [U, n]`` (``-inf`` there), best first.
    """
    if not isinstance(queries, Tensor) or queries.dim() != 3:
        shape = tuple(queries.shape) if isinstance(queries, Tensor) else type(queries).__name__
        raise ValueError(f"queries must be a 3-D tensor [U, k, d], got {shape}")
    num_users, k, dim = queries.shape
    if not isinstance(offsets, Tensor) or offsets.shape != (num_users, k):
        raise ValueError(f"offsets must have shape [U, k] = [{num_users}, {k}], got "
                         f"{tuple(offsets.shape) if isinstance(offsets, Tensor) else offsets}")
    if not isinstance(mask, Tensor) or mask.shape != (num_users, k):
        raise ValueError(f"mask must have shape [U, k] = [{num_users}, {k}], got "
                         f"{tuple(mask.shape) if isinstance(mask, Tensor) else mask}")
    if not queries.is_floating_point() or not offsets.is_floating_point():
        raise TypeError(f"queries and offsets must be floating point, got {queries.dtype} "
                        f"and {offsets.dtype}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if dim != index.dim:
        raise ValueError(f"queries have width {dim}, the index {index.dim}")
    n = _check_n(n, index.num_items)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    queries, offsets, mask = (t.detach().cpu() for t in (queries, offsets, mask))
    if num_users and not bool(mask.any(dim=1).all()):
        raise ValueError("every user needs at least one interest in mask")
    # an infinite query makes NaN scores (inf * 0), which topk ranks first; an offset of
    # -inf only drops its interest (log weighting with a zero weight), +inf ties everything
    used_offsets = offsets[mask]
    if (not bool(torch.isfinite(queries[mask]).all()) or bool(torch.isnan(used_offsets).any())
            or bool((used_offsets == float("inf")).any())):
        raise ValueError("queries or offsets contain NaN or infinite values (a diverged model?)")
    csr = _exclusion_csr(exclude, num_users, index.num_items)
    order = None
    if csr is not None and num_users > batch_size:
        # batches of users with similar exclusion counts: every search of a batch is
        # widened by its largest count only
        order = torch.argsort(csr[0].diff(), stable=True)
        queries, offsets, mask = queries[order], offsets[order], mask[order]
        csr = _reorder_csr(*csr, order)

    items, scores = [], []
    for start in range(0, num_users, batch_size):
        stop = min(start + batch_size, num_users)
        part = None
        if csr is not None:
            ptr, excluded = csr
            part = (ptr[start : stop + 1] - ptr[start], excluded[ptr[start] : ptr[stop]])
        out = _retrieve_batch(queries[start:stop], offsets[start:stop], mask[start:stop],
                              index, n, part)
        items.append(out.items)
        scores.append(out.scores)
    if not items:
        return Retrieved(torch.zeros(0, n, dtype=torch.long), torch.zeros(0, n))
    items, scores = torch.cat(items), torch.cat(scores)
    if order is not None:  # back to the callers' user order
        items[order], scores[order] = items.clone(), scores.clone()
    return Retrieved(items, scores)


def _reorder_csr(ptr: Tensor, items: Tensor, order: Tensor) -> tuple[Tensor, Tensor]:
    """The rows ``order`` of the CSR lists ``(ptr, items)``, as a new CSR pair."""
    start, end = ptr[:-1][order], ptr[1:][order]
    _, index = ragged_ranges(start.numpy(), end.numpy())
    counts = end - start
    return cumsum(counts), items[torch.from_numpy(index)]


def _retrieve_batch(queries: Tensor, offsets: Tensor, mask: Tensor, index: Index, n: int,
                    exclude: tuple[Tensor, Tensor] | None) -> Retrieved:
    num_users, k, _ = queries.shape
    num_items = index.num_items
    extra = int(exclude[0].diff().max()) if exclude is not None and num_users else 0
    width = min(n + extra, num_items)

    # search every (user, interest) that takes part; the offset is constant per query
    found_s, found_i = index.search(queries[mask].float(), width)
    found_s, found_i = found_s.cpu(), found_i.cpu()  # a TorchIndex may live on a GPU
    found_s = found_s + offsets[mask].float().unsqueeze(1)
    found_s = found_s.masked_fill(found_i < 0, float("-inf"))
    cand_s = found_s.new_full((num_users, k, width), float("-inf"))
    cand_i = torch.zeros(num_users, k, width, dtype=torch.long)
    cand_s[mask] = found_s
    cand_i[mask] = (found_i + 1).clamp_min(0)  # 1-based ids; 0 = nothing found
    cand_s, cand_i = cand_s.view(num_users, -1), cand_i.view(num_users, -1)
    cand_s = cand_s.masked_fill(cand_i == 0, float("-inf"))

    if exclude is not None and exclude[1].numel():
        ptr, excluded = exclude
        owner = torch.repeat_interleave(torch.arange(num_users), ptr.diff())
        key = torch.arange(num_users).unsqueeze(1) * (num_items + 1) + cand_i
        hit = torch.isin(key, owner * (num_items + 1) + excluded)
        cand_s = cand_s.masked_fill(hit, float("-inf"))

    # keep each item once, with its best score: sort by score, then mark every copy of an
    # id after its first (best) occurrence; a stable sort by id keeps that order
    order = cand_s.argsort(dim=1, descending=True, stable=True)
    cand_s, cand_i = cand_s.gather(1, order), cand_i.gather(1, order)
    by_id = cand_i.argsort(dim=1, stable=True)
    ids_by_id = cand_i.gather(1, by_id)
    repeat = torch.zeros_like(ids_by_id, dtype=torch.bool)
    repeat[:, 1:] = ids_by_id[:, 1:] == ids_by_id[:, :-1]
    duplicate = torch.zeros_like(repeat).scatter(1, by_id, repeat)
    cand_s = cand_s.masked_fill(duplicate, float("-inf"))

    top = cand_s.topk(n, dim=1)
    top_i = cand_i.gather(1, top.indices).masked_fill(top.values == float("-inf"), 0)
    return Retrieved(top_i, top.values)


def topk_of_scores(scores: Tensor, n: int, exclude: Tensor | None = None) -> Retrieved:
    """Reference: the top ``n`` of a full score matrix, such as ``model.score_all``.

    Args:
        scores: ``[U, num_items + 1]`` (column 0, padding, is never returned).
        n: items per user.
        exclude: optional bool ``[U, num_items + 1]``, items never to return.

    Returns:
        :class:`Retrieved` with the same conventions as :func:`retrieve`.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [U, num_items + 1], got {tuple(scores.shape)}")
    n = _check_n(n, scores.shape[1] - 1)
    scores = scores.detach().float().clone()
    scores[:, 0] = float("-inf")
    if exclude is not None:
        scores = scores.masked_fill(exclude, float("-inf"))
    top = scores.topk(n, dim=1)
    return Retrieved(top.indices.masked_fill(top.values == float("-inf"), 0), top.values)


# ---------------------------------------------------------------------- export
@dataclass
class InterestExport:
    """What retrieval needs from a model over one split, one row per example.

    Attributes:
        queries: :math:`q_j`, ``[U, k, d]``.
        offsets: :math:`c_j`, ``[U, k]``.
        mask: ``[U, k]``, the interests that take part in the max.
        interests: the raw interest vectors :math:`z_j`, ``[U, k, d]``.
        weights: the interest weights :math:`\\omega_j`, ``[U, k]``.
        users: internal user id of every row, ``[U]`` (paper protocol: a user with
            several windows has several rows).
        items: the item table without padding row 0, ``[num_items, d]`` (row ``i`` is
            item ``i + 1``).
        split: the split the rows come from.
    """

    queries: Tensor
    offsets: Tensor
    mask: Tensor
    interests: Tensor
    weights: Tensor
    users: Tensor
    items: Tensor
    split: str

    def save(self, path: str | Path) -> None:
        """Write every field with ``torch.save``, atomically."""
        atomic_torch_save(asdict(self), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> InterestExport:
        return cls(**torch.load(path, map_location="cpu", weights_only=True))


def item_table(model: torch.nn.Module) -> Tensor:
    """The model's item embeddings without padding row 0: ``[num_items, d]``: its
    ``item_table()`` when it computes them (PinText2: ids plus title words), else its
    ``item_emb`` table."""
    computed = getattr(model, "item_table", None)
    if callable(computed):
        with torch.no_grad():
            return computed()[1:].detach()
    emb = getattr(model, "item_emb", None)
    if not isinstance(emb, torch.nn.Embedding):
        raise TypeError(f"{type(model).__name__} has no item_emb table to retrieve from")
    return emb.weight[1:].detach()


@torch.no_grad()
def export_interests(
    model: torch.nn.Module,
    prepared,
    split: str = "test",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> InterestExport:
    """Run ``model`` (in eval mode) over ``split`` of a prepared dataset and export
    :meth:`interest_queries` of every example and the item table, on the CPU.

    The model must provide ``interest_queries(batch)`` (MDGR and its variants, the
    static-graph control, MIP, ComiRec-SA/DR, PinText2) and an item table (see
    :func:`item_table`).
    """
    from tqdm.auto import tqdm

    from mdgr_graph.data.dataset import SequenceDataset, SequenceLoader

    if not callable(getattr(model, "interest_queries", None)):
        raise TypeError(
            f"{type(model).__name__} has no interest_queries(batch); retrieval supports "
            "MDGR (and its variants, static-graph, mip), ComiRec-SA/DR and PinText2"
        )
    items = item_table(model).float().cpu()
    was_training = model.training
    model.eval()
    loader = SequenceLoader(SequenceDataset(prepared, split), batch_size=batch_size)
    parts: list[tuple[Tensor, ...]] = []
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=f"export {split}", disable=not progress,
                              leave=False):
                batch = batch.to(device)
                out = model.interest_queries(batch)
                parts.append(tuple(t.detach().cpu() for t in out) + (batch.user.cpu(),))
    finally:
        model.train(was_training)
    if not parts:
        raise ValueError(f"split {split!r} has no examples")
    cols = [torch.cat(c) for c in zip(*parts, strict=True)]
    return InterestExport(*cols, items=items, split=split)


def history_items(prepared, split: str) -> tuple[Tensor, Tensor]:
    """Items each example of ``split`` has already seen, as ``(ptr [U + 1], items [M])``:
    :meth:`~mdgr_graph.data.prepare.PreparedDataset.seen_items` as LongTensors.

    Paper protocol: the window's history (the model's input). Leave-one-out: the user's
    whole sequence before the split's target (what full-ranking evaluation excludes).
    Rows follow :class:`~mdgr_graph.data.dataset.SequenceDataset` order, so the pair can be
    passed to :func:`retrieve` as ``exclude``.
    """
    ptr, items = prepared.seen_items(split)
    return torch.from_numpy(ptr).long(), torch.from_numpy(items).long()


def rerank(
    model: torch.nn.Module,
    prepared,
    split: str,
    candidates: Tensor,
    n: int | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Retrieved:
    """Second stage of two-stage serving: score each row's ``candidates`` with ``model``
    (a candidate-query model: ``score_candidates`` on the given set) and keep the best.

    The first stage is :func:`retrieve` with a last-item model over the whole catalogue;
    this stage re-ranks its top ``N`` with, e.g., ``MDGR(query="candidate")``, whose graph is
    rebuilt per candidate and cannot search the catalogue itself (docs/retrieval.md).

    Args:
        model: any model of the project (``score_candidates(batch)`` reads
            ``batch.candidates``); put in eval mode for the call.
        prepared: the dataset both stages were trained on.
        split: whose rows; rows follow :class:`~mdgr_graph.data.dataset.SequenceDataset`
            order, as :func:`retrieve`'s.
        candidates: ``[U, N]`` item ids per row (:attr:`Retrieved.items` of the first
            stage); ``0`` marks an empty slot, which stays last with score ``-inf``.
        n: how many to keep (default: all ``N``, re-ordered).

    Returns:
        :class:`Retrieved` ``[U, n]``, best first.
    """
    from mdgr_graph.data.dataset import SequenceDataset, SequenceLoader

    dataset = SequenceDataset(prepared, split)
    candidates = torch.as_tensor(candidates).long()
    if candidates.dim() != 2 or candidates.size(0) != len(dataset):
        raise ValueError(f"candidates must be [rows of {split!r} = {len(dataset)}, N], got "
                         f"{tuple(candidates.shape)}")
    if candidates.numel() and (int(candidates.min()) < 0
                               or int(candidates.max()) > prepared.num_items):
        raise ValueError(f"candidate ids must lie in 0..{prepared.num_items}")
    n = candidates.size(1) if n is None else _check_n(n, candidates.size(1))
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    scores, start = [], 0
    try:
        with torch.no_grad():
            for batch in tqdm(SequenceLoader(dataset, batch_size=batch_size),
                              desc=f"rerank {split}", disable=not progress, leave=False):
                rows = candidates[start : start + batch.num_graphs]
                start += batch.num_graphs
                batch = batch.to(device)
                batch.candidates = rows.to(device)
                scores.append(model.score_candidates(batch).float().cpu())
    finally:
        model.train(was_training)
    score = torch.cat(scores).masked_fill(candidates == 0, float("-inf"))
    top = score.topk(n, dim=1)
    items = candidates.gather(1, top.indices).masked_fill(top.values == float("-inf"), 0)
    return Retrieved(items, top.values)
