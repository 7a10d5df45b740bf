"""The cache heals itself: a damaged entry is reported, deleted and rebuilt, never loaded.

Each case damages a real entry on disk (truncated, not a zip, pickled, missing arrays or
metadata, an array shortened or changed, an entry of an earlier version without a
checksum, an entry renamed from other options) and checks that ``prepare_dataset`` warns
with the file's name and returns exactly what a fresh preparation gives, and that the
entry on disk is sound again afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import mdgr_graph.data.prepare as prepare_mod
from mdgr_graph.data.prepare import (
    CacheRepairWarning,
    DamagedCacheEntry,
    DataOptions,
    PreparedDataset,
    cache_key,
    prepare_dataset,
)

REPO = Path(__file__).resolve().parents[2]
SYNTH = {"num_users": 60, "num_items": 200, "num_topics": 4}
PAPER = DataOptions(format="synthetic", protocol="paper", min_item_count=1, synthetic=SYNTH)
LOO = DataOptions(format="synthetic", protocol="loo", min_item_count=1, negatives=5,
                  synthetic=SYNTH)


def entry_path(cache: Path, options: DataOptions) -> Path:
    return cache / f"{options.format}-{options.protocol}-{cache_key(options)}.npz"


def members(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def rewrite(path: Path, content: dict[str, np.ndarray], *, fresh_checksum: bool) -> None:
    """Write ``content`` as the entry; with ``fresh_checksum`` its checksum is recomputed,
    so that only the invariants can tell that something is wrong."""
    content = dict(content)
    if fresh_checksum and "__meta__" in content:
        meta = json.loads(str(content["__meta__"]))
        arrays = {k: v for k, v in content.items() if k not in ("__meta__", "__sha256__")}
        content["__sha256__"] = np.array(PreparedDataset(arrays, meta).checksum())
    with open(path, "wb") as fh:
        np.savez(fh, **content)


def assert_same(got: PreparedDataset, want: PreparedDataset) -> None:
    assert got.meta == want.meta
    assert got.digest() == want.digest()
    assert got.stats() == want.stats()


def prepare_warns(options: DataOptions, cache: Path, entry: Path) -> PreparedDataset:
    """``prepare_dataset`` with exactly one CacheRepairWarning naming ``entry``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = prepare_dataset(options, cache_dir=cache)
    repairs = [w for w in caught if issubclass(w.category, CacheRepairWarning)]
    assert len(repairs) == 1, [str(w.message) for w in caught]
    assert str(entry) in str(repairs[0].message)
    assert "rebuilding" in str(repairs[0].message)
    return got


def prepare_quiet(options: DataOptions, cache: Path) -> PreparedDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheRepairWarning)
        return prepare_dataset(options, cache_dir=cache)


@pytest.fixture(scope="module")
def reference() -> dict[str, PreparedDataset]:
    return {"paper": prepare_dataset(PAPER, cache_dir=None),
            "loo": prepare_dataset(LOO, cache_dir=None)}


