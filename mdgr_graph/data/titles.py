"""Item titles for pictures and retrieval output: MovieLens ``movies.dat``.

The format is ``id::title::genres`` per line (genres ``|``-separated), no header, as in
MovieLens 1M; gzip is detected by its magic bytes. The file is decoded as UTF-8 when it
is valid UTF-8 and as Latin-1 (MovieLens' own encoding) otherwise.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import numpy as np

from mdgr_graph.data.errors import DataFormatError

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ItemTitle:
    title: str
    genres: tuple[str, ...]


def read_movielens_titles(path: PathLike) -> dict[str, ItemTitle]:
    """``{raw item id: ItemTitle}`` from a MovieLens ``movies.dat`` file.

    Keys are the ids as the readers keep them (decimal strings, like
    ``PreparedDataset.arrays["item_ids"]``).

    Raises:
        DataFormatError: a line without three ``::`` fields, a non-integer or repeated id,
            an empty file, or corrupt gzip data (naming the file and the line).
    """
    source = os.fspath(path)
    with open(source, "rb") as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataFormatError(f"corrupt gzip data ({exc})", source) from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    titles: dict[str, ItemTitle] = {}
    # lines end at "\n" only, as in the log readers: str.splitlines would also break at
    # U+0085, which is what Latin-1 makes of byte 0x85 (cp1252's ellipsis), and U+2028
    for lineno, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3:
            raise DataFormatError(
                f"expected 'id::title::genres', got {len(parts)} field(s)", source, lineno
            )
        try:
            item = int(parts[0])
        except ValueError:
            raise DataFormatError(f"item id {parts[0]!r} is not an integer", source,
                                  lineno) from None
        if str(item) in titles:
            raise DataFormatError(f"item id {item} appears twice", source, lineno)
        genres = tuple(g for g in parts[2].split("|") if g)
        titles[str(item)] = ItemTitle(parts[1].strip(), genres)
    if not titles:
        raise DataFormatError("no titles", source)
    return titles


def item_labels(item_ids: np.ndarray, titles: dict[str, ItemTitle] | None = None) -> list[str]:
    """Display label of every internal item id: its title, else ``item <raw id>``.

    Args:
        item_ids: ``PreparedDataset.arrays["item_ids"]`` (raw id of each internal id;
            entry 0 is padding).
        titles: from :func:`read_movielens_titles`, or None.
    """
    titles = titles or {}
    labels = [titles[str(raw)].title if str(raw) in titles else f"item {raw}"
              for raw in item_ids.tolist()]
    if labels:
        labels[0] = "<pad>"
    return labels
