"""Protocols: paper windows, user splits and negative sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdgr_graph.data.prepare import DataOptions, prepare_dataset
from mdgr_graph.data.preprocess import Sequences, build_sequences
from mdgr_graph.data.protocols import (
    TEST,
    TRAIN,
    VALID,
    SeenItems,
    paper_windows,
    relative_days,
    sample_negatives,
    split_users,
)
from mdgr_graph.data.readers import Interactions


def sequences_of_lengths(lengths: list[int], num_items: int = 1000) -> Sequences:
    """Users ``0..U-1`` with the given lengths; item = (running index % num_items) + 1."""
    ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    nnz = int(ptr[-1])
    return Sequences(
        ptr=ptr,
        items=(np.arange(nnz) % num_items + 1).astype(np.int64),
        timestamp=np.arange(nnz, dtype=np.float64) * 3600.0,
        user_ids=np.array([f"u{u}" for u in range(len(lengths))]),
        item_ids=np.array([""] + [f"i{i}" for i in range(num_items)]),
    )


# ---------------------------------------------------------------------- windows
def test_window_boundaries_count_back_from_the_most_recent():
    seqs = sequences_of_lengths([250])
    user, start = paper_windows(seqs, window=100)
    assert user.tolist() == [0, 0]
    # the oldest 50 are dropped; the two windows are [50, 150) and [150, 250)
    assert start.tolist() == [50, 150]
    assert start[-1] + 100 == seqs.ptr[1]  # the last window ends at the last interaction


def test_windows_of_several_users():
    lengths = [250, 99, 100, 300, 0, 199]
    seqs = sequences_of_lengths(lengths)
    user, start = paper_windows(seqs, window=100)
    assert user.tolist() == [0, 0, 2, 3, 3, 3, 5]
    ptr = seqs.ptr
    expected = [
        ptr[0] + 50, ptr[0] + 150,
        ptr[2],
        ptr[3], ptr[3] + 100, ptr[3] + 200,
        ptr[5] + 99,
    ]  # fmt: skip
    assert start.tolist() == [int(s) for s in expected]
    assert start.dtype == np.int64


def test_windows_are_non_overlapping_and_inside_their_user():
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 60, size=40).tolist()
    seqs = sequences_of_lengths(lengths)
    window = 7
    user, start = paper_windows(seqs, window=window)
    assert len(user) == sum(n // window for n in lengths)
    covered = np.zeros(int(seqs.ptr[-1]), dtype=int)
    for u, s in zip(user, start, strict=True):
        assert seqs.ptr[u] <= s and s + window <= seqs.ptr[u + 1]
        covered[s : s + window] += 1
    assert covered.max() <= 1
    for u, n in enumerate(lengths):
        # each user's kept windows cover exactly the most recent (n // window) * window
        kept = covered[seqs.ptr[u] : seqs.ptr[u + 1]]
        dropped = n % window
        assert not kept[:dropped].any() and kept[dropped:].all()


def test_window_must_be_at_least_two():
    with pytest.raises(ValueError, match="window"):
        paper_windows(sequences_of_lengths([10]), window=1)


def test_history_and_targets_are_the_two_parts_of_a_window(write_csv):
    # user u has 25 interactions with items (u*25 + k) % 40, all distinct within a user;
    # window 10, history 4: windows [5, 15) and [15, 25), counted back from the end
    rows = [(u, (u * 25 + k) % 40, 1000 * u + 60 * k) for u in range(12) for k in range(25)]
    path = write_csv(rows)
    options = DataOptions(
        format="csv", path=str(path), protocol="paper", min_item_count=1, min_user_len=1,
        window=10, history=4, negatives=3, valid_frac=0.2, test_frac=0.2,
    )  # fmt: skip
    data = prepare_dataset(options, cache_dir=None)
    a = data.arrays
    assert a["hist_items"].shape == (24, 4) and a["targets"].shape == (24, 6)
    item_ids, user_ids = a["item_ids"], a["user_ids"]
    for w in range(24):
        raw_user = int(user_ids[a["window_user"][w]])
        original = [str((raw_user * 25 + k) % 40) for k in range(25)]
        j = w % 2  # windows ordered by user, then time
        window = original[5 + 10 * j : 15 + 10 * j]
        assert [str(item_ids[i]) for i in a["hist_items"][w]] == window[:4]
        assert [str(item_ids[i]) for i in a["targets"][w]] == window[4:]


# ---------------------------------------------------------------------- splits
def test_split_users_sizes_and_disjointness():
    split = split_users(1000, 0.1, 0.15, np.random.default_rng(0))
    assert split.shape == (1000,)
    assert set(np.unique(split).tolist()) == {TRAIN, VALID, TEST}
    assert (split == VALID).sum() == 100 and (split == TEST).sum() == 150
    assert (split == TRAIN).sum() == 750
    # one label per user: no user is in two splits
    groups = [set(np.flatnonzero(split == s).tolist()) for s in (TRAIN, VALID, TEST)]
    assert sum(len(g) for g in groups) == 1000
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])


def test_split_users_deterministic_under_seed():
    a = split_users(500, 0.1, 0.1, np.random.default_rng(7))
    b = split_users(500, 0.1, 0.1, np.random.default_rng(7))
    c = split_users(500, 0.1, 0.1, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_split_users_small_counts():
    # at least one user per held-out split when its fraction is positive
    split = split_users(3, 0.1, 0.1, np.random.default_rng(0))
    assert sorted(split.tolist()) == [TRAIN, VALID, TEST]
    split = split_users(5, 0.0, 0.2, np.random.default_rng(0))
    assert (split == VALID).sum() == 0 and (split == TEST).sum() == 1


@pytest.mark.parametrize("num_users", [0, 1, 2])
def test_split_users_too_few_users(num_users):
    with pytest.raises(ValueError, match="too few"):
        split_users(num_users, 0.1, 0.1, np.random.default_rng(0))


@pytest.mark.parametrize("fracs", [(-0.1, 0.1), (0.5, 0.5), (1.0, 0.0), (0.2, 1.2)])
def test_split_users_bad_fractions(fracs):
    with pytest.raises(ValueError, match="valid_frac"):
        split_users(100, *fracs, np.random.default_rng(0))


# ---------------------------------------------------------------------- negatives
def seen_of(seqs: Sequences) -> SeenItems:
    return SeenItems(seqs.user_of, seqs.items, seqs.num_items)


def test_seen_items_membership_and_counts():
    seen = SeenItems(np.array([0, 0, 0, 2]), np.array([3, 1, 3, 2]), num_items=4)
    assert seen.contains(np.array([0, 0, 0, 1, 2, 2]), np.array([1, 2, 3, 1, 2, 4])).tolist() == [
        True, False, True, False, True, False,
    ]  # fmt: skip
    assert seen.count_of(np.array([0, 1, 2, 3])).tolist() == [2, 0, 1, 0]


def test_negatives_are_unseen_distinct_and_in_range():
    rng = np.random.default_rng(3)
    num_items = 60
    lengths = rng.integers(5, 40, size=30).tolist()
    items = np.concatenate([rng.choice(num_items, n, replace=True) + 1 for n in lengths])
    seqs = sequences_of_lengths(lengths, num_items)
    seqs.items = items
    users = np.repeat(np.arange(30), 3)  # several rows per user
    neg = sample_negatives(users, 15, seen_of(seqs), np.random.default_rng(0))
    assert neg.shape == (90, 15) and neg.dtype.kind == "i"
    assert neg.min() >= 1 and neg.max() <= num_items
    for row, u in zip(neg, users, strict=True):
        full = set(items[seqs.ptr[u] : seqs.ptr[u + 1]].tolist())
        assert not full & set(row.tolist())
        assert len(set(row.tolist())) == len(row)


def test_negatives_when_exactly_enough_unseen_items():
    # user 0 saw items 1..7 of 10: the only possible draw is {8, 9, 10}
    seen = SeenItems(np.zeros(7, dtype=np.int64), np.arange(1, 8), num_items=10)
    neg = sample_negatives(np.array([0, 0]), 3, seen, np.random.default_rng(0))
    assert [sorted(r) for r in neg.tolist()] == [[8, 9, 10], [8, 9, 10]]


def test_negatives_deterministic_under_a_seeded_generator():
    seqs = sequences_of_lengths([30, 40, 50], num_items=200)
    users = np.array([0, 1, 2, 2])
    a = sample_negatives(users, 20, seen_of(seqs), np.random.default_rng(11))
    b = sample_negatives(users, 20, seen_of(seqs), np.random.default_rng(11))
    c = sample_negatives(users, 20, seen_of(seqs), np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def reference_negatives(user, num, seen, rng):
    """The obvious rejection loop: every round checks every row again."""
    out = rng.integers(1, seen.num_items + 1, size=(len(user), num))
    rows = np.repeat(user[:, None], num, axis=1)

    def rejected():
        dup = np.array([[v in r[:j] for j, v in enumerate(r)] for r in out.tolist()], bool)
        return seen.contains(rows, out) | dup.reshape(out.shape)

    bad = rejected()
    while bad.any():
        out[bad] = rng.integers(1, seen.num_items + 1, size=int(bad.sum()))
        bad = rejected()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_negatives_match_the_all_rows_reference_draw_for_draw(seed):
    # dense histories (most items seen) force many rounds of redraws
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 35, size=25).tolist()
    seqs = sequences_of_lengths(lengths, num_items=45)
    seqs.items = np.concatenate([rng.choice(45, n, replace=False) + 1 for n in lengths])
    seen = seen_of(seqs)
    users = np.repeat(np.arange(25), 2)
    fast = sample_negatives(users, 8, seen, np.random.default_rng(seed))
    slow = reference_negatives(users, 8, seen, np.random.default_rng(seed))
    np.testing.assert_array_equal(fast, slow)


def test_too_few_unseen_items_is_a_clear_error():
    seen = SeenItems(np.array([0, 0, 1, 1, 1]), np.array([1, 2, 1, 2, 3]), num_items=5)
    with pytest.raises(ValueError, match=r"user 1 has only 2 unseen items; cannot draw 3"):
        sample_negatives(np.array([0, 1]), 3, seen, np.random.default_rng(0))


def test_no_rows_give_an_empty_draw():
    seen = SeenItems(np.array([0]), np.array([1]), num_items=5)
    out = sample_negatives(np.zeros(0, dtype=np.int64), 3, seen, np.random.default_rng(0))
    assert out.shape == (0, 3)


def test_relative_days():
    ts = np.array([[100.0, 100.0 + 86400, 100.0 + 3 * 86400], [5.0, 5.0 + 43200, 5.0 + 43200]])
    out = relative_days(ts)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 1, 3], [0, 0.5, 0.5]])


# ---------------------------------------------------------------------- property test
def log_of(rows: list[tuple[int, int, int]]) -> Interactions:
    user, item, ts = zip(*rows, strict=True)
    return Interactions(
        user=np.array(user).astype(str),
        item=np.array(item).astype(str),
        timestamp=np.array(ts, dtype=np.float64),
        rating=None,
        source="hypothesis",
    )


logs = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 14), st.integers(0, 30)), min_size=1, max_size=80
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=logs, num=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_property_negatives_on_random_logs(rows, num, seed):
    seqs = build_sequences(log_of(rows), min_item_count=1, min_user_len=1)
    seen = seen_of(seqs)
    unseen = seqs.num_items - seen.count_of(np.arange(seqs.num_users))
    users = np.arange(seqs.num_users)
    if unseen.min() < num:
        with pytest.raises(ValueError, match="unseen items"):
            sample_negatives(users, num, seen, np.random.default_rng(seed))
        users = users[unseen >= num]
    neg = sample_negatives(users, num, seen, np.random.default_rng(seed))
    again = sample_negatives(users, num, seen, np.random.default_rng(seed))
    np.testing.assert_array_equal(neg, again)
    assert neg.shape == (len(users), num)
    for row, u in zip(neg, users, strict=True):
        full = set(seqs.items[seqs.ptr[u] : seqs.ptr[u + 1]].tolist())
        assert not full & set(row.tolist())
        assert len(set(row.tolist())) == num
        assert all(1 <= i <= seqs.num_items for i in row)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), min_size=1, max_size=12), window=st.integers(2, 12))
def test_property_windows(lengths, window):
    seqs = sequences_of_lengths(lengths)
    user, start = paper_windows(seqs, window=window)
    assert np.bincount(user, minlength=len(lengths)).tolist() == [n // window for n in lengths]
    for u, s in zip(user, start, strict=True):
        end = seqs.ptr[u + 1]
        assert (end - s - window) % window == 0 and seqs.ptr[u] <= s <= end - window


# ---------------------------------------------------------------------- strided windows
def naive_strided_windows(lengths, window, stride):
    """Windows counted back from each user's end, ``stride`` apart, as a plain loop."""
    ptr = np.concatenate([[0], np.cumsum(lengths)])
    user, start = [], []
    for u, n in enumerate(lengths):
        ends = list(range(n, window - 1, -stride))[::-1]
        user += [u] * len(ends)
        start += [int(ptr[u]) + e - window for e in ends]
    return user, start


