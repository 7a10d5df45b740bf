"""The embedded default data: a seeded interaction log with planted interests.

Items belong to latent topics. Every user mixes a few topics with Dirichlet weights and
consumes items in sessions: a session picks one of the user's topics, then a handful of
items of that topic (Zipf-like popularity within the topic) a few minutes apart; sessions
are days apart. The generator returns the ground truth so that tests can check that a
model recovers the interests.

Repeat consumption: Zipf popularity inside small topics already makes users come back to
the same items; ``repeat_prob`` adds explicit repeats (the next item is one of the user's
last ``repeat_window`` items with that probability), for logs where "this again" decides
the score (docs/data.md, "Repeat consumption").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdgr_graph.data.readers import Interactions


@dataclass
class SyntheticLog:
    """A generated log and its ground truth.

    Attributes:
        interactions: the log, raw ids as decimal strings (users ``0..U-1``, items
            ``0..I-1``), timestamps in Unix seconds.
        item_topic: ``[I]`` topic of every raw item id.
        user_topics: ``[U, num_topics]`` bool, the topics each user draws from.
        user_topic_weights: ``[U, num_topics]`` the mixing weights (0 off the user's topics).
    """

    interactions: Interactions
    item_topic: np.ndarray
    user_topics: np.ndarray
    user_topic_weights: np.ndarray


def generate_synthetic(
    num_users: int = 2000,
    num_items: int = 1000,
    num_topics: int = 20,
    topics_per_user: tuple[int, int] = (2, 4),
    length: tuple[int, int] = (100, 260),
    session_mean: float = 6.0,
    zipf: float = 1.0,
    seed: int = 0,
    repeat_prob: float = 0.0,
    repeat_window: int = 50,
) -> SyntheticLog:
    """Generate a log with planted interests.

    Args:
        num_users: number of users.
        num_items: number of items, split evenly over the topics.
        num_topics: number of latent topics.
        topics_per_user: inclusive range of the number of topics a user mixes.
        length: inclusive range of a user's number of interactions.
        session_mean: mean number of items in one session (geometric).
        zipf: exponent of item popularity within a topic (0: uniform).
        seed: seed of the generator; the same seed gives the same log.
        repeat_prob: probability that an interaction (any but a user's first) repeats one
            of the user's ``repeat_window`` previous items, drawn uniformly, instead of
            the drawn item; repeats can repeat repeats. Drawn from a generator of its own
            after everything else, so topics, sessions and times do not change, and ``0``
            (the default) gives exactly the log of earlier versions.
        repeat_window: how many previous items a repeat chooses from (at most those the
            user has). The default, 50, is the paper protocol's history: with a short
            window a window's positives mostly repeat each other, not its history.
    """
    if num_items < num_topics:
        raise ValueError("num_items must be >= num_topics")
    lo, hi = topics_per_user
    if not 1 <= lo <= hi <= num_topics:
        raise ValueError("topics_per_user must satisfy 1 <= lo <= hi <= num_topics")
    if not 1 <= length[0] <= length[1]:
        raise ValueError("length must satisfy 1 <= lo <= hi")
    if not 0.0 <= repeat_prob <= 1.0:  # also refuses NaN
        raise ValueError(f"repeat_prob must lie in [0, 1], got {repeat_prob}")
    if repeat_window < 1:
        raise ValueError(f"repeat_window must be >= 1, got {repeat_window}")
    rng = np.random.default_rng(seed)

    item_topic = rng.permutation(np.arange(num_items) % num_topics)
    topic_items = [np.flatnonzero(item_topic == c) for c in range(num_topics)]
    topic_size = np.array([len(t) for t in topic_items])
    topic_offset = np.concatenate([[0], np.cumsum(topic_size)[:-1]])
    items_by_topic = np.concatenate(topic_items)
    rank_weight = 1.0 / np.arange(1, topic_size.max() + 1) ** zipf

    # each user's topics and mixing weights
    n_topics = rng.integers(lo, hi + 1, size=num_users)
    scores = rng.random((num_users, num_topics))
    order = np.argsort(scores, axis=1)
    user_topics = np.zeros((num_users, num_topics), dtype=bool)
    np.put_along_axis(user_topics, order, np.arange(num_topics)[None, :] < n_topics[:, None], 1)
    weights = rng.gamma(1.0, size=(num_users, num_topics)) * user_topics
    weights /= weights.sum(axis=1, keepdims=True)

    lengths = rng.integers(length[0], length[1] + 1, size=num_users)
    total = int(lengths.sum())
    user = np.repeat(np.arange(num_users), lengths)
    pos_in_user = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)

    # sessions: a new one starts with probability 1/session_mean at every step
    new_session = (rng.random(total) < 1.0 / session_mean) | (pos_in_user == 0)
    session_id = np.cumsum(new_session) - 1
    session_user = user[new_session]
    cdf = np.cumsum(weights[session_user], axis=1)
    u = rng.random(len(session_user))[:, None]
    session_topic = np.minimum((u > cdf).sum(axis=1), num_topics - 1)
    topic = session_topic[session_id]

    # item within topic by Zipf-like rank (inverse CDF per topic size)
    rank_cdf = np.cumsum(rank_weight)
    frac = rng.random(total) * rank_cdf[topic_size[topic] - 1]
    rank = np.searchsorted(rank_cdf, frac, side="right")
    rank = np.minimum(rank, topic_size[topic] - 1)
    item = items_by_topic[topic_offset[topic] + rank]

    # time: sessions 0.5-5 days apart, items 1-30 minutes apart within a session
    gap = np.where(new_session, rng.uniform(0.5, 5.0, total) * 86400, rng.uniform(60, 1800, total))
    gap[pos_in_user == 0] = 0.0
    start = rng.uniform(1.6e9, 1.7e9, size=num_users)
    cum = np.cumsum(gap)
    cum -= np.repeat(cum[np.cumsum(lengths) - lengths], lengths)
    timestamp = np.floor(np.repeat(start, lengths) + cum)
    if repeat_prob > 0:
        item = _add_repeats(item, lengths, repeat_prob, repeat_window,
                            np.random.default_rng([seed, 1]))

    log = Interactions(
        user=user.astype(str),
        item=item.astype(str),
        timestamp=timestamp,
        rating=None,
        source=f"synthetic(seed={seed})",
    )
    return SyntheticLog(log, item_topic, user_topics, weights)


def _add_repeats(item: np.ndarray, lengths: np.ndarray, prob: float, window: int,
                 rng: np.random.Generator) -> np.ndarray:
    """``item`` (users' sequences concatenated, ``lengths`` each) where every interaction
    but a user's first is, with probability ``prob``, a copy of one of the user's
    ``window`` previous items (uniform), in sequence order; one vectorised step per
    position."""
    row = np.repeat(np.arange(len(lengths)), lengths)
    col = np.arange(len(item)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    seqs = np.zeros((len(lengths), int(lengths.max())), dtype=item.dtype)
    seqs[row, col] = item
    repeat = rng.random(seqs.shape) < prob
    back = rng.random(seqs.shape)
    for pos in range(1, seqs.shape[1]):
        users = np.flatnonzero(repeat[:, pos] & (lengths > pos))
        offset = 1 + (back[users, pos] * min(window, pos)).astype(np.int64)
        seqs[users, pos] = seqs[users, pos - offset]
    return seqs[row, col]
