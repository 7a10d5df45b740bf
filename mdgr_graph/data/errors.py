"""Errors raised while reading and checking interaction data."""

from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A malformed input file.

    The message reads ``'<path>:<line>: <what is wrong>'``; the line is left out when it does
    not apply, and both are left out when no ``path`` is given (the message is then used as
    is).

    Args:
        message: what is wrong.
        path: the file concerned.
        line: the 1-based line number concerned.

    Attributes:
        reason: what is wrong, without the location.
        path: the file as a string, or ``None``.
        line: the 1-based line number, or ``None``.
    """

    def __init__(
        self, message: str, path: str | os.PathLike | None = None, line: int | None = None
    ) -> None:
        self.reason = message
        self.path = None if path is None else os.fspath(path)
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        if self.path is None:
            return self.reason if self.line is None else f"line {self.line}: {self.reason}"
        if self.line is None:
            return f"{self.path}: {self.reason}"
        return f"{self.path}:{self.line}: {self.reason}"

    def __reduce__(self):
        return type(self), (self.reason, self.path, self.line)
