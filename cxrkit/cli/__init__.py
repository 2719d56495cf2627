"""The ``cxrkit`` command line: one typer app, one module per command.

Only this package imports typer and rich. It imports no torch at module level, so ``cxrkit --help``
and shell completion stay fast; each command imports the library it needs inside its body.
Exceptions become exit codes and one-line messages in exactly one place, :func:`main`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cxrkit import __version__
from cxrkit.errors import CheckFailedError, CxrkitError, ExitCode

GLOBAL_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "-q", "--quiet")
"""Root options that may also follow the subcommand (``cxrkit project -v ...``)."""

MAX_MESSAGE = 400
"""Characters of an error message shown without -v (a library's essay is cut there)."""


class _Group(TyperGroup):
    """The root group: ``-v``/``-q`` work after the subcommand too (moved in front of it)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        from cxrkit.cli import _options

        _options.INVOCATION[:] = args
        return super().parse_args(ctx, hoist_global_flags(self, ctx, list(args)))


def hoist_global_flags(group: Any, ctx: Any, args: list[str]) -> list[str]:
    """``[..., CMD, *rest]`` with the :data:`GLOBAL_FLAGS` of ``rest`` moved before ``CMD``.

    Values of the subcommand's options (``-o -v`` names a folder ``-v``) and everything after
    ``--`` stay where they are.
    """
    at = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    command = group.get_command(ctx, args[at]) if at is not None else None
    if command is None:
        return args
    takes_value = {opt for p in command.params if getattr(p, "param_type_name", "") == "option"
                   and not (p.is_flag or p.count) for opt in (*p.opts, *p.secondary_opts)}
    head, rest, moved = args[: at + 1], [], []
    tail = args[at + 1:]
    i = 0
    while i < len(tail):
        token = tail[i]
        if token == "--":
            rest += tail[i:]
            break
        if token in GLOBAL_FLAGS:
            moved.append(token)
        else:
            rest.append(token)
            if token in takes_value and i + 1 < len(tail):
                rest.append(tail[i + 1])
                i += 1
        i += 1
    return [*args[:at], *moved, args[at], *rest] if moved else head + tail


def keep_examples(text: str) -> str:
    """Mark each indented block of a docstring (the examples) with click's ``\\b`` so ``--help``
    prints its lines as written: they paste into a shell as the man page shows them."""
    import inspect

    blocks = inspect.cleandoc(text).split("\n\n")
    marked = [("\b\n" + b) if all(ln.startswith("    ") for ln in b.split("\n") if ln.strip())
              else b for b in blocks]
    return "\n\n".join(marked)


app = typer.Typer(
    cls=_Group,
    name="cxrkit",
    help=keep_examples(
        "Composable tools for synthetic chest X-ray research.\n\n"
        "Commands read images or JSON Lines records (from paths or stdin) and write images as "
        "files and one JSON record per item on stdout, so they chain in pipes:\n\n"
        "    cxrkit project ct.nii.gz -o drr/ | jq .path\n\n"
        "-v and -q may also follow the command (cxrkit project -v ...)."
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

state: dict[str, Any] = {"verbose": 0, "command": "", "signal": None}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True,
                                         help="More log output on stderr; -v also shows "
                                              "tracebacks.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="Only errors on stderr (no progress).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Composable tools for synthetic chest X-ray research."""
    state["verbose"] = -1 if quiet else verbose
    state["command"] = ctx.invoked_subcommand or ""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="cxrkit: %(levelname)s: %(message)s",
                        stream=sys.stderr, force=True)
    if verbose <= 0:  # other libraries' log lines (tifffile, pydicom: with tracebacks) only at -v
        for handler in logging.getLogger().handlers:
            handler.addFilter(_own_records)


def _own_records(record: logging.LogRecord) -> bool:
    """Whether a log record comes from cxrkit's own loggers."""
    return record.name == "cxrkit" or record.name.startswith("cxrkit.")


def _register() -> None:
    """Add the commands; each module imports only typer at its top, so this stays fast.

    Every command's help keeps its example lines (:func:`keep_examples`), and every float
    option rejects nan and inf (:func:`~cxrkit.cli._options.finite_floats`).
    """
    from cxrkit.cli import (
        degrade,
        detect,
        enhance,
        evaluate,
        merge_lora,
        project,
        sample_data,
        synth,
        train_ddpm_lq,
        train_detect,
        train_domain,
        train_enhance,
        train_lora,
        train_munit,
        train_synth,
    )
    from cxrkit.cli._options import finite_floats

    commands = {
        "project": project.project,
        "degrade": degrade.degrade,
        "enhance": enhance.enhance,
        "train-enhance": train_enhance.train_enhance,
        "train-munit": train_munit.train_munit,
        "train-ddpm-lq": train_ddpm_lq.train_ddpm_lq,
        "train-synth": train_synth.train_synth,
        "train-domain": train_domain.train_domain,
        "train-lora": train_lora.train_lora,
        "synth": synth.synth,
        "merge-lora": merge_lora.merge_lora,
        "train-detect": train_detect.train_detect,
        "detect": detect.detect,
        "eval": evaluate.evaluate,
        "sample-data": sample_data.sample_data,
    }
    for name, func in commands.items():
        app.command(name, help=keep_examples(func.__doc__ or ""))(finite_floats(func))


