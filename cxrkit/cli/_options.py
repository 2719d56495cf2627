"""Options shared by every per-item command, and the per-item loop (DESIGN.md §3).

The loop owns inputs (paths or stdin), output naming, ``--overwrite``/``--resume``,
``--keep-going``, sharding under ``accelerate launch``, progress on a TTY's stderr and the record
stream on stdout. A command supplies one function that turns a record into a new record.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cxrkit.errors import CxrkitError, ExitCode, InputError, OutputError
from cxrkit.pipe import (
    Record,
    RecordWriter,
    UniqueIds,
    clean_stale_temporaries,
    expand_paths,
    item_outputs,
    new_record,
    parse_line,
    read_stdin_records,
    record_inputs,
    safe_name,
    shard,
    take_shard,
    to_json,
)

if TYPE_CHECKING:
    from cxrkit.io import Radiograph

log = logging.getLogger("cxrkit.cli")

Inputs = Annotated[
    list[str] | None,
    typer.Argument(help="Input files, folders or globs, or .jsonl record files; '-' or none "
                        "reads stdin (JSON records, paths one per line, or one raw image).",
                   show_default=False),
]
Out = Annotated[
    Path | None,
    # path_type=str: the text as given (a trailing / says "folder"); Outputs makes the Path
    typer.Option("--out", "-o", path_type=str,
                 help="Output folder, or one file when there is one item (a .tiff, .tif, .png "
                      "or .dcm name; its suffix picks the format). A name ending in / or without "
                      "a suffix is a folder; any other suffix is a usage error. Default: "
                      "./cxrkit-out/", show_default=False),
]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace existing outputs (never an input of the run: that is an "
                        "error).")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Skip items whose output already exists and was made with the same "
                     "options and seed, re-emitting their stored record; an output made with "
                     "other options is an error (exit 1), or is redone with --overwrite.")]
KeepGoing = Annotated[bool, typer.Option(
    "--keep-going", "-k", help="Go on after an item fails; exit 3 at the end if any failed.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (recorded); per item it is "
                                                  "combined with the item id.")]
Format = Annotated[str, typer.Option(
    "--format", "-f", help="Image format of the outputs: tiff (float32, default), png (16-bit) "
                           "or dicom.")]

DEFAULT_OUT = Path("cxrkit-out")


@dataclass
class Outputs:
    """Where one run writes: a folder, or a single file named by ``-o``, and how ``--resume``
    tells a finished item.

    ``-o`` is one file when its name ends in a suffix cxrkit writes (:func:`file_suffixes`:
    ``.tiff``, ``.tif``, ``.png``, ``.dcm``); a folder when it ends
    in ``/``, names an existing folder or has no suffix; any other suffix (``out.xyz``,
    ``out.jpg``) is a usage error, raised on construction (before any input is read).

    Args:
        out: the ``-o`` value (None: :data:`DEFAULT_OUT`).
        suffix: the suffix of ``--format``.
        overwrite: ``--overwrite``.
        tool: the command's key in records (``"degrade"``): ``--resume`` compares the stored
            ``record[tool]["request"]`` with ``request``.
        request: the options as given that decide an item's pixels, and the seed; each command
            stores it in its key (see :meth:`stamp`).
    """

    out: Path | str | None
    suffix: str = ".tiff"
    overwrite: bool = False
    tool: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)
    _single: bool = field(default=False, init=False)
    _cleaned: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        text = None if self.out is None else str(self.out)
        self.out = None if text is None else Path(text)
        if text is None or text.endswith(("/", os.sep)) or self.out.is_dir():  # type: ignore[union-attr]
            return
        suffix = self.out.suffix.lower()  # type: ignore[union-attr]
        if suffix in file_suffixes():
            self._single = True
        elif suffix:
            raise typer.BadParameter(
                f"'{text}' ends in '{suffix}', which is no image format cxrkit writes "
                f"({', '.join(file_suffixes())}); to name a folder, end it with /",
                param_hint="'--out' / '-o'")

    @property
    def single_file(self) -> bool:
        """True when ``-o`` names a file rather than a folder."""
        return self._single

    @property
    def folder(self) -> Path:
        """The folder the outputs go to."""
        if self._single:
            assert isinstance(self.out, Path)
            return self.out.parent
        return self.out if isinstance(self.out, Path) else DEFAULT_OUT

    def path(self, item_id: str, tag: str = "") -> Path:
        """The primary output of an item: ``<out>/<name>[_tag]<suffix>`` or the ``-o`` file.

        ``<name>`` is the id made safe as a file name (:func:`cxrkit.pipe.safe_name`: an id with
        a path separator, or hidden, gets a sanitised name with a hash), so an output never
        lands outside the output folder.
        """
        self._clean()
        if self._single:
            assert isinstance(self.out, Path)
            if self._used and item_id not in self._used:
                raise InputError("-o names one file but there are several inputs",
                                 path=str(self.out), hint="give a folder to -o")
            self._used.add(item_id)
            return self.out
        return self.folder / f"{safe_name(item_id)}{'_' + tag if tag else ''}{self.suffix}"

    def stamp(self, entry: dict[str, Any]) -> dict[str, Any]:
        """A tool's key with :attr:`request` added (what ``--resume`` compares)."""
        return {**entry, "request": self.request}

    def finished(self, item_id: str, tag: str = "") -> Record | None:
        """For ``--resume``: the record stored in an item's primary output if it was written with
        the same request, else None (not there, or to be redone under ``--overwrite``).

        Raises:
            OutputError: the output was made with other options (and no ``--overwrite``).
        """
        from cxrkit.io import read_meta

        primary = self.path(item_id, tag)
        meta = read_meta(primary) if primary.exists() else {}
        if meta.get("path") != str(primary):
            return None
        if self.tool is None:
            return meta
        stored = meta.get(self.tool)
        stored = stored.get("request") if isinstance(stored, dict) else None
        wanted = json.loads(to_json(self.request))
        if stored == wanted:
            return meta
        if self.overwrite:
            return None  # redone, replacing it
        raise OutputError(f"--resume: the output was made with other options "
                          f"({_differences(stored, wanted)})", path=str(primary),
                          hint="pass --overwrite to redo it, or write to another -o")

    def companion(self, primary: Path, name: str) -> Path:
        """A file that belongs to a primary output: ``<primary stem>.<name>``."""
        stem = primary.name[: -len(primary.suffix)] if primary.suffix else primary.name
        return primary.with_name(f"{stem}.{name}")

    def _clean(self) -> None:
        if not self._cleaned:
            self._cleaned = True
            clean_stale_temporaries(self.folder)