@pytest.mark.parametrize("stride", [1, 7, 25, 50, 99, 100])
def test_strided_windows_match_a_plain_loop(stride):
    lengths = [250, 99, 100, 300, 0, 199, 101]
    seqs = sequences_of_lengths(lengths)
    user, start = paper_windows(seqs, window=100, stride=stride)
    exp_user, exp_start = naive_strided_windows(lengths, 100, stride)
    assert user.tolist() == exp_user and start.tolist() == exp_start


def test_stride_equal_to_window_is_the_paper_setting():
    seqs = sequences_of_lengths([250, 99, 100, 300, 0, 199])
    for a, b in zip(paper_windows(seqs, 100), paper_windows(seqs, 100, stride=100), strict=True):
        np.testing.assert_array_equal(a, b)


def test_strided_windows_of_chosen_users_only():
    seqs = sequences_of_lengths([250, 120, 300])
    user, start = paper_windows(seqs, window=100, stride=50, users=np.array([0, 2]))
    assert set(user.tolist()) == {0, 2}
    all_user, all_start = paper_windows(seqs, window=100, stride=50)
    keep = all_user != 1
    assert user.tolist() == all_user[keep].tolist() and start.tolist() == all_start[keep].tolist()


@pytest.mark.parametrize("stride", [0, -3, 101])
def test_bad_stride_is_refused(stride):
    with pytest.raises(ValueError, match="stride"):
        paper_windows(sequences_of_lengths([200]), window=100, stride=stride)


def test_ragged_ranges_concatenates_ranges_in_order():
    from mdgr_graph.data.protocols import ragged_ranges

    values = np.arange(100, 110)
    row, index = ragged_ranges(np.array([2, 5, 5, 0]), np.array([4, 5, 8, 1]))
    assert row.tolist() == [0, 0, 2, 2, 2, 3]
    assert values[index].tolist() == [102, 103, 105, 106, 107, 100]
    with pytest.raises(ValueError, match="start <= end"):
        ragged_ranges(np.array([3]), np.array([2]))
