import gzip
import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest

from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.readers import (
    Interactions,
    read_amazon,
    read_csv,
    read_interactions,
    read_movielens,
    read_taobao,
)

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def write(tmp_path: Path, name: str, text: str, gz: bool = False) -> Path:
    path = tmp_path / name
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def assert_log(log, user, item, timestamp, rating=None):
    assert isinstance(log, Interactions)
    assert log.user.dtype.kind == "U" and log.item.dtype.kind == "U"
    assert log.user.tolist() == user
    assert log.item.tolist() == item
    assert log.timestamp.dtype == np.float64
    np.testing.assert_array_equal(log.timestamp, timestamp)
    if rating is None:
        assert log.rating is None
    else:
        assert log.rating.dtype == np.float64
        np.testing.assert_array_equal(log.rating, rating)
    assert len(log) == len(user)


# --- errors -------------------------------------------------------------------------------


def test_data_format_error_message():
    err = DataFormatError("bad field", "f.csv", 3)
    assert isinstance(err, ValueError)
    assert str(err) == "f.csv:3: bad field"
    assert (err.path, err.line, err.reason) == ("f.csv", 3, "bad field")
    assert str(DataFormatError("no interactions", Path("f.csv"))) == "f.csv: no interactions"
    assert str(DataFormatError("f.csv: already formatted")) == "f.csv: already formatted"
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.line == 3


# --- MovieLens ----------------------------------------------------------------------------

ML_ROWS = (["1", "1", "2"], ["1193", "661", "914"], [978300760, 978302109, 978301968], [5, 3, 4])


def test_movielens_dat(tmp_path):
    path = write(
        tmp_path,
        "ratings.dat",
        "1::1193::5::978300760\n1::661::3::978302109\n2::914::4::978301968\n",
    )
    log = read_movielens(path)
    assert_log(log, *ML_ROWS)
    assert log.source == str(path)


def test_movielens_udata_gz(tmp_path):
    text = "1\t1193\t5\t978300760\n1\t661\t3\t978302109\n2\t914\t4\t978301968\n"
    assert_log(read_movielens(write(tmp_path, "u.data.gz", text, gz=True)), *ML_ROWS)


def test_movielens_gzip_detected_without_extension(tmp_path):
    text = "1::1193::5::978300760\r\n\r\n1::661::3::978302109\r\n2::914::4::978301968"
    assert_log(read_movielens(write(tmp_path, "ratings.dat", text, gz=True)), *ML_ROWS)


def test_movielens_csv(tmp_path):
    text = (
        "userId,movieId,rating,timestamp\n1,1193,5.0,978300760\n1,661,3,978302109\n"
        "2,914,3.5,978301968\n"
    )
    log = read_movielens(write(tmp_path, "ratings.csv", text))
    assert_log(log, ML_ROWS[0], ML_ROWS[1], ML_ROWS[2], [5.0, 3.0, 3.5])


def test_movielens_unknown_layout(tmp_path):
    path = write(tmp_path, "x.txt", "\n1 2 3 4\n")
    with pytest.raises(DataFormatError, match=r"x\.txt:2: .*accepted layouts: ratings\.dat"):
        read_movielens(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ("1::2::5::100\n1::3::5\n", r":2: expected 4 fields separated by '::', found 3"),
        ("1::2::5::100\n\n::3::5::100\n", r":3: missing user id"),
        ("1::2::5::100\n1:: ::5::100\n", r":2: missing item id"),
        ("1::2::5::100\nu1::3::5::100\n", r":2: user id 'u1' is not a non-negative integer"),
        ("1::2::5::100\n1::-3::5::100\n", r":2: negative item id '-3'"),
        ("1::2::5::100\n1::2.5::5::100\n", r":2: item id '2.5' is not"),
        ("1::2::5::100\n1::3::5::\n", r":2: missing timestamp"),
        ("1::2::5::100\n1::3::5::soon\n", r":2: timestamp 'soon' is not a number"),
        ("1::2::5::100\n1::3::5::nan\n", r":2: non-finite timestamp 'nan'"),
        ("1::2::5::100\n1::3::5::inf\n", r":2: non-finite timestamp 'inf'"),
        ("1::2::5::100\n1::3::5::-1\n", r":2: negative timestamp '-1'"),
        ("1::2::5::100\n1::3::five::100\n", r":2: rating 'five' is not a number"),
        ("1::2::5::100\n1::3::::100\n", r":2: missing rating"),
    ],
)
def test_movielens_bad_lines(tmp_path, text, match):
    path = write(tmp_path, "ratings.dat", text)
    with pytest.raises(DataFormatError, match=r"ratings\.dat" + match):
        read_movielens(path)


