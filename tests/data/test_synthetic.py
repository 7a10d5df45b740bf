"""The synthetic log with planted interests."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from mdgr_graph.data.synthetic import SyntheticLog, generate_synthetic

SMALL = {"num_users": 200, "num_items": 400, "num_topics": 10}


def assert_same_log(a: SyntheticLog, b: SyntheticLog) -> None:
    for name in ("user", "item", "timestamp"):
        np.testing.assert_array_equal(getattr(a.interactions, name), getattr(b.interactions, name))
    np.testing.assert_array_equal(a.item_topic, b.item_topic)
    np.testing.assert_array_equal(a.user_topics, b.user_topics)
    np.testing.assert_array_equal(a.user_topic_weights, b.user_topic_weights)


def test_same_seed_same_log():
    assert_same_log(generate_synthetic(seed=5, **SMALL), generate_synthetic(seed=5, **SMALL))


def test_different_seed_different_log():
    a = generate_synthetic(seed=5, **SMALL).interactions
    b = generate_synthetic(seed=6, **SMALL).interactions
    assert len(a) != len(b) or not np.array_equal(a.item, b.item)


def test_ground_truth_shapes():
    log = generate_synthetic(seed=0, **SMALL)
    inter = log.interactions
    assert log.item_topic.shape == (400,)
    assert log.user_topics.shape == (200, 10) and log.user_topics.dtype == bool
    assert log.user_topic_weights.shape == (200, 10)
    assert inter.rating is None
    assert len(inter.user) == len(inter.item) == len(inter.timestamp) == len(inter)
    # topics split the items evenly; every user mixes 2..4 topics with weights summing to 1
    assert np.bincount(log.item_topic).tolist() == [40] * 10
    n_topics = log.user_topics.sum(axis=1)
    assert n_topics.min() >= 2 and n_topics.max() <= 4
    np.testing.assert_allclose(log.user_topic_weights.sum(axis=1), 1.0)
    assert np.all((log.user_topic_weights > 0) == log.user_topics)


def test_log_layout():
    inter = generate_synthetic(seed=1, **SMALL).interactions
    user = inter.user.astype(int)
    item = inter.item.astype(int)
    assert inter.user.dtype.kind == "U" and inter.item.dtype.kind == "U"
    assert set(user.tolist()) == set(range(200))
    assert item.min() >= 0 and item.max() < 400
    lengths = np.bincount(user)
    assert lengths.min() >= 100 and lengths.max() <= 260
    for u in range(0, 200, 37):
        ts = inter.timestamp[user == u]
        assert np.all(np.diff(ts) > 0)  # strictly increasing within a user
    assert inter.timestamp.min() >= 1.6e9 and inter.timestamp.dtype == np.float64


def test_items_come_from_the_users_topics():
    log = generate_synthetic(seed=2, **SMALL)
    user = log.interactions.user.astype(int)
    topic = log.item_topic[log.interactions.item.astype(int)]
    on_topic = log.user_topics[user, topic]
    per_user = np.bincount(user, weights=on_topic) / np.bincount(user)
    assert per_user.min() >= 0.95
    # and the weights matter: the heaviest topic of a user is its most frequent
    counts = np.zeros_like(log.user_topic_weights)
    np.add.at(counts, (user, topic), 1)
    agree = np.argmax(counts, axis=1) == np.argmax(log.user_topic_weights, axis=1)
    assert agree.mean() > 0.7


def test_sessions_are_days_apart_and_items_minutes_apart():
    inter = generate_synthetic(seed=3, **SMALL).interactions
    user = inter.user.astype(int)
    gaps = np.diff(inter.timestamp)[np.diff(user) == 0]
    assert gaps.min() >= 59 and gaps.max() <= 5 * 86400 + 1
    short = gaps < 1800 + 1
    assert 0.7 < short.mean() < 0.95  # geometric sessions of mean 6: ~5/6 short gaps


def test_default_size_is_fast():
    start = time.perf_counter()
    log = generate_synthetic()
    elapsed = time.perf_counter() - start
    assert log.user_topics.shape == (2000, 20) and log.item_topic.shape == (1000,)
    assert 2000 * 100 <= len(log.interactions) <= 2000 * 260
    assert elapsed < 5.0, f"generate_synthetic() took {elapsed:.1f} s"


def test_uniform_popularity_option():
    log = generate_synthetic(seed=0, zipf=0.0, **SMALL)
    counts = np.bincount(log.interactions.item.astype(int), minlength=400)
    assert counts.min() > 0


@pytest.mark.parametrize(
    "kw",
    [
        {"num_items": 5, "num_topics": 10},
        {"topics_per_user": (0, 2)},
        {"topics_per_user": (3, 2)},
        {"topics_per_user": (2, 30)},
        {"length": (0, 10)},
        {"length": (20, 10)},
    ],
)
def test_invalid_arguments(kw):
    with pytest.raises(ValueError):
        generate_synthetic(**{"num_users": 10, **kw})


# ---------------------------------------------------------------------- repeat consumption
def log_digest(log: SyntheticLog) -> str:
    h = hashlib.sha256()
    for array in (log.interactions.user, log.interactions.item, log.interactions.timestamp,
                  log.item_topic, log.user_topics, log.user_topic_weights):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def test_without_repeats_the_log_is_byte_identical_to_earlier_versions():
    # digest of the generator before the repeat knob existed (commit da7f0d4)
    expected = "2fc2d62b21f63c0f23a1d32354791169e3e061736c02a113087d860d0a266078"
    assert log_digest(generate_synthetic(seed=3, **SMALL)) == expected
    assert log_digest(generate_synthetic(seed=3, repeat_prob=0.0, repeat_window=4,
                                         **SMALL)) == expected


def test_repeat_prob_one_repeats_the_first_item_forever():
    inter = generate_synthetic(seed=1, repeat_prob=1.0, repeat_window=3, **SMALL).interactions
    first = {}
    for user, item in zip(inter.user, inter.item, strict=True):
        assert first.setdefault(user, item) == item


def test_repeats_come_from_the_window_and_leave_everything_else_alone():
    plain = generate_synthetic(seed=2, **SMALL)
    log = generate_synthetic(seed=2, repeat_prob=0.5, repeat_window=5, **SMALL)
    for name in ("user", "timestamp"):
        np.testing.assert_array_equal(getattr(log.interactions, name),
                                      getattr(plain.interactions, name))
    np.testing.assert_array_equal(log.user_topic_weights, plain.user_topic_weights)
    changed = in_window = 0
    user, item, before = log.interactions.user, log.interactions.item, plain.interactions.item
    for pos in range(1, len(item)):
        if user[pos] != user[pos - 1] or item[pos] == before[pos]:
            continue  # a user's first item, or the drawn item kept (or repeated by chance)
        changed += 1
        start = max(pos - 5, 0)
        in_window += item[pos] in item[start:pos][user[start:pos] == user[pos]]
    assert changed == in_window  # every replaced item is one of the last 5 of its user
    assert 0.4 < changed / len(item) < 0.5  # about half the items, minus drawn == repeated


@pytest.mark.parametrize("kw", [{"repeat_prob": -0.1}, {"repeat_prob": 1.5},
                                {"repeat_prob": float("nan")}, {"repeat_window": 0}])
def test_invalid_repeat_options(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        generate_synthetic(**{"num_users": 10, **kw})
