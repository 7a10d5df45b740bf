"""Evaluation protocols: the paper's windows and leave-one-out, with negative sampling.

Everything here is vectorised over users and windows; randomness comes only from the
``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import numpy as np

from mdgr_graph.data.preprocess import Sequences

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")


def paper_windows(
    seqs: Sequences,
    window: int = 100,
    stride: int | None = None,
    users: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut users' histories into windows of ``window`` interactions, ``stride`` apart.

    Windows are counted back from the most recent interaction: the last window ends at
    the user's last interaction and window ``j`` (from the end) starts ``j * stride``
    earlier; an older remainder too short for a window is dropped. With ``stride`` equal
    to ``window`` (the default, the paper's setting) the windows do not overlap.

    Args:
        seqs: the sequences.
        window: interactions per window.
        stride: offset between consecutive windows of a user (``1..window``).
        users: restrict to these user ids (default: every user).

    Returns:
        ``(window_user [W], window_start [W])``: the user of each window and the offset of
        its first interaction in ``seqs.items``, ordered by user, then time.
    """
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    stride = window if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in 1..{window} (the window), got {stride}")
    users = np.arange(seqs.num_users) if users is None else np.asarray(users, dtype=np.int64)
    lengths = seqs.lengths[users]
    per_user = np.where(lengths >= window, (lengths - window) // stride + 1, 0)
    window_user = np.repeat(users, per_user)
    # j-th window of a user, j = 0 the oldest kept one
    first_of_user = np.concatenate([[0], np.cumsum(per_user)[:-1]]).astype(np.int64)
    j = np.arange(len(window_user)) - np.repeat(first_of_user, per_user)
    from_end = np.repeat(per_user, per_user) - 1 - j
    window_start = seqs.ptr[window_user] + seqs.lengths[window_user] - window - from_end * stride
    return window_user, window_start.astype(np.int64)


def split_users(
    num_users: int, valid_frac: float, test_frac: float, rng: np.random.Generator
) -> np.ndarray:
    """Assign each user to train (0), valid (1) or test (2) at random.

    Each held-out split gets ``round(frac * num_users)`` users, at least one when its
    fraction is positive and at least one user is left for training.
    """
    if not (0 <= valid_frac < 1 and 0 <= test_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError("valid_frac and test_frac must be in [0, 1) and sum to less than 1")

    def size(frac: float) -> int:
        return max(1, round(frac * num_users)) if frac > 0 else 0

    n_valid, n_test = size(valid_frac), size(test_frac)
    if n_valid + n_test >= num_users:
        raise ValueError(
            f"{num_users} users are too few for a train/valid/test split "
            f"({n_valid} valid + {n_test} test)"
        )
    split = np.full(num_users, TRAIN, dtype=np.int64)
    perm = rng.permutation(num_users)
    split[perm[:n_valid]] = VALID
    split[perm[n_valid : n_valid + n_test]] = TEST
    return split


class SeenItems:
    """Per-user sets of items, for membership tests in bulk.

    Args:
        user: ``[nnz]`` user of each interaction.
        item: ``[nnz]`` item of each interaction.
        num_items: number of real items (ids ``1..num_items``).
    """

    def __init__(self, user: np.ndarray, item: np.ndarray, num_items: int) -> None:
        self.num_items = int(num_items)
        self.keys = np.unique(user.astype(np.int64) * (self.num_items + 1) + item)
        self.count = np.bincount(self.keys // (self.num_items + 1))

    def contains(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """Elementwise: has ``user`` interacted with ``item``?"""
        keys = user.astype(np.int64) * (self.num_items + 1) + item
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def count_of(self, user: np.ndarray) -> np.ndarray:
        user = np.asarray(user)
        out = np.zeros(len(user), dtype=np.int64)
        known = user < len(self.count)
        out[known] = self.count[user[known]]
        return out


def sample_negatives(
    user: np.ndarray, num: int, seen: SeenItems, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``num`` distinct items per row that the row's user never interacted with.

    Rejection sampling, vectorised: every round redraws only the rejected entries (seen by
    the user, or repeated within the row), and checks again only the rows that had one.

    Args:
        user: ``[R]`` user of each row.
        num: negatives per row.
        seen: the users' interacted items.
        rng: the random generator.

    Returns:
        ``[R, num]`` item ids in ``1..num_items``.
    """
    user = np.asarray(user, dtype=np.int64)
    unseen = seen.num_items - seen.count_of(user)
    if len(user) and unseen.min() < num:
        bad = int(user[np.argmin(unseen)])
        raise ValueError(
            f"user {bad} has only {int(unseen.min())} unseen items; cannot draw {num} negatives"
        )
    out = rng.integers(1, seen.num_items + 1, size=(len(user), num))
    todo = np.arange(len(user))  # rows that may still hold a rejected entry
    while len(todo):
        sub = out[todo]
        bad = seen.contains(np.repeat(user[todo, None], num, axis=1), sub) | _repeated_in_row(sub)
        has_bad = bad.any(axis=1)
        todo, sub, bad = todo[has_bad], sub[has_bad], bad[has_bad]
        # Redrawn in row-major order of the rejected entries, as a redraw over all rows
        # would be: the stream (and so every seeded split) does not depend on this cut.
        sub[bad] = rng.integers(1, seen.num_items + 1, size=int(bad.sum()))
        out[todo] = sub
    return out


def _repeated_in_row(values: np.ndarray) -> np.ndarray:
    """Mask of entries equal to an earlier entry of the same row."""
    order = np.argsort(values, axis=1, kind="stable")
    sorted_vals = np.take_along_axis(values, order, axis=1)
    dup_sorted = np.zeros_like(sorted_vals, dtype=bool)
    dup_sorted[:, 1:] = sorted_vals[:, 1:] == sorted_vals[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def relative_days(timestamp: np.ndarray) -> np.ndarray:
    """Seconds to days since the first entry of each row: ``[R, n] -> [R, n]`` float32."""
    return ((timestamp - timestamp[:, :1]) / 86400.0).astype(np.float32)


def ragged_ranges(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ranges ``start[i]:end[i]``, concatenated, and the row of each.

    Returns ``(row [M], index [M])`` with ``M = sum(end - start)``: ``values[index]`` is
    ``values[start[0]:end[0]]``, then ``values[start[1]:end[1]]``, ... (one gather, no loop).
    """
    lengths = np.asarray(end) - np.asarray(start)
    if (lengths < 0).any():
        raise ValueError("every range needs start <= end")
    row = np.repeat(np.arange(len(lengths)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return row, np.repeat(start, lengths) + offsets
