"""Readers from raw interaction logs to one :class:`Interactions` container.

Every reader keeps the rows in file order (no deduplication, no sorting) and checks every
field; a malformed file raises :class:`~mdgr_graph.data.errors.DataFormatError` naming the
file and the 1-based line. Gzip is detected by its magic bytes, whatever the file is called.
Text is UTF-8 (a byte-order mark is skipped); blank lines are skipped but counted, and
Windows line endings are accepted.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdgr_graph.data.errors import DataFormatError

PathLike = str | os.PathLike

TAOBAO_BEHAVIORS = ("pv", "buy", "cart", "fav")

_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_SEPS = (",", "\t", ";", "|")
_MOVIELENS_LAYOUTS = (
    "ratings.dat ('user::item::rating::timestamp', no header), "
    "u.data ('user<TAB>item<TAB>rating<TAB>timestamp', no header), "
    "ratings.csv (header 'userId,movieId,rating,timestamp')"
)
_AMAZON_LAYOUTS = (
    "ratings CSV ('user,item,rating,timestamp', no header), "
    "review JSON lines (keys 'reviewerID', 'asin', 'unixReviewTime', optional 'overall'), "
    "TSV with header 'user_id<TAB>item_id<TAB>timestamp'"
)


@dataclass
class Interactions:
    """A parsed interaction log, one entry per row of the file, in file order.

    Attributes:
        user: ``[N]`` raw user ids as written in the file (numpy unicode array).
        item: ``[N]`` raw item ids as written in the file (numpy unicode array).
        timestamp: ``[N]`` Unix seconds, ``float64``.
        rating: ``[N]`` ``float64`` ratings, or ``None`` when the format has none.
        source: the path read.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    rating: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.user)


class _Columns:
    """Raw fields collected row by row, with the line number of every row."""

    def __init__(self, path: str, rated: bool) -> None:
        self.path = path
        self.lines: list[int] = []
        self.user: list[str] = []
        self.item: list[str] = []
        self.timestamp: list[Any] = []
        self.rating: list[Any] | None = [] if rated else None

    def finish(
        self, integer_ids: bool, extra_ids: dict[str, list[str]] | None = None
    ) -> Interactions:
        """Convert and check every column; the earliest bad line is reported.

        Args:
            integer_ids: ids must be non-negative integers.
            extra_ids: more id columns to check the same way, by name (not returned).
        """
        if not self.lines:
            raise DataFormatError("no interactions", self.path)
        out, problem = self.convert(integer_ids, extra_ids)
        if problem is not None:
            raise DataFormatError(problem[1], self.path, problem[0])
        return out

    def convert(
        self, integer_ids: bool, extra_ids: dict[str, list[str]] | None = None
    ) -> tuple[Interactions, tuple[int, str] | None]:
        """Convert and check every column of at least one row, without raising.

        Returns:
            The interactions and the earliest problem as ``(line, message)``, or ``None``
            (the chunked reader defers a problem while it checks the rest of the file).
        """
        problems: list[tuple[int, str]] = []
        user = _check_ids(self.user, "user", integer_ids, problems)
        item = _check_ids(self.item, "item", integer_ids, problems)
        for name, values in (extra_ids or {}).items():
            _check_ids(values, name, integer_ids, problems)
        timestamp = _check_floats(self.timestamp, "timestamp", problems, non_negative=True)
        rating = None
        if self.rating is not None:
            rating = _check_floats(self.rating, "rating", problems, non_negative=False)
        problem = None
        if problems:
            row, message = min(problems)
            problem = (self.lines[row], message)
        return Interactions(user, item, timestamp, rating, self.path), problem


def _check_ids(
    values: list[str], name: str, integer: bool, problems: list[tuple[int, str]]
) -> np.ndarray:
    arr = np.array(values, dtype=str)
    bad = (arr == "") | np.char.isspace(arr)
    if integer:
        bad |= ~np.char.isdecimal(arr)
        if arr.view(np.uint32).max() >= 128:
            bad |= ~np.array([v.isascii() for v in values])
    if bad.any():
        row = int(bad.argmax())
        problems.append((row, _id_problem(name, values[row], integer)))
    return arr


