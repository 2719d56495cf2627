"""Options shared by every per-item command, and the per-item loop (DESIGN.md §3).

The loop owns inputs (paths or stdin), output naming, ``--overwrite``/``--resume``,
``--keep-going``, sharding under ``accelerate launch``, progress on a TTY's stderr and the record
stream on stdout. A command supplies one function that turns a record into a new record.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
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
from cxrkit.io import RECORD_SUFFIXES, WRITE_FORMATS, WRITE_SUFFIXES
from cxrkit.pipe import (
    Record,
    RecordWriter,
    UniqueIds,
    clean_stale_temporaries,
    expand_paths,
    item_outputs,
    new_record,
    read_record_file,
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
IMAGE_SUFFIXES = WRITE_SUFFIXES


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
    """The suffixes ``-o FILE`` may have: :data:`cxrkit.io.WRITE_SUFFIXES`."""
    return IMAGE_SUFFIXES


def _differences(stored: Any, wanted: dict[str, Any]) -> str:
    """``"kev: 60 → 70, geometry.size: [32,32] → [40,40]"`` for the keys whose values differ
    (nested options by their dotted path, at most three shown)."""
    if not isinstance(stored, dict):
        return "no options stored"
    found: list[str] = []

    def walk(old: Any, new: Any, prefix: str) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                walk(old.get(key), new.get(key), f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix[:-1]}: {to_json(old)[:40]} → {to_json(new)[:40]}")

    walk(stored, json.loads(to_json(wanted)), "")
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def format_suffix(fmt: str) -> str:
    """``tiff``/``png``/``dicom`` → file suffix."""
    suffixes = WRITE_FORMATS
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
            if arg.lower().endswith(RECORD_SUFFIXES) and Path(arg).is_file():
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


INVOCATION: list[str] = []
"""The arguments of the running ``cxrkit`` invocation (set by the root group as it parses them)."""


def command_line() -> str:
    """The running command as a shell line, ``cxrkit train-x --steps 10 …``, for run records
    (the arguments click parsed, so in-process callers record their own, not the host's argv)."""
    import shlex

    return shlex.join(["cxrkit", *INVOCATION])


def training_progress(tool: str) -> Callable[[dict[str, Any]], None]:
    """The ``on_log`` of a training command: one line per report on stderr
    (``cxrkit train-x: step 100 loss 0.0123 …``)."""

    def report(entry: dict[str, Any]) -> None:
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in entry.items())
        typer.echo(f"cxrkit {tool}: {text}", err=True)

    return report


def read_record_files(files: list[Path]) -> list[Record]:
    """Every record of the JSONL files given to a training command's ``--records``, in order."""
    from cxrkit.pipe import read_record_file

    return [record for f in files for record in read_record_file(f)]


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


def prefetch_imports(*modules: str) -> None:
    """Import ``modules`` in a background thread while the command reads its first input: a
    gzip read releases the GIL, so on a CPU with a second core an import (scipy.ndimage takes
    ~0.25 s) costs the command nothing. The main thread's own import of a module waits for it
    (Python's import lock), so nothing is imported twice or half."""
    import importlib
    import threading

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # the main thread's own import will report it
                return

    threading.Thread(target=run, name="cxrkit-prefetch", daemon=True).start()


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


# ---- numbers: every float option rejects nan and inf; ranges checked while parsing --------------

def number_parser(low: float | None = None, high: float | None = None, *,
                  above: bool = False) -> Callable[[Any], float]:
    """A typer ``parser`` for a float option: finite, and within ``[low, high]`` (``(low, high]``
    with ``above``), so a bad value is a usage error before any input is read."""

    def parse(text: Any) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise typer.BadParameter(f"'{text}' is not a number") from None
        if not math.isfinite(value):
            raise typer.BadParameter(f"'{text}' is not a finite number")
        if low is not None and (value <= low if above else value < low):
            raise typer.BadParameter(f"{text} must be {'>' if above else '≥'} {low:g}")
        if high is not None and value > high:
            raise typer.BadParameter(f"{text} must be ≤ {high:g}")
        return value

    parse.__name__ = "float"
    return parse


