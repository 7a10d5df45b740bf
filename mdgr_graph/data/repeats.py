"""How often the held-out positives repeat an item of their own history (issue 30).

Under both protocols the sampled negatives are items the user *never* interacted with,
while a positive is simply a later interaction, which on logs with repeat consumption
(clicks, check-ins, music) is often an item the user already had. Where that share is
large, "is the candidate in the history?" decides much of the score, and a counting
heuristic (S-POP, :class:`~mdgr_graph.models.baselines.SessionPopularity`) is the
baseline to beat (docs/data.md, "Repeat consumption").

Computed from the arrays of a :class:`~mdgr_graph.data.prepare.PreparedDataset`:

- ``paper``: each positive of a window (``targets``) against the window's own history
  (``hist_items``), the input every model reads;
- ``loo``: each user's target against *every* earlier item of the user's sequence (the
  items the full ranking excludes; the models read only the last ``max_len`` of them).
"""

from __future__ import annotations

import math

import numpy as np

from mdgr_graph.data.prepare import PreparedDataset
from mdgr_graph.data.protocols import SPLIT_NAMES, SeenItems, ragged_ranges


def repeated_positives(prepared: PreparedDataset, split: str = "test") -> np.ndarray:
    """Which positives of ``split`` repeat an item of their history.

    Returns:
        ``paper``: ``[W, T]`` bool, one row per window of the split (in the order of
        :class:`~mdgr_graph.data.dataset.SequenceDataset`), one column per positive;
        ``loo``: ``[U]`` bool, one entry per user (the split's target: the last item for
        ``test``, the second last for ``valid``, the third last for ``train``).
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLIT_NAMES)}")
    a = prepared.arrays
    if prepared.protocol == "paper":
        rows = np.flatnonzero(a["window_split"] == SPLIT_NAMES.index(split))
        hist, targets = a["hist_items"][rows], a["targets"][rows]
        window = np.arange(len(rows))
        history = SeenItems(np.repeat(window, hist.shape[1]), hist.reshape(-1),
                            prepared.num_items)
        return history.contains(np.repeat(window, targets.shape[1]),
                                targets.reshape(-1)).reshape(targets.shape)
    example = prepared.loo_example(split)
    user_of, index = ragged_ranges(a["seq_ptr"][:-1], example["prefix_end"])
    history = SeenItems(user_of, a["seq_items"][index], prepared.num_items)
    return history.contains(np.arange(prepared.num_users), example["target"])


def repeat_share(prepared: PreparedDataset, split: str = "test") -> float:
    """Share of the positives of ``split`` that repeat an item of their history
    (:func:`repeated_positives`, pooled over every positive); ``nan`` for an empty split."""
    repeated = repeated_positives(prepared, split)
    return float(repeated.mean()) if repeated.size else math.nan


__all__ = ["repeat_share", "repeated_positives"]
