"""Preprocessing: duplicates, iterative filtering, id remapping, stable time sort."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.preprocess import (
    Sequences,
    build_sequences,
    drop_exact_duplicates,
    iterative_filter,
)
from mdgr_graph.data.readers import Interactions


def raw_sequences(seqs: Sequences) -> dict[str, list[str]]:
    """Every user's sequence as raw item ids, keyed by raw user id."""
    return {
        str(seqs.user_ids[u]): [str(seqs.item_ids[i]) for i in seqs.items[a:b]]
        for u, (a, b) in enumerate(zip(seqs.ptr[:-1], seqs.ptr[1:], strict=True))
    }


def build(log, **kw) -> Sequences:
    return build_sequences(log, **{"min_item_count": 1, "min_user_len": 1, **kw})


# ---------------------------------------------------------------------- duplicates
def test_exact_duplicates_collapse_to_the_first(make_log):
    # (u, a, 10) twice: the second copy goes. If the last copy were kept, b would come
    # first among the equal timestamps.
    log = make_log([("u", "a", 10), ("u", "b", 10), ("u", "a", 10)])
    seqs = build(log)
    assert raw_sequences(seqs) == {"u": ["a", "b"]}
    assert seqs.timestamp.tolist() == [10.0, 10.0]


def test_same_item_at_another_time_is_kept(make_log):
    log = make_log([("u", "a", 10), ("u", "a", 20), ("u", "a", 10), ("v", "a", 10)])
    seqs = build(log)
    assert raw_sequences(seqs) == {"u": ["a", "a"], "v": ["a"]}
    assert seqs.timestamp.tolist() == [10.0, 20.0, 10.0]


def test_drop_exact_duplicates_returns_first_rows_in_file_order():
    user = np.array([0, 1, 0, 0, 1])
    item = np.array([5, 5, 5, 5, 5])
    ts = np.array([1.0, 1.0, 1.0, 2.0, 1.0])
    assert drop_exact_duplicates(user, item, ts).tolist() == [0, 1, 3]


# ---------------------------------------------------------------------- filtering
CASCADE = [
    # "rare" is seen once: dropping it leaves user A with one interaction, dropping A
    # leaves item x with one interaction, dropping x must not touch B and C any further.
    ("A", "rare", 1),
    ("A", "x", 2),
    ("B", "x", 3),
    ("B", "y", 4),
    ("B", "z", 5),
    ("C", "y", 6),
    ("C", "z", 7),
]


def test_iterative_filtering_repeats_until_stable(make_log):
    seqs = build_sequences(make_log(CASCADE), min_item_count=2, min_user_len=2)
    assert raw_sequences(seqs) == {"B": ["y", "z"], "C": ["y", "z"]}
    assert seqs.user_ids.tolist() == ["B", "C"]
    assert seqs.item_ids.tolist() == ["", "y", "z"]
    # the result satisfies both rules ...
    assert seqs.lengths.min() >= 2
    assert np.bincount(seqs.items)[1:].min() >= 2


def test_a_single_pass_would_not_be_enough():
    # the same case in integer codes: one round of both rules keeps A and x
    user = np.array([0, 0, 1, 1, 1, 2, 2])
    item = np.array([0, 1, 1, 2, 3, 2, 3])
    one_pass = (np.bincount(item)[item] >= 2) & (np.bincount(user)[user] >= 2)
    assert one_pass[1]  # (A, x) survives one pass
    keep = iterative_filter(user, item, min_item_count=2, min_user_len=2)
    assert keep.tolist() == [False, False, False, True, True, True, True]


def test_iterative_filter_with_nothing_to_remove():
    user = np.array([0, 0, 1, 1])
    item = np.array([0, 1, 0, 1])
    assert iterative_filter(user, item, 2, 2).all()


def test_no_user_left_is_a_clear_error(make_log):
    log = make_log([("u", "a", 1), ("v", "b", 2)], source="tiny.csv")
    with pytest.raises(DataFormatError, match="no user left after filtering") as info:
        build_sequences(log, min_item_count=2, min_user_len=1)
    message = str(info.value)
    assert "tiny.csv" in message
    assert "min_item_count=2" in message and "min_user_len=1" in message
    assert "lower the thresholds" in message


@pytest.mark.parametrize("kw", [{"min_item_count": 0}, {"min_user_len": 0}])
def test_thresholds_below_one_are_rejected(make_log, kw):
    with pytest.raises(ValueError, match=">= 1"):
        build(make_log([("u", "a", 1)]), **kw)


def test_non_finite_timestamps_are_rejected(make_log):
    with pytest.raises(DataFormatError, match="finite"):
        build(make_log([("u", "a", 1), ("u", "b", float("nan"))]))


