"""Reading logs larger than memory in chunks (``DataOptions.chunk_rows``, ``--chunk-rows``).

The file (plain or gzipped) is cut into chunks of ``chunk_rows`` lines. Each chunk is
parsed by ``pyarrow.csv.read_csv`` into string columns, checked with vectorised pyarrow
kernels and reduced to three compact columns per kept row: the user and the item as
``int32`` codes into dictionaries of the distinct raw ids, and the timestamp as ``float64``.
At the end the dictionaries are sorted, the codes become ranks, and the result is the
:class:`~mdgr_graph.data.preprocess.EncodedLog` the in-memory readers give, so
:func:`~mdgr_graph.data.preprocess.build_sequences` (duplicates, k-core filtering,
remapping) runs the same code on the same input and produces the same arrays.

**What is bounded.** While the file is read, memory holds the text of one chunk, its parsed
string columns and a few masks (several times the chunk's bytes), plus the dictionaries of
distinct user and item ids; nothing holds a Python object per row. The three columns of the
kept rows (16 bytes a row) are appended to anonymous temporary files (``TMPDIR``) and read
back once at the end. **What grows with the rows**: those columns once read back, and
preprocessing, which sorts and filters them in memory (its peak is several times 16 bytes
a row). The in-memory readers instead hold every field of every row as a Python string.

**Why not ``pyarrow.csv.open_csv``.** Its batches carry no line numbers and it drops blank
lines silently, so an error could not name its line. Cutting the byte stream at newlines
here (vectorised with numpy) keeps each chunk's first line number, and pyarrow parses each
chunk from memory.

**Exactness.** A chunk takes the fast path only when it is plainly well formed: it parses
with the expected number of rows and columns, every id passes the reader's rule, every
timestamp is a plain non-negative decimal (``123``, ``1.5e9``), and, for ``csv``, the chunk
has no quote character, NUL byte or carriage return inside a line. Anything else (a
malformed line, a quoted field, an unusual timestamp such as ``1_000`` or ``-0``) sends
the chunk through the in-memory readers' own line-by-line code, so every accepted value
and every error message is theirs. As in the in-memory readers, a wrong column count or
unknown behaviour is reported at once, while a bad id or timestamp is remembered and
reported after the rest of the file has been checked for the former. One difference: a
quoted ``csv`` field may not span lines here (a chunk boundary could cut it), and such a
file gets its own error naming the line where the field starts.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mdgr_graph.data import readers
from mdgr_graph.data.errors import DataFormatError
from mdgr_graph.data.preprocess import EncodedLog

CHUNKED_FORMATS = ("taobao", "csv")

#: bytes asked of the (decompressed) stream per read
READ_BYTES = 1 << 22
_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_INT32_MAX = np.iinfo(np.int32).max
#: characters Python's ``str.isspace`` accepts, in RE2 syntax
_PY_SPACE = (
    r"[\t\n\x0b\x0c\r\x1c-\x1f \x{85}\x{a0}\x{1680}\x{2000}-\x{200a}"
    r"\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]"
)
_BLANK_ID = f"^{_PY_SPACE}*$"
#: timestamps the fast path converts; Python's float() reads these the same way
_PLAIN_FLOAT = r"^\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_SPANS_LINES = (
    "a quoted field is not closed on its line; the chunked reader (chunk_rows) needs "
    "every row on one line: read this file without chunk_rows"
)


def import_pyarrow() -> Any:
    """Import ``pyarrow`` with its ``csv`` and ``compute`` modules, or say how to get it.

    Raises:
        ImportError: if pyarrow is not installed.
    """
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv
    except ImportError as exc:
        raise ImportError(
            "reading a log in chunks (chunk_rows, --chunk-rows) requires 'pyarrow': "
            "pip install pyarrow, or install mdgr_graph with its 'large' extra "
            "(pip install -e '.[large]')"
        ) from exc
    return pyarrow


def read_taobao_chunked(
    path: readers.PathLike, behaviors: Sequence[str] | None = None, *, chunk_rows: int
) -> EncodedLog:
    """Read a Taobao ``UserBehavior.csv`` log in chunks; see :func:`readers.read_taobao`.

    Args:
        path: the file, plain or gzipped, without header.
        behaviors: behaviors to keep (of ``pv``, ``buy``, ``cart``, ``fav``); ``None`` keeps
            all.
        chunk_rows: lines per chunk.

    Returns:
        The kept rows with their ids ranked, equal to
        ``EncodedLog.from_interactions(read_taobao(path, behaviors))``.

    Raises:
        ImportError: if pyarrow is missing.
        ValueError: for a bad ``behaviors`` or ``chunk_rows``.
        DataFormatError: as :func:`readers.read_taobao`.
    """
    behaviors = readers.check_behaviors(behaviors)
    return _TaobaoReader(path, chunk_rows, behaviors).read()


def read_csv_chunked(
    path: readers.PathLike,
    *,
    user_col: str,
    item_col: str,
    time_col: str,
    sep: str | None = None,
    chunk_rows: int,
) -> EncodedLog:
    """Read a delimited file with a header in chunks; see :func:`readers.read_csv`.

    Args:
        path: the file, plain or gzipped.
        user_col, item_col, time_col: column names, as in :func:`readers.read_csv`.
        sep: the separator, sniffed from the header when ``None``.
        chunk_rows: lines per chunk.

    Returns:
        The rows with their ids ranked, equal to
        ``EncodedLog.from_interactions(read_csv(path, ...))``.

    Raises:
        ImportError: if pyarrow is missing.
        ValueError: for a bad ``sep`` or ``chunk_rows``.
        DataFormatError: as :func:`readers.read_csv`, and for a quoted field spanning lines.
    """
    readers.check_sep(sep)
    return _CsvReader(path, chunk_rows, (user_col, item_col, time_col), sep).read()


def read_chunked(
    format: str, path: readers.PathLike, chunk_rows: int, **options: Any
) -> EncodedLog:
    """Dispatch to :func:`read_taobao_chunked` or :func:`read_csv_chunked` by ``format``."""
    if format == "taobao":
        return read_taobao_chunked(path, chunk_rows=chunk_rows, **options)
    if format == "csv":
        return read_csv_chunked(path, chunk_rows=chunk_rows, **options)
    raise ValueError(
        f"chunked reading supports formats {', '.join(CHUNKED_FORMATS)}, not {format!r}"
    )


# ---------------------------------------------------------------------- the byte stream
def _read_block(stream: Any, path: str) -> bytes:
    try:
        return stream.read(READ_BYTES)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataFormatError(f"corrupt gzip data ({exc})", path) from exc


def line_chunks(path: str, chunk_rows: int) -> Iterator[tuple[int, bytes]]:
    """Yield ``(first_line, data)``: ``chunk_rows`` whole lines at a time, gunzipped if needed.

    Lines end at ``\\n`` (as in the in-memory readers); the last chunk may be shorter and
    its last line may lack the newline. A UTF-8 byte-order mark at the start is dropped.
    Memory: one chunk plus one read block.
    """
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        pending = bytearray()
        newlines = 0
        first_line = 1
        eof = False
        while not eof:
            block = _read_block(stream, path)
            eof = not block
            pending += block
            newlines += block.count(b"\n")
            del block
            cuts: list[int] = []
            if newlines >= chunk_rows:
                ends = np.flatnonzero(np.frombuffer(pending, dtype=np.uint8) == 10)
                cuts = (ends[chunk_rows - 1 :: chunk_rows] + 1).tolist()
                del ends
            if eof and (cuts[-1] if cuts else 0) < len(pending):
                cuts.append(len(pending))
            if not cuts:
                continue
            # copy the chunks out, then drop them from `pending` before anyone parses them
            with memoryview(pending) as view:
                chunks = [bytes(view[a:b]) for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
            del pending[: cuts[-1]]
            newlines = 0 if eof else newlines - chunk_rows * len(chunks)
            chunks.reverse()
            while chunks:
                data = chunks.pop()
                lines = data.count(b"\n")
                if first_line == 1:
                    data = data.removeprefix(_BOM)
                yield first_line, data
                first_line += lines


def _check_utf8(pa: Any, data: bytes, path: str) -> None:
    """Vectorised UTF-8 check of a whole chunk, with the in-memory readers' message."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    text = pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        text.validate(full=True)  # no copy
    except pa.ArrowInvalid:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"not valid UTF-8 text ({exc.reason})", path) from exc
        raise


