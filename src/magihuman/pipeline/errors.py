"""The input boundary's error type, torch-free so that every layer that checks input can raise it."""

from __future__ import annotations

import os
from pathlib import Path


class InputError(ValueError):
    """A bad input: one line that names the problem and the fix.

    Attributes:
        field: the request field or option at fault (``"seconds"``, ``"image"``, ``"device"``, ...), or
            None when no single field is.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(" ".join(str(message).split("\n")))
        self.field = field


class MissingInputError(InputError, FileNotFoundError):
    """A file or folder the request names does not exist (also a ``FileNotFoundError``)."""


def expand_path(path: str | os.PathLike | None) -> Path | None:
    """``Path(path)`` with ``~`` expanded; None and ``""`` stay None."""
    if path is None or os.fspath(path) == "":
        return None
    return Path(os.fspath(path)).expanduser()
