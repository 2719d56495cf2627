"""Docs stay honest: every command has help with an example, a man page, a README line, and the
checked-in man pages and completions equal freshly generated ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.main import get_command

from cxrkit.cli import app
from cxrkit.cli._manpage import completions, man_pages

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", COMMANDS)
def test_command_is_documented(name: str) -> None:
    command = get_command(app).commands[name]  # type: ignore[attr-defined]
    assert command.help and "Example" in command.help, f"{name}: --help needs an Example block"
    assert f"cxrkit {name}" in (ROOT / "README.md").read_text(), f"README does not mention {name}"
    assert (ROOT / "man" / f"cxrkit-{name}.1").is_file()


def test_man_pages_are_fresh() -> None:
    for filename, text in man_pages().items():
        path = ROOT / "man" / filename
        assert path.is_file() and path.read_text() == text, (
            f"man/{filename} is stale: run `python -m cxrkit.cli._manpage`")


def test_completions_are_fresh() -> None:
    for filename, text in completions().items():
        path = ROOT / "completions" / filename
        assert path.is_file() and path.read_text() == text, (
            f"completions/{filename} is stale: run `python -m cxrkit.cli._manpage`")
