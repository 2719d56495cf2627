"""The CLI framework: help, version, errors and exit codes, stdin rules, and a fast import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cxrkit import __version__
from cxrkit.cli import app

runner = CliRunner()
COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


def run_cli(*args: str, stdin: str | bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """The real console entry point in a subprocess (exit codes, stderr, pipes); ``env`` adds
    variables to the environment."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2", **(env or {})}
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run([sys.executable, "-m", "cxrkit", *args], input=data,
                          capture_output=True, env=env, timeout=300)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.decode().strip() == f"cxrkit {__version__}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help(name: str) -> None:
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output


def test_import_of_cli_does_not_import_torch() -> None:
    code = ("import sys, cxrkit.cli, cxrkit.cli._options, cxrkit.pipe, cxrkit.io;"
            "bad = [m for m in ('torch', 'SimpleITK', 'pydicom', 'scipy') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_usage_error_exit_2() -> None:
    result = run_cli("project", "--no-such-option")
    assert result.returncode == 2 and b"No such option" in result.stderr


def test_no_input_on_terminal_is_usage_error() -> None:
    import pty

    controller, terminal = pty.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "cxrkit", "project"], stdin=terminal,
                                capture_output=True, timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 2 and b"stdin is a terminal" in result.stderr


def test_empty_stdin_is_no_work() -> None:
    result = run_cli("project", stdin=b"")
    assert result.returncode == 0 and result.stdout == b""


def test_missing_file_one_line_error(tmp_path: Path) -> None:
    result = run_cli("project", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cxrkit project: error: ")
    assert "Traceback" not in result.stderr.decode()
    verbose = run_cli("-v", "project", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path))
    assert "Traceback" in verbose.stderr.decode()


# ---- the options layer (issue #19) --------------------------------------------------------------

MODEL_OR_RENDERER = ("project", "synth", "degrade", "enhance", "train-enhance", "train-munit",
                     "train-ddpm-lq")
TRAIN_COMMANDS = tuple(c for c in COMMANDS if c.startswith("train-"))


def _options(name: str) -> dict[str, object]:
    command = get_command(app).commands[name]  # type: ignore[attr-defined]
    return {opt: p for p in command.params for opt in getattr(p, "opts", [])}


@pytest.mark.parametrize("name", MODEL_OR_RENDERER)
def test_every_model_or_renderer_command_has_device(name: str) -> None:
    assert "--device" in _options(name)


def test_every_train_command_has_the_same_training_options() -> None:
    from cxrkit.cli._groups import TRAINING

    wanted = {opt for p in get_command(app).commands["train-enhance"].params  # type: ignore
              if p.name in TRAINING.names for opt in p.opts}
    assert {"--stop-at-step", "--grad-accum", "--lr-schedule", "--time-limit", "--resume",
            "--ema", "--seed", "--device", "--warmup-steps", "--mixed-precision"} <= wanted
    for name in TRAIN_COMMANDS:
        assert wanted <= set(_options(name)), name


def test_training_group_keeps_each_commands_defaults() -> None:
    """munit's loop settings (no warm-up, Adam weight decay, no clipping) stay its defaults."""
    def defaults(name: str) -> dict[str, object]:
        command = get_command(app).commands[name]  # type: ignore[attr-defined]
        return {p.name: p.default for p in command.params}

    munit, enhance = defaults("train-munit"), defaults("train-enhance")
    assert (munit["warmup_steps"], munit["weight_decay"], munit["max_grad_norm"],
            munit["batch_size"], munit["lr"]) == (0, 1e-4, 0.0, 4, 1e-4)
    assert (enhance["steps"], enhance["lr"], enhance["warmup_steps"]) == (4000, 5e-4, 100)


