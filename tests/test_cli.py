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