# ---------------------------------------------------------------------- damage kinds
def truncate(fraction: float):
    def damage(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
    damage.__name__ = f"truncate_{fraction}"
    return damage


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def plain_npy(path: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.arange(10))


def pickled(path: Path) -> None:
    content = members(path)
    content["seq_items"] = np.array([{"not": "numbers"}], dtype=object)
    with open(path, "wb") as fh:
        np.savez(fh, **content)


def shorten(name: str, *, fresh_checksum: bool):
    def damage(path: Path) -> None:
        content = members(path)
        content[name] = content[name][: max(len(content[name]) // 20, 1)]
        rewrite(path, content, fresh_checksum=fresh_checksum)
    damage.__name__ = f"shorten_{name}_{'resummed' if fresh_checksum else 'stale_sum'}"
    return damage


def drop(name: str, *, fresh_checksum: bool = True):
    def damage(path: Path) -> None:
        content = members(path)
        del content[name]
        rewrite(path, content, fresh_checksum=fresh_checksum)
    damage.__name__ = f"drop_{name}"
    return damage


def set_first(name: str, value: int | None, *, fresh_checksum: bool):
    """Set the first entry of array ``name`` to ``value`` (``None``: to its second entry,
    keeping shape and range, so that only the checksum can tell)."""
    def damage(path: Path) -> None:
        content = members(path)
        array = content[name].copy()
        array.flat[0] = array.flat[1] if value is None else value
        content[name] = array
        rewrite(path, content, fresh_checksum=fresh_checksum)
    damage.__name__ = f"{'change' if value is None else 'out_of_range'}_{name}"
    return damage


def change_one_value(name: str):
    return set_first(name, None, fresh_checksum=False)


def out_of_range(name: str):
    return set_first(name, 10**6, fresh_checksum=True)


def bad_meta(path: Path) -> None:
    content = members(path)
    content["__meta__"] = np.array("{not json")
    rewrite(path, content, fresh_checksum=False)


def earlier_version(path: Path) -> None:
    """An entry as written before entries carried a checksum."""
    content = members(path)
    del content["__sha256__"]
    rewrite(path, content, fresh_checksum=False)


COMMON_DAMAGE = [
    truncate(0.0), truncate(0.1), truncate(0.5), truncate(0.99), empty, garbage,
    flip_middle_byte, plain_npy, pickled, bad_meta, earlier_version,
    shorten("seq_ptr", fresh_checksum=False),  # the issue's probe ("users": 2 instead of 60)
    shorten("seq_ptr", fresh_checksum=True),
    shorten("seq_items", fresh_checksum=True), shorten("seq_time", fresh_checksum=True),
    shorten("user_ids", fresh_checksum=True), shorten("item_ids", fresh_checksum=True),
    drop("seq_ptr"), drop("item_ids"), drop("__meta__"),
    change_one_value("seq_items"), out_of_range("seq_items"),
]
PAPER_DAMAGE = [
    shorten("window_user", fresh_checksum=True), shorten("targets", fresh_checksum=True),
    shorten("negatives", fresh_checksum=True), shorten("hist_time", fresh_checksum=True),
    drop("negatives"), drop("window_split"),
    change_one_value("negatives"), change_one_value("hist_time"),
    out_of_range("window_user"), out_of_range("window_start"), out_of_range("negatives"),
]
LOO_DAMAGE = [
    drop("loo_negatives"), change_one_value("loo_negatives"), out_of_range("loo_negatives"),
    shorten("loo_negatives", fresh_checksum=True),
]
CASES = ([("paper", d) for d in COMMON_DAMAGE + PAPER_DAMAGE]
         + [("loo", d) for d in COMMON_DAMAGE + LOO_DAMAGE])


@pytest.mark.parametrize(("protocol", "damage"), CASES,
                         ids=[f"{p}-{d.__name__}" for p, d in CASES])
def test_damaged_entry_is_reported_deleted_and_rebuilt(protocol, damage, reference, tmp_path,
                                                       monkeypatch):
    options = PAPER if protocol == "paper" else LOO
    cache = tmp_path / "cache"
    prepare_dataset(options, cache_dir=cache)
    entry = entry_path(cache, options)
    damage(entry)

    reads = []
    real_read = prepare_mod._read_sequences
    monkeypatch.setattr(prepare_mod, "_read_sequences",
                        lambda opts: reads.append(opts) or real_read(opts))
    healed = prepare_warns(options, cache, entry)
    assert len(reads) == 1  # rebuilt from the log, not from the damaged entry
    assert_same(healed, reference[protocol])
    # the rebuilt entry is sound: served from the cache again, without a warning
    assert [p.name for p in cache.iterdir()] == [entry.name]
    again = prepare_quiet(options, cache)
    assert len(reads) == 1
    assert_same(again, reference[protocol])


def test_the_issues_probe_shortened_array(tmp_path):
    """One array of the entry shortened: this used to load as ``"users": 2``."""
    cache = tmp_path / "cache"
    want = prepare_dataset(PAPER, cache_dir=cache).stats()
    assert want["users"] == 60
    entry = entry_path(cache, PAPER)
    content = members(entry)
    content["seq_ptr"] = content["seq_ptr"][:3]
    with open(entry, "wb") as fh:
        np.savez(fh, **content)
    assert prepare_warns(PAPER, cache, entry).stats() == want


def test_entry_of_other_options_is_not_used(reference, tmp_path):
    """An entry renamed to another key (sound in itself) belongs to other options."""
    cache = tmp_path / "cache"
    other = DataOptions(**{**PAPER.to_json(), "seed": 1, "behaviors": None})
    prepare_dataset(other, cache_dir=cache)
    entry = entry_path(cache, PAPER)
    entry_path(cache, other).rename(entry)
    assert_same(prepare_warns(PAPER, cache, entry), reference["paper"])


def test_sound_entry_loads_without_warning(reference, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    prepare_quiet(PAPER, cache)
    monkeypatch.setattr(prepare_mod, "_read_sequences", None)  # would fail if called
    assert_same(prepare_quiet(PAPER, cache), reference["paper"])


def test_subsampled_dataset_round_trips(reference, tmp_path):
    for protocol in ("paper", "loo"):
        small = reference[protocol].subsample_users(7, seed=2)
        small.save(tmp_path / f"{protocol}.npz")
        assert_same(PreparedDataset.load(tmp_path / f"{protocol}.npz"), small)


@pytest.mark.parametrize(("damage", "match"), [
    (truncate(0.5), "unreadable"),
    (empty, "unreadable"),
    (plain_npy, "not an .npz archive"),
    (earlier_version, "no checksum"),
    (drop("__meta__"), "no metadata"),
    (shorten("seq_ptr", fresh_checksum=True), "seq_ptr does not index"),
    (shorten("targets", fresh_checksum=True), "targets has shape"),
    (drop("negatives"), "missing arrays negatives"),
    (change_one_value("negatives"), "checksum mismatch"),
    (out_of_range("window_start"), "window_start lies outside"),
], ids=lambda v: getattr(v, "__name__", v))
def test_load_names_the_file_and_the_reason(damage, match, reference, tmp_path):
    entry = tmp_path / "entry.npz"
    reference["paper"].save(entry)
    damage(entry)
    with pytest.raises(DamagedCacheEntry, match=match) as info:
        PreparedDataset.load(entry)
    assert str(info.value).startswith(f"{entry}: ")
    assert isinstance(info.value, ValueError)


def test_cli_heals_a_damaged_entry(tmp_path):
    """``python -m mdgr_graph.data`` on a damaged entry: the right numbers, exit 0, and
    one warning line on stderr naming the entry."""
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "mdgr_graph.data", "--format", "synthetic",
           "--synthetic-users", "60", "--synthetic-items", "200", "--synthetic-topics", "4",
           "--min-item-count", "1", "--cache-dir", str(cache), "--json"]

    def run():
        return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)

    first = run()
    assert first.returncode == 0, first.stderr
    (entry,) = cache.glob("*.npz")
    content = members(entry)
    content["seq_ptr"] = content["seq_ptr"][:3]
    with open(entry, "wb") as fh:
        np.savez(fh, **content)
    second = run()
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert str(entry) in second.stderr and "CacheRepairWarning" in second.stderr
