"""Errors raised by the cxrkit library and the exit codes the CLI maps them to.

The library raises these; only :mod:`cxrkit.cli` turns them into exit codes and one-line messages.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every cxrkit command (documented in cxrkit(1))."""

    OK = 0
    ERROR = 1
    USAGE = 2
    PARTIAL = 3
    CHECK_FAILED = 8
    INTERRUPTED = 130


class CxrkitError(Exception):
    """Base class of every error cxrkit raises on purpose.

    Args:
        message: what went wrong, in one line.
        path: the file or item it concerns, if any.
        hint: how to fix it, if known.
    """

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.path:
            text += f" ({self.path})"
        if self.hint:
            text += f" — {self.hint}"
        return text


class InputError(CxrkitError):
    """Bad input: a missing, unreadable or invalid file, or an inconsistent record."""


class FormatError(InputError):
    """A file whose format is unknown, corrupt or truncated."""


class OutputError(CxrkitError):
    """An output that cannot be written (exists without --overwrite, not writable)."""


class GeometryError(CxrkitError):
    """An acquisition geometry that is invalid or misses the volume."""


class ModelError(CxrkitError):
    """A missing, unsafe or incompatible model or adapter."""


class DeviceError(CxrkitError):
    """A device that was asked for but is unavailable."""


class CheckFailedError(CxrkitError):
    """A quality gate (e.g. ``eval --fail-under``) was not met."""
