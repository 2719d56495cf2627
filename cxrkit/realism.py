"""Realism of images against a reference set of real radiographs, for ``cxrkit eval``.

Glue over the pure measures of :mod:`cxrkit.metrics.realism`: it finds each image's pixel pitch,
resamples to the common pitch, finds the lung field (:func:`cxrkit.synth.blend.lung_field`), and
gathers the band powers of a reference set (:class:`ReferenceSpectra`); it also measures the
contrast-to-noise ratio of a known nodule (:func:`nodule_cnr`) and, with a domain classifier
(:mod:`cxrkit.domain`), the probability that an image is a real radiograph.

Pixel pitch, first found of: the record's ``spacing_mm``; the file's own (TIFF/DICOM); the NIH
ChestX-ray14 ``labels.csv`` (original pixel spacing × original width / width) in the image's
folder or the one above; a 430 mm detector across the image's width (as the ``blend`` engine).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.errors import InputError
from cxrkit.metrics.realism import (
    PATCH_PX,
    PatchPower,
    band_powers,
    lung_patch_power,
    pitch_shape,
    radial_profile,
)

DETECTOR_MM = 430.0
"""Assumed detector width when an image says nothing of its pitch (a 43 cm cassette)."""
NIH_LABELS = "labels.csv"
"""The NIH ChestX-ray14 table (``Data_Entry_2017.csv`` layout) with original spacing and size."""
SHIPPED_DOMAIN_MODEL = Path(__file__).resolve().parent / "models" / "domain"
"""The domain classifier shipped with cxrkit (trained by ``cxrkit train-domain``)."""
NODULE_RING_MM = 5.0
"""Width of the lung ring around a nodule for its CNR, mm."""


@dataclass(frozen=True)
class Pitch:
    """A pixel pitch (mm) and where it came from (``record``, ``file``, ``nih-labels``,
    ``assumed-430mm``)."""

    mm: float
    source: str


@functools.lru_cache(maxsize=8)
def _nih_table(path: str) -> dict[str, tuple[float, float]]:
    """``{image name: (original spacing mm, original width px)}`` of an NIH labels table."""
    table: dict[str, tuple[float, float]] = {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        try:
            name_i = header.index("Image Index")
            width_i = next(i for i, h in enumerate(header) if h.startswith("OriginalImage["))
            space_i = next(i for i, h in enumerate(header)
                           if h.startswith("OriginalImagePixelSpacing"))
        except (ValueError, StopIteration):
            return table
        for row in reader:
            try:
                table[row[name_i]] = (float(row[space_i]), float(row[width_i]))
            except (ValueError, IndexError):
                continue
    return table


def find_pitch(path: str | Path, width: int, record: Mapping[str, Any] | None = None,
               file_spacing: Sequence[float] | None = None) -> Pitch:
    """The pixel pitch of an image (see the module docstring for the order)."""
    spacing = (record or {}).get("spacing_mm")
    if spacing:
        return Pitch(float(np.mean(spacing)), "record")
    if file_spacing:
        return Pitch(float(np.mean(file_spacing)), "file")
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        table_path = folder / NIH_LABELS
        if table_path.is_file():
            entry = _nih_table(str(table_path)).get(path.name)
            if entry is not None:
                return Pitch(entry[0] * entry[1] / width, "nih-labels")
    return Pitch(DETECTOR_MM / width, "assumed-430mm")


def at_pitch(pixels: np.ndarray, pixel_mm: float, target_mm: float) -> np.ndarray:
    """``pixels`` resampled (bicubic, antialiased when shrinking) to ``target_mm`` per px."""
    from cxrkit.degrade.operators import resample

    shape = pitch_shape(pixels.shape, pixel_mm, target_mm)
    return resample(np.clip(pixels, 0, 1).astype(np.float32), shape, "bicubic")


def lung_mask(pixels: np.ndarray) -> np.ndarray:
    """The lung field of a display radiograph (:func:`cxrkit.synth.blend.lung_field`)."""
    from cxrkit.synth.blend import lung_field

    return lung_field(pixels, "display")[0]


def spectrum(pixels: np.ndarray, pixel_mm: float, target_mm: float,
             patch_px: int = PATCH_PX) -> PatchPower | None:
    """The lung-patch spectrum of one display image at the common pitch ``target_mm``."""
    image = at_pitch(pixels, pixel_mm, target_mm)
    return lung_patch_power(image, lung_mask(image), patch_px)


@dataclass
class SpectrumSet:
    """Band powers and mean radial spectrum of a set of images.

    Attributes:
        bands: ``(4,)`` band powers of each measured image.
        profiles: ``(F,)`` radial spectrum of each measured image (:attr:`profile`: their mean).
        freqs: ``(F,)`` radial frequencies, cycles/mm at the common pitch.
        skipped: images without a lung patch.
        ids: the measured images' names.
    """

    bands: list[np.ndarray] = field(default_factory=list)
    profiles: list[np.ndarray] = field(default_factory=list)
    freqs: np.ndarray | None = None
    skipped: int = 0
    ids: list[str] = field(default_factory=list)

    def add(self, power: PatchPower | None, pitch_mm: float, name: str) -> None:
        """Add one image's spectrum (None counts as skipped)."""
        if power is None:
            self.skipped += 1
            return
        self.bands.append(band_powers(power.power))
        f, p = radial_profile(power.power)
        self.freqs = f / pitch_mm
        self.profiles.append(p)
        self.ids.append(name)

    @property
    def profile(self) -> np.ndarray | None:
        """The mean radial spectrum over the images (None before any)."""
        return np.mean(self.profiles, axis=0) if self.profiles else None


