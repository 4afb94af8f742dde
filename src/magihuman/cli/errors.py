"""The CLI's failure type; how every error becomes one line and an exit code is in :mod:`magihuman.cli.app`."""

from __future__ import annotations

__all__ = ["Failure"]


class Failure(Exception):
    """A problem while loading, generating, writing or downloading: exit code 1, one ``error:`` line."""