def file_suffixes() -> tuple[str, ...]:
    """The suffixes ``-o FILE`` may have: those of :data:`cxrkit.io.WRITE_FORMATS`, and ``.tif``."""
    from cxrkit.io import WRITE_FORMATS

    return (*WRITE_FORMATS.values(), ".tif")


def _differences(stored: Any, wanted: dict[str, Any]) -> str:
    """``"kev: 60 → 70, seed: 0 → 1"`` for the keys whose values differ."""
    if not isinstance(stored, dict):
        return "no options stored"
    keys = [k for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)]
    shown = [f"{k}: {to_json(stored.get(k))} → {to_json(wanted.get(k))}" for k in keys[:3]]
    return ", ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def format_suffix(fmt: str) -> str:
    """``tiff``/``png``/``dicom`` → file suffix."""
    suffixes = {"tiff": ".tiff", "tif": ".tiff", "png": ".png", "dicom": ".dcm", "dcm": ".dcm"}
    if fmt.lower() not in suffixes:
        raise typer.BadParameter(f"unknown format '{fmt}'; use tiff, png or dicom",
                                 param_hint="--format")
    return suffixes[fmt.lower()]


def iter_inputs(inputs: list[str] | None, *, is_item_dir: Callable[[Path], bool] | None = None,
                patterns: tuple[str, ...] = ("*",)) -> Iterator[Record]:
    """Records from positional inputs, or from stdin when there are none (or only '-').

    A positional ``.jsonl`` file is read as records, one per line (so that every process of
    ``accelerate launch`` reads the same records: stdin reaches only one of them).
    """
    args = [a for a in (inputs or []) if a != "-"]
    if args:
        for arg in args:
            if arg.lower().endswith(".jsonl") and Path(arg).is_file():
                yield from read_record_file(Path(arg))
                continue
            for p in expand_paths([arg], is_item_dir=is_item_dir, patterns=patterns):
                yield new_record(p)
        return
    if sys.stdin is None or sys.stdin.isatty():
        raise typer.BadParameter("no input given and stdin is a terminal",
                                 param_hint="INPUTS")
    # a raw image on stdin is spooled to a file; the folder goes when the process ends (not
    # when this generator does: a command may read its records' files after collecting them)
    spool = Path(tempfile.mkdtemp(prefix="cxrkit-stdin-"))
    atexit.register(shutil.rmtree, spool, ignore_errors=True)
    for record in read_stdin_records(sys.stdin.buffer, spool_dir=spool):
        if record.get("source") == "-":
            _SPOOLED.add(str(record["path"]))
        yield record