def test_earliest_bad_line_is_reported(tmp_path):
    text = "1::2::5::100\n1::3::5::nan\nx::3::5::100\n"
    with pytest.raises(DataFormatError, match=r":2: non-finite timestamp"):
        read_movielens(write(tmp_path, "ratings.dat", text))


def test_movielens_line_numbers_count_blank_lines(tmp_path):
    text = "\r\n1\t2\t5\t100\r\n  \r\n\r\n1\t2\t5\t-100\r\n"
    with pytest.raises(DataFormatError, match=r"u\.data:5: negative timestamp '-100'"):
        read_movielens(write(tmp_path, "u.data", text))


# --- Amazon -------------------------------------------------------------------------------


def test_amazon_ratings_csv(tmp_path):
    text = "A1B2C3,B00ABC,5.0,1380000000\nA9,B00XYZ,2,1380000100\nA1B2C3,B00XYZ,4,1370000000\n"
    log = read_amazon(write(tmp_path, "ratings_Beauty.csv", text))
    assert_log(
        log,
        ["A1B2C3", "A9", "A1B2C3"],
        ["B00ABC", "B00XYZ", "B00XYZ"],
        [1380000000, 1380000100, 1370000000],
        [5, 2, 4],
    )


def test_amazon_jsonl(tmp_path):
    records = [
        {
            "reviewerID": "A2",
            "asin": "B1",
            "overall": 4.0,
            "unixReviewTime": 1400000000,
            "reviewText": "ok",
        },
        {"reviewerID": "A1", "asin": "B2", "overall": 1.0, "unixReviewTime": 1300000000},
    ]
    text = "\n".join(json.dumps(r) for r in records) + "\n"
    log = read_amazon(write(tmp_path, "reviews.json.gz", text, gz=True))
    assert_log(log, ["A2", "A1"], ["B1", "B2"], [1400000000, 1300000000], [4, 1])


def test_amazon_jsonl_without_rating(tmp_path):
    text = '{"reviewerID": "A2", "asin": "B1", "unixReviewTime": 5}\n'
    assert_log(read_amazon(write(tmp_path, "r.json", text)), ["A2"], ["B1"], [5])


def test_amazon_tsv(tmp_path):
    text = "user_id\titem_id\ttimestamp\n1\t7873\t1318896000\nu2\t6846\t1318896001\n"
    log = read_amazon(write(tmp_path, "interactions.tsv.gz", text, gz=True))
    assert_log(log, ["1", "u2"], ["7873", "6846"], [1318896000, 1318896001])


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("a.csv", "A1,B1,5,100\nA2,B2,5\n", r"a\.csv:2: expected 4 fields"),
        ("a.csv", "A1,B1,5,100\n,B2,5,100\n", r"a\.csv:2: missing user id"),
        ("a.csv", "A1,B1,5,100\nA1,B1,good,100\n", r"a\.csv:2: rating 'good' is not a number"),
        (
            "a.json",
            '{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n{"reviewerID": "A"',
            r"a\.json:2: invalid JSON",
        ),
        (
            "a.json",
            '{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n\n{"asin": "B"}\n',
            r"a\.json:3: missing key 'reviewerID'",
        ),
        (
            "a.json",
            '{"reviewerID": "A", "asin": "B", "overall": 5, "unixReviewTime": 1}\n'
            '{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n',
            r"a\.json:2: missing key 'overall'",
        ),
        (
            "a.json",
            '{"reviewerID": "A", "asin": "B", "unixReviewTime": 1}\n[1, 2]\n',
            r"a\.json:2: expected a JSON object",
        ),
        (
            "a.json",
            '{"reviewerID": "A", "asin": "", "unixReviewTime": 1}\n',
            r"a\.json:1: missing item id",
        ),
        (
            "a.json",
            '{"reviewerID": "A", "asin": "B", "unixReviewTime": null}\n',
            r"a\.json:1: timestamp 'null' is not a number",
        ),
        ("a.tsv", "user_id\titem_id\ttimestamp\n1\t2\t-5\n", r"a\.tsv:2: negative timestamp"),
        ("a.tsv", "user_id\titem_id\ttimestamp\n1\t2\n", r"a\.tsv:2: expected 3 fields"),
        ("a.txt", "hello\n", r"a\.txt:1: not an Amazon review file.*accepted layouts"),
    ],
)
def test_amazon_bad_lines(tmp_path, name, text, match):
    with pytest.raises(DataFormatError, match=match):
        read_amazon(write(tmp_path, name, text))


# --- Taobao -------------------------------------------------------------------------------

