"""The chunked reader (``chunk_rows``) against the in-memory readers: same data, same errors."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mdgr_graph.data.chunked as chunked
import mdgr_graph.data.prepare as prepare_mod
from mdgr_graph.data.__main__ import main
from mdgr_graph.data.chunked import line_chunks, read_csv_chunked, read_taobao_chunked
from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.prepare import DataOptions, cache_key, prepare_dataset
from mdgr_graph.data.preprocess import EncodedLog
from mdgr_graph.data.readers import read_csv, read_taobao

try:  # the module runs without pyarrow too: the tests of its absence must run then
    import pyarrow  # noqa: F401

    HAVE_PYARROW = True
except ImportError:
    HAVE_PYARROW = False

needs_pyarrow = pytest.mark.skipif(not HAVE_PYARROW, reason="pyarrow is not installed")

REPO = Path(__file__).resolve().parents[2]
CHUNKS = [1, 2, 5, 10_000]  # one line, a few lines, more than the file


def write(tmp_path: Path, name: str, text: str | bytes, gz: bool = False) -> Path:
    path = tmp_path / name
    data = text.encode("utf-8") if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def taobao_text() -> str:
    """Users of 2..9 rows over items of uneven popularity, ids of different widths.

    Has exact duplicates, every behaviour, blank and CRLF lines, rows in no particular
    order, and users and items that the 2/4 k-core filter drops only after a second pass.
    """
    rng = np.random.default_rng(5)
    rows = []
    for u, n in zip([7, 12, 100, 3, 45, 9, 1000, 8], [9, 6, 5, 2, 7, 4, 8, 3], strict=True):
        items = rng.choice([5, 50, 500, 51, 6, 7000, 70, 8], n)
        behaviors = rng.choice(["pv", "pv", "buy", "cart", "fav"], n)
        for i, b in zip(items, behaviors, strict=True):
            rows.append(f"{u},{i},{i % 7 + 1},{b},{1511540000 + int(rng.integers(0, 5000))}")
    rows += [rows[3], rows[10], rows[3]]  # exact duplicates, also with another behaviour
    rows += ["12,99999,1,pv,1511540000", "12,99999,1,pv,1511549999"]  # item seen by one user
    order = rng.permutation(len(rows))
    lines = [rows[i] for i in order]
    lines.insert(4, "")
    lines.insert(9, "  \t")
    return "\n".join(lines[:20]) + "\r\n" + "\r\n".join(lines[20:]) + "\n\n"


CSV_TEXT = (
    "\n"
    "stamp;who;what;extra\n"
    "100;ana;i1;x\n"
    "100;ana;i1;y\n"  # duplicate of the row above (the extra column does not count)
    "90;bob;i2;z\n"
    "\n"
    "95;ana;ítem 3;z\n"
    "80;bob;i1;z\n"
    "81;carl;i2;z\n"
    "82;carl;i9;z\n"
    "70;bob;ítem 3;z\n"
    "71;dora;i2;z\n"
    "69;ana;i2;z\n"
    "68;bob;i1;\n"
    "60;ana;i4;z\n"
    "61;ana;i5;z\n"
    "62;eve;i6;z\n"
    "63;eve;i7;z\n"
    "64;eve;i8;z\n"
    "65;eve;i4;z\n"
)
CSV_COLS = {"user_col": "who", "item_col": "what", "time_col": "stamp"}


def assert_same_log(a: EncodedLog, b: EncodedLog) -> None:
    for name in ("user_ids", "item_ids", "timestamp"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    for name in ("user", "item"):  # codes: the same values (chunked stores int32)
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.source == b.source


def assert_same_dataset(a, b) -> None:
    assert a.meta == b.meta
    assert a.stats() == b.stats()
    assert sorted(a.arrays) == sorted(b.arrays)
    for name, x in a.arrays.items():
        y = b.arrays[name]
        assert (x.dtype, x.shape) == (y.dtype, y.shape), name
        assert x.tobytes() == y.tobytes(), name


def taobao_options(path, **kw) -> DataOptions:
    base = {"format": "taobao", "path": str(path), "min_item_count": 2, "min_user_len": 4,
            "window": 4, "history": 2, "negatives": 2, "valid_frac": 0.2, "test_frac": 0.2}
    return DataOptions(**{**base, **kw})  # fmt: skip


@pytest.fixture
def small_reads(monkeypatch):
    """Reads of a few bytes, so that chunks are assembled from many reads."""
    monkeypatch.setattr(chunked, "READ_BYTES", 7)


# ---------------------------------------------------------------------- same data
@needs_pyarrow
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("behaviors", [None, ("pv", "cart")])
def test_taobao_log_identical(tmp_path, gz, behaviors):
    path = write(tmp_path, "UserBehavior.csv", taobao_text(), gz=gz)
    expected = EncodedLog.from_interactions(read_taobao(path, behaviors))
    for chunk_rows in CHUNKS:
        assert_same_log(read_taobao_chunked(path, behaviors, chunk_rows=chunk_rows), expected)


@needs_pyarrow
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("protocol", ["paper", "loo"])
def test_taobao_prepared_identical(tmp_path, small_reads, gz, protocol):
    path = write(tmp_path, "t.csv", taobao_text(), gz=gz)
    options = taobao_options(path, protocol=protocol, behaviors=("pv", "buy", "fav"))
    expected = prepare_dataset(options, cache_dir=None)
    # the filters did work: duplicates, behaviours and the k-core all dropped rows
    raw_rows = sum(1 for line in taobao_text().splitlines() if line.strip())
    assert 0 < expected.stats()["interactions"] < raw_rows - 10
    assert expected.num_users < 8
    for chunk_rows in CHUNKS:
        got = prepare_dataset(
            DataOptions(**{**options.to_json(), "behaviors": options.behaviors,
                           "chunk_rows": chunk_rows}),
            cache_dir=None,
        )  # fmt: skip
        assert_same_dataset(got, expected)


@needs_pyarrow
@pytest.mark.parametrize("gz", [False, True])
def test_csv_identical(tmp_path, small_reads, gz):
    path = write(tmp_path, "log.csv", CSV_TEXT, gz=gz)
    expected = EncodedLog.from_interactions(read_csv(path, **CSV_COLS))
    assert expected.item_ids.dtype == np.dtype("<U6")
    options = DataOptions(format="csv", path=str(path), protocol="loo", min_item_count=1,
                          min_user_len=4, negatives=1, **CSV_COLS)  # fmt: skip
    prepared = prepare_dataset(options, cache_dir=None)
    for chunk_rows in CHUNKS:
        assert_same_log(read_csv_chunked(path, chunk_rows=chunk_rows, **CSV_COLS), expected)
        again = DataOptions(**{**options.to_json(), "behaviors": None, "chunk_rows": chunk_rows})
        assert_same_dataset(prepare_dataset(again, cache_dir=None), prepared)


@needs_pyarrow
def test_csv_quoted_fields_take_the_exact_path(tmp_path):
    text = 'user,item,time\n"Doe, Jane",item 1,10\n"x""y",i2,20\nplain,"i,3",5\n'
    path = write(tmp_path, "q.csv", text)
    cols = {"user_col": "user", "item_col": "item", "time_col": "time"}
    expected = EncodedLog.from_interactions(read_csv(path, **cols))
    assert expected.user_ids.tolist() == ["Doe, Jane", "plain", 'x"y']
    for chunk_rows in CHUNKS:
        assert_same_log(read_csv_chunked(path, chunk_rows=chunk_rows, **cols), expected)


@pytest.mark.parametrize(
    "field", ["-0", "1_000", " 100 ", "1e3", "+5", ".5", "1.", "Infinity"]
)
@needs_pyarrow
def test_unusual_timestamps_read_as_in_memory(tmp_path, field):
    path = write(tmp_path, "t.csv", f"1,2,3,pv,100\n1,2,3,pv,{field}\n")
    try:
        expected = EncodedLog.from_interactions(read_taobao(path))
    except DataFormatError as exc:
        with pytest.raises(DataFormatError) as info:
            read_taobao_chunked(path, chunk_rows=1)
        assert str(info.value) == str(exc)
        return
    assert_same_log(read_taobao_chunked(path, chunk_rows=1), expected)
    assert_same_log(read_taobao_chunked(path, chunk_rows=5), expected)


@needs_pyarrow
def test_clean_chunks_take_the_fast_path(tmp_path, monkeypatch):
    def refuse(*args):
        raise AssertionError("the fast path refused a clean chunk")

    monkeypatch.setattr(chunked._TaobaoReader, "slow", refuse)
    monkeypatch.setattr(chunked._CsvReader, "slow", refuse)
    path = write(tmp_path, "t.csv", taobao_text().replace("  \t", ""))
    assert_same_log(
        read_taobao_chunked(path, chunk_rows=3),
        EncodedLog.from_interactions(read_taobao(path)),
    )
    path = write(tmp_path, "c.csv", CSV_TEXT)
    assert_same_log(
        read_csv_chunked(path, chunk_rows=3, **CSV_COLS),
        EncodedLog.from_interactions(read_csv(path, **CSV_COLS)),
    )


def test_line_chunks_cut_whole_lines(tmp_path, small_reads):
    text = "\ufeffa\n\nbb\r\ncc\nd"  # byte-order mark, blank line, no final newline
    path = write(tmp_path, "x.txt", text)
    for chunk_rows, expected in [
        (1, [(1, b"a\n"), (2, b"\n"), (3, b"bb\r\n"), (4, b"cc\n"), (5, b"d")]),
        (2, [(1, b"a\n\n"), (3, b"bb\r\ncc\n"), (5, b"d")]),
        (9, [(1, b"a\n\nbb\r\ncc\nd")]),
    ]:
        assert list(line_chunks(str(path), chunk_rows)) == expected
    assert list(line_chunks(str(write(tmp_path, "e.txt", "")), 3)) == []


# ---------------------------------------------------------------------- same errors
TAOBAO_BAD = [
    "1,2,3,pv,100\n1,2,3,click,100\n",  # unknown behaviour
    "1,2,3,pv,100\n1,2,3,pv\n",  # wrong column count
    "1,2,3,pv,100\n1,2,3,pv,100,7\n",
    "1,2,3,pv,100\n-1,2,3,pv,100\n",  # negative id
    "1,2,3,pv,100\n1,x2,3,pv,100\n",
    "1,2,3,pv,100\n1,2,c,pv,100\n",  # category
    "1,2,3,pv,100\n1,,3,pv,100\n",  # missing id
    "1,2,3,pv,100\n1,٣,3,pv,100\n",  # a non-ASCII digit
    '1,2,3,pv,100\n"1",2,3,pv,100\n',  # quotes are not special in Taobao files
    "1,2,3,pv,100\n1,2,3,pv,nan\n",
    "1,2,3,pv,100\n1,2,3,pv,1e999\n",
    "1,2,3,pv,100\n1,2,3,pv,soon\n",
    "1,2,3,pv,100\n1,2,3,pv,\n",
    "1,2,3,pv,100\n1,2,3,pv,-5\n",
    "1,2,3,pv,100\n1\r2,2,3,pv,100\n",  # a carriage return inside a line
    # a bad value is reported only if no later line has a wrong structure ...
    "1,2,3,pv,nan\n1,2,3,pv,100\n1,2,3,pv,100\n1,2,3,pv,100\n1,2,3\n",
    "1,2,3,pv,nan\n1,2,3,pv,100\n1,2,3,pv,100\n1,2,3,pv,100\n1,2,3,view,5\n",
    # ... and the earliest bad value wins, across columns and chunks
    "1,2,3,pv,100\n1,2,3,pv,100\n1,2,3,pv,nan\n1,x,3,pv,100\n1,2,3,pv,-1\n",
    "1,2,3,pv,100\n\n\n1,2,3,pv,100\nx,2,3,pv,nan\n",
    "",  # empty
    "\n \r\n\n",  # only blank lines
]


@needs_pyarrow
@pytest.mark.parametrize("text", TAOBAO_BAD)
@pytest.mark.parametrize("gz", [False, True])
def test_taobao_errors_match_in_memory(tmp_path, text, gz):
    path = write(tmp_path, "t.csv", text, gz=gz)
    with pytest.raises(DataFormatError) as expected:
        read_taobao(path)
    for chunk_rows in CHUNKS:
        with pytest.raises(DataFormatError) as got:
            read_taobao_chunked(path, chunk_rows=chunk_rows)
        assert str(got.value) == str(expected.value)
        assert (got.value.path, got.value.line) == (str(path), expected.value.line)


@needs_pyarrow
def test_taobao_error_names_the_line(tmp_path):
    text = "1,2,3,pv,100\n" * 6 + "\n" + "1,2,3,pv,1e999\n"
    path = write(tmp_path, "UserBehavior.csv", text)
    with pytest.raises(DataFormatError, match=r"UserBehavior\.csv:8: non-finite timestamp"):
        read_taobao_chunked(path, chunk_rows=3)


@needs_pyarrow
def test_taobao_filter_leaves_nothing(tmp_path):
    path = write(tmp_path, "t.csv", "1,2,3,pv,100\n1,2,4,fav,100\n")
    with pytest.raises(DataFormatError, match=r"no interactions left after filtering"):
        read_taobao_chunked(path, ["buy"], chunk_rows=1)
    with pytest.raises(ValueError, match="unknown Taobao behavior"):
        read_taobao_chunked(path, ["click"], chunk_rows=1)


CSV_BAD = [
    "user,item,time\nu,i,1\nu,i\n",
    "user,item,time\nu,i,1\nu,,1\n",
    "user,item,time\nu,i,1\n  ,i,1\n",  # whitespace-only id
    "user,item,time\nu,i,1\nu,\u3000,1\n",  # a Unicode space only
    "user,item,time\nu,i,1\nu,i,x\n",
    "user,item,time\nu,i,1\nu,i,-1\n",
    'user,item,time\nu,i,1\n"u"x,i,1\n',  # malformed quoting
    "user item time\nu i 1\n",  # no separator
    "\n\nuser;item;stamp\nu;i;1\n",  # missing column
    "user,item,time\r\n\r\n",  # header only
    b"user,item,time\nu,i,1\n\xff\xfe,1,1\n",  # not UTF-8
    "user,item,time\nu,i,nan\nu,i,1\nu,i\n",  # structure before values
]


@needs_pyarrow
@pytest.mark.parametrize("text", CSV_BAD)
def test_csv_errors_match_in_memory(tmp_path, text):
    path = write(tmp_path, "log.csv", text)
    cols = {"user_col": "user", "item_col": "item", "time_col": "time"}
    with pytest.raises(DataFormatError) as expected:
        read_csv(path, **cols)
    for chunk_rows in CHUNKS:
        with pytest.raises(DataFormatError) as got:
            read_csv_chunked(path, chunk_rows=chunk_rows, **cols)
        assert str(got.value) == str(expected.value)


@needs_pyarrow
@pytest.mark.parametrize("chunk_rows", CHUNKS)
def test_csv_quoted_field_spanning_lines_is_refused(tmp_path, chunk_rows):
    text = 'user,item,time\nu,i,1\n"two\nlines",i,2\nv,i,3\n'
    path = write(tmp_path, "m.csv", text)
    assert read_csv(path, user_col="user", item_col="item", time_col="time").user[1] == (
        "two\nlines"
    )
    with pytest.raises(DataFormatError, match=r"m\.csv:3: a quoted field is not closed"):
        read_csv_chunked(path, user_col="user", item_col="item", time_col="time",
                         chunk_rows=chunk_rows)  # fmt: skip


@needs_pyarrow
def test_corrupt_gzip(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(gzip.compress(b"1,2,3,pv,100\n" * 1000)[:-20])
    with pytest.raises(DataFormatError, match=r"t\.csv: corrupt gzip"):
        read_taobao_chunked(path, chunk_rows=10)


@needs_pyarrow
def test_bad_chunk_rows(tmp_path):
    path = write(tmp_path, "t.csv", "1,2,3,pv,100\n")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
            read_taobao_chunked(path, chunk_rows=bad)
        with pytest.raises(ValueError, match="chunk_rows must be a positive integer"):
            taobao_options(path, chunk_rows=bad)
    with pytest.raises(ValueError, match="chunk_rows works with formats taobao, csv"):
        DataOptions(format="movielens", path=str(path), chunk_rows=10)
    with pytest.raises(FileNotFoundError):
        read_taobao_chunked(tmp_path / "absent.csv", chunk_rows=10)


# ---------------------------------------------------------------------- options, cache, CLI
@needs_pyarrow
def test_chunk_rows_shares_the_cache_entry(tmp_path, monkeypatch):
    path = write(tmp_path, "t.csv", taobao_text())
    whole, chunks = taobao_options(path), taobao_options(path, chunk_rows=4)
    assert "chunk_rows" not in chunks.to_json() and chunks.to_json() == whole.to_json()
    assert cache_key(chunks) == cache_key(whole)
    cache = tmp_path / "cache"
    first = prepare_dataset(chunks, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_read(_options):
        raise AssertionError("the cached entry was not used")

    monkeypatch.setattr(prepare_mod, "_read_sequences", no_read)
    assert_same_dataset(prepare_dataset(whole, cache_dir=cache), first)
    assert len(list(cache.glob("*.npz"))) == 1


@needs_pyarrow
def test_cli_chunk_rows(tmp_path, capsys):
    path = write(tmp_path, "t.csv", taobao_text())
    args = ["--format", "taobao", "--path", str(path), "--min-item-count", "2",
            "--min-user-len", "4", "--window", "4", "--history", "2", "--negatives", "2",
            "--no-cache", "--json"]  # fmt: skip
    assert main(args) == 0
    whole = capsys.readouterr().out
    assert main([*args, "--chunk-rows", "3"]) == 0
    assert capsys.readouterr().out == whole
    with pytest.raises(SystemExit) as exit_:  # refused before any work
        main([*args, "--chunk-rows", "0"])
    assert exit_.value.code == 2
    assert "--chunk-rows must be >= 1" in capsys.readouterr().err


# ---------------------------------------------------------------------- without pyarrow
@pytest.fixture
def no_pyarrow(monkeypatch):
    for name in list(sys.modules):
        if name == "pyarrow" or name.startswith("pyarrow."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail


def test_missing_pyarrow_is_explained(tmp_path, no_pyarrow, capsys):
    path = write(tmp_path, "t.csv", taobao_text())
    with pytest.raises(ImportError, match=r"requires 'pyarrow': pip install pyarrow.*'large'"):
        read_taobao_chunked(path, chunk_rows=10)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        prepare_dataset(taobao_options(path, chunk_rows=10), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # refused before anything was hashed or written
    args = ["--format", "taobao", "--path", str(path), "--chunk-rows", "10", "--no-cache"]
    assert main(args) == 2
    assert "pip install pyarrow" in capsys.readouterr().err


def test_in_memory_path_needs_no_pyarrow(tmp_path, no_pyarrow):
    path = write(tmp_path, "t.csv", taobao_text())
    assert prepare_dataset(taobao_options(path), cache_dir=None).num_users > 0
    assert "pyarrow" not in {name.split(".")[0] for name in sys.modules if sys.modules[name]}


def test_package_imports_without_pyarrow(tmp_path):
    path = write(tmp_path, "t.csv", taobao_text())
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from mdgr_graph.data.prepare import DataOptions, prepare_dataset\n"
        f"o = DataOptions(format='taobao', path={str(path)!r}, min_item_count=2, "
        "min_user_len=4, window=4, history=2, negatives=2, valid_frac=0.2, test_frac=0.2)\n"
        "print(prepare_dataset(o, cache_dir=None).num_users)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0
