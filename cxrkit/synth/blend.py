"""The ``blend`` engine: project a nodule alone and add it to a real radiograph (NODE21-style).

Per input radiograph (:meth:`BlendEngine.prepare`): its pixel size (from the file or record; else
``geometry.pixel_mm``; else a 430 mm detector across its width), its lung field
(:func:`lung_field`, or a given mask) and its intensity scale (:func:`intensity_scale`).

Per sample (:meth:`BlendEngine.insert`):

1. **Project the nodule alone** with the DRR renderer: the attenuation it adds over the lung it
   displaces, ``Δμ = f · max(μ(HU) − μ(−850 HU), 0)`` (``f`` = occupancy, μ from
   :func:`cxrkit.drr.hu_to_mu` at ``kev``), through a PA cone beam with the nodule
   ``nodule_depth_mm`` in front of the detector (magnification ``sid / (sid − depth)``), on the
   radiograph's own pixel grid: ``Δp = ∫Δμ dl``. The occupancy projected the same way is the
   thickness map; the mask is the nodule's silhouette on the same rays
   (:func:`cxrkit.synth.sampling.silhouette`).
2. **Place** it at a random pixel whose whole projected mask lies in the lung field.
3. **Add** it in the log domain: a ``line_integral`` image gets ``p + Δp``; an ``intensity``
   image ``I · exp(−Δp)`` (Beer–Lambert); a ``display`` image ``clip(v + k Δp, 0, 1)`` with ``k``
   the estimated display units per unit line integral. A nodule so added is a density with the
   radiograph's own anatomy, noise and scale behind it, not a pasted disc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrkit.errors import InputError
from cxrkit.nodules import LUNG_HU
from cxrkit.synth.sampling import PlacedNodule, Sample, box_from_mask, silhouette

if TYPE_CHECKING:
    from cxrkit.io import Radiograph
    from cxrkit.nodules import Nodule
    from cxrkit.synth import SynthConfig

REFERENCE_WINDOW = 7.03
"""Width (units of line integral) of the window :func:`cxrkit.drr.to_display` (default settings)
puts on the PA DRR of LIDC-IDRI-0001 at 60 keV (low −0.51, high 6.52): a typical chest's span of
∫μ dl from lung to mediastinum and spine, after the unsharp mask."""

DETAIL_GAIN = 1.7
"""The unsharp mask of :func:`cxrkit.drr.to_display` lifts details much smaller than its 25 mm σ
(such as nodules) by ``1 + weight`` = 1.7 over the broad window."""

LUNG_PRIOR = ((0.29, 0.47, 0.17, 0.30), (0.71, 0.47, 0.17, 0.30))
"""Two ellipses ``(centre x, centre y, half width, half height)`` as fractions of the image width
and height: the patient's right lung (image left) and left lung, on a PA chest radiograph."""

WORK_SIZE = 256
"""Long side (pixels) of the reduced image :func:`lung_field` works on."""

KINDS = ("display", "line_integral", "intensity")


@dataclass(eq=False)
class BlendScene:
    """One prepared radiograph.

    Attributes:
        image: ``(H, W)`` float32 pixels of ``kind``.
        kind: ``display``, ``line_integral`` or ``intensity``.
        spacing_mm: pixel size ``(row, col)``, mm; ``spacing_source`` says where it came from.
        lung: ``(H, W)`` bool lung field; ``lung_method`` says how it was found.
        scale: display units per unit line integral (1 for the other kinds).
    """

    image: np.ndarray
    kind: str
    spacing_mm: tuple[float, float]
    spacing_source: str
    lung: np.ndarray
    lung_method: str
    scale: float
    scale_method: str


def _bone_bright(pixels: np.ndarray, kind: str) -> np.ndarray:
    """An image where more attenuation is brighter, whatever the kind."""
    if kind == "intensity":
        return -np.log(np.clip(pixels, 1e-6, None))
    return pixels