@dataclass
class ReferenceSpectra:
    """The reference set of real radiographs: its band powers at the common pitch."""

    pitch_mm: float
    pitch_sources: list[str]
    spectra: SpectrumSet
    paths: list[str]

    @classmethod
    def load(cls, paths: Sequence[str], *, pitch_mm: float | None = None,
             patch_px: int = PATCH_PX) -> ReferenceSpectra:
        """Read the reference radiographs and measure them at ``pitch_mm`` (default: the median
        pitch of the set).

        Raises:
            InputError: no path, or no image with a lung patch.
        """
        from cxrkit.io import read_radiograph

        if not paths:
            raise InputError("the realism reference set is empty",
                             hint="give real radiographs: a folder or glob")
        def pitch_of(path: str, data: Any) -> Pitch:
            return find_pitch(path, data.pixels.shape[1], None, data.spacing_mm)

        pitches: list[Pitch] = []
        target = pitch_mm
        if target is None:  # a first pass for the median pitch (one image in memory at a time)
            pitches = [pitch_of(path, read_radiograph(path)) for path in paths]
            target = float(np.median([p.mm for p in pitches]))
        spectra = SpectrumSet()
        sources = {p.source for p in pitches}
        for path in paths:
            data = read_radiograph(path)
            pitch = pitch_of(path, data)
            sources.add(pitch.source)
            spectra.add(spectrum(data.pixels, pitch.mm, target, patch_px), target,
                        Path(path).name)
        if not spectra.bands:
            raise InputError("no reference image has a lung patch to measure",
                             hint="give PA chest radiographs")
        return cls(target, sorted(sources), spectra, list(paths))


