"""Generate man pages and shell completions from the typer app (``python -m cxrkit.cli._manpage``).

typer ≥ 0.26 vendors click, so click-man cannot see the command tree; this walks it directly.
``tests/test_docs.py`` fails when the checked-in ``man/`` or ``completions/`` are stale.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cxrkit import __version__

ROOT = Path(__file__).resolve().parents[2]
SHELLS = {"bash": "cxrkit.bash", "zsh": "_cxrkit", "fish": "cxrkit.fish"}

_EXIT_STATUS = """.SH EXIT STATUS
.TP
.B 0
success
.TP
.B 1
runtime error (bad input file, model or geometry; an output that exists without
\\-\\-overwrite, that would replace an input of the run, or that \\-\\-resume finds made
with other options); one line on stderr, the traceback with \\-v
.TP
.B 2
usage error (bad option or value, or no input while stdin is a terminal)
.TP
.B 3
partial: some items failed under \\-\\-keep\\-going
.TP
.B 8
a check failed (e.g. eval \\-\\-fail\\-under)
.TP
.B 130
interrupted (Ctrl\\-C or SIGTERM; the item being written is removed, finished items stay);
training commands stop cleanly on SIGTERM with 3
"""


def _esc(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + ln) if ln.startswith((".", "'")) else ln for ln in out.split("\n"))


def _paragraphs(text: str) -> str:
    """Docstring → roff: blank lines separate paragraphs, indented blocks are examples."""
    out: list[str] = []
    for block in text.strip().split("\n\n"):
        lines = [ln for ln in block.split("\n") if ln != "\b"]  # click's no-rewrap marker
        if all(ln.startswith("    ") for ln in lines if ln.strip()):
            out += [".PP", ".nf", ".RS 4", *(_esc(ln[4:]) for ln in lines), ".RE", ".fi"]
        else:
            out += [".PP", _esc(" ".join(ln.strip() for ln in lines))]
    return "\n".join(out)


def _param(param: Any) -> str:
    if param.param_type_name == "argument":
        name = param.name.upper()
        return f".TP\n.I {_esc(name)}\n{_esc(getattr(param, 'help', '') or '')}"
    opts = ", ".join(param.opts + param.secondary_opts)
    text = param.help or ""
    default = param.default
    if (param.show_default is not False and default not in (None, False, "", ())
            and not param.is_flag and not param.count):
        text += f" [default: {default}]"
    metavar = "" if param.is_flag or param.count else f" {param.name.upper()}"
    return f".TP\n.B {_esc(opts)}{_esc(metavar)}\n{_esc(text)}"


def render_page(name: str, command: Any, *, summary_only: bool = False) -> str:
    """One man page for ``command`` (a click command or the root group)."""
    doc = (command.help or "").strip()
    summary = doc.split("\n")[0].rstrip(".")
    title = name.upper().replace("-", "\\-")
    lines = [f'.TH {title} 1 "" "cxrkit {__version__}" "cxrkit manual"', ".SH NAME",
             f"{_esc(name)} \\- {_esc(summary)}", ".SH SYNOPSIS",
             f".B {_esc(name.replace('-', ' ', 1) if name != 'cxrkit' else name)}",
             _esc("[OPTIONS]" + (" COMMAND [ARGS]..." if summary_only else " [INPUTS]...")),
             ".SH DESCRIPTION", _paragraphs(doc)]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += [".SH OPTIONS", *(_param(p) for p in params)]
    if summary_only:
        lines += [".SH COMMANDS"]
        for sub_name, sub in sorted(command.commands.items()):
            sub_summary = (sub.help or "").strip().split("\n")[0]
            lines += [".TP", f".B {_esc(sub_name)}",
                      f"{_esc(sub_summary)} See \\fBcxrkit\\-{_esc(sub_name)}\\fR(1)."]
    if summary_only:
        lines += [_limits()]
    lines += [_EXIT_STATUS.rstrip(), ".SH SEE ALSO", _see_also(name)]
    return "\n".join(lines) + "\n"


def _limits() -> str:
    """The size limits every reader checks before it allocates (from :mod:`cxrkit.io`)."""
    from cxrkit import io

    return "\n".join([
        ".SH LIMITS",
        _esc("Every reader checks the sizes a file declares before it allocates memory, and "
             "refuses the file with one line (exit 1) when they are over these limits "
             "(constants in cxrkit.io):"),
        ".TP", ".B MAX_PIXELS",
        _esc(f"{io.MAX_PIXELS:,} pixels in one radiograph or TIFF page "
             f"({int(io.MAX_PIXELS ** 0.5)} x {int(io.MAX_PIXELS ** 0.5)})."),
        ".TP", ".B MAX_VOXELS",
        _esc(f"{io.MAX_VOXELS:,} voxels in one volume, DICOM series or TIFF stack."),
        ".TP", ".B MIN_PIXEL_MM, MAX_PIXEL_MM",
        _esc(f"a radiograph's pixel spacing (from its file or its record) must lie in "
             f"{io.MIN_PIXEL_MM:g} to {io.MAX_PIXEL_MM:g} mm."),
        ".PP",
        _esc("Volumes must also have positive finite voxel sizes, finite real scalar voxels and "
             "all their declared bytes; a DICOM series must have every slice, once, with "
             "pixels."),
    ])


def _see_also(name: str) -> str:
    from typer.main import get_command

    from cxrkit.cli import app

    names = ["cxrkit", *(f"cxrkit-{n}" for n in sorted(get_command(app).commands))]  # type: ignore[attr-defined]
    return ", ".join(f"\\fB{_esc(n)}\\fR(1)" for n in names if n != name)


def man_pages() -> dict[str, str]:
    """``{file name: roff text}`` for cxrkit.1 and one page per subcommand."""
    from typer.main import get_command

    from cxrkit.cli import app

    root = get_command(app)
    pages = {"cxrkit.1": render_page("cxrkit", root, summary_only=True)}
    for sub_name, sub in root.commands.items():  # type: ignore[attr-defined]
        pages[f"cxrkit-{sub_name}.1"] = render_page(f"cxrkit-{sub_name}", sub)
    return pages


def completions() -> dict[str, str]:
    """``{file name: script}`` for bash, zsh and fish, from typer's completion machinery."""
    scripts = {}
    for shell, filename in SHELLS.items():
        env = {**os.environ, "_CXRKIT_COMPLETE": f"source_{shell}"}
        out = subprocess.run([sys.executable, "-m", "cxrkit"], env=env, capture_output=True,
                             text=True, check=True)
        scripts[filename] = out.stdout
    return scripts


def write_all(root: Path = ROOT) -> list[Path]:
    """Regenerate ``man/`` and ``completions/`` under ``root``; returns the files written."""
    written = []
    for folder, files in (("man", man_pages()), ("completions", completions())):
        (root / folder).mkdir(exist_ok=True)
        for filename, text in files.items():
            target = root / folder / filename
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path.relative_to(ROOT))
