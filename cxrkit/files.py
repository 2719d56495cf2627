"""Files on disk, below both :mod:`cxrkit.io` (pixels) and :mod:`cxrkit.pipe` (records): atomic
writes, file hashes and the JSON encoding of records and metadata.

This module imports no numpy or torch: it is used while the CLI starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cxrkit.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def to_json(value: Any) -> str:
    """JSON text of a record or metadata (numpy values and paths allowed)."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


# ---- writing files: temporaries, exclusive creation, one item's files --------------------------

TEMP_PREFIX = ".cxrkit-tmp."
"""Every temporary cxrkit writes starts with this: ``.cxrkit-tmp.<host>.<pid>.<token>.<name>``
(hidden, so never an input; the writer's host and process id tell a stale one)."""
_TEMP_NAME = re.compile(r"\.cxrkit-tmp\.(?P<host>[A-Za-z0-9-]*)\.(?P<pid>\d+)\.[0-9a-f]+\..+")
_LEGACY_TEMP = re.compile(
    r"\.(?P<name>.+?(?P<suffix>\.nii\.gz|\.[A-Za-z0-9]+))\.[a-z0-9_]{8}(?P=suffix)")
"""What earlier cxrkit versions left when killed mid-write: ``.NAME.XXXXXXXX.SUFFIX`` (a
``mkstemp`` name that repeats the target's suffix). No cxrkit writes such names any more, so one
is stale."""
_cleaned: set[str] = set()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]


def _temp_name(target: Path) -> str:
    name = target.name
    if len(name.encode()) > 160:  # keep under the 255-byte name limit; the suffix stays
        name = "long" + (".nii.gz" if name.endswith(".nii.gz") else target.suffix)
    return f"{TEMP_PREFIX}{_host()}.{os.getpid()}.{secrets.token_hex(4)}.{name}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(folder: str | Path) -> list[Path]:
    """Remove cxrkit's temporaries in ``folder`` whose writer is gone (killed with -9, or a power
    cut): names of :data:`TEMP_PREFIX`'s pattern written on this host by a process that no
    longer runs, and the ``.NAME.XXXXXXXX.SUFFIX`` temporaries earlier cxrkit versions left
    (:data:`_LEGACY_TEMP`). Temporaries of live writers and of other hosts (a shared file system)
    stay.
    Each folder is looked at once per process. Returns the removed paths."""
    key = os.path.abspath(folder)
    if key in _cleaned:
        return []
    _cleaned.add(key)
    removed: list[Path] = []
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None:
            if _LEGACY_TEMP.fullmatch(entry.name) is None:
                continue
        elif match["host"] != host or _alive(int(match["pid"])):
            continue
        try:
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


class _ItemScope:
    """The files of one item being made: its inputs (never replaced) and its outputs so far."""

    def __init__(self, inputs: Iterable[str | Path]) -> None:
        self.inputs: list[tuple[str, os.stat_result]] = []
        for path in inputs:
            with contextlib.suppress(OSError, ValueError, TypeError):
                self.inputs.append((str(path), os.stat(path)))
        self.created: list[Path] = []

    def check(self, target: Path) -> None:
        try:
            st = os.stat(target)
        except OSError:
            return
        for path, inp in self.inputs:
            if (st.st_dev, st.st_ino) == (inp.st_dev, inp.st_ino):
                raise OutputError(f"the output would replace an input ({path})",
                                  path=str(target), hint="write to another -o")


_scopes: list[_ItemScope] = []


@contextlib.contextmanager
def item_outputs(inputs: Iterable[str | Path] = ()) -> Iterator[list[Path]]:
    """Make one item's files as a unit: inside the block, :func:`atomic_path` refuses to replace
    any of ``inputs`` (even with ``overwrite``), and if the block fails (an error, Ctrl-C,
    SIGTERM) the files it already wrote are removed, so an item is all there or not at all.
    Yields the list of files written so far."""
    scope = _ItemScope(inputs)
    _scopes.append(scope)
    try:
        yield scope.created
    except BaseException:
        for path in reversed(scope.created):
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    finally:
        _scopes.remove(scope)


def record_inputs(record: dict[str, Any]) -> list[str]:
    """The files a record names as its inputs: ``path``, ``source``, ``reference``, ``mask``,
    ``thickness`` and ``labels`` (a path or ``{"path": ...}``)."""
    found: list[str] = []
    for key in ("path", "source", "reference", "mask", "thickness", "labels"):
        value = record.get(key)
        if isinstance(value, dict):
            value = value.get("path")
        if isinstance(value, str | Path) and str(value) not in ("", "-"):
            found.append(str(value))
    return found


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary path beside ``target`` that becomes ``target`` when the block succeeds.

    The temporary is hidden and named :data:`TEMP_PREFIX` ``<host>.<pid>.<token>.<name>``
    (stale ones of dead writers in the folder are removed first, see
    :func:`clean_stale_temporaries`). Without ``overwrite`` the target is created exclusively
    (a hard link, which fails if the name exists), so of two runs writing one name, one wins and
    the other gets "output exists"; with it the temporary is renamed over the target. Inside
    :func:`item_outputs`, the item's inputs are never replaced and a failed item's files go.

    Raises:
        OutputError: ``target`` exists and ``overwrite`` is False, or it is an input.
    """
    target = Path(target)
    scope = _scopes[-1] if _scopes else None
    if scope is not None:
        scope.check(target)
    if not overwrite and (target.exists() or target.is_symlink()):
        raise _exists(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(target.parent)
    tmp = target.with_name(_temp_name(target))
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # outputs get the usual mode
        if scope is not None:
            scope.check(target)
        with _signals_held():  # a file that appears is one the item knows it made
            if overwrite:
                os.replace(tmp, target)
            else:
                _create_exclusively(tmp, target)
            if scope is not None:
                scope.created.append(target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait (they are delivered after the block) where that is possible."""
    import signal
    import threading

    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not \
            threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exists(target: Path) -> OutputError:
    return OutputError("output exists", path=str(target),
                       hint="pass --overwrite to replace it or --resume to skip finished items")


def _create_exclusively(tmp: Path, target: Path) -> None:
    """``target`` gets ``tmp``'s bytes only if no file of that name exists."""
    try:
        os.link(tmp, target)
        return
    except FileExistsError:
        raise _exists(target) from None
    except OSError:  # a file system without hard links: reserve the name, then rename onto it
        pass
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        raise _exists(target) from None
    os.replace(tmp, target)


def file_sha256(path: str | Path, *, limit_bytes: int | None = None) -> str:
    """sha256 of a file (or of a folder's files, sorted by name), hex."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
                if limit_bytes is not None and fh.tell() >= limit_bytes:
                    break
    return h.hexdigest()


@contextlib.contextmanager
def native_stderr_to_log(logger_name: str = "cxrkit") -> Iterator[None]:
    """Send what C/C++ code (ITK, GDCM, OpenJPEG) writes straight to file descriptor 2 inside
    the block to the log at DEBUG level instead of the terminal, so a failing read is reported
    by cxrkit's one-line error alone (``-vv`` shows the library's own lines)."""
    import logging
    import sys
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (an embedding host): nothing to redirect
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(1 << 16).decode("utf-8", "replace").strip()
            if text:
                logging.getLogger(logger_name).debug("native library output: %s",
                                                     " | ".join(text.splitlines()[:20]))