def lung_field(pixels: np.ndarray, kind: str = "display") -> tuple[np.ndarray, str]:
    """A simple lung field of a PA chest radiograph: the dark regions inside a lung-shaped prior.

    On the image reduced to :data:`WORK_SIZE` pixels, normalised between its 1st and 99th
    percentiles and smoothed (σ 1.5 px):

    1. the search region is each :data:`LUNG_PRIOR` ellipse enlarged 1.3×;
    2. Otsu's threshold over the search region separates the dark (air-filled) pixels;
    3. air outside the body is removed: the pixels below a second Otsu threshold of the dark
       pixels (background versus lung) that reach the outer 5 % of the image, grown by 2 px; an
       opening (radius 2 px) cuts thin bridges;
    4. per side, the component overlapping that side's ellipse most, holes filled and opened
       (radius 4 px, trimming strips along the chest wall), is the lung;
       if its area is below 0.25× or above 2.5× the ellipse's, the ellipse shrunk to 0.8× stands
       in (reported in the method string);
    5. the union is eroded by 2 px and scaled back up (nearest).

    No model is used; give a mask for hard cases (``--mask``).

    Args:
        pixels: ``(H, W)`` float32 radiograph.
        kind: what the pixels are (``intensity`` images are inverted first).

    Returns:
        ``(H, W)`` bool lung field, and the method: ``threshold`` or
        ``threshold+prior(right|left)`` where the prior stood in.
    """
    from scipy import ndimage

    H, W = pixels.shape
    factor = WORK_SIZE / max(H, W)
    small = ndimage.zoom(_bone_bright(np.asarray(pixels, dtype=np.float64), kind),
                         min(1.0, factor), order=1)
    h, w = small.shape
    lo, hi = np.percentile(small, [1, 99])
    smooth = ndimage.gaussian_filter((small - lo) / max(hi - lo, 1e-6), 1.5)
    yy, xx = np.mgrid[0:h, 0:w]
    disk2 = _disk(2)

    def ellipse(prior: tuple[float, float, float, float], grow: float) -> np.ndarray:
        cx, cy, ax, ay = prior
        return ((xx - cx * w) / (grow * ax * w)) ** 2 + ((yy - cy * h) / (grow * ay * h)) ** 2 <= 1

    search = ellipse(LUNG_PRIOR[0], 1.3) | ellipse(LUNG_PRIOR[1], 1.3)
    level = _otsu(smooth[search])
    outside, _ = ndimage.label(smooth < _otsu(smooth[smooth < level]))
    band = max(1, round(0.05 * max(h, w)))  # images often have a bright frame at the edge
    edge = np.ones((h, w), dtype=bool)
    edge[band:-band, band:-band] = False
    border = np.unique(outside[edge])
    background = ndimage.binary_dilation(np.isin(outside, border[border > 0]), structure=disk2)
    dark = (smooth < level) & search & ~background
    labels, _ = ndimage.label(ndimage.binary_opening(dark, structure=disk2))
    lung = np.zeros((h, w), dtype=bool)
    fallbacks = []
    for side, prior in zip(("right", "left"), LUNG_PRIOR, strict=True):
        region = ellipse(prior, 1.0)
        overlap = np.bincount(labels[region].ravel(), minlength=labels.max() + 1)
        overlap[0] = 0
        part = None
        if overlap.max():  # an opening (radius 4 px) trims strips along the chest wall
            part = ndimage.binary_opening(ndimage.binary_fill_holes(labels == overlap.argmax()),
                                          structure=_disk(4))
        ratio = part.sum() / region.sum() if part is not None else 0.0
        if part is None or not 0.25 <= ratio <= 2.5:
            part = ellipse(prior, 0.8)
            fallbacks.append(side)
        lung |= part
    lung = ndimage.binary_erosion(lung, structure=disk2)
    rows = np.minimum((np.arange(H) * h / H).astype(int), h - 1)
    cols = np.minimum((np.arange(W) * w / W).astype(int), w - 1)
    method = "threshold" + (f"+prior({','.join(fallbacks)})" if fallbacks else "")
    return lung[rows][:, cols], method


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return x**2 + y**2 <= radius**2


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist).astype(np.float64)
    total = weight[-1]
    mean = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * weight / total - mean) ** 2 / (weight * (total - weight))
    return float(centres[int(np.nanargmax(between[:-1]))])


