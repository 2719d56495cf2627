"""The ``config.json`` of a cxrkit model folder: read it, check its ``kind``, and pick the
fields of a settings dataclass from it (used by MUNIT-LQ and DDPM-LQ ``from_pretrained``);
:func:`load_weights`, the one strict safetensors loader of cxrkit's own modules; and what every
family's model class shares: :func:`settings_from_config`, :func:`seeded_init` (fresh weights
from a generator, the caller's global RNG untouched) and :func:`parts_sha256` (one hash of a
model folder's files)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cxrkit.errors import InputError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

S = TypeVar("S")

CONFIG_NAME = "config.json"


def read_config(folder: Path, kind: str) -> dict[str, Any]:
    """The ``config.json`` of a cxrkit model folder, checked to be of ``kind``.

    Args:
        folder: the model folder (``enhancer.json`` is read when there is no ``config.json``).
        kind: the expected ``"kind"`` value, e.g. ``munit-lq`` or ``ddpm-lq``.

    Returns:
        The parsed JSON object.

    Raises:
        ModelError: not a folder, no readable ``config.json``, or another kind of model.
    """
    if not folder.is_dir():
        raise ModelError("no such model folder", path=str(folder))
    meta = folder / CONFIG_NAME
    found = meta if meta.is_file() else folder / "enhancer.json"
    if not found.is_file():
        raise ModelError(f"not a cxrkit {kind} model (no {CONFIG_NAME})", path=str(folder))
    try:
        raw = json.loads(found.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"unreadable {found.name}: {exc}", path=str(found)) from exc
    actual = raw.get("kind") if isinstance(raw, dict) else None
    if actual != kind:
        raise ModelError(f"model is of kind {actual!r}, not {kind!r}", path=str(folder),
                         hint=f"give a folder written by the {kind} training command")
    return raw  # type: ignore[no-any-return]


def settings_values(raw: dict[str, Any], cls: type, folder: Path) -> dict[str, Any]:
    """The entries of ``raw`` that are fields of the dataclass ``cls`` (JSON lists as tuples),
    checked by constructing ``cls`` from them.

    Args:
        raw: a config read by :func:`read_config`.
        cls: the settings dataclass (keys that are not its fields are dropped).
        folder: the model folder, for the error.

    Returns:
        Keyword arguments for ``cls``.

    Raises:
        ModelError: ``cls`` refuses the values (``InputError`` or ``TypeError``).
    """
    known = {f.name for f in fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known}
    try:
        cls(**values)
    except (InputError, TypeError) as exc:
        raise ModelError(f"bad {CONFIG_NAME}: {exc}", path=str(folder)) from exc
    return values


def load_weights(module: nn.Module, path: Path, *, what: str) -> None:
    """Load ``module``'s weights from the safetensors file ``path`` (strict; never a pickle).

    Raises:
        ModelError: the file is missing, unreadable, or its tensors do not fit ``module``.
    """
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"the {what} has no {path.name}", path=str(path.parent),
                         hint="weights are read from safetensors only (never pickles)")
    try:
        module.load_state_dict(load_file(path), strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelError(f"cannot load the {what} weights: {exc}"[:300], path=str(path)) from exc


def settings_from_config(config: Mapping[str, Any], cls: type[S]) -> S:
    """The settings dataclass ``cls`` built from the entries of a model's ``config`` that are
    its fields (diffusers adds others, e.g. ``_class_name``)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in config.items() if k in names})


@contextlib.contextmanager
def seeded_init(generator: torch.Generator) -> Iterator[None]:
    """Inside the block, torch's global RNG (which layers initialise from) is seeded from
    ``generator``; afterwards it is as it was, so the caller's RNG state is untouched."""
    import torch

    state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def parts_sha256(folder: str | Path, parts: Sequence[str]) -> str:
    """One sha256 over the files of a model folder that decide its output (each part present
    hashed with :func:`cxrkit.files.file_sha256`, named, in the order given)."""
    from cxrkit.files import file_sha256

    digest = hashlib.sha256()
    for name in parts:
        part = Path(folder) / name
        if part.exists():
            digest.update(f"{name}:{file_sha256(part)};".encode())
    return digest.hexdigest()