_register()


def _fail(message: str, code: int, name: str | None = None) -> int:
    """Write ``<command>: error: <message>`` as ONE line on stderr; return ``code``."""
    name = name or f"cxrkit {state['command']}".strip()
    sys.stderr.write(f"{name}: error: {one_line(message)}\n")
    return code


def one_line(message: str) -> str:
    """A message as one line: line breaks and runs of spaces collapsed; without -v, cut at
    :data:`MAX_MESSAGE` characters (libraries such as diffusers raise paragraphs)."""
    text = " ".join(str(message).split())
    if state["verbose"] <= 0 and len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 1].rstrip() + "…"
    return text


def _usage_error(exc: Any) -> int:
    """A click usage error as one line, ``cxrkit CMD: error: WHAT (try 'cxrkit CMD --help')``;
    exit 2. With no arguments at all, the help (click's own) is the answer."""
    from typer._click.exceptions import BadParameter, MissingParameter, NoArgsIsHelpError

    if isinstance(exc, NoArgsIsHelpError):
        exc.show()
        return ExitCode.USAGE
    ctx = getattr(exc, "ctx", None)
    name = ctx.command_path if ctx is not None else f"cxrkit {state['command']}".strip()
    message = exc.format_message()
    if isinstance(exc, BadParameter) and not isinstance(exc, MissingParameter):
        hint = exc.param_hint
        if hint is None and exc.param is not None:
            hint = list(getattr(exc.param, "opts", None) or [exc.param.name])
        if isinstance(hint, (list, tuple)):
            hint = " / ".join(hint)
        message = f"{hint}: {exc.message}" if hint else exc.message
    _fail(f"{message} (try '{name} --help')", ExitCode.USAGE, name)
    return ExitCode.USAGE


def _interrupt(number: int, frame: Any) -> None:
    """SIGINT and SIGTERM (what batch schedulers send) both stop a command the same way: as
    Ctrl-C does, so the item being written is removed and the exit code is 130. (The training
    loop sets its own handlers while it runs, to stop cleanly with exit 3.)"""
    state["signal"] = signal.Signals(number).name
    raise KeyboardInterrupt


def _handle_signals() -> dict[int, Any]:
    """Install :func:`_interrupt` for SIGINT and SIGTERM; returns the handlers it replaced."""
    previous: dict[int, Any] = {}
    for name in ("SIGINT", "SIGTERM"):
        number = getattr(signal, name)
        if signal.getsignal(number) is not signal.SIG_IGN:  # keep nohup's and `cmd &`'s choice
            previous[number] = signal.signal(number, _interrupt)
    return previous


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, mapping errors to :class:`ExitCode` values."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `cxrkit … | head` exits quietly
    previous = _handle_signals()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # libgomp spin-waits slow shared CPUs
    state["signal"] = None
    try:
        code = _run(argv)
    finally:  # in-process callers (tests, notebooks) get their own handlers back
        for number, handler in previous.items():
            signal.signal(number, handler)
    sys.exit(int(code or 0))


def _run(argv: list[str] | None) -> int:
    """Run the app; the exit code of every way it can end."""
    try:
        code = app(args=argv, prog_name="cxrkit", standalone_mode=False)
        if code == ExitCode.INTERRUPTED and state["signal"]:  # typer turns Ctrl-C into Exit(130)
            code = _fail(f"interrupted ({state['signal']})", ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        code = _fail(f"interrupted ({state['signal'] or 'SIGINT'})", ExitCode.INTERRUPTED)
    except CheckFailedError as exc:
        code = _fail(str(exc), ExitCode.CHECK_FAILED)
    except CxrkitError as exc:
        if state["verbose"] > 0:
            import traceback

            traceback.print_exc()
        code = _fail(str(exc), ExitCode.ERROR)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        code = _fail("aborted", ExitCode.INTERRUPTED)
    except _usage_exception() as exc:
        code = _usage_error(exc)
    except _click_exception() as exc:
        code = _fail(exc.format_message(), exc.exit_code)
    except BrokenPipeError:
        _silence_stdout()
        code = ExitCode.OK
    except Exception as exc:  # an unexpected bug: one line unless -v
        if state["verbose"] > 0:
            raise
        code = _fail(f"{type(exc).__name__}: {exc} (run with -v for the traceback)",
                     ExitCode.ERROR)
    return int(code or 0)


def _usage_exception() -> Any:
    from typer._click.exceptions import UsageError

    return UsageError


def _click_exception() -> Any:
    from typer._click.exceptions import ClickException  # typer >= 0.26 vendors click

    return ClickException


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
