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
from mdgr_graph.data.protocols import SPLIT_NAMES, SeenItems


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
    ptr, items = prepared.seen_items(split)
    history = SeenItems(np.repeat(np.arange(len(ptr) - 1), np.diff(ptr)), items,
                        prepared.num_items)
    if prepared.protocol == "paper":
        a = prepared.arrays
        targets = a["targets"][a["window_split"] == SPLIT_NAMES.index(split)]
        window = np.repeat(np.arange(len(targets)), targets.shape[1])
        return history.contains(window, targets.reshape(-1)).reshape(targets.shape)
    return history.contains(np.arange(prepared.num_users), prepared.loo_example(split)["target"])


def repeat_share(prepared: PreparedDataset, split: str = "test") -> float:
    """Share of the positives of ``split`` that repeat an item of their history
    (:func:`repeated_positives`, pooled over every positive); ``nan`` for an empty split."""
    repeated = repeated_positives(prepared, split)
    return float(repeated.mean()) if repeated.size else math.nan


__all__ = ["repeat_share", "repeated_positives"]