def _count_rows(data: bytes) -> tuple[int, bool]:
    """``(rows, plain)``: lines pyarrow parses as rows, and whether it splits lines as we do.

    A line is skipped by pyarrow when it is empty or only carriage returns; ``plain`` is
    false when a carriage return sits inside a line (pyarrow would end the row there).
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    if len(arr) == 0:
        return 0, True
    starts = np.flatnonzero(arr[:-1] == 10) + 1
    first = np.concatenate([arr[:1], arr[starts]])
    rows = int(np.count_nonzero((first != 10) & (first != 13)))
    plain = True
    if b"\r" in data:
        cr = np.flatnonzero(arr[:-1] == 13)
        after = arr[cr + 1]
        plain = not bool(np.any((after != 10) & (after != 13)))
    return rows, plain


def _parse(
    pa: Any, data: bytes, ncols: int, sep: str, needed: Sequence[int]
) -> Any | None:
    """Parse a quote-free chunk into string columns ``f<i>``; ``None`` when pyarrow refuses."""
    names = [f"f{i}" for i in range(ncols)]
    try:
        return pa.csv.read_csv(
            pa.BufferReader(data),
            # one block: every column comes back as one array, no copy to combine chunks
            read_options=pa.csv.ReadOptions(
                column_names=names, block_size=min(len(data) + 1, 1 << 30), use_threads=False
            ),
            parse_options=pa.csv.ParseOptions(
                delimiter=sep,
                quote_char=False,
                double_quote=False,
                escape_char=False,
                newlines_in_values=False,
                ignore_empty_lines=True,
            ),
            convert_options=pa.csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                include_columns=[names[i] for i in sorted(set(needed))],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
                check_utf8=False,  # the whole chunk was checked
            ),
        )
    except pa.ArrowInvalid:
        return None


def _one_array(column: Any) -> Any:
    """A parsed column as one array (without a copy when it already is one chunk)."""
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _plain_floats(pa: Any, strings: Any) -> np.ndarray | None:
    """Timestamps as float64 when every one is a plain finite non-negative decimal."""
    pc = pa.compute
    if not pc.all(pc.ascii_is_decimal(strings)).as_py():
        if not pc.all(pc.match_substring_regex(strings, _PLAIN_FLOAT)).as_py():
            return None
    try:
        # a numpy-owned copy: kept Arrow buffers would pin freed pool memory between them
        values = np.array(pc.cast(strings, pa.float64()).to_numpy())
    except pa.ArrowInvalid:
        return None
    return values if np.isfinite(values).all() else None


def _offset_lines(text: str, first_line: int) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a chunk with their line numbers in the file."""
    for lineno, line in readers._nonblank(io.StringIO(text, newline="\n")):
        yield first_line - 1 + lineno, line