@pytest.mark.parametrize(("args", "message"), [
    (("project", "--view", "XY"), "--view: 'XY' is not one of PA, AP, LAT, RLAT"),
    (("project", "--size", "0"), "--size: '0': sizes must be positive"),
    (("project", "--size", "100000,1"), "over the limit of 8192 pixels per side"),
    (("project", "--kev", "5"), "--kev: 5 must be ≥ 30"),
    (("project", "--sid-mm", "nan"), "--sid-mm: 'nan' is not a finite number"),
    (("project", "--device", "gpu"), "--device: unknown device 'gpu'"),
    (("project", "--label-ids", "1"), "--label-ids: give --labels"),
    (("synth", "--density-hu", "nan"), "--density-hu: 'nan' is not a finite number"),
    (("synth", "--kev", "inf"), "--kev: 'inf' is not a finite number"),
    (("synth", "--source", "luna16", "--where", " "), "--where: an empty selection"),
    (("enhance", "--tile", "8", "--overlap", "0"), "--tile: 8 is not 0 or 64..8192"),
    (("enhance", "--tile", "256", "--overlap", "256"), "--overlap: 256 must be ≥ 0 and less"),
    (("degrade", "--set", "slice-blur.slice_mm=1e9"), "--set: slice-blur:"),
    (("degrade", "--set", "gamma.gamma=NaN"), "--set: gamma:"),
    (("train-enhance", "--crop", "100000"), "--crop:"),
    (("train-enhance", "--channels", "0,0"), "--channels: '0,0': widths must be 1..4096"),
    (("train-ddpm-lq", "--lq", "x", "--max-timestep", "0"), "--max-timestep:"),
    (("train-ddpm-lq", "--lq", "x", "--channels", "a,b"), "--channels:"),
    (("train-munit", "--hq", "x", "--lq", "y", "--stop-at-step", "9", "--steps", "5"),
     "--stop-at-step: 9 is beyond --steps 5"),
    (("train-munit", "--hq", "x", "--lq", "y", "--lr-schedule", "linear"), "--lr-schedule:"),
    (("train-enhance", "--batch-size", "6", "--grad-accum", "4"), "--grad-accum:"),
])
def test_bad_option_values_are_one_line_usage_errors_before_any_input(
        tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    """Exit 2 and ONE stderr line naming the option, though the input does not exist (it would
    be exit 1, 'no such file', had the input been read first)."""
    command, *options = args
    missing = str(tmp_path / "missing.nii.gz")
    result = run_cli(command, *([] if command.startswith("train-m") or "ddpm" in command
                                else [missing]), *options)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith(f"cxrkit {command}: error: "), err
    assert message in err and err.rstrip().endswith(f"(try 'cxrkit {command} --help')"), err


def test_click_usage_errors_are_one_line() -> None:
    result = run_cli("project", "--no-such-option")
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1
    assert err == ("cxrkit project: error: No such option: --no-such-option "
                   "(try 'cxrkit project --help')\n")


def test_every_float_option_rejects_nan_and_inf() -> None:
    import typer

    checked = 0
    for name in COMMANDS:
        for param in get_command(app).commands[name].params:  # type: ignore[attr-defined]
            desc = param.type_descriptor
            if desc.annotation not in (float, float | None):
                continue
            parse = desc.parameter_info.parser
            assert parse is not None, f"{name} {param.opts}"
            for bad in ("nan", "inf", "-inf"):
                with pytest.raises(typer.BadParameter):
                    parse(bad)
            checked += 1
    assert checked > 20


def test_float_option_ranges_still_hold() -> None:
    """min/max of a float option move into its parser (typer skips them once one is set)."""
    result = runner.invoke(app, ["degrade", "x.png", "--strength", "1.5", "--method", "ddpm"])
    assert result.exit_code == 2 and "1.5 must be ≤ 1" in result.output


def test_verbose_and_quiet_after_the_subcommand(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.nii.gz")
    verbose = run_cli("project", missing, "-v", "-o", str(tmp_path / "o"))
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr.decode()
    quiet = run_cli("project", "-q", missing)
    assert quiet.returncode == 1 and "Traceback" not in quiet.stderr.decode()


def test_global_flags_are_hoisted_but_option_values_are_not() -> None:
    from cxrkit.cli import hoist_global_flags

    group = get_command(app)
    ctx = group.make_context("cxrkit", ["project", "--help"], resilient_parsing=True)
    assert hoist_global_flags(group, ctx, ["project", "a", "-v", "-q"]) == [
        "-v", "-q", "project", "a"]
    assert hoist_global_flags(group, ctx, ["project", "-o", "-v", "a"]) == [
        "project", "-o", "-v", "a"]
    assert hoist_global_flags(group, ctx, ["project", "--", "-v"]) == ["project", "--", "-v"]


def test_multiline_messages_become_one_line() -> None:
    from cxrkit.cli import MAX_MESSAGE, one_line

    assert one_line("first line\n  second\tline\n") == "first line second line"
    assert len(one_line("word " * 1000)) == MAX_MESSAGE


def _man_examples(name: str) -> list[str]:
    page = (Path(__file__).parents[1] / "man" / f"cxrkit-{name}.1").read_text()
    lines, inside = [], False
    for line in page.splitlines():
        if line == ".nf":
            inside = True
        elif line == ".fi":
            inside = False
        elif inside and not line.startswith("."):
            lines.append(line.replace("\\-", "-").replace("\\\\", "\\").replace("\\&", ""))
    return lines


@pytest.mark.parametrize("name", COMMANDS)
def test_help_examples_paste_as_the_man_page_shows_them(name: str) -> None:
    """Each example line of the man page is a whole line of --help (not joined or rewrapped)."""
    examples = _man_examples(name)
    assert examples, name
    result = runner.invoke(app, [name, "--help"], terminal_width=80)
    shown = [line.strip() for line in result.output.splitlines()]
    for line in examples:
        assert line.strip() in shown, line