_SPOOLED: set[str] = set()


def from_stdin(record: Record) -> bool:
    """True for the record of a raw image read from stdin: its ``path`` is a spool file that is
    deleted when the process ends (its ``source`` is ``"-"``), so no output record may name it."""
    return record.get("source") == "-" and str(record.get("path")) in _SPOOLED


def input_name(record: Record) -> str:
    """A record's input as an output record may name it: ``"-"`` for a raw image from stdin."""
    return "-" if from_stdin(record) else str(record["path"])


def keep_input(outputs: Outputs, record: Record, primary: Path) -> str:
    """The path an output record gives as its ``reference`` (the image it was made from): the
    input's path, or, for a raw image from stdin, a copy of it kept beside the output as
    ``<primary stem>.input<suffix>`` (written like every output, so it goes if the item fails).
    """
    if not from_stdin(record):
        return str(record["path"])
    from cxrkit.pipe import atomic_path

    spooled = Path(record["path"])
    suffix = ".nii.gz" if spooled.name.endswith(".nii.gz") else spooled.suffix
    target = outputs.companion(primary, "input" + suffix)
    with atomic_path(target, overwrite=outputs.overwrite) as tmp:
        shutil.copyfile(spooled, tmp)
    return str(target)


def read_record_file(path: Path) -> Iterator[Record]:
    """The records of a JSON Lines file (blank lines skipped; errors name the line)."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            record = parse_line(line, where=f"{path} line {number}")
            if record is not None:
                yield record


def run_items(
    records: Iterator[Record],
    process: Callable[[Record], Record],
    *,
    done: Callable[[Record], Record | None] | None = None,
    keep_going: bool = False,
    label: str = "items",
) -> int:
    """Process records one by one and emit each result on stdout as soon as it is ready.

    Args:
        records: input records (already expanded).
        process: turns an input record into the output record (writes the files itself).
        done: for ``--resume``: returns the stored output record when an item is already done.
        keep_going: log failed items and go on, returning :data:`ExitCode.PARTIAL`.
        label: noun for the progress display.

    Returns:
        The exit code: OK, or PARTIAL when some items failed under ``keep_going``.
    """
    writer = RecordWriter()
    rank, world = shard()
    if world > 1:
        log.info("process %d of %d: every %d-th item", rank + 1, world, world)
    unique = UniqueIds()
    failed = 0
    with _Progress(label) as advance:
        for record in take_shard((unique(r) for r in records), rank, world):
            try:
                result = done(record) if done else None
                if result is None:
                    with item_outputs(record_inputs(record)):  # all of an item's files or none
                        result = process(record)
            except (CxrkitError, OSError) as exc:
                if not keep_going or isinstance(exc, OutputError):
                    raise
                failed += 1
                log.error("%s: %s", record.get("id"), exc)
                advance(failed=True)
                continue
            writer.write(result)
            advance(failed=False)
    return ExitCode.PARTIAL if failed else ExitCode.OK


class _Progress:
    """A rich spinner/counter on stderr, only when stderr is a TTY (and not -q or NO_COLOR)."""

    def __init__(self, label: str) -> None:
        from cxrkit.cli import state

        self.label = label
        self.enabled = (sys.stderr.isatty() and state["verbose"] >= 0
                        and "NO_COLOR" not in os.environ)
        self._progress: Any = None

    def __enter__(self) -> Callable[..., None]:
        if not self.enabled:
            return lambda failed=False: None
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                  TextColumn("{task.completed} {task.fields[label]}"),
                                  TimeElapsedColumn(), console=Console(stderr=True),
                                  transient=True)
        self._progress.start()
        task = self._progress.add_task("working", total=None, label=self.label)

        def advance(failed: bool = False) -> None:
            self._progress.advance(task)

        return advance

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def read_display(record: Record, tool: str) -> Radiograph:
    """Read a record's image, refusing anything but a ``display`` radiograph (DRR line integrals,
    intensities and masks are not what image-to-image tools expect)."""
    from cxrkit.io import read_radiograph

    image = read_radiograph(record["path"])
    kind = record.get("kind", image.kind)
    if kind != "display":
        raise InputError(f"{tool} needs a display radiograph, got kind '{kind}'",
                         path=record["path"], hint="project with --kind display")
    return image


TIME_LIMIT_HELP = ("Stop cleanly once this much training time has passed (e.g. 5400, 90m, "
                   "1h30m): checkpoint, validate, write the model, exit 3; SIGTERM does the "
                   "same. --resume latest continues.")
STOP_AT_HELP = ("Stop cleanly after this step of the --steps schedule, as at --time-limit (exit "
                "3; the learning-rate schedule and data order stay those of --steps, so --resume "
                "latest without it finishes the same run). Default: run every step.")


def parse_duration(text: str | None, name: str = "--time-limit") -> float:
    """``"5400"``, ``"45s"``, ``"90m"``, ``"2h"``, ``"1h30m"`` → seconds; None → 0 (no limit)."""
    import re

    if text is None:
        return 0.0
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d*)?)h)?\s*(?:(\d+(?:\.\d*)?)m)?\s*"
                         r"(?:(\d+(?:\.\d*)?)s?)?\s*", text)
    if not text.strip() or match is None or not any(match.groups()):
        raise typer.BadParameter(f"'{text}' is not a duration; e.g. 5400, 90m, 1h30m",
                                 param_hint=name)
    h, m, sec = (float(g) if g else 0.0 for g in match.groups())
    return 3600 * h + 60 * m + sec


def finish_training(result: Any, out: Path | str, tool: str) -> None:
    """After a training command: print the model folder (main process only); a run that
    stopped early (time limit or signal) says so on stderr and exits 3 (partial)."""
    if shard()[0] == 0:
        typer.echo(str(out))
    if getattr(result, "stopped", None):
        if shard()[0] == 0:
            typer.echo(f"cxrkit {tool}: stopped at step {result.steps_done} ({result.stopped}); "
                       f"the model in {out} is that step's; --resume latest continues", err=True)
        raise typer.Exit(ExitCode.PARTIAL)


def exit_with(code: int) -> None:
    """End a command with ``code`` (no-op for OK)."""
    if code:
        raise typer.Exit(code)


def parse_pair(text: str, name: str, kind: Callable[[str], Any] = float) -> tuple[Any, Any]:
    """``"512"`` → (512, 512); ``"512,384"`` or ``"512x384"`` → (512, 384)."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        values = [kind(p) for p in parts if p.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"'{text}' is not a number or a pair", param_hint=name) from exc
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise typer.BadParameter(f"'{text}' must be one or two values", param_hint=name)
    return (values[0], values[1])


def parse_triple(text: str, name: str) -> tuple[float, float, float]:
    """``"0,10,0"`` → (0.0, 10.0, 0.0)."""
    try:
        values = [float(p) for p in text.split(",")]
    except ValueError as exc:
        raise typer.BadParameter(f"'{text}' is not three numbers", param_hint=name) from exc
    if len(values) != 3:
        raise typer.BadParameter(f"'{text}' must be three comma-separated numbers",
                                 param_hint=name)
    return (values[0], values[1], values[2])
