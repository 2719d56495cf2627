"""The record stream that connects cxrkit commands (DESIGN.md §3).

stdout carries JSON Lines, one record per produced item; images are files. A record is a plain dict:

- ``id``: stable item id (derived from the first input's file name and kept by every later tool);
- ``path``: the current image; ``source``: the original input;
- ``spacing_mm``: ``[row, col]`` pixel size of ``path`` in mm (or null);
- ``kind``: what the pixels of ``path`` are (``display``, ``line_integral``, ``intensity``, …);
- companions (``reference``, ``mask``, ``labels``, …) as paths;
- one key per tool that touched it (``"project": {...}``), holding its resolved options, seed,
  model hash and the cxrkit version. Tools pass every key they do not own through unchanged.

This module imports no torch: it is used while the CLI starts.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import os
import re
import secrets
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from cxrkit import __version__
from cxrkit.errors import InputError, OutputError

Record = dict[str, Any]

# Magic bytes of the raw images a command accepts on stdin, and the suffix they are spooled under.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"II*\x00", ".tiff"),
    (0, b"MM\x00*", ".tiff"),
    (0, b"\x89PNG\r\n\x1a\n", ".png"),
    (128, b"DICM", ".dcm"),
    (0, b"\x1f\x8b", ".nii.gz"),
    (344, b"n+1\x00", ".nii"),
    (0, b"NRRD", ".nrrd"),
    (0, b"ObjectType", ".mha"),
)
_GLOB_CHARS = set("*?[")


def sniff_suffix(head: bytes) -> str | None:
    """The file suffix matching the magic bytes at the start of a file, or None if unknown."""
    for offset, magic, suffix in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return suffix
    return None


def stem_of(path: str | Path) -> str:
    """A file's name without its (possibly double) image suffix: ``ct.nii.gz`` → ``ct``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".tar.gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem if Path(name).suffix else name


_SAFE_NAME = re.compile(r"[^/\\\x00-\x1f\x7f]+")
_NAME_LIMIT = 120  # bytes of an id kept in a file name (a tag and suffix follow it)


def safe_name(item_id: str) -> str:
    """A file name made from an item id that stays inside its folder.

    A normal id (no path separator, no control character, not hidden, ``.`` or ``..``, at most
    120 bytes) is its own name. Any other id becomes its characters with separators and
    control characters replaced by ``_``, leading dots dropped and cut to 100 bytes, then
    ``-`` and the first 8 hex digits of the id's sha1: deterministic, and two ids that differ
    give different names. ``"../../x"`` → ``"_.._x-<hash>"``; ``"/etc/passwd"`` →
    ``"_etc_passwd-<hash>"``.
    """
    text = str(item_id)
    raw = text.encode("utf-8", "surrogatepass")
    if _SAFE_NAME.fullmatch(text) and not text.startswith(".") and len(raw) <= _NAME_LIMIT:
        return text
    cleaned = re.sub(r"[/\\\x00-\x1f\x7f]", "_", text).lstrip(".")
    cleaned = cleaned.encode("utf-8", "surrogatepass")[:100].decode("utf-8", "ignore") or "item"
    return f"{cleaned}-{hashlib.sha1(raw).hexdigest()[:8]}"


def new_record(path: str | Path, *, item_id: str | None = None) -> Record:
    """A fresh record for an input file given by path."""
    p = str(path)
    return {"id": item_id or stem_of(p), "path": p, "source": p}


def parse_line(line: str, *, where: str = "stdin") -> Record | None:
    """One stdin line → a record: a JSON object, or a plain path. Blank lines give None."""
    text = line.strip()
    if not text:
        return None
    if text.startswith("{"):
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"bad JSON record: {exc.msg} at column {exc.colno}",
                             path=where) from exc
        if not isinstance(rec, dict) or "path" not in rec:
            raise InputError("record has no 'path'", path=where,
                             hint="records are JSON objects with at least 'path'")
        rec.setdefault("id", stem_of(rec["path"]))
        rec.setdefault("source", rec["path"])
        return rec
    return new_record(text)


