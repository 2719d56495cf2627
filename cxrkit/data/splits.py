"""Hold-out splits and data hashes, shared by every model family's training.

- :func:`split_groups`: the one seeded splitter: whole groups (patients, or files) are held out,
  so no group is in both parts; :func:`split_by_patient` and :func:`split_files` are its two uses.
- :func:`holdout_tail`: MUNIT-LQ's unseeded split of already-loaded images (the last ones).
- :func:`files_sha256`: ``{file name: sha256}`` of training data, for ``run.json``.

This module imports no torch.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cxrkit.errors import InputError
from cxrkit.files import file_sha256

T = TypeVar("T")


def split_groups(groups: Sequence[Hashable], fraction: float, *, seed: Any,
                 keep_one: bool = False) -> tuple[list[int], list[int]]:
    """``(train, validation)`` indices of items whose group is ``groups[i]``; no group in both.

    The distinct groups are sorted, permuted by ``numpy.random.default_rng(seed)``, and the first
    ``ceil(fraction · groups)`` of the permutation are held out (none when ``fraction`` is 0).

    Args:
        groups: the group of each item (a patient id, or the item's own index).
        fraction: share of groups held out, in [0, 1).
        seed: anything ``numpy.random.default_rng`` takes (an int, or a list of ints).
        keep_one: hold out at most all groups but one, instead of raising.

    Returns:
        ``(train_indices, val_indices)``, each sorted.

    Raises:
        InputError: without ``keep_one``, too few groups to hold ``fraction`` out.
    """
    import numpy as np

    distinct = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(distinct))
    count = math.ceil(fraction * len(distinct)) if fraction > 0 else 0
    if keep_one:
        count = min(count, len(distinct) - 1)
    elif count >= len(distinct):
        raise InputError(f"{len(distinct)} patients are too few for a validation split",
                         hint="add images or lower --val-fraction")
    held = {distinct[i] for i in order[:count]}
    train = [i for i, g in enumerate(groups) if g not in held]
    val = [i for i, g in enumerate(groups) if g in held]
    return train, val


def patient_id(path: str | Path) -> str:
    """The patient of a file: the name before the first ``_`` (NIH ``00000013_005.png`` → 13)."""
    return Path(path).name.split("_", 1)[0]


def split_by_patient(paths: Sequence[str | Path], val_fraction: float, *,
                     seed: int) -> tuple[list[int], list[int]]:
    """Indices of ``paths`` for training and validation, with no patient in both.

    Args:
        paths: image files; the patient is :func:`patient_id` of each.
        val_fraction: share of patients held out, in [0, 1).
        seed: shuffles the patients before the split.

    Returns:
        ``(train_indices, val_indices)``, each sorted.
    """
    return split_groups([patient_id(p) for p in paths], val_fraction, seed=seed)


def split_files(count: int, fraction: float, *, seed: int) -> tuple[list[int], list[int]]:
    """``(train, validation)`` indices of ``count`` files: ``ceil(fraction·count)`` files, chosen
    by a permutation seeded by ``[seed, 7]``, are held out, leaving at least one to train on; with
    ``fraction`` 0 or a single file nothing is held out and validation is ``[]``."""
    return split_groups(range(count), fraction, seed=[seed, 7], keep_one=True)


def holdout_tail(images: Sequence[T], count: int = 4) -> tuple[list[T], list[T]]:
    """``(train, validation)``: the last ``min(count, len // 5)`` items are held out; with fewer
    than 5 items nothing is, and validation uses the first ``count`` training items.

    Unseeded, and kept as MUNIT-LQ has always split (its shipped weights depend on it)."""
    held = min(count, len(images) // 5)
    train = list(images[: len(images) - held])
    return train, list(images[len(images) - held :]) if held else train[:count]


def files_sha256(paths: Sequence[str | Path]) -> dict[str, str]:
    """``{file name: sha256}`` of the training data (recorded in ``run.json``)."""
    return {Path(p).name: file_sha256(p) for p in paths}
