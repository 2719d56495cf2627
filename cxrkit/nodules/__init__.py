"""Lung nodules as small 3-D HU volumes: real LUNA16 patches and a parametric generator.

A :class:`Nodule` (:mod:`cxrkit.nodules.nodule`) is what every ``synth`` engine inserts: an HU
patch, the fraction of each voxel that the nodule occupies, and the characteristic labels, in the
vocabulary of the LUNA16/LIDC table ``nodules.csv`` (see ``shared/data/luna16-nodules/README.md``):

- ``calcified`` (0/1), ``border_irregular`` (0/1), ``inhomogeneous`` (0/1),
- ``texture``: ``solid``, ``part-solid`` or ``ground-glass`` (the table's ``texture_class``),
- ``diameter_mm``, and ``subtlety`` (1 = extremely subtle … 5 = obvious; None when unknown).

Two sources draw nodules with a ``numpy.random.Generator`` (``source.draw(generator)``):

- :class:`Luna16Patches` (:mod:`cxrkit.nodules.luna16`): the NODE21/LUNA16 CT patches
  (``patches/*_dcm_K.mha``, int16 HU at 1 mm, with ``*_seg_K.mha`` masks), selected by a safe
  ``--where`` expression (:func:`parse_where`, :mod:`cxrkit.nodules.where`);
- :class:`ParametricSource` (:mod:`cxrkit.nodules.parametric`): :func:`generate_nodule` with
  physical controls (:class:`NoduleSpec`): diameter, shape (sphere, ellipsoid, lobulated,
  spiculated), texture and density, internal structure, and calcification pattern.
"""

from __future__ import annotations

from cxrkit.nodules.luna16 import MASK_SMOOTHING_MM, Luna16Patches, read_luna16
from cxrkit.nodules.nodule import CALCIFIED_HU_THRESHOLD, LABEL_KEYS, LUNG_HU, Nodule
from cxrkit.nodules.parametric import (
    CALCIFICATIONS,
    CALCIFIED_FRACTION,
    CALCIUM_HU,
    INTERNAL_HU,
    INTERNALS,
    SHAPES,
    SOLID_HU,
    TEXTURE_HU,
    TEXTURES,
    NoduleSpec,
    ParametricSource,
    generate_nodule,
)
from cxrkit.nodules.where import parse_where

__all__ = [
    "CALCIFICATIONS", "CALCIFIED_FRACTION", "CALCIFIED_HU_THRESHOLD", "CALCIUM_HU", "INTERNALS",
    "INTERNAL_HU", "LABEL_KEYS", "LUNG_HU", "MASK_SMOOTHING_MM", "SHAPES", "SOLID_HU",
    "TEXTURES", "TEXTURE_HU", "Luna16Patches", "Nodule", "NoduleSpec", "ParametricSource",
    "generate_nodule", "parse_where", "read_luna16",
]