# ---------------------------------------------------------------------- ids
class _IdTable:
    """Distinct raw ids seen so far (pyarrow strings, in order of first appearance)."""

    def __init__(self, pa: Any) -> None:
        self.pa = pa
        self.values = pa.array([], type=pa.large_string())
        self.width = 1  # numpy unicode width of the in-memory reader's id column

    def encode(self, strings: Any) -> np.ndarray:
        """``int32`` codes of ``strings`` (a pyarrow string array), adding new ids."""
        pa, pc = self.pa, self.pa.compute
        encoded = pc.dictionary_encode(strings)
        local = encoded.dictionary.cast(pa.large_string())
        found = pc.index_in(local, value_set=self.values)
        new = pc.is_null(found).to_numpy(zero_copy_only=False)
        position = pc.fill_null(found, -1).to_numpy().astype(np.int64)
        position[new] = len(self.values) + np.arange(int(new.sum()))
        if new.any():
            self.values = pa.concat_arrays([self.values, local.filter(pa.array(new))])
        if len(self.values) > _INT32_MAX:
            raise ValueError(f"more than {_INT32_MAX} distinct ids: too many for int32 codes")
        return position.astype(np.int32)[encoded.indices.to_numpy()]

    def ranked(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, rank)``: the ids sorted as numpy sorts them, and each code's rank.

        Arrow sorts strings by UTF-8 bytes, which is code-point order, numpy's order.
        """
        order = self.pa.compute.sort_indices(self.values).to_numpy()
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        ids = np.empty(len(order), dtype=f"<U{self.width}")
        in_order = self.values.take(self.pa.array(order))
        step = 1 << 20  # bounded Python strings at a time, one per distinct id
        for start in range(0, len(order), step):
            ids[start : start + step] = in_order.slice(start, step).to_numpy(
                zero_copy_only=False
            )
        return ids, rank


class _Spill:
    """A column appended chunk by chunk to an anonymous temporary file, read back once.

    Kept rows' columns wait on disk rather than in memory: while reading, memory holds one
    chunk and the id dictionaries only, and the columns are read back in one piece at the
    end, with no second copy (many small arrays would also fragment the heap).
    """

    def __init__(self, dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.file = tempfile.TemporaryFile(prefix="mdgr-chunked-")
        self.size = 0

    def append(self, values: np.ndarray) -> None:
        self.file.write(memoryview(np.ascontiguousarray(values, dtype=self.dtype)).cast("B"))
        self.size += len(values)

    def read(self) -> np.ndarray:
        out = np.empty(self.size, dtype=self.dtype)
        self.file.seek(0)
        if self.file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OSError(f"short read from the temporary file {self.file.name}")
        self.close()
        return out

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------- readers
class _ChunkedReader:
    """Shared machinery: chunks, UTF-8, accumulation, deferred problems, the result."""

    def __init__(self, path: readers.PathLike, chunk_rows: int) -> None:
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
        self.pa = import_pyarrow()
        self.path = os.fspath(path)
        self.chunk_rows = chunk_rows
        self.users = _IdTable(self.pa)
        self.items = _IdTable(self.pa)
        self.user_codes = _Spill(np.int32)
        self.item_codes = _Spill(np.int32)
        self.times = _Spill(np.float64)
        self.rows = 0  # rows read, before any filter
        self.kept = 0
        self.problem: tuple[int, str] | None = None  # the earliest bad value, deferred

    def read(self) -> EncodedLog:
        try:
            for first_line, data in line_chunks(self.path, self.chunk_rows):
                _check_utf8(self.pa, data, self.path)
                self.chunk(first_line, data)
            if self.rows == 0:
                raise DataFormatError("no interactions", self.path)
            if self.problem is not None:
                raise DataFormatError(self.problem[1], self.path, self.problem[0])
            self.check_kept()
            user_ids, user_rank = self.users.ranked()
            item_ids, item_rank = self.items.ranked()
            return EncodedLog(
                user_ids=user_ids,
                user=user_rank[self.user_codes.read()],
                item_ids=item_ids,
                item=item_rank[self.item_codes.read()],
                timestamp=self.times.read(),
                source=self.path,
            )
        finally:
            for spill in (self.user_codes, self.item_codes, self.times):
                spill.close()

    def chunk(self, first_line: int, data: bytes) -> None:
        raise NotImplementedError

    def check_kept(self) -> None:
        """Raise when a filter left nothing (taobao)."""

    def add(
        self, user: Any, item: Any, times: np.ndarray, widths: tuple[int, int], rows: int
    ) -> None:
        """Record a checked chunk: every row's id widths, then the kept rows' columns."""
        self.rows += rows
        self.users.width = max(self.users.width, widths[0])
        self.items.width = max(self.items.width, widths[1])
        if self.problem is not None or len(times) == 0:
            return  # the file is already known to be bad: only its structure is checked
        self.user_codes.append(self.users.encode(user))
        self.item_codes.append(self.items.encode(item))
        self.times.append(times)
        self.kept += len(times)

    def defer(self, problem: tuple[int, str] | None) -> None:
        if problem is not None and self.problem is None:
            self.problem = problem

    def widths(self, *columns: Any) -> tuple[int, ...]:
        pc = self.pa.compute
        return tuple(int(pc.max(pc.utf8_length(c)).as_py() or 0) for c in columns)


class _TaobaoReader(_ChunkedReader):
    def __init__(
        self, path: readers.PathLike, chunk_rows: int, behaviors: list[str] | None
    ) -> None:
        super().__init__(path, chunk_rows)
        self.behaviors = behaviors
        self.valid = self.pa.array(readers.TAOBAO_BEHAVIORS)
        self.keep = None if behaviors is None else self.pa.array(sorted(set(behaviors)))

    def chunk(self, first_line: int, data: bytes) -> None:
        rows, plain = _count_rows(data)
        if plain and rows == 0:
            return
        if not (plain and self.fast(data, rows)):
            self.slow(first_line, data)

    def fast(self, data: bytes, rows: int) -> bool:
        pa, pc = self.pa, self.pa.compute
        table = _parse(pa, data, 5, ",", range(5))
        if table is None or table.num_rows != rows:
            return False
        user, item, category, behavior, ts = map(_one_array, table.columns)
        if not pc.all(pc.is_in(behavior, value_set=self.valid)).as_py():
            return False
        for ids in (user, item, category):
            if not pc.all(pc.ascii_is_decimal(ids)).as_py():
                return False
        times = _plain_floats(pa, ts)
        if times is None:
            return False
        widths = self.widths(user, item)
        if self.keep is not None:
            mask = pc.is_in(behavior, value_set=self.keep)
            user, item = user.filter(mask), item.filter(mask)
            times = times[mask.to_numpy(zero_copy_only=False)]
        self.add(user, item, times, widths, rows)
        return True

    def slow(self, first_line: int, data: bytes) -> None:
        """The in-memory reader's code on this chunk: its checks, its messages."""
        lines = _offset_lines(data.decode("utf-8"), first_line)
        cols, category, behavior = readers._taobao_rows(lines, self.path)  # raises at once
        if not cols.lines:
            return
        log, problem = cols.convert(integer_ids=True, extra_ids={"category": category})
        self.defer(problem)
        widths = (log.user.dtype.itemsize // 4, log.item.dtype.itemsize // 4)
        keep = slice(None) if self.keep is None else np.isin(behavior, self.behaviors)
        user, item = self.pa.array(log.user[keep]), self.pa.array(log.item[keep])
        self.add(user, item, log.timestamp[keep], widths, len(cols.lines))

    def check_kept(self) -> None:
        if self.kept == 0 and self.behaviors is not None:
            raise DataFormatError(
                f"no interactions left after filtering behaviors {sorted(set(self.behaviors))}",
                self.path,
            )


class _CsvReader(_ChunkedReader):
    def __init__(
        self,
        path: readers.PathLike,
        chunk_rows: int,
        columns: tuple[str, str, str],
        sep: str | None,
    ) -> None:
        super().__init__(path, chunk_rows)
        self.columns = columns
        self.sep = sep
        self.ncols = 0
        self.index: list[int] | None = None  # user, item, time positions once the header is read

    def chunk(self, first_line: int, data: bytes) -> None:
        if self.index is None:
            data, first_line = self.take_header(first_line, data)
            if self.index is None:
                return
        rows, plain = _count_rows(data)
        if plain and rows == 0:
            return
        quote_free = b'"' not in data and b"\x00" not in data
        if not (plain and quote_free and self.fast(data, rows)):
            self.slow(first_line, data)

    def take_header(self, first_line: int, data: bytes) -> tuple[bytes, int]:
        """Find the header (the first non-blank line); return the rest of the chunk."""
        pos, lineno = 0, first_line
        while pos < len(data):
            end = data.find(b"\n", pos)
            after = len(data) if end < 0 else end + 1
            text = data[pos:after].decode("utf-8").rstrip("\r\n")
            if text and not text.isspace():
                sep = readers._sniff_sep(lineno, text, self.path, self.sep)
                _, header = next(readers._csv_rows(iter([(lineno, text)]), self.path, sep))
                index = readers._column_index(
                    header, lineno, self.path, sep, (*self.columns, None)
                )
                self.sep, self.ncols = sep, len(header)
                self.index = [i for i in index if i is not None]
                return data[after:], lineno + 1
            pos, lineno = after, lineno + 1
        return b"", lineno

    def fast(self, data: bytes, rows: int) -> bool:
        pa, pc = self.pa, self.pa.compute
        assert self.index is not None and self.sep is not None
        table = _parse(pa, data, self.ncols, self.sep, self.index)
        if table is None or table.num_rows != rows:
            return False
        user, item, ts = (_one_array(table.column(f"f{i}")) for i in self.index)
        for ids in (user, item):
            if pc.any(pc.match_substring_regex(ids, _BLANK_ID)).as_py():
                return False
        times = _plain_floats(pa, ts)
        if times is None:
            return False
        self.add(user, item, times, self.widths(user, item), rows)
        return True

    def slow(self, first_line: int, data: bytes) -> None:
        """The in-memory reader's code on this chunk: its checks, its messages."""
        assert self.index is not None and self.sep is not None
        lines = _offset_lines(data.decode("utf-8"), first_line)
        cols = readers._Columns(self.path, rated=False)
        rows = _single_line_rows(lines, self.path, self.sep)
        readers._collect_rows(rows, self.path, self.sep, self.ncols, [*self.index, None], cols)
        if not cols.lines:
            return
        log, problem = cols.convert(integer_ids=False)
        self.defer(problem)
        widths = (log.user.dtype.itemsize // 4, log.item.dtype.itemsize // 4)
        user, item = self.pa.array(log.user), self.pa.array(log.item)
        self.add(user, item, log.timestamp, widths, len(cols.lines))


def _single_line_rows(
    lines: Iterator[tuple[int, str]], path: str, sep: str
) -> Iterator[tuple[int, list[str]]]:
    """Rows as :func:`readers._csv_rows` parses them, refusing rows that span lines."""
    fed: list[int] = []

    def feed() -> Iterator[str]:
        for lineno, line in lines:
            fed.append(lineno)
            yield line + "\n"

    reader = csv.reader(feed(), delimiter=sep, strict=True)
    done = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if len(fed) > done + 1 or "unexpected end of data" in str(exc):
                raise DataFormatError(_SPANS_LINES, path, fed[done]) from exc
            raise DataFormatError(f"malformed delimited line ({exc})", path, fed[-1]) from exc
        if len(fed) != done + 1:
            raise DataFormatError(_SPANS_LINES, path, fed[done])
        done += 1
        yield fed[-1], row