TAOBAO = (
    "1,2268318,2520377,pv,1511544070\n"
    "1,2333346,2520771,buy,1511561733\n"
    "\n"
    "2,2576651,149192,cart,1511572885\n"
    "3,3830808,4181361,fav,1511593493\n"
    "3,2268318,2520377,pv,1511600000\n"
)


def test_taobao_all(tmp_path):
    log = read_taobao(write(tmp_path, "UserBehavior.csv", TAOBAO))
    assert_log(
        log,
        ["1", "1", "2", "3", "3"],
        ["2268318", "2333346", "2576651", "3830808", "2268318"],
        [1511544070, 1511561733, 1511572885, 1511593493, 1511600000],
    )


def test_taobao_behavior_filter(tmp_path):
    path = write(tmp_path, "UserBehavior.csv.gz", TAOBAO, gz=True)
    log = read_taobao(path, behaviors=["buy", "fav"])
    assert_log(log, ["1", "3"], ["2333346", "3830808"], [1511561733, 1511593493])
    assert read_taobao(path, behaviors="pv").item.tolist() == ["2268318", "2268318"]


def test_taobao_filter_leaves_nothing(tmp_path):
    path = write(tmp_path, "t.csv", "1,2,3,pv,100\n")
    with pytest.raises(DataFormatError, match="no interactions left after filtering behaviors"):
        read_taobao(path, behaviors=["buy"])


def test_taobao_unknown_behavior_argument(tmp_path):
    path = write(tmp_path, "t.csv", "1,2,3,pv,100\n")
    with pytest.raises(ValueError, match="unknown Taobao behavior.*'click'.*pv, buy, cart, fav"):
        read_taobao(path, behaviors=["pv", "click"])
    with pytest.raises(ValueError, match="empty"):
        read_taobao(path, behaviors=[])


@pytest.mark.parametrize(
    "text, match",
    [
        ("1,2,3,pv,100\n1,2,3,click,100\n", r":2: unknown behavior 'click'; expected one of pv"),
        ("1,2,3,pv,100\n1,2,3,pv\n", r":2: expected 5 fields"),
        ("1,2,3,pv,100\n-1,2,3,pv,100\n", r":2: negative user id '-1'"),
        ("1,2,3,pv,100\n1,x2,3,pv,100\n", r":2: item id 'x2' is not a non-negative integer"),
        ("1,2,3,pv,100\n1,2,c,pv,100\n", r":2: category id 'c' is not"),
        ("1,2,3,pv,100\n1,2,3,pv,1e999\n", r":2: non-finite timestamp"),
    ],
)
def test_taobao_bad_lines(tmp_path, text, match):
    with pytest.raises(DataFormatError, match=r"t\.csv" + match):
        read_taobao(write(tmp_path, "t.csv", text))


# --- generic CSV --------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [",", "\t", ";", "|"])
def test_csv_sniffs_separator(tmp_path, sep):
    rows = [
        ["ts", "extra", "item", "who", "stars"],
        ["100", "x", "i1", "u1", "4.5"],
        ["50", "y", "i2", "u2", "1"],
    ]
    path = write(tmp_path, "log.txt", "".join(sep.join(r) + "\n" for r in rows))
    log = read_csv(path, user_col="who", item_col="item", time_col="ts", rating_col="stars")
    assert_log(log, ["u1", "u2"], ["i1", "i2"], [100, 50], [4.5, 1])
    log = read_csv(path, user_col="who", item_col="item", time_col="ts", sep=sep)
    assert log.rating is None


def test_csv_quoted_fields_and_gzip(tmp_path):
    text = 'user,item,time\n"Doe, Jane",item 1,10\n"x""y",i2,20\n'
    log = read_csv(
        write(tmp_path, "q.csv.gz", text, gz=True),
        user_col="user",
        item_col="item",
        time_col="time",
    )
    assert_log(log, ["Doe, Jane", 'x"y'], ["item 1", "i2"], [10, 20])


def test_csv_missing_column_lists_header(tmp_path):
    path = write(tmp_path, "log.csv", "\nuser;item;time\nu;i;1\n")
    with pytest.raises(
        DataFormatError, match=r"log\.csv:2: no column 'stamp'.*\['user', 'item', 'time'\]"
    ):
        read_csv(path, user_col="user", item_col="item", time_col="stamp")