def _id_problem(name: str, value: str, integer: bool) -> str:
    if not value.strip():
        return f"missing {name} id"
    if integer and value.startswith("-") and value[1:].isdecimal():
        return f"negative {name} id {value!r}"
    return f"{name} id {value!r} is not a non-negative integer"


def _check_floats(
    values: list[Any], name: str, problems: list[tuple[int, str]], non_negative: bool
) -> np.ndarray:
    try:
        out = np.array(values, dtype=np.float64)
    except (ValueError, TypeError):
        out = np.zeros(len(values), dtype=np.float64)
        for row, value in enumerate(values):
            number = _as_float(value)
            if number is None:
                missing = isinstance(value, str) and not value.strip()
                problems.append(
                    (row, f"missing {name}" if missing else f"{name} {value!r} is not a number")
                )
                break
            out[row] = number
    bad = ~np.isfinite(out)
    if non_negative:
        bad |= out < 0
    if bad.any():
        row = int(bad.argmax())
        kind = "negative" if out[row] < 0 else "non-finite"
        problems.append((row, f"{kind} {name} {values[row]!r}"))
    return out


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@contextlib.contextmanager
def _open_lines(path: PathLike) -> Iterator[Iterator[tuple[int, str]]]:
    """Yield the non-blank lines of ``path`` as ``(line_number, text)``, gunzipping if needed."""
    source = os.fspath(path)
    raw = open(source, "rb")
    try:
        gzipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="\n")
        try:
            yield _nonblank(text)
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"not valid UTF-8 text ({exc.reason})", source) from exc
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataFormatError(f"corrupt gzip data ({exc})", source) from exc
        finally:
            text.close()
    finally:
        raw.close()


def _nonblank(text: io.TextIOBase) -> Iterator[tuple[int, str]]:
    for lineno, line in enumerate(text, 1):
        line = line.rstrip("\r\n")
        if line and not line.isspace():
            yield lineno, line


def _first(lines: Iterator[tuple[int, str]], path: str) -> tuple[int, str]:
    first = next(lines, None)
    if first is None:
        raise DataFormatError("no interactions", path)
    return first


