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
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from cxrkit import __version__
from cxrkit.errors import InputError
from cxrkit.files import TEMP_PREFIX as TEMP_PREFIX  # re-exported: commands write through these
from cxrkit.files import atomic_path as atomic_path
from cxrkit.files import clean_stale_temporaries as clean_stale_temporaries
from cxrkit.files import file_sha256 as file_sha256  # re-exported: provenance hashes
from cxrkit.files import item_outputs as item_outputs
from cxrkit.files import record_inputs as record_inputs
from cxrkit.files import to_json
from cxrkit.io import DOUBLE_SUFFIXES, sniff_suffix  # the format registry (re-exported)

Record = dict[str, Any]

_GLOB_CHARS = set("*?[")


def stem_of(path: str | Path) -> str:
    """A file's name without its (possibly double) image suffix: ``ct.nii.gz`` → ``ct``."""
    name = Path(path).name
    for suffix in DOUBLE_SUFFIXES:
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
        if not isinstance(rec["path"], str) or not rec["path"].strip():
            raise InputError(f"record 'path' must be a file name, not {_kind(rec['path'])}",
                             path=where)
        if "id" in rec and isinstance(rec["id"], int) and not isinstance(rec["id"], bool):
            rec["id"] = str(rec["id"])
        if "id" in rec and (not isinstance(rec["id"], str) or not rec["id"].strip()):
            raise InputError(f"record 'id' must be a non-empty string, not {_kind(rec['id'])}",
                             path=where)
        rec.setdefault("id", stem_of(rec["path"]))
        rec.setdefault("source", rec["path"])
        return rec
    return new_record(text)


def _kind(value: object) -> str:
    """How a bad record value is named in an error: ``a number``, ``null``, ``''``."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return {"bool": "a boolean", "int": "a number", "float": "a number", "list": "a list",
            "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def read_record_file(path: str | Path) -> Iterator[Record]:
    """The records of a JSON Lines file (blank lines skipped; errors name the file and line).

    The one JSONL reader of cxrkit: positional ``.jsonl`` inputs, ``eval``'s record files and the
    training commands' domain lists all read records through it.

    Raises:
        InputError: the file is missing, or a line is neither a record nor a path.
    """
    if not Path(path).is_file():
        raise InputError("no such file", path=str(path))
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            record = parse_line(line, where=f"{path} line {number}")
            if record is not None:
                yield record


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