def finite_floats(func: Callable[..., Any]) -> Callable[..., Any]:
    """Give every float option of a command a :func:`number_parser` honouring its ``min``/``max``
    (typer skips ``min``/``max`` once a parser is set, so they move into the parser).

    Applied to every command when the app registers it, so no float option accepts ``nan``.
    """
    import typing

    hints = typing.get_type_hints(func, include_extras=True)
    # the evaluated annotations replace the strings (``from __future__ import annotations``), so
    # that typer sees these OptionInfo objects rather than fresh ones from evaluating again
    func.__annotations__ = {**func.__annotations__, **hints}
    for hint in hints.values():
        if typing.get_origin(hint) is not Annotated:
            continue
        base, *extras = typing.get_args(hint)
        if base not in (float, float | None):
            continue
        for info in extras:
            if isinstance(info, typer.models.OptionInfo) and info.parser is None:
                info.parser = number_parser(info.min, info.max)
    return func


# ---- option groups: options several commands share, defined once ------------------------------

class OptionGroup:
    """Options shared by several commands, defined once as the parameters of ``build``.

    ``@GROUP.use("name")`` replaces the command's parameter ``name`` by the group's options (at
    that place in ``--help``) and passes the command what ``build(**options)`` returns, built
    and checked before the command body runs, so bad values are usage errors up front. A command
    may change a default or a help text (``defaults={...}``, ``helps={...}``); the option names
    and meanings stay the same everywhere.
    """

    def __init__(self, build: Callable[..., Any]) -> None:
        self.build = build
        self.parameters = list(_evaluated_signature(build).parameters.values())

    @property
    def names(self) -> list[str]:
        """The Python names of the group's options."""
        return [p.name for p in self.parameters]

    def use(self, target: str, *, defaults: dict[str, Any] | None = None,
            helps: dict[str, str] | None = None) -> Callable[[Callable[..., Any]],
                                                          Callable[..., Any]]:
        """Decorate a command: its parameter ``target`` becomes this group's options."""
        import copy
        import functools
        import typing

        defaults, helps = defaults or {}, helps or {}
        unknown = (set(defaults) | set(helps)) - set(self.names)
        if unknown:
            raise TypeError(f"not options of this group: {sorted(unknown)}")
        options = []
        for p in self.parameters:
            annotation = p.annotation
            if p.name in helps:
                base, *extras = typing.get_args(annotation)
                extras = [copy.copy(e) for e in extras]
                for e in extras:
                    if isinstance(e, typer.models.OptionInfo):
                        e.help = helps[p.name]
                annotation = Annotated.__class_getitem__((base, *extras))  # type: ignore[attr-defined]
            options.append(p.replace(annotation=annotation,
                                     default=defaults.get(p.name, p.default)))
        build, names = self.build, self.names

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            signature = _evaluated_signature(func, skip=target)
            params = list(signature.parameters.values())
            at = [p.name for p in params].index(target)
            params[at:at + 1] = options

            @functools.wraps(func)
            def command(*args: Any, **kwargs: Any) -> Any:
                kwargs[target] = build(**{n: kwargs.pop(n) for n in names if n in kwargs})
                return func(*args, **kwargs)

            command.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
            command.__annotations__ = {p.name: p.annotation for p in params}
            return command

        return decorate


def _evaluated_signature(func: Callable[..., Any], skip: str | None = None) -> Any:
    """``func``'s signature with string annotations evaluated (``skip``'s becomes ``Any``)."""
    import inspect

    signature = inspect.signature(func)
    params = []
    for p in signature.parameters.values():
        annotation = p.annotation
        if p.name == skip:
            annotation = Any
        elif isinstance(annotation, str):
            annotation = eval(annotation, func.__globals__)  # our own annotations, as typer does
        params.append(p.replace(annotation=annotation))
    return signature.replace(parameters=params, return_annotation=None)


MAX_CHANNELS = 4096
"""The widest network level ``--channels`` may ask for."""


def channel_list(text: str, name: str) -> tuple[int, ...]:
    """``"32,64,128"`` → (32, 64, 128): whole numbers from 1 to :data:`MAX_CHANNELS`."""
    try:
        widths = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"'{text}' is not comma-separated whole numbers, e.g. "
                                 "32,64,128", param_hint=name) from None
    if not all(1 <= w <= MAX_CHANNELS for w in widths):
        raise typer.BadParameter(f"'{text}': widths must be 1..{MAX_CHANNELS}", param_hint=name)
    return widths