def _chain(first: tuple[int, str], rest: Iterator[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    yield first
    yield from rest


def _split_rows(
    lines: Iterator[tuple[int, str]], path: str, sep: str, ncols: int
) -> Iterator[tuple[int, list[str]]]:
    for lineno, line in lines:
        fields = line.split(sep)
        if len(fields) != ncols:
            raise DataFormatError(
                f"expected {ncols} fields separated by {sep!r}, found {len(fields)}",
                path,
                lineno,
            )
        yield lineno, fields


def _read_ratings(
    lines: Iterator[tuple[int, str]], path: str, sep: str, integer_ids: bool
) -> Interactions:
    """Header-less ``user<sep>item<sep>rating<sep>timestamp``."""
    cols = _Columns(path, rated=True)
    linenos, user, item, ts = cols.lines, cols.user, cols.item, cols.timestamp
    rating: list[Any] = cols.rating if cols.rating is not None else []
    for lineno, line in lines:
        row = line.split(sep)
        if len(row) != 4:
            raise DataFormatError(
                f"expected 4 fields separated by {sep!r}, found {len(row)}", path, lineno
            )
        linenos.append(lineno)
        user.append(row[0])
        item.append(row[1])
        rating.append(row[2])
        ts.append(row[3])
    return cols.finish(integer_ids)


def _csv_rows(
    lines: Iterator[tuple[int, str]], path: str, sep: str
) -> Iterator[tuple[int, list[str]]]:
    """Parse delimited lines with quoting; each row comes with the line it ends on."""
    current = [0]

    def feed() -> Iterator[str]:
        for lineno, line in lines:
            current[0] = lineno
            yield line + "\n"

    reader = csv.reader(feed(), delimiter=sep, strict=True)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataFormatError(f"malformed delimited line ({exc})", path, current[0]) from exc
        yield current[0], row


def _sniff_sep(header_line: int, header_text: str, path: str, sep: str | None) -> str:
    """``sep`` if given, else the most frequent of :data:`_SNIFF_SEPS` in the header."""
    if sep is not None:
        return sep
    counts = {s: header_text.count(s) for s in _SNIFF_SEPS}
    sep = max(_SNIFF_SEPS, key=counts.__getitem__)
    if counts[sep] == 0:
        raise DataFormatError(
            f"cannot detect the separator of header {header_text!r} "
            f"(tried {', '.join(map(repr, _SNIFF_SEPS))}); pass sep=",
            path,
            header_line,
        )
    return sep


def _column_index(
    header: list[str],
    header_line: int,
    path: str,
    sep: str,
    columns: tuple[str, str, str, str | None],
) -> list[int | None]:
    """Positions of the named ``columns`` in the parsed ``header`` (``None`` stays ``None``)."""
    header = [name.strip() for name in header]
    index = []
    for name in columns:
        if name is not None and name not in header:
            raise DataFormatError(
                f"no column {name!r}; the header (separator {sep!r}) has {header}",
                path,
                header_line,
            )
        index.append(None if name is None else header.index(name))
    return index


def _collect_rows(
    rows: Iterator[tuple[int, list[str]]],
    path: str,
    sep: str,
    ncols: int,
    index: list[int | None],
    cols: _Columns,
) -> None:
    """Append the fields picked by ``index`` (user, item, time, rating) of every row."""
    u, i, t, r = index
    assert u is not None and i is not None and t is not None
    rating: list[Any] = cols.rating if cols.rating is not None else []
    for lineno, row in rows:
        if len(row) != ncols:
            raise DataFormatError(
                f"expected {ncols} fields separated by {sep!r} (as in the header), "
                f"found {len(row)}",
                path,
                lineno,
            )
        cols.lines.append(lineno)
        cols.user.append(row[u])
        cols.item.append(row[i])
        cols.timestamp.append(row[t])
        if r is not None:
            rating.append(row[r])


def _read_with_header(
    lines: Iterator[tuple[int, str]],
    path: str,
    sep: str | None,
    columns: tuple[str, str, str, str | None],
    integer_ids: bool,
) -> Interactions:
    """Read a delimited file whose first non-blank line names the columns."""
    header_line, header_text = _first(lines, path)
    sep = _sniff_sep(header_line, header_text, path, sep)
    rows = _csv_rows(_chain((header_line, header_text), lines), path, sep)
    _, header = next(rows)
    index = _column_index(header, header_line, path, sep, columns)
    cols = _Columns(path, rated=index[3] is not None)
    _collect_rows(rows, path, sep, len(header), index, cols)
    return cols.finish(integer_ids)


def read_movielens(path: PathLike) -> Interactions:
    """Read a MovieLens rating file, detecting its layout from the first non-blank line.

    Accepted layouts: ``ratings.dat`` (``user::item::rating::timestamp``), ``u.data``
    (tab-separated, same fields) and ``ratings.csv`` (header
    ``userId,movieId,rating,timestamp``). Ids must be non-negative integers.

    Args:
        path: the file, plain or gzipped.

    Returns:
        The interactions with ratings, in file order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DataFormatError: if the layout is not recognised or a line is malformed.
    """
    source = os.fspath(path)
    with _open_lines(source) as lines:
        first = _first(lines, source)
        text = first[1]
        rows = _chain(first, lines)
        if "::" in text:
            return _read_ratings(rows, source, "::", integer_ids=True)
        if "\t" in text:
            return _read_ratings(rows, source, "\t", integer_ids=True)
        if text.startswith("userId"):
            columns = ("userId", "movieId", "timestamp", "rating")
            return _read_with_header(rows, source, ",", columns, integer_ids=True)
        raise DataFormatError(
            f"not a MovieLens rating file (first line {text!r}); "
            f"accepted layouts: {_MOVIELENS_LAYOUTS}",
            source,
            first[0],
        )


def _read_amazon_jsonl(lines: Iterator[tuple[int, str]], path: str) -> Interactions:
    cols: _Columns | None = None
    for lineno, line in lines:
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataFormatError(f"invalid JSON ({exc})", path, lineno) from exc
        except RecursionError as exc:
            raise DataFormatError("invalid JSON (nested too deeply)", path, lineno) from exc
        if not isinstance(record, dict):
            raise DataFormatError(
                f"expected a JSON object, found {type(record).__name__}", path, lineno
            )
        if cols is None:
            cols = _Columns(path, rated="overall" in record)
        keys = ("reviewerID", "asin", "unixReviewTime")
        if cols.rating is not None:
            keys += ("overall",)
        for key in keys:
            if key not in record:
                raise DataFormatError(f"missing key {key!r}", path, lineno)
        user, item = record["reviewerID"], record["asin"]
        for key, value in (("reviewerID", user), ("asin", item)):
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise DataFormatError(
                    f"{key} must be a string, found {json.dumps(value)}", path, lineno
                )
        cols.lines.append(lineno)
        cols.user.append(str(user))
        cols.item.append(str(item))
        cols.timestamp.append(_json_number(record["unixReviewTime"], "unixReviewTime",
                                           path, lineno))
        if cols.rating is not None:
            cols.rating.append(_json_number(record["overall"], "overall", path, lineno))
    if cols is None:
        raise DataFormatError("no interactions", path)
    return cols.finish(integer_ids=False)


def _json_number(value: Any, key: str, path: str, lineno: int) -> Any:
    """Numbers pass (an integer beyond float64 is a :class:`DataFormatError`); anything else
    is kept as text so the checks report it."""
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > 2**1023:  # float() would raise OverflowError
            raise DataFormatError(f"{key} is too large ({str(value)[:20]}...)", path, lineno)
        return value
    if isinstance(value, float):
        return value
    return value if isinstance(value, str) else json.dumps(value)


def read_amazon(path: PathLike) -> Interactions:
    """Read Amazon review data, detecting its layout from the first non-blank line.

    Accepted layouts: a ratings CSV ``user,item,rating,timestamp`` without header; review
    JSON lines with keys ``reviewerID``, ``asin``, ``unixReviewTime`` and optionally
    ``overall`` (the rating, required on every line when the first has it); a TSV with
    header ``user_id<TAB>item_id<TAB>timestamp`` (a ``rating`` column is read if present).
    Ids are kept as strings.

    Args:
        path: the file, plain or gzipped.

    Returns:
        The interactions in file order; ``rating`` is ``None`` when the layout has none.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DataFormatError: if the layout is not recognised or a line is malformed.
    """
    source = os.fspath(path)
    with _open_lines(source) as lines:
        first = _first(lines, source)
        text = first[1]
        rows = _chain(first, lines)
        if text.lstrip().startswith("{"):
            return _read_amazon_jsonl(rows, source)
        header = [name.strip() for name in text.split("\t")]
        if header[:2] == ["user_id", "item_id"]:
            rating = "rating" if "rating" in header else None
            columns = ("user_id", "item_id", "timestamp", rating)
            return _read_with_header(rows, source, "\t", columns, integer_ids=False)
        if "," in text:
            return _read_ratings(rows, source, ",", integer_ids=False)
        raise DataFormatError(
            f"not an Amazon review file (first line {text!r}); accepted layouts: {_AMAZON_LAYOUTS}",
            source,
            first[0],
        )


def read_taobao(path: PathLike, behaviors: Sequence[str] | None = None) -> Interactions:
    """Read the Taobao ``UserBehavior.csv`` log: ``user,item,category,behavior,timestamp``.

    Args:
        path: the file, plain or gzipped, without header.
        behaviors: behaviors to keep (of ``pv``, ``buy``, ``cart``, ``fav``); ``None`` keeps
            all.

    Returns:
        The kept interactions in file order, without ratings.

    Raises:
        ValueError: if ``behaviors`` is empty or names an unknown behavior.
        FileNotFoundError: if ``path`` does not exist.
        DataFormatError: if a line is malformed or no row is left after filtering.
    """
    behaviors = check_behaviors(behaviors)
    source = os.fspath(path)
    with _open_lines(source) as lines:
        cols, category, behavior = _taobao_rows(lines, source)
    out = cols.finish(integer_ids=True, extra_ids={"category": category})
    if behaviors is None:
        return out
    keep = np.isin(np.array(behavior), list(behaviors))
    if not keep.any():
        raise DataFormatError(
            f"no interactions left after filtering behaviors {sorted(set(behaviors))}", source
        )
    return Interactions(out.user[keep], out.item[keep], out.timestamp[keep], None, source)


def check_behaviors(behaviors: Sequence[str] | str | None) -> list[str] | None:
    """Validate a Taobao behaviour filter; a single name becomes a one-element list."""
    if isinstance(behaviors, str):
        behaviors = [behaviors]
    if behaviors is None:
        return None
    unknown = sorted(set(behaviors) - set(TAOBAO_BEHAVIORS))
    if unknown:
        raise ValueError(
            f"unknown Taobao behavior(s) {unknown}; valid ones: {', '.join(TAOBAO_BEHAVIORS)}"
        )
    if not behaviors:
        raise ValueError(f"behaviors is empty; pick from {', '.join(TAOBAO_BEHAVIORS)}")
    return list(behaviors)


def _taobao_rows(
    lines: Iterator[tuple[int, str]], source: str
) -> tuple[_Columns, list[str], list[str]]:
    """Split ``user,item,category,behavior,timestamp`` lines; unknown behaviours raise."""
    valid = frozenset(TAOBAO_BEHAVIORS)
    cols = _Columns(source, rated=False)
    category: list[str] = []
    behavior: list[str] = []
    for lineno, row in _split_rows(lines, source, ",", 5):
        if row[3] not in valid:
            raise DataFormatError(
                f"unknown behavior {row[3]!r}; expected one of {', '.join(TAOBAO_BEHAVIORS)}",
                source,
                lineno,
            )
        cols.lines.append(lineno)
        cols.user.append(row[0])
        cols.item.append(row[1])
        category.append(row[2])
        behavior.append(row[3])
        cols.timestamp.append(row[4])
    return cols, category, behavior


def read_csv(
    path: PathLike,
    *,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str | None = None,
    sep: str | None = None,
) -> Interactions:
    """Read a delimited file with a header row, picking the columns by name.

    Fields may be quoted as in CSV. Ids are kept as strings.

    Args:
        path: the file, plain or gzipped.
        user_col: name of the user id column.
        item_col: name of the item id column.
        time_col: name of the Unix-seconds timestamp column.
        rating_col: name of the rating column, or ``None`` for no rating.
        sep: the separator; ``None`` picks the most frequent of ``,``, tab, ``;`` and
            ``|`` in the header line.

    Returns:
        The interactions in file order.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DataFormatError: if a column is missing or a line is malformed.
    """
    check_sep(sep)
    source = os.fspath(path)
    columns = (user_col, item_col, time_col, rating_col)
    with _open_lines(source) as lines:
        return _read_with_header(lines, source, sep, columns, integer_ids=False)


def check_sep(sep: str | None) -> None:
    """A given separator must be one character."""
    if sep is not None and len(sep) != 1:
        raise ValueError(f"sep must be a single character, got {sep!r}")


READERS: dict[str, Callable[..., Interactions]] = {
    "movielens": read_movielens,
    "amazon": read_amazon,
    "taobao": read_taobao,
    "csv": read_csv,
}


def read_interactions(format: str, path: PathLike, **options: Any) -> Interactions:
    """Read ``path`` with the reader registered for ``format``.

    Args:
        format: one of ``movielens``, ``amazon``, ``taobao``, ``csv``.
        path: the file to read.
        **options: passed on to the reader (e.g. ``behaviors`` for Taobao, the column names
            for CSV).

    Returns:
        The parsed interactions.

    Raises:
        ValueError: if ``format`` is unknown.
    """
    reader = READERS.get(format)
    if reader is None:
        raise ValueError(f"unknown format {format!r}; valid formats: {', '.join(READERS)}")
    return reader(path, **options)