# ---------------------------------------------------------------------- remapping
def test_ids_remapped_with_zero_as_padding(make_log):
    log = make_log([("u2", "b", 1), ("u1", "c", 2), ("u2", "a", 3), ("u1", "b", 4)])
    seqs = build(log)
    assert seqs.item_ids[0] == ""
    assert seqs.item_ids.tolist() == ["", "a", "b", "c"]  # sorted raw ids
    assert seqs.user_ids.tolist() == ["u1", "u2"]
    assert seqs.num_items == 3 and seqs.num_users == 2
    assert seqs.items.min() == 1 and seqs.items.max() == seqs.num_items
    assert seqs.ptr.tolist() == [0, 2, 4]
    assert raw_sequences(seqs) == {"u1": ["c", "b"], "u2": ["b", "a"]}
    assert seqs.user_of.tolist() == [0, 0, 1, 1]
    assert seqs.items.dtype == np.int64 and seqs.ptr.dtype == np.int64


def test_mapping_does_not_depend_on_row_order(make_log):
    rows = [(f"u{u}", f"i{(u * 7 + k) % 11}", 100 * u + k) for u in range(6) for k in range(5)]
    first = build(make_log(rows))
    rng = np.random.default_rng(0)
    shuffled = build(make_log([rows[i] for i in rng.permutation(len(rows))]))
    for name in ("ptr", "items", "timestamp", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(first, name), getattr(shuffled, name))


def test_filtered_items_leave_no_gaps_in_the_ids(make_log):
    rows = [("u", "a", 1), ("v", "a", 2), ("u", "b", 3), ("u", "c", 4), ("v", "c", 5)]
    seqs = build(make_log(rows), min_item_count=2)
    assert seqs.item_ids.tolist() == ["", "a", "c"]
    assert sorted(set(seqs.items.tolist())) == [1, 2]


# ---------------------------------------------------------------------- time order
def test_stable_sort_keeps_file_order_for_equal_timestamps(make_log):
    log = make_log(
        [("u", "c", 5), ("v", "z", 3), ("u", "a", 5), ("u", "b", 1), ("u", "d", 5), ("v", "y", 1)]
    )
    seqs = build(log)
    assert raw_sequences(seqs) == {"u": ["b", "c", "a", "d"], "v": ["y", "z"]}
    assert seqs.timestamp.tolist() == [1.0, 5.0, 5.0, 5.0, 1.0, 3.0]


def test_timestamps_non_decreasing_within_each_user(make_log):
    rng = np.random.default_rng(1)
    rows = [(int(u), int(i), int(t)) for u, i, t in rng.integers(0, [8, 15, 20], (300, 3))]
    seqs = build(make_log(rows))
    for a, b in zip(seqs.ptr[:-1], seqs.ptr[1:], strict=True):
        assert np.all(np.diff(seqs.timestamp[a:b]) >= 0)


# ---------------------------------------------------------------------- property test
def reference(rows, min_item_count: int, min_user_len: int) -> dict[str, list[tuple[str, float]]]:
    """The rules of the module, written plainly."""
    seen, kept = set(), []
    for row in rows:
        if row not in seen:
            seen.add(row)
            kept.append(row)
    while True:
        items = Counter(i for _, i, _ in kept)
        users = Counter(u for u, _, _ in kept)
        new = [r for r in kept if items[r[1]] >= min_item_count and users[r[0]] >= min_user_len]
        if len(new) == len(kept):
            break
        kept = new
    out: dict[str, list[tuple[str, float]]] = {}
    for u, i, t in kept:
        out.setdefault(u, []).append((i, t))
    return {u: sorted(seq, key=lambda e: e[1]) for u, seq in sorted(out.items())}


def log_of(rows) -> Interactions:
    return Interactions(
        user=np.array([u for u, _, _ in rows], dtype=str),
        item=np.array([i for _, i, _ in rows], dtype=str),
        timestamp=np.array([t for _, _, t in rows], dtype=np.float64),
        rating=None,
        source="hypothesis",
    )


rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u10", "a", "b", "c"]),
        st.sampled_from(["i1", "i2", "i3", "x", "y", "z10", "z9"]),
        st.integers(0, 8).map(float),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy, min_item_count=st.integers(1, 4), min_user_len=st.integers(1, 6))
def test_property_matches_a_plain_reference(rows, min_item_count, min_user_len):
    expected = reference(rows, min_item_count, min_user_len)
    if not expected:
        with pytest.raises(DataFormatError, match="no user left"):
            build_sequences(
                log_of(rows), min_item_count=min_item_count, min_user_len=min_user_len
            )
        return
    seqs = build_sequences(log_of(rows), min_item_count=min_item_count, min_user_len=min_user_len)
    got = {
        str(seqs.user_ids[u]): [
            (str(seqs.item_ids[i]), float(t))
            for i, t in zip(seqs.items[a:b], seqs.timestamp[a:b], strict=True)
        ]
        for u, (a, b) in enumerate(zip(seqs.ptr[:-1], seqs.ptr[1:], strict=True))
    }
    assert got == expected
    assert seqs.user_ids.tolist() == sorted(expected)
    assert seqs.item_ids.tolist() == [""] + sorted({i for s in expected.values() for i, _ in s})
