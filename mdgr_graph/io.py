"""Atomic file writes: a reader sees the old file or the new one, never a part of one.

Every file the project writes (checkpoints, run logs, cached datasets, exported
interests, result tables) goes through :func:`atomic_write_bytes`: the content is written
to a temporary ``.NAME.*.tmp`` file in the target's folder, flushed to disk, given the
permissions ``open()`` would give, and renamed over the target. A process killed
mid-write leaves at most such a temporary, which :func:`remove_stale_temporaries` clears.

This is the ground floor of the package: it imports nothing from it (and torch only
inside :func:`atomic_torch_save`), so every other module may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "remove_stale_temporaries",
]


def atomic_write_bytes(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through ``write(fileobj)`` into a temporary file, then rename over ``path``.

    The folder is created if needed. On any exception (``KeyboardInterrupt`` included) the
    temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, lambda fh: fh.write(text.encode()))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` into ``path``, atomically."""
    import torch

    atomic_write_bytes(path, lambda fh: torch.save(obj, fh))


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files that :func:`atomic_write_bytes` leaves when a
    process is killed mid-write, for each ``NAME`` of ``names``; return them.

    Temporaries of other names are left alone: the folder may hold files another program
    is writing.
    """
    removed = []
    for name in names:
        for tmp in sorted(Path(folder).glob(f".{name}.*.tmp")):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