def nodule_region(record: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray | None:
    """The known nodule of a record as a bool mask of ``shape``: its ``mask`` file (nonzero),
    else the union of its ``boxes``, else its ``roi`` box; None when it has none."""
    if record.get("mask"):
        from cxrkit.io import TIFF_SUFFIXES, has_suffix, read_radiograph, read_stack

        path = str(record["mask"])
        mask = (read_stack(path)[0].max(axis=0) if has_suffix(path, TIFF_SUFFIXES)
                else read_radiograph(path).pixels) > 0
        if mask.shape != shape:
            from cxrkit.degrade.operators import resample

            mask = resample(mask.astype(np.float32), shape, "nearest") > 0.5
        return mask if mask.any() else None
    boxes = record.get("boxes") or ([record["roi"]] if record.get("roi") else [])
    if not boxes:
        return None
    mask = np.zeros(shape, dtype=bool)
    for box in boxes:
        if isinstance(box, Mapping):
            box = [box["x1"], box["y1"], box["x2"], box["y2"]]
        x1, y1, x2, y2 = (round(float(v)) for v in box[:4])
        mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = True
    return mask if mask.any() else None


def nodule_cnr(pixels: np.ndarray, region: np.ndarray, pixel_mm: float) -> float | None:
    """CNR of a nodule against a :data:`NODULE_RING_MM` ring around it, restricted to the lung
    field where the ring has enough lung pixels (else the whole ring); None if it cannot be
    measured (empty region or ring)."""
    from scipy import ndimage

    if region.shape != pixels.shape:
        from cxrkit.degrade.operators import resample

        region = resample(region.astype(np.float32), pixels.shape, "nearest") > 0.5
    ring_px = max(1, round(NODULE_RING_MM / pixel_mm))
    ring = ndimage.binary_dilation(region, np.ones((3, 3), bool), iterations=ring_px) & ~region
    lung_ring = ring & lung_mask(pixels)
    if lung_ring.sum() >= 0.5 * ring.sum():
        ring = lung_ring
    if not region.any() or ring.sum() < 2:
        return None
    values = np.asarray(pixels, dtype=np.float64)
    noise = values[ring].std()
    contrast = abs(values[region].mean() - values[ring].mean())
    return float(contrast / noise) if noise > 0 else None


def load_at_pitch(items: Sequence[str | Mapping[str, Any]], pixel_mm: float, *,
                  min_px: int = 1) -> list[Any]:
    """Images (paths, or records with ``path``) resampled to ``pixel_mm`` with their lung fields,
    as :class:`cxrkit.domain.PatchImage` (imports torch); images smaller than ``min_px`` at that
    pitch are refused.

    Raises:
        InputError: an unreadable image, or one too small at the pitch.
    """
    from cxrkit.domain import PatchImage
    from cxrkit.io import read_radiograph

    out = []
    for item in items:
        record = item if isinstance(item, Mapping) else {"path": str(item)}
        data = read_radiograph(record["path"])
        pitch = find_pitch(record["path"], data.pixels.shape[1], record, data.spacing_mm)
        image = at_pitch(data.pixels, pitch.mm, pixel_mm)
        if min(image.shape) < min_px:
            raise InputError(f"{image.shape[0]}×{image.shape[1]} px at {pixel_mm} mm is smaller "
                             f"than one {min_px} px patch", path=str(record["path"]))
        out.append(PatchImage(image, lung_mask(image), str(record["path"])))
    return out


SIDES = ("path", "input", "bicubic")
"""What the realism section measures per record: the image (``path``), the image it was made
from (``input``, when the record names one) and the bicubic upsampling of that input to the
image's size (``bicubic``, when the sizes differ)."""

REALISM_NOTES = (
    "Sides: path = the record's image; input = the image it was made from (the record's "
    "'input', as cxrkit enhance writes it); bicubic = that input resampled to path's size "
    "(bicubic). Pitch of each image: record spacing_mm, the file, NIH labels.csv, else a 430 mm "
    "detector across its width; input's pitch = path's × width ratio. domain_p = mean P(real "
    "radiograph) of the domain classifier over an image's lung patches (its model folder "
    "given). nodule_cnr = |mean(nodule) − mean(ring)| / std(ring), ring = 5 mm around the "
    "record's nodule (mask file, else boxes, else roi; in the input's pixels when the record "
    "names an input), kept to the lung field when half of it is lung; cnr_ratio = path / input "
    "per image."
)


class RealismJob:
    """Measures the realism of each record's images against a reference set (``cxrkit eval``).

    Args:
        reference: the reference set's spectra (its pitch is the common pitch).
        domain_model: a domain classifier folder, or None.
        device: where the classifier runs.
    """

    def __init__(self, reference: ReferenceSpectra | None, domain_model: str | Path | None = None,
                 device: str = "cpu") -> None:
        self.reference = reference
        self.domain_dir = Path(domain_model) if domain_model else None
        self._model: Any = None
        self.device = device
        self.spectra = {side: SpectrumSet() for side in SIDES}
        self.domain: dict[str, list[float]] = {side: [] for side in SIDES}
        self.cnr: dict[str, list[float]] = {side: [] for side in (*SIDES, "ratio")}

    def _classifier(self) -> Any:
        if self._model is None and self.domain_dir is not None:
            from cxrkit.domain import DomainClassifier

            self._model = DomainClassifier.load(self.domain_dir, device=self.device)
        return self._model

    def images(self, record: Mapping[str, Any]) -> dict[str, tuple[np.ndarray, float]]:
        """``{side: (pixels, pitch mm)}`` of one record (see :data:`SIDES`)."""
        from cxrkit.degrade.operators import resample
        from cxrkit.io import read_radiograph

        if record.get("kind", "display") != "display":
            raise InputError(f"realism needs display images, got kind '{record['kind']}'",
                             path=str(record.get("id")))
        data = read_radiograph(record["path"])
        pitch = find_pitch(record["path"], data.pixels.shape[1], record, data.spacing_mm).mm
        out = {"path": (np.clip(data.pixels, 0, 1), pitch)}
        source = record.get("input")
        if source and source != "-":
            lq = np.clip(read_radiograph(source).pixels, 0, 1)
            out["input"] = (lq, pitch * data.pixels.shape[1] / lq.shape[1])
            if lq.shape != data.pixels.shape:
                out["bicubic"] = (resample(lq, data.pixels.shape, "bicubic"), pitch)
        return out

    def __call__(self, record: Mapping[str, Any]) -> dict[str, float | None]:
        """Measure one record; returns its per-image row entries (``domain_p``,
        ``nodule_cnr``, ``nodule_cnr_input``, ``cnr_ratio``) and keeps the spectra."""
        images = self.images(record)
        row: dict[str, float | None] = {}
        name = str(record.get("id"))
        model = self._classifier()
        grid = images.get("input", images["path"])[0].shape
        region = nodule_region(record, grid)
        for side, (pixels, pitch) in images.items():
            if self.reference is not None:
                target = self.reference.pitch_mm
                self.spectra[side].add(spectrum(pixels, pitch, target), target, name)
            if model is not None:
                from cxrkit.domain import probability

                image = at_pitch(pixels, pitch, model.settings.pixel_mm)
                if min(image.shape) >= model.settings.patch_px:
                    p = probability(model, image, lung_mask(image))
                    self.domain[side].append(p)
                    row[f"domain_p{'' if side == 'path' else '_' + side}"] = p
            if region is not None:
                cnr = nodule_cnr(pixels, region, pitch)
                if cnr is not None:
                    self.cnr[side].append(cnr)
                    row[f"nodule_cnr{'' if side == 'path' else '_' + side}"] = cnr
        if row.get("nodule_cnr") is not None and row.get("nodule_cnr_input"):
            row["cnr_ratio"] = row["nodule_cnr"] / row["nodule_cnr_input"]
            self.cnr["ratio"].append(row["cnr_ratio"])
        return row

    def summary(self, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
        """The ``realism`` block of eval's JSON (see :data:`REALISM_NOTES`)."""
        from cxrkit.metrics.image import bootstrap_ci
        from cxrkit.metrics.realism import BANDS, PATCH_PX, REALISM_DEFINITION, band_log_ratios
        from cxrkit.metrics.records import aggregate

        block: dict[str, Any] = {}
        if self.reference is not None:
            ref = np.asarray(self.reference.spectra.bands)
            block["reference"] = {"n_images": len(ref), "skipped": self.reference.spectra.skipped,
                                  "pitch_mm": self.reference.pitch_mm,
                                  "pitch_sources": self.reference.pitch_sources,
                                  "patch_px": PATCH_PX, "bands": BANDS}
            ratios: dict[str, Any] = {}
            curves: dict[str, Any] = {"freq_per_mm": self.reference.spectra.freqs,
                                      "reference": self.reference.spectra.profile}
            for side, spectra in self.spectra.items():
                if not spectra.bands:
                    continue
                bands = np.asarray(spectra.bands)
                entry: dict[str, Any] = {"log_ratio": band_log_ratios(bands, ref),
                                         "n": len(bands), "skipped": spectra.skipped}
                if n_boot > 0 and len(bands) > 1:
                    entry["ci95"] = [list(bootstrap_ci(
                        np.arange(len(bands)), seed, n_boot,
                        statistic=lambda idx, b=b, bands=bands: float(band_log_ratios(
                            bands[idx][:, b:b + 1], ref[:, b:b + 1])[0])))
                        for b in range(bands.shape[1])]
                ratios[side] = entry
                curves[side] = spectra.profile
            block["spectral_log_ratio"] = ratios
            block["spectrum"] = curves
        if self.domain_dir is not None:
            domain = {side: aggregate(v, seed=seed, n_boot=n_boot)
                      for side, v in self.domain.items() if v}
            block["domain_p"] = {"model": str(self.domain_dir), **domain}
        cnr = {side: aggregate(v, seed=seed, n_boot=n_boot) for side, v in self.cnr.items() if v}
        if cnr:
            block["nodule_cnr"] = cnr
        if block:
            block["definition"] = f"{REALISM_DEFINITION} {REALISM_NOTES}"
        return block
