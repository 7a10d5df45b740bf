"""From parsed interactions to time-ordered integer sequences.

Rules, applied in this order (documented in ``docs/data.md``):

1. **Exact duplicates** — rows with the same user, item and timestamp — are collapsed to
   the first occurrence. The same item at different times is kept (repeat consumption).
2. **Iterative filtering**: drop items with fewer than ``min_item_count`` interactions and
   users with fewer than ``min_user_len``, and repeat both rules until neither removes
   anything.
3. **Remapping**: users to ``0..U-1`` and items to ``1..I`` (``0`` is padding), both in
   sorted order of the raw ids, so the mapping does not depend on row order.
4. **Stable sort by time** within each user; rows with equal timestamps keep file order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.readers import Interactions


@dataclass
class Sequences:
    """Every user's time-ordered item sequence in CSR form.

    Attributes:
        ptr: ``[U + 1]`` offsets; user ``u`` owns ``items[ptr[u]:ptr[u + 1]]``.
        items: ``[nnz]`` item ids in ``1..num_items`` (``0`` is padding).
        timestamp: ``[nnz]`` Unix seconds, non-decreasing within a user.
        user_ids: ``[U]`` raw user ids.
        item_ids: ``[num_items + 1]`` raw item ids, ``item_ids[0] == ""`` (padding).
    """

    ptr: np.ndarray
    items: np.ndarray
    timestamp: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.ptr) - 1

    @property
    def num_items(self) -> int:
        """Number of real items (the padding id 0 not counted)."""
        return len(self.item_ids) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.ptr)

    @property
    def user_of(self) -> np.ndarray:
        """``[nnz]`` the user of every interaction."""
        return np.repeat(np.arange(self.num_users), self.lengths)


def drop_exact_duplicates(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Return the sorted row indices that survive rule 1 (first occurrence kept)."""
    keys = np.rec.fromarrays([user, item, ts])
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def iterative_filter(
    user: np.ndarray, item: np.ndarray, min_item_count: int, min_user_len: int
) -> np.ndarray:
    """Boolean mask of the rows that survive repeated item/user count filtering."""
    keep = np.ones(len(user), dtype=bool)
    num_users = int(user.max()) + 1 if len(user) else 0
    num_items = int(item.max()) + 1 if len(item) else 0
    while True:
        item_count = np.bincount(item[keep], minlength=num_items)
        user_count = np.bincount(user[keep], minlength=num_users)
        new_keep = keep & (item_count[item] >= min_item_count) & (user_count[user] >= min_user_len)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


@dataclass
class EncodedLog:
    """A parsed log whose raw ids are replaced by their rank among the distinct raw ids.

    This is the form both readers meet in: the in-memory path gets it from
    :meth:`from_interactions` (``np.unique``), the chunked reader
    (:mod:`mdgr_graph.data.chunked`) builds it chunk by chunk without holding the raw ids of
    every row, and :func:`build_sequences` treats both the same way.

    Attributes:
        user_ids: ``[U0]`` the distinct raw user ids, sorted (numpy unicode array).
        user: ``[N]`` position of each row's user in ``user_ids``.
        item_ids: ``[I0]`` the distinct raw item ids, sorted.
        item: ``[N]`` position of each row's item in ``item_ids``.
        timestamp: ``[N]`` Unix seconds, ``float64``.
        source: the path read.
    """

    user_ids: np.ndarray
    user: np.ndarray
    item_ids: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def from_interactions(cls, log: Interactions) -> EncodedLog:
        user_ids, user = np.unique(log.user, return_inverse=True)
        item_ids, item = np.unique(log.item, return_inverse=True)
        ts = np.asarray(log.timestamp, dtype=np.float64)
        return cls(user_ids, user, item_ids, item, ts, log.source)


def build_sequences(
    log: Interactions | EncodedLog, *, min_item_count: int = 10, min_user_len: int = 100
) -> Sequences:
    """Apply the preprocessing rules of this module to a parsed log.

    Raises:
        DataFormatError: when no user is left after filtering.
    """
    if min_item_count < 1 or min_user_len < 1:
        raise ValueError("min_item_count and min_user_len must be >= 1")
    if not isinstance(log, EncodedLog):
        log = EncodedLog.from_interactions(log)
    user_ids, item_ids = log.user_ids, log.item_ids
    user, item, ts = log.user, log.item, log.timestamp
    if not np.all(np.isfinite(ts)):
        raise DataFormatError(f"{log.source}: timestamps must be finite")

    rows = drop_exact_duplicates(user, item, ts)
    user, item, ts = user[rows], item[rows], ts[rows]

    keep = iterative_filter(user, item, min_item_count, min_user_len)
    if not keep.any():
        raise DataFormatError(
            f"{log.source}: no user left after filtering (min_item_count={min_item_count}, "
            f"min_user_len={min_user_len}); lower the thresholds"
        )
    user, item, ts = user[keep], item[keep], ts[keep]

    kept_users, user = np.unique(user, return_inverse=True)
    kept_items, item = np.unique(item, return_inverse=True)
    item = item + 1

    order = np.lexsort((ts, user))  # stable: equal (user, ts) keep file order
    counts = np.bincount(user, minlength=len(kept_users))
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return Sequences(
        ptr=ptr.astype(np.int64),
        items=item[order].astype(np.int64),
        timestamp=ts[order],
        user_ids=user_ids[kept_users],
        item_ids=np.concatenate([np.array([""], dtype=item_ids.dtype), item_ids[kept_items]]),
    )
