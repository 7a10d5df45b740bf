"""Share of held-out positives that repeat an item of their history."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mdgr_graph.data.__main__ import main
from mdgr_graph.data.prepare import DataOptions, PreparedDataset, prepare_dataset
from mdgr_graph.data.repeats import repeat_share, repeated_positives


def paper_by_hand() -> PreparedDataset:
    """Three windows of 3 history items and 2 positives (items 1..6)."""
    arrays = {
        "item_ids": np.arange(7), "seq_ptr": np.array([0, 5, 10, 15]),
        "window_split": np.array([2, 1, 2]),
        "hist_items": np.array([[1, 2, 2], [3, 4, 5], [6, 1, 3]]),
        "targets": np.array([[2, 5], [3, 4], [4, 5]]),
    }  # fmt: skip
    return PreparedDataset(arrays, {"options": {"protocol": "paper"}})


def loo_by_hand() -> PreparedDataset:
    """Users [1, 2, 3, 1 | 2] (valid 1, test 2: a repeat from 3 items back) and
    [4, 5, 6 | 4 | 6]."""
    arrays = {
        "item_ids": np.arange(7), "seq_ptr": np.array([0, 5, 10]),
        "seq_items": np.array([1, 2, 3, 1, 2, 4, 5, 6, 4, 6]),
        "seq_time": np.arange(10, dtype=np.float64) * 86400,
    }  # fmt: skip
    return PreparedDataset(arrays, {"options": {"protocol": "loo", "max_len": 2}})


def test_paper_positives_against_their_own_window():
    data = paper_by_hand()
    np.testing.assert_array_equal(repeated_positives(data, "test"),
                                  [[True, False], [False, False]])
    np.testing.assert_array_equal(repeated_positives(data, "valid"), [[True, True]])
    assert repeat_share(data, "test") == 0.25 and repeat_share(data, "valid") == 1.0
    assert math.isnan(repeat_share(data, "train"))  # no training window


def test_loo_targets_against_every_earlier_item():
    data = loo_by_hand()
    # test targets: 2 (seen 3 items back, beyond max_len 2: still a repeat) and 6
    np.testing.assert_array_equal(repeated_positives(data, "test"), [True, True])
    np.testing.assert_array_equal(repeated_positives(data, "valid"), [True, True])
    np.testing.assert_array_equal(repeated_positives(data, "train"), [False, False])
    with pytest.raises(ValueError, match="unknown split"):
        repeat_share(data, "tests")


@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_matches_a_loop_on_the_tiny_synthetic_log(protocol, paper_data, loo_data):
    data = paper_data if protocol == "paper" else loo_data
    a = data.arrays
    if protocol == "paper":
        rows = np.flatnonzero(a["window_split"] == 2)
        expected = [[t in set(a["hist_items"][r]) for t in a["targets"][r]] for r in rows]
    else:
        ptr, items = a["seq_ptr"], a["seq_items"]
        expected = [items[end - 1] in set(items[start : end - 1])
                    for start, end in zip(ptr[:-1], ptr[1:], strict=True)]
    np.testing.assert_array_equal(repeated_positives(data, "test"), expected)
    assert 0.3 < repeat_share(data) < 1.0  # Zipf popularity inside small topics


def test_the_repeat_knob_raises_the_share():
    tiny = {"num_users": 80, "num_items": 400, "num_topics": 4, "length": (100, 120)}
    shares = [repeat_share(prepare_dataset(DataOptions(
        format="synthetic", min_item_count=1, synthetic={**tiny, **extra}), cache_dir=None))
        for extra in ({}, {"repeat_prob": 0.8})]
    assert shares[1] > shares[0] + 0.2


def test_cli_reports_the_share(capsys):
    argv = ["--synthetic-users", "60", "--synthetic-items", "200", "--synthetic-topics", "3",
            "--no-cache", "--protocol", "loo"]
    assert main([*argv, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert 0.0 < stats["test_repeat_share"] <= 1.0
    assert main([*argv, "--test-frac", "0", "--protocol", "paper", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_repeat_share"] is None  # no test window
