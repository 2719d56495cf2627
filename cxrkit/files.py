"""Files on disk, below both :mod:`cxrkit.io` (pixels) and :mod:`cxrkit.pipe` (records): atomic
writes, file hashes and the JSON encoding of records and metadata.

This module imports no numpy or torch: it is used while the CLI starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cxrkit.errors import OutputError


# Magic bytes of the raw images a command accepts on stdin, and the suffix they are spooled under.
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


@contextlib.contextmanager
def atomic_path(target: Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary path beside ``target`` that is renamed onto it when the block succeeds.

    Raises:
        OutputError: ``target`` exists and ``overwrite`` is False.
    """
    if target.exists() and not overwrite:
        raise OutputError("output exists", path=str(target),
                          hint="pass --overwrite to replace it or --resume to skip finished items")
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


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
