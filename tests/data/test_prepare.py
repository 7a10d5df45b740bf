"""prepare_dataset: protocol arrays, negatives, leave-one-out, stats, cache and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mdgr_graph.data.prepare as prepare_mod
from mdgr_graph.data.__main__ import main
from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.prepare import DataOptions, PreparedDataset, cache_key, prepare_dataset
from mdgr_graph.data.protocols import TEST, TRAIN, VALID
from mdgr_graph.data.synthetic import generate_synthetic

STATS_KEYS = ["users", "items", "interactions", "sequences", "train", "valid", "test"]

# small synthetic log: 60 users of 100..260 interactions, nothing filtered with these options
SYNTH = {"num_users": 60, "num_items": 300, "num_topics": 6}
SYNTH_PAPER = DataOptions(
    format="synthetic", protocol="paper", min_item_count=1, min_user_len=100, synthetic=SYNTH,
    valid_frac=0.2, test_frac=0.2, seed=3,
)  # fmt: skip


def log_rows(num_users: int = 20, num_items: int = 60) -> list[tuple[int, int, int]]:
    """User ``u`` has ``20 + u`` interactions, strictly increasing in time, in shuffled order."""
    rows = []
    for u in range(num_users):
        for k in range(20 + u):
            rows.append((u, (u * 7 + k * 3) % num_items, 1_000_000 + 86_400 * u + 3_600 * k))
    rng = np.random.default_rng(0)
    return [rows[i] for i in rng.permutation(len(rows))]


def user_sequences(rows) -> dict[str, list[tuple[str, float]]]:
    """Raw (item, timestamp) sequences by raw user, sorted by time (stable)."""
    out: dict[str, list[tuple[str, float]]] = {}
    for u, i, t in rows:
        out.setdefault(str(u), []).append((str(i), float(t)))
    return {u: sorted(seq, key=lambda e: e[1]) for u, seq in out.items()}


def csv_options(path, **kw) -> DataOptions:
    min_user_len = 4 if kw.get("protocol") == "loo" else 1
    base = {"format": "csv", "path": str(path), "min_item_count": 1, "min_user_len": min_user_len}
    return DataOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def synth_paper() -> PreparedDataset:
    return prepare_dataset(SYNTH_PAPER, cache_dir=None)


# ---------------------------------------------------------------------- paper arrays
def test_paper_windows_are_contiguous_slices_of_the_raw_sequence(synth_paper):
    log = generate_synthetic(seed=SYNTH_PAPER.seed, **SYNTH).interactions
    raw = user_sequences(zip(log.user, log.item, log.timestamp, strict=True))
    a = synth_paper.arrays
    assert synth_paper.num_users == 60  # nothing filtered
    windows = np.concatenate([a["hist_items"], a["targets"]], axis=1)
    assert windows.shape[1] == 100 and a["hist_items"].shape[1] == 50
    count: dict[int, int] = {}
    for w, u in enumerate(a["window_user"]):
        j = count[u] = count.get(u, -1) + 1  # j-th kept window of the user, oldest first
        seq = raw[str(a["user_ids"][u])]
        n_windows = len(seq) // 100
        start = len(seq) - 100 * (n_windows - j)
        expected = [item for item, _ in seq[start : start + 100]]
        assert [str(a["item_ids"][i]) for i in windows[w]] == expected
        days = (np.array([t for _, t in seq[start : start + 50]]) - seq[start][1]) / 86400
        np.testing.assert_allclose(a["hist_time"][w], days, rtol=1e-5, atol=1e-4)
    assert sum(count[u] + 1 for u in count) == len(a["window_user"])
    assert {u: c + 1 for u, c in count.items()} == {
        u: len(raw[str(a["user_ids"][u])]) // 100 for u in count
    }


def test_paper_arrays_match_the_stored_sequences(synth_paper):
    a = synth_paper.arrays
    ptr, items, times = a["seq_ptr"], a["seq_items"], a["seq_time"]
    for w, u in enumerate(a["window_user"]):
        seq = items[ptr[u] : ptr[u + 1]]
        window = np.concatenate([a["hist_items"][w], a["targets"][w]])
        hits = [s for s in range(len(seq) - 99) if np.array_equal(seq[s : s + 100], window)]
        assert hits and (len(seq) - hits[-1]) % 100 == 0
        start = ptr[u] + hits[-1]
        np.testing.assert_allclose(
            a["hist_time"][w], (times[start : start + 50] - times[start]) / 86400, atol=1e-4
        )


def test_hist_time_in_days_starts_at_zero_and_never_decreases(synth_paper):
    t = synth_paper.arrays["hist_time"]
    assert t.dtype == np.float32
    assert np.all(t[:, 0] == 0)
    assert np.all(np.diff(t, axis=1) >= 0)
    # the synthetic log puts sessions 0.5-5 days apart: 50 items span days, not seconds
    assert 1 < t[:, -1].mean() < 50 * 5


def test_paper_splits_by_user_and_negatives_unseen(synth_paper):
    a = synth_paper.arrays
    users_of = {s: set(a["window_user"][a["window_split"] == s].tolist()) for s in (0, 1, 2)}
    assert not users_of[0] & users_of[1] and not users_of[0] & users_of[2]
    assert not users_of[1] & users_of[2]
    assert len(users_of[1]) == len(users_of[2]) == 12  # 20% of 60 users each
    neg, seen = a["negatives"], synth_paper.seen
    assert neg.shape == (len(a["window_user"]), 50)
    rows = np.repeat(a["window_user"][:, None], 50, axis=1)
    assert not seen.contains(rows, neg).any()
    assert neg.min() >= 1 and neg.max() <= synth_paper.num_items


def test_valid_and_test_negatives_fixed_across_calls(synth_paper):
    again = prepare_dataset(SYNTH_PAPER, cache_dir=None)
    held_out = synth_paper.arrays["window_split"] != TRAIN
    assert held_out.any()
    np.testing.assert_array_equal(
        synth_paper.arrays["negatives"][held_out], again.arrays["negatives"][held_out]
    )
    for name, arr in synth_paper.arrays.items():
        np.testing.assert_array_equal(arr, again.arrays[name], err_msg=name)


def test_another_seed_gives_other_splits_and_negatives():
    other = prepare_dataset(
        DataOptions(**{**SYNTH_PAPER.to_json(), "seed": 4, "behaviors": None}), cache_dir=None
    )
    base = prepare_dataset(SYNTH_PAPER, cache_dir=None)
    assert not np.array_equal(base.arrays["seq_items"], other.arrays["seq_items"])  # new log
    # with the same log (explicit synthetic seed), only splits and negatives change
    synth = {**SYNTH, "seed": SYNTH_PAPER.seed}
    a = prepare_dataset(DataOptions(**{**SYNTH_PAPER.to_json(), "synthetic": synth}), None)
    b = prepare_dataset(
        DataOptions(**{**SYNTH_PAPER.to_json(), "synthetic": synth, "seed": 9}), None
    )
    np.testing.assert_array_equal(a.arrays["seq_items"], b.arrays["seq_items"])
    assert not np.array_equal(a.arrays["window_split"], b.arrays["window_split"])
    assert not np.array_equal(a.arrays["negatives"], b.arrays["negatives"])


def test_draw_train_negatives_per_epoch(synth_paper):
    a = synth_paper.arrays
    train_users = a["window_user"][a["window_split"] == TRAIN]
    e0 = synth_paper.draw_train_negatives(0)
    e1 = synth_paper.draw_train_negatives(1)
    np.testing.assert_array_equal(e0, synth_paper.draw_train_negatives(0))
    assert e0.shape == e1.shape == (len(train_users), 50)
    assert not np.array_equal(e0, e1)
    for neg in (e0, e1):
        rows = np.repeat(train_users[:, None], 50, axis=1)
        assert not synth_paper.seen.contains(rows, neg).any()
        assert all(len(set(r)) == 50 for r in neg.tolist())
    # a reloaded dataset draws the same epochs (resuming is exact)
    loaded = PreparedDataset(dict(a), json.loads(json.dumps(synth_paper.meta)))
    np.testing.assert_array_equal(loaded.draw_train_negatives(1), e1)


def test_paper_needs_a_full_window(write_csv):
    path = write_csv(log_rows(num_users=3))
    with pytest.raises(ValueError, match="no user has a full window of 100"):
        prepare_dataset(csv_options(path), cache_dir=None)


# ---------------------------------------------------------------------- leave-one-out
@pytest.fixture
def loo_rows_and_data(write_csv):
    rows = log_rows()
    options = csv_options(write_csv(rows), protocol="loo", max_len=8, negatives=5)
    data = prepare_dataset(options, cache_dir=None)
    return rows, data


@pytest.mark.parametrize("split,offset", [("test", 1), ("valid", 2), ("train", 3)])
def test_loo_example_targets_and_histories(loo_rows_and_data, split, offset):
    rows, data = loo_rows_and_data
    raw = user_sequences(rows)
    ex = data.loo_example(split)
    ids, users = data.arrays["item_ids"], data.arrays["user_ids"]
    assert ex["items"].shape == (20, 8) and ex["time"].shape == (20, 8)
    for u in range(data.num_users):
        seq = raw[str(users[u])]
        target = len(seq) - offset
        assert str(ids[ex["target"][u]]) == seq[target][0]
        history = seq[max(0, target - 8) : target]  # ends right before the target
        n = int(ex["length"][u])
        assert n == len(history) == 8
        assert [str(ids[i]) for i in ex["items"][u, :n]] == [i for i, _ in history]
        days = (np.array([t for _, t in history]) - history[0][1]) / 86400
        np.testing.assert_allclose(ex["time"][u, :n], days, atol=1e-4)
        assert ex["prefix_end"][u] == data.arrays["seq_ptr"][u] + target
        assert data.arrays["seq_items"][ex["prefix_end"][u]] == ex["target"][u]


def test_loo_short_histories_are_padded(write_csv):
    rows = [(u, 10 * u + i, 100 * i) for u in range(3) for i in range(4 + u)]  # lengths 4, 5, 6
    data = prepare_dataset(csv_options(write_csv(rows), protocol="loo", negatives=1), None)
    ex = data.loo_example("train")  # third-last target: histories of 1, 2, 3 items
    assert ex["length"].tolist() == [1, 2, 3]
    assert ex["items"].shape == (3, 50)
    for u, n in enumerate([1, 2, 3]):
        assert (ex["items"][u, :n] > 0).all() and (ex["items"][u, n:] == 0).all()
        assert (ex["time"][u, n:] == 0).all()
    assert ex["items"].dtype == np.int64 and ex["time"].dtype == np.float32


def test_loo_negatives(loo_rows_and_data):
    _, data = loo_rows_and_data
    neg = data.arrays["loo_negatives"]
    assert neg.shape == (2, 20, 5)
    users = np.repeat(np.arange(20)[:, None], 5, axis=1)
    for k in range(2):
        assert not data.seen.contains(users, neg[k]).any()
    assert not np.array_equal(neg[0], neg[1])
    e0, e1 = data.draw_train_negatives(0), data.draw_train_negatives(1)
    assert e0.shape == (20, 5) and not np.array_equal(e0, e1)
    assert not data.seen.contains(users, e0).any()


def test_loo_example_refused_under_paper(synth_paper):
    with pytest.raises(ValueError, match="protocol 'loo'"):
        synth_paper.loo_example("test")


# ---------------------------------------------------------------------- stats
def test_stats_paper(write_csv):
    rows = log_rows(num_users=20)  # lengths 20..39: window 10 gives 2 or 3 windows
    data = prepare_dataset(
        csv_options(write_csv(rows), window=10, history=4, negatives=3,
                    valid_frac=0.25, test_frac=0.25),
        cache_dir=None,
    )  # fmt: skip
    stats = data.stats()
    assert list(stats) == STATS_KEYS
    assert stats["users"] == 20
    assert stats["items"] == len({i for _, i, _ in rows})
    assert stats["interactions"] == len(rows)
    assert stats["sequences"] == sum((20 + u) // 10 for u in range(20))
    assert stats["train"] + stats["valid"] + stats["test"] == stats["sequences"]
    split = data.arrays["window_split"]
    assert (stats["valid"], stats["test"]) == ((split == VALID).sum(), (split == TEST).sum())
    assert all(isinstance(v, int) for v in stats.values())


def test_stats_loo(loo_rows_and_data):
    rows, data = loo_rows_and_data
    assert data.stats() == {
        "users": 20, "items": len({i for _, i, _ in rows}), "interactions": len(rows),
        "sequences": 20, "train": 20, "valid": 20, "test": 20,
    }  # fmt: skip


# ---------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "kw,match",
    [
        ({"format": "parquet"}, "unknown format"),
        ({"protocol": "random"}, "unknown protocol"),
        ({"format": "csv"}, "needs a path"),
        ({"history": 100}, "history < window"),
        ({"history": 0}, "history < window"),
        ({"negatives": 0}, "negatives"),
        ({"protocol": "loo", "min_user_len": 3}, "min_user_len >= 4"),
    ],
)
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        DataOptions(**kw)


def test_protocol_defaults():
    assert (DataOptions().min_item_count, DataOptions().min_user_len) == (10, 100)
    loo = DataOptions(protocol="loo")
    assert (loo.min_item_count, loo.min_user_len) == (5, 5)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        prepare_dataset(csv_options(tmp_path / "absent.csv"), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------- cache
def test_second_call_loads_from_cache(write_csv, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    options = csv_options(write_csv(log_rows()), protocol="loo", negatives=5)
    first = prepare_dataset(options, cache_dir=cache)
    entries = sorted(cache.iterdir())
    assert [p.name for p in entries] == [f"csv-loo-{cache_key(options)}.npz"]

    def no_read(_options):
        raise AssertionError("the cached entry was not used")

    monkeypatch.setattr(prepare_mod, "_read_sequences", no_read)
    second = prepare_dataset(options, cache_dir=cache)
    assert second.meta == first.meta
    assert set(second.arrays) == set(first.arrays)
    for name, arr in first.arrays.items():
        assert second.arrays[name].dtype == arr.dtype, name
        np.testing.assert_array_equal(second.arrays[name], arr, err_msg=name)
    assert second.stats() == first.stats()
    for split in ("train", "valid", "test"):
        a, b = first.loo_example(split), second.loo_example(split)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(first.draw_train_negatives(2), second.draw_train_negatives(2))
    assert sorted(cache.iterdir()) == entries


def test_path_object_accepted(write_csv, tmp_path):
    # a pathlib.Path used to reach json.dumps in cache_key and fail with a TypeError
    path = write_csv(log_rows())
    as_path = csv_options(path, protocol="loo", negatives=5)
    as_path = DataOptions(**{**as_path.to_json(), "path": Path(path), "behaviors": None})
    assert as_path.path == str(path)
    assert cache_key(as_path) == cache_key(csv_options(path, protocol="loo", negatives=5))
    assert prepare_dataset(as_path, cache_dir=tmp_path / "cache").num_users == 20


def test_synthetic_is_cached_too(tmp_path, monkeypatch):
    options = DataOptions(synthetic={"num_users": 30, "num_items": 100})
    first = prepare_dataset(options, cache_dir=tmp_path)
    monkeypatch.setattr(prepare_mod, "_read_sequences", None)  # would fail if called
    second = prepare_dataset(options, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.arrays["negatives"], second.arrays["negatives"])
    assert len(list(tmp_path.iterdir())) == 1


def test_changed_option_makes_a_new_entry(write_csv, tmp_path):
    cache = tmp_path / "cache"
    path = write_csv(log_rows())
    a = prepare_dataset(csv_options(path, protocol="loo", negatives=5), cache_dir=cache)
    b = prepare_dataset(csv_options(path, protocol="loo", negatives=6), cache_dir=cache)
    c = prepare_dataset(csv_options(path, protocol="loo", negatives=5, seed=1), cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 3
    assert a.arrays["loo_negatives"].shape[-1] == 5 and b.arrays["loo_negatives"].shape[-1] == 6
    assert not np.array_equal(a.arrays["loo_negatives"], c.arrays["loo_negatives"])
    keys = {
        cache_key(csv_options(path, protocol="loo", **kw))
        for kw in ({}, {"max_len": 7}, {"min_user_len": 6}, {"min_item_count": 2}, {"seed": 5})
    }
    assert len(keys) == 5


def test_changed_file_content_makes_a_new_entry(write_csv, tmp_path):
    cache = tmp_path / "cache"
    rows = log_rows()
    path = write_csv(rows)
    options = csv_options(path, protocol="loo", negatives=5)
    a = prepare_dataset(options, cache_dir=cache)
    write_csv(rows + [(99, 0, 5), (99, 1, 6), (99, 2, 7), (99, 3, 8)])  # same path
    b = prepare_dataset(options, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2
    assert (a.num_users, b.num_users) == (20, 21)
    write_csv(rows)  # back to the first content: the first entry is found again
    assert prepare_dataset(options, cache_dir=cache).num_users == 20
    assert len(list(cache.glob("*.npz"))) == 2


def test_cache_writes_are_atomic(write_csv, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = write_csv(log_rows())
    prepare_dataset(csv_options(path, protocol="loo", negatives=5), cache_dir=cache)
    assert [p.suffix for p in cache.iterdir()] == [".npz"]  # no .tmp left behind

    # a failure while writing leaves neither a partial entry nor a temporary file
    def broken_savez(fh, **arrays):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(prepare_mod.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(csv_options(path, protocol="loo", negatives=7), cache_dir=cache)
    assert [p.suffix for p in cache.iterdir()] == [".npz"]


def test_no_cache_dir_writes_nothing(write_csv, tmp_path, monkeypatch):
    path = write_csv(log_rows())
    before = sorted(tmp_path.rglob("*"))

    def no_save(self, path):
        raise AssertionError(f"saved to {path}")

    monkeypatch.setattr(PreparedDataset, "save", no_save)
    monkeypatch.setattr(prepare_mod, "DEFAULT_CACHE_DIR", tmp_path / "default-cache")
    data = prepare_dataset(csv_options(path, protocol="loo", negatives=5), cache_dir=None)
    assert data.num_users == 20
    assert sorted(tmp_path.rglob("*")) == before


def test_save_and_load_round_trip(synth_paper, tmp_path):
    target = tmp_path / "deep" / "entry.npz"
    synth_paper.save(target)
    loaded = PreparedDataset.load(target)
    assert loaded.meta == synth_paper.meta and loaded.protocol == "paper"
    for name, arr in synth_paper.arrays.items():
        np.testing.assert_array_equal(loaded.arrays[name], arr)
    assert os.listdir(target.parent) == ["entry.npz"]


# ---------------------------------------------------------------------- CLI
def cli_csv(write_csv) -> list[str]:
    path = write_csv(log_rows())
    return ["--format", "csv", "--path", str(path), "--min-item-count", "1",
            "--min-user-len", "1", "--window", "10", "--history", "4", "--negatives", "3",
            "--no-cache"]  # fmt: skip


def test_cli_json(write_csv, capsys):
    assert main(cli_csv(write_csv) + ["--json"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1
    stats = json.loads(out)
    assert list(stats) == [*STATS_KEYS, "test_repeat_share"]  # see tests/data/test_repeats.py
    assert stats["users"] == 20 and stats["interactions"] == sum(20 + u for u in range(20))
    assert stats["sequences"] == sum((20 + u) // 10 for u in range(20))


def test_cli_table(write_csv, capsys):
    assert main(cli_csv(write_csv)) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("dataset: ") and "protocol: paper" in lines[0]
    assert len(lines) == 1 + len(STATS_KEYS) + 1
    for key, line in zip(STATS_KEYS, lines[1:], strict=False):
        assert line.split()[0] == key
    assert lines[-1].split()[:2] == ["test", "repeats"]
    assert "windows" in out and "interactions" in out and "590" in out


def test_cli_loo_table(write_csv, capsys):
    args = cli_csv(write_csv) + ["--protocol", "loo", "--min-user-len", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "protocol: loo" in out and "20 users" in out


def test_cli_missing_file(tmp_path, capsys):
    code = main(["--format", "movielens", "--path", str(tmp_path / "nope.dat"), "--no-cache"])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.out == ""
    assert "no such file" in captured.err and "nope.dat" in captured.err


def test_cli_missing_path(capsys):
    with pytest.raises(SystemExit) as exit_:  # refused before any work, like argparse
        main(["--format", "movielens", "--no-cache"])
    assert exit_.value.code == 2
    assert "needs a path" in capsys.readouterr().err


def test_cli_malformed_file(tmp_path, capsys):
    bad = tmp_path / "ratings.dat"
    bad.write_text("1::10::5::978300760\n1::11::x::978300761\n", encoding="utf-8")
    code = main(["--format", "movielens", "--path", str(bad), "--no-cache"])
    captured = capsys.readouterr()
    assert code != 0 and captured.out == ""
    assert f"{bad}:2:" in captured.err


def test_cli_bad_option_value(write_csv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(cli_csv(write_csv) + ["--history", "10"])
    assert exit_.value.code == 2
    assert "history < window" in capsys.readouterr().err


def test_cli_unknown_format(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--format", "parquet", "--path", "x"])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert "invalid choice" in err and "parquet" in err


def test_cli_csv_column_options(tmp_path, capsys):
    path = tmp_path / "log.txt"
    lines = ["ts;uid;iid;score"]
    lines += [f"{100 + k};u{u};item{(u + k) % 9};1" for u in range(4) for k in range(6)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["--format", "csv", "--path", str(path), "--user-col", "uid", "--item-col", "iid",
            "--time-col", "ts", "--sep", ";", "--protocol", "loo", "--min-item-count", "1",
            "--min-user-len", "4", "--negatives", "2", "--no-cache", "--json"]  # fmt: skip
    assert main(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["users"], stats["items"], stats["interactions"]) == (4, 9, 24)
    # a column name that is not in the header fails with the reader's message
    assert main(args[:4] + ["--user-col", "user_id"] + args[6:]) != 0
    assert "no column 'user_id'" in capsys.readouterr().err


def test_cli_taobao_behaviors(tmp_path, capsys):
    path = tmp_path / "UserBehavior.csv"
    behaviors = ["pv", "pv", "buy", "cart", "fav"]
    rows = [
        f"{u},{(u * 3 + k) % 40},{k % 2},{behaviors[k % 5]},{1_500_000_000 + 60 * k}"
        for u in range(1, 6)
        for k in range(20)
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    base = ["--format", "taobao", "--path", str(path), "--protocol", "loo",
            "--min-item-count", "1", "--min-user-len", "4", "--negatives", "2",
            "--no-cache", "--json"]  # fmt: skip
    assert main(base) == 0
    assert json.loads(capsys.readouterr().out)["interactions"] == 100
    assert main(base + ["--behaviors", "pv,buy"]) == 0
    assert json.loads(capsys.readouterr().out)["interactions"] == 60
    assert main(base + ["--behaviors", "click"]) != 0
    assert "unknown Taobao behavior" in capsys.readouterr().err


def test_cli_writes_and_reuses_the_cache(write_csv, tmp_path, capsys):
    args = cli_csv(write_csv)[:-1] + ["--cache-dir", str(tmp_path / "c"), "--json"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert len(list((tmp_path / "c").glob("csv-paper-*.npz"))) == 1
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_cli_subprocess(write_csv, tmp_path):
    args = cli_csv(write_csv) + ["--json"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    proc = subprocess.run(
        [sys.executable, "-m", "mdgr_graph.data", *args],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert list(json.loads(proc.stdout)) == [*STATS_KEYS, "test_repeat_share"]
    bad = subprocess.run(
        [sys.executable, "-m", "mdgr_graph.data", "--format", "amazon", "--path", "absent"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "no such file" in bad.stderr and bad.stdout == ""



@pytest.mark.parametrize("how", ["console script", "module"])
def test_cli_usage_names_the_program_that_ran(how, tmp_path):
    """``mdgr-data --help`` says ``usage: mdgr-data``; ``python -m mdgr_graph.data --help``
    says ``usage: python -m mdgr_graph.data`` (argparse alone would say ``__main__.py``)."""
    if how == "module":
        command, prog = [sys.executable, "-m", "mdgr_graph.data"], "python -m mdgr_graph.data"
    else:
        script = Path(sys.executable).parent / "mdgr-data"  # installed beside the interpreter
        if not script.is_file():
            pytest.skip(f"console script not installed at {script}")
        command, prog = [str(script)], "mdgr-data"
    proc = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {prog} [-h]"), proc.stdout[:200]
    bad = subprocess.run([*command, "--format", "nope"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, check=False)
    assert bad.returncode == 2 and f"{prog}: error: argument --format" in bad.stderr

def test_data_format_error_is_a_value_error():
    # the CLI catches ValueError; DataFormatError must stay one
    assert issubclass(DataFormatError, ValueError)


# ---------------------------------------------------------------------- real data
ML1M_SUBSET_PAPER_STATS = {
    "users": 1402, "items": 2986, "interactions": 406553, "sequences": 3458,
    "train": 2768, "valid": 355, "test": 335,
}  # fmt: skip


def assert_paper_splits_disjoint(data: PreparedDataset) -> None:
    a = data.arrays
    users = [set(a["window_user"][a["window_split"] == s].tolist()) for s in (TRAIN, VALID, TEST)]
    assert all(users) and not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])


@pytest.mark.realdata
@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_ml100k(shared_data, tmp_path, protocol):
    path = shared_data / "ml-100k" / "u.data.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    options = DataOptions(format="movielens", path=str(path), protocol=protocol)
    data = prepare_dataset(options, cache_dir=tmp_path)
    stats = data.stats()
    assert list(stats) == STATS_KEYS
    assert 0 < stats["users"] <= 943 and 0 < stats["items"] <= 1682
    assert 0 < stats["interactions"] <= 100_000
    ptr = data.arrays["seq_ptr"]
    assert np.diff(ptr).min() >= options.min_user_len
    assert np.bincount(data.arrays["seq_items"])[1:].min() >= options.min_item_count
    if protocol == "paper":
        assert stats["users"] < 943  # ml-100k users have 20+ ratings: many fall below 100
        assert stats["sequences"] == int((np.diff(ptr) // 100).sum())
        assert stats["train"] + stats["valid"] + stats["test"] == stats["sequences"]
        assert_paper_splits_disjoint(data)
    else:
        assert stats["users"] == 943  # every user has 20+ ratings, every 5-core survives
        assert stats["sequences"] == stats["train"] == stats["valid"] == stats["test"] == 943
        ends = [data.loo_example(s)["prefix_end"] for s in ("train", "valid", "test")]
        assert np.all(ends[0] < ends[1]) and np.all(ends[1] < ends[2])
        assert np.array_equal(ends[2], ptr[1:] - 1)
    # the second call is served from the cache
    assert PreparedDataset.load(next(tmp_path.glob("*.npz"))).stats() == stats


@pytest.mark.realdata
def test_ml1m_subset_paper_stats(shared_data, tmp_path):
    path = shared_data / "ml-1m-subset" / "ratings.dat.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    options = DataOptions(format="movielens", path=str(path), protocol="paper", seed=0)
    data = prepare_dataset(options, cache_dir=tmp_path)
    assert data.stats() == ML1M_SUBSET_PAPER_STATS
    assert_paper_splits_disjoint(data)
    a = data.arrays
    # 10% + 10% of the 1,402 users held out; every kept user has at least one window
    for split in (VALID, TEST):
        assert len(set(a["window_user"][a["window_split"] == split].tolist())) == 140
    assert a["hist_items"].shape == (3458, 50) and a["negatives"].shape == (3458, 50)


# ---------------------------------------------------------------------- train stride
def test_train_stride_adds_training_windows_only(synth_paper):
    strided = prepare_dataset(dataclasses.replace(SYNTH_PAPER, train_stride=30), cache_dir=None)
    a, b = synth_paper.arrays, strided.arrays
    for split in (VALID, TEST):
        rows_a, rows_b = a["window_split"] == split, b["window_split"] == split
        for key in ("window_user", "window_start", "hist_items", "hist_time", "targets",
                    "negatives"):
            np.testing.assert_array_equal(a[key][rows_a], b[key][rows_b], err_msg=key)
    assert strided.split_size("train") > synth_paper.split_size("train")
    # the paper's windows come first, unchanged; extra ones belong to training users only
    w = len(a["window_user"])
    np.testing.assert_array_equal(a["window_start"], b["window_start"][:w])
    assert (b["window_split"][w:] == TRAIN).all()
    assert len(np.unique(b["window_start"])) == len(b["window_start"])
    # every window is a contiguous slice of its user's sequence
    ptr = b["seq_ptr"]
    items = np.concatenate([b["hist_items"], b["targets"]], axis=1)
    for row in range(0, len(items), 7):
        s, u = b["window_start"][row], b["window_user"][row]
        assert ptr[u] <= s and s + 100 <= ptr[u + 1]
        np.testing.assert_array_equal(items[row], b["seq_items"][s : s + 100])


def test_train_stride_is_validated():
    with pytest.raises(ValueError, match="train_stride"):
        DataOptions(train_stride=0)
    with pytest.raises(ValueError, match="train_stride"):
        DataOptions(window=100, train_stride=101)


def test_training_interactions_paper_are_the_training_windows(synth_paper):
    a = synth_paper.arrays
    rows = a["window_split"] == TRAIN
    user, item = synth_paper.training_interactions()
    expected_items = np.concatenate([a["hist_items"][rows], a["targets"][rows]], axis=1)
    expected_users = np.repeat(a["window_user"][rows], 100)
    got = sorted(zip(user.tolist(), item.tolist(), strict=True))
    exp = sorted(zip(expected_users.tolist(), expected_items.ravel().tolist(), strict=True))
    assert got == exp
    assert not np.isin(user, a["window_user"][a["window_split"] != TRAIN]).any()


def test_training_interactions_count_overlapping_windows_once(synth_paper):
    strided = prepare_dataset(dataclasses.replace(SYNTH_PAPER, train_stride=10), cache_dir=None)
    a = strided.arrays
    covered = np.zeros(len(a["seq_items"]), dtype=bool)
    for s in a["window_start"][a["window_split"] == TRAIN]:
        covered[s : s + 100] = True
    owner = np.repeat(np.arange(strided.num_users), np.diff(a["seq_ptr"]))
    user, item = strided.training_interactions()
    np.testing.assert_array_equal(user, owner[covered])
    np.testing.assert_array_equal(item, a["seq_items"][covered])


def test_training_interactions_loo_leave_out_the_last_two(write_csv):
    path = write_csv(log_rows(6))
    prepared = prepare_dataset(csv_options(path, protocol="loo", negatives=5), cache_dir=None)
    user, item = prepared.training_interactions()
    ptr, seq = prepared.arrays["seq_ptr"], prepared.arrays["seq_items"]
    for u in range(prepared.num_users):
        np.testing.assert_array_equal(item[user == u], seq[ptr[u] : ptr[u + 1] - 2])
