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

from cxrkit import __version__
from cxrkit.errors import CheckFailedError, CxrkitError, ExitCode

app = typer.Typer(
    name="cxrkit",
    help=(
        "Composable tools for synthetic chest X-ray research.\n\n"
        "Commands read images or JSON Lines records (from paths or stdin) and write images as "
        "files and one JSON record per item on stdout, so they chain in pipes:\n\n"
        "    cxrkit project ct.nii.gz -o drr/ | jq .path"
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


def _register() -> None:
    """Add the commands; each module imports only typer at its top, so this stays fast."""
    from cxrkit.cli import (
        degrade,
        enhance,
        evaluate,
        project,
        sample_data,
        synth,
        train_ddpm_lq,
        train_enhance,
        train_munit,
    )

    app.command("project")(project.project)
    app.command("degrade")(degrade.degrade)
    app.command("enhance")(enhance.enhance)
    app.command("train-enhance")(train_enhance.train_enhance)
    app.command("train-munit")(train_munit.train_munit)
    app.command("train-ddpm-lq")(train_ddpm_lq.train_ddpm_lq)
    app.command("synth")(synth.synth)
    app.command("eval")(evaluate.evaluate)
    app.command("sample-data")(sample_data.sample_data)


_register()


def _fail(message: str, code: int) -> int:
    name = f"cxrkit {state['command']}".strip()
    sys.stderr.write(f"{name}: error: {message}\n")
    return code


def _interrupt(number: int, frame: Any) -> None:
    """SIGINT and SIGTERM (what batch schedulers send) both stop a command the same way: as
    Ctrl-C does, so the item being written is removed and the exit code is 130. (The training
    loop sets its own handlers while it runs, to stop cleanly with exit 3.)"""
    state["signal"] = signal.Signals(number).name
    raise KeyboardInterrupt


def _handle_signals() -> None:
    for name in ("SIGINT", "SIGTERM"):
        number = getattr(signal, name)
        if signal.getsignal(number) is not signal.SIG_IGN:  # keep nohup's and `cmd &`'s choice
            signal.signal(number, _interrupt)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, mapping errors to :class:`ExitCode` values."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `cxrkit … | head` exits quietly
    _handle_signals()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # libgomp spin-waits slow shared CPUs
    state["signal"] = None
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
    except _click_exception() as exc:
        exc.show()
        code = exc.exit_code
    except BrokenPipeError:
        _silence_stdout()
        code = ExitCode.OK
    except Exception as exc:  # an unexpected bug: one line unless -v
        if state["verbose"] > 0:
            raise
        code = _fail(f"{type(exc).__name__}: {exc} (run with -v for the traceback)",
                     ExitCode.ERROR)
    sys.exit(int(code or 0))


def _click_exception() -> Any:
    from typer._click.exceptions import ClickException  # typer >= 0.26 vendors click

    return ClickException


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