@pytest.mark.parametrize(
    "text, match",
    [
        ("user,item,time\nu,i,1\nu,i\n", r":3: expected 3 fields"),
        ("user,item,time\nu,i,1\nu,,1\n", r":3: missing item id"),
        ("user,item,time\nu,i,1\nu,i,x\n", r":3: timestamp 'x' is not a number"),
        ("user,item,time,r\nu,i,1,2\nu,i,1,bad\n", r":3: rating 'bad' is not a number"),
        ('user,item,time\nu,i,1\n"u"x,i,1\n', r":3: malformed delimited line"),
        ("user item time\nu i 1\n", r":1: cannot detect the separator"),
    ],
)
def test_csv_bad_lines(tmp_path, text, match):
    with pytest.raises(DataFormatError, match=r"log\.csv" + match):
        read_csv(
            write(tmp_path, "log.csv", text),
            user_col="user",
            item_col="item",
            time_col="time",
            rating_col="r" if ",r\n" in text else None,
        )


# --- cases shared by every reader ---------------------------------------------------------

READ = {
    "movielens": lambda p: read_movielens(p),
    "amazon": lambda p: read_amazon(p),
    "taobao": lambda p: read_taobao(p),
    "csv": lambda p: read_csv(p, user_col="user", item_col="item", time_col="time"),
}


@pytest.mark.parametrize("fmt", list(READ))
def test_missing_file(tmp_path, fmt):
    path = tmp_path / "nope.csv"
    with pytest.raises(FileNotFoundError, match="nope.csv") as info:
        READ[fmt](path)
    assert not isinstance(info.value, DataFormatError)


@pytest.mark.parametrize("fmt", list(READ))
@pytest.mark.parametrize("text", ["", "\n  \n\r\n"])
@pytest.mark.parametrize("gz", [False, True])
def test_empty_file(tmp_path, fmt, text, gz):
    with pytest.raises(DataFormatError, match=r"empty\.csv: no interactions"):
        READ[fmt](write(tmp_path, "empty.csv", text, gz=gz))


@pytest.mark.parametrize(
    "fmt, header",
    [
        ("movielens", "userId,movieId,rating,timestamp"),
        ("amazon", "user_id\titem_id\ttimestamp"),
        ("csv", "user,item,time"),
    ],
)
def test_header_only(tmp_path, fmt, header):
    with pytest.raises(DataFormatError, match=r"h\.csv: no interactions"):
        READ[fmt](write(tmp_path, "h.csv", header + "\r\n\n"))


@pytest.mark.parametrize("fmt", list(READ))
def test_not_utf8(tmp_path, fmt):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"user,item,time\n\xff\xfe,1,1\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv: not valid UTF-8"):
        READ[fmt](path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_bytes(gzip.compress(b"1::2::5::100\n" * 100)[:-20])
    with pytest.raises(DataFormatError, match=r"ratings\.dat: corrupt gzip"):
        read_movielens(path)


# --- dispatch -----------------------------------------------------------------------------


def test_read_interactions_dispatch(tmp_path):
    ml = write(tmp_path, "ratings.dat", "1::2::5::100\n")
    assert read_interactions("movielens", ml).user.tolist() == ["1"]
    am = write(tmp_path, "a.csv", "A,B,5,100\n")
    assert read_interactions("amazon", am).item.tolist() == ["B"]
    tb = write(tmp_path, "t.csv", "1,2,3,pv,100\n1,3,3,buy,200\n")
    assert read_interactions("taobao", tb, behaviors=["buy"]).item.tolist() == ["3"]
    assert len(read_interactions("taobao", tb, behaviors=None)) == 2
    gen = write(tmp_path, "g.csv", "u|i|t\nx|y|7\n")
    log = read_interactions("csv", gen, user_col="u", item_col="i", time_col="t", sep=None)
    assert log.timestamp.tolist() == [7.0]


def test_read_interactions_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format 'yelp'.*movielens, amazon, taobao, csv"):
        read_interactions("yelp", tmp_path / "x")


# --- real data ----------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.parametrize(
    "fmt, rel, rows, users, items, rated",
    [
        ("movielens", "ml-1m-subset/ratings.dat.gz", 487_650, 2_999, 3_615, True),
        ("movielens", "ml-100k/u.data.gz", 100_000, 943, 1_682, True),
        ("amazon", "amazon-beauty/interactions.tsv.gz", 198_502, 22_363, 12_101, False),
    ],
)
def test_real_data(fmt, rel, rows, users, items, rated):
    path = DATA_DIR / rel
    if not path.is_file():
        pytest.skip(f"{path} not available")
    start = time.perf_counter()
    log = read_interactions(fmt, path)
    elapsed = time.perf_counter() - start
    assert len(log) == rows
    assert len(np.unique(log.user)) == users
    assert len(np.unique(log.item)) == items
    assert (log.rating is not None) == rated
    assert np.all(log.timestamp > 0)
    if rated:
        assert set(np.unique(log.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert elapsed < 10, f"reading {rel} took {elapsed:.1f} s"