def intensity_scale(image: Radiograph, kev: float = 60.0) -> tuple[float, str]:
    """Display units per unit of line integral, for adding ``Δp`` to a display image.

    - ``line_integral`` and ``intensity`` images need none (1, exact physics);
    - a display image written by ``cxrkit project`` records its window: ``k = (1 + w) /
      (high − low)`` exactly (``w`` the unsharp weight);
    - any other display image is assumed processed like a cxrkit DRR of a typical chest: its
      1st–99.5th percentile range (central 90 % of the image) spans :data:`REFERENCE_WINDOW`
      (scaled by μ_water(kev) / μ_water(60 keV)), and details get :data:`DETAIL_GAIN`:
      ``k = (v99.5 − v1) · 1.7 / (7.03 · μw(kev)/μw(60))``.

    Returns:
        ``(k, method)``, method one of ``exact``, ``cxrkit-display-window``,
        ``estimated-from-window``.
    """
    from cxrkit.drr import attenuation_coefficients

    if image.kind != "display":
        return 1.0, "exact"
    window = ((image.meta.get("project") or {}).get("options") or {}).get("display") or {}
    if {"low", "high"} <= set(window) and window["high"] > window["low"]:
        gain = 1.0 + float(window.get("unsharp_weight", 0.0))
        return gain / (float(window["high"]) - float(window["low"])), "cxrkit-display-window"
    H, W = image.pixels.shape
    centre = image.pixels[H // 20: H - H // 20, W // 20: W - W // 20]
    v_lo, v_hi = np.percentile(centre, [1.0, 99.5])
    energy = attenuation_coefficients(kev)[0] / attenuation_coefficients(60.0)[0]
    span = max(float(v_hi - v_lo), 0.05)
    return span * DETAIL_GAIN / (REFERENCE_WINDOW * energy), "estimated-from-window"


def project_nodule(nodule: Nodule, *, spacing_mm: tuple[float, float], sid_mm: float,
                   depth_mm: float, kev: float = 60.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nodule's own line integrals, thickness and mask on a small detector centred on it.

    Args:
        nodule: the nodule (HU, occupancy).
        spacing_mm: detector pixel pitch ``(row, col)``, mm.
        sid_mm: source-to-detector distance, mm.
        depth_mm: nodule-to-detector distance, mm (< ``sid_mm``).
        kev: effective energy.

    Returns:
        ``Δp``, thickness (mm) and the silhouette mask, each ``(n, n)`` with odd ``n``; the
        nodule centre projects onto pixel ``((n − 1)/2, (n − 1)/2)``.
    """
    from cxrkit import drr
    from cxrkit.geometry import Geometry
    from cxrkit.volume import Volume

    if not 0 < depth_mm < sid_mm:
        raise InputError(f"nodule depth {depth_mm} mm must lie between 0 and sid {sid_mm} mm")
    mu = drr.hu_to_mu(nodule.hu, kev)
    mu_lung = float(drr.hu_to_mu(np.array([LUNG_HU], dtype=np.float32), kev)[0])
    excess = (nodule.occupancy * np.maximum(mu - mu_lung, 0.0)).astype(np.float32)
    spacing_xyz = np.asarray(nodule.spacing_mm[::-1], dtype=np.float64)
    origin = -np.asarray(nodule.center_index[::-1], dtype=np.float64) * spacing_xyz
    grid = Volume(excess, nodule.spacing_mm, (origin[0], origin[1], origin[2]))
    sod = sid_mm - depth_mm
    reach_px = nodule.radius_mm() * sid_mm / sod / min(spacing_mm)
    n = 2 * math.ceil(reach_px) + 3
    geometry = Geometry("PA", sid_mm=sid_mm, sod_mm=sod, detector_px=(n, n),
                        pixel_mm=spacing_mm, isocenter_mm=(0.0, 0.0, 0.0))
    resolved = geometry.resolve(grid.bounds_mm())
    delta = drr.project_values(grid, resolved)
    occupancy = grid.with_array(nodule.occupancy)
    thickness = drr.project_values(occupancy, resolved)
    return delta, thickness, silhouette(occupancy, resolved)


class BlendEngine:
    """The ``blend`` engine (see the module docstring).

    Args:
        config: the shared settings; reads ``geometry`` (``sid_mm``, ``pixel_mm``), ``kev``,
            ``center_px``, ``nodule_depth_mm``, ``intensity_scale``, ``max_tries``.
    """

    def __init__(self, config: SynthConfig) -> None:
        from cxrkit.geometry import Geometry

        self.config = config
        self.geometry = config.geometry or Geometry()

    def prepare(self, data: Radiograph, lung: np.ndarray | None = None) -> BlendScene:
        """Pixel size, lung field and intensity scale of one radiograph.

        Raises:
            InputError: an unknown image kind, or a lung mask of another shape or empty.
        """
        if data.kind not in KINDS:
            raise InputError(f"cannot add a nodule to a {data.kind!r} image",
                             hint="give a display, line_integral or intensity radiograph")
        pixels = np.asarray(data.pixels, dtype=np.float32)
        H, W = pixels.shape
        if data.spacing_mm:
            spacing, source = tuple(float(s) for s in data.spacing_mm), "image"
        elif self.geometry.pixel_mm:
            spacing, source = tuple(float(s) for s in self.geometry.pixel_mm), "option"
        else:
            spacing, source = (430.0 / H, 430.0 / W), "assumed-430mm-detector"
        if lung is None:
            lung_mask, method = lung_field(pixels, data.kind)
        else:
            lung_mask, method = np.asarray(lung, dtype=bool), "given"
            if lung_mask.shape != pixels.shape:
                raise InputError(f"lung mask shape {lung_mask.shape} differs from the image's "
                                 f"{pixels.shape}")
        if not lung_mask.any():
            raise InputError("the lung field is empty")
        if self.config.intensity_scale is not None:
            scale, scale_method = float(self.config.intensity_scale), "given"
        else:
            scale, scale_method = intensity_scale(data, self.config.kev)
        return BlendScene(pixels, data.kind, (spacing[0], spacing[1]), source, lung_mask, method,
                          scale, scale_method)

    def negative(self, scene: BlendScene) -> Sample:
        """The radiograph unchanged."""
        return Sample(scene.image.copy(), scene.kind, scene.spacing_mm,
                      np.zeros(scene.image.shape, dtype=bool), None, (), self._info(scene))

    def insert(self, scene: BlendScene, nodule: Nodule,
               generator: np.random.Generator) -> Sample:
        """Project ``nodule``, place it in the lung field, add it in the log domain.

        Raises:
            InputError: no valid place in ``max_tries`` draws, or a nodule too thin to project.
        """
        delta, thickness, patch_mask = project_nodule(
            nodule, spacing_mm=scene.spacing_mm, sid_mm=self.geometry.sid_mm,
            depth_mm=self.config.nodule_depth_mm, kev=self.config.kev)
        if not patch_mask.any():
            raise InputError("the nodule projects to nothing at this pixel size")
        row, col = self._place(scene, patch_mask, generator)
        H, W = scene.image.shape
        half = (patch_mask.shape[0] - 1) // 2
        full_delta, full_thickness = np.zeros((H, W), np.float32), np.zeros((H, W), np.float32)
        r0, c0 = row - half, col - half
        dst = (slice(max(r0, 0), min(r0 + 2 * half + 1, H)),
               slice(max(c0, 0), min(c0 + 2 * half + 1, W)))
        src = (slice(dst[0].start - r0, dst[0].stop - r0), slice(dst[1].start - c0,
                                                                  dst[1].stop - c0))
        full_delta[dst], full_thickness[dst] = delta[src], thickness[src]
        mask = np.zeros((H, W), dtype=bool)
        mask[dst] = patch_mask[src]
        if scene.kind == "line_integral":
            image = scene.image + full_delta
        elif scene.kind == "intensity":
            image = scene.image * np.exp(-full_delta)
        else:
            image = np.clip(scene.image + scene.scale * full_delta, 0.0, 1.0)
        placed = PlacedNodule(box_from_mask(mask), (float(col), float(row)), None,
                              dict(nodule.labels), dict(nodule.source))
        return Sample(image.astype(np.float32), scene.kind, scene.spacing_mm, mask,
                      full_thickness, (placed,), self._info(scene))

    def _place(self, scene: BlendScene, patch_mask: np.ndarray,
               generator: np.random.Generator) -> tuple[int, int]:
        """``(row, col)`` of the nodule centre: given, or with the whole mask in the lung."""
        H, W = scene.image.shape
        if self.config.center_px is not None:
            col, row = (round(float(v)) for v in self.config.center_px)
            if not (0 <= row < H and 0 <= col < W):
                raise InputError(f"--center-px {col},{row} lies outside the {W}x{H} image")
            return row, col
        half = (patch_mask.shape[0] - 1) // 2
        offsets = np.argwhere(patch_mask) - half  # (K, 2) (row, col)
        candidates = np.flatnonzero(scene.lung)
        for _ in range(self.config.max_tries):
            at = np.array(np.unravel_index(candidates[generator.integers(len(candidates))],
                                           (H, W)))
            pts = at + offsets
            if (pts.min() >= 0 and np.all(pts < (H, W))
                    and scene.lung[pts[:, 0], pts[:, 1]].all()):
                return int(at[0]), int(at[1])
        raise InputError(f"found no place for the nodule inside the lung field in "
                         f"{self.config.max_tries} tries",
                         hint="choose smaller nodules or give a lung mask with --mask")

    def _info(self, scene: BlendScene) -> dict[str, Any]:
        sid, depth = self.geometry.sid_mm, self.config.nodule_depth_mm
        return {"engine": "blend", "spacing_mm": list(scene.spacing_mm),
                "spacing_source": scene.spacing_source, "lung_mask": scene.lung_method,
                "intensity_scale": round(scene.scale, 6), "intensity_scale_method":
                scene.scale_method, "kev": self.config.kev, "sid_mm": sid,
                "nodule_depth_mm": depth, "magnification": round(sid / (sid - depth), 6),
                "lung_hu": LUNG_HU}


ENGINE = BlendEngine