def expand_paths(
    args: Iterable[str], *, is_item_dir: Callable[[Path], bool] | None = None,
    patterns: tuple[str, ...] = ("*",),
) -> Iterator[Path]:
    """Expand positional path arguments: files, globs (expanded here too) and directories.

    Args:
        args: the positional arguments, in order.
        is_item_dir: for tools whose item can be a folder (a DICOM series), a predicate telling an
            item folder from a folder of items.
        patterns: ``fnmatch`` patterns of the file names taken from a folder of items; hidden
            files (names starting with ``.``, among them cxrkit's temporaries) are skipped.

    Raises:
        InputError: a path that does not exist and matches nothing.
    """
    for arg in args:
        p = Path(arg)
        if not p.exists() and _GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise InputError("no file matches the pattern", path=arg)
            yield from (Path(m) for m in matches)
        elif p.is_dir() and not (is_item_dir and is_item_dir(p)):
            found = sorted(  # hidden names (and so cxrkit's temporaries) are never inputs
                c for c in p.iterdir()
                if not c.name.startswith(".")
                and any(fnmatch.fnmatch(c.name.lower(), pat) for pat in patterns)
                and (c.is_file() or (is_item_dir is not None and c.is_dir() and is_item_dir(c)))
            )
            if not found:
                raise InputError("folder holds no input this command reads", path=arg)
            yield from found
        elif p.exists():
            yield p
        else:
            raise InputError("no such file or folder", path=arg)


def read_stdin_records(stream: IO[bytes], *, spool_dir: Path) -> Iterator[Record]:
    """Records from stdin: JSON Lines, plain paths one per line, or one raw image.

    A raw image (detected by its magic bytes) is spooled to a file in ``spool_dir``, because the
    image readers need a seekable file; it becomes one record with ``id`` ``stdin``.
    """
    head = stream.peek(512)[:512] if hasattr(stream, "peek") else b""
    suffix = sniff_suffix(head)
    if suffix is not None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        target = spool_dir / f"stdin{suffix}"
        with open(target, "wb") as fh:
            while chunk := stream.read(1 << 20):
                fh.write(chunk)
        rec = new_record(target, item_id="stdin")
        rec["source"] = "-"
        yield rec
        return
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("stdin is neither records, paths nor a known image format",
                             path=f"stdin line {number}") from exc
        parsed = parse_line(line, where=f"stdin line {number}")
        if parsed is not None:
            yield parsed


class UniqueIds:
    """Keeps item ids unique within one run: a repeated id gets a short hash of its source (and a
    counter if the same source is given twice)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def __call__(self, record: Record) -> Record:
        item_id = str(record["id"])
        if item_id in self._seen:
            digest = hashlib.sha1(str(record.get("source", record["path"])).encode()).hexdigest()
            item_id = base = f"{item_id}-{digest[:8]}"
            count = 1
            while item_id in self._seen:
                count += 1
                item_id = f"{base}-{count}"
            record = {**record, "id": item_id}
        self._seen.add(item_id)
        return record


def item_seed(seed: int, item_id: str) -> int:
    """The seed of one item: the first 8 bytes of ``sha256("<seed>:<item id>")``, an integer.

    It depends on the run's seed and the item's id only, so results do not depend on the batch
    order, the batch size or sharding across processes.
    """
    digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def shard() -> tuple[int, int]:
    """``(rank, world_size)`` of this process under ``accelerate launch``/torchrun, else (0, 1)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return (0, 1)
    return (rank, world) if 0 <= rank < world else (0, 1)


def take_shard(items: Iterable[Record], rank: int, world: int) -> Iterator[Record]:
    """The items of one process: item ``i`` goes to process ``i % world``."""
    for index, item in enumerate(items):
        if index % world == rank:
            yield item


def provenance(tool: str, options: dict[str, Any], *, seed: int | None = None,
               model: str | None = None, inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The value of a tool's own key in a record: how this tool made the item."""
    entry: dict[str, Any] = {"version": __version__, "options": options}
    if seed is not None:
        entry["seed"] = seed
    if model is not None:
        entry["model"] = model
    if inputs:
        entry["inputs"] = inputs
    return entry


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


class RecordWriter:
    """Writes records to a binary stream as JSON Lines, one ``write`` per record, flushed.

    When several processes share stdout (``accelerate launch``), each record is written under an
    advisory lock on the stream so that lines never interleave.
    """

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout.buffer

    def write(self, record: Record) -> None:
        """Emit one record."""
        data = (to_json(record) + "\n").encode()
        with _locked(self._stream):
            self._stream.write(data)
            self._stream.flush()


@contextlib.contextmanager
def _locked(stream: IO[bytes]) -> Iterator[None]:
    try:
        import fcntl

        fd = stream.fileno()
        fcntl.flock(fd, fcntl.LOCK_EX)
    except (OSError, ValueError, AttributeError, ImportError):
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


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
    cut): only names of :data:`TEMP_PREFIX`'s pattern, written on this host by a process that no
    longer runs. Temporaries of live writers and of other hosts (a shared file system) stay.
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
        match = _TEMP_NAME.fullmatch(entry.name)
        if (match is None or match["host"] != host or _alive(int(match["pid"]))
                or not entry.is_file(follow_symlinks=False)):
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


def record_inputs(record: Record) -> list[str]:
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
