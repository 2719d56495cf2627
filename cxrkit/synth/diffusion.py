"""The ``diffusion`` engine: paint a nodule into a real radiograph with the synthesis DiT.

Per input radiograph (:meth:`DiffusionEngine.prepare`): as the ``blend`` engine (pixel size,
lung field), display images only (the model was trained on them).

Per sample (:meth:`DiffusionEngine.insert`):

1. the nodule (parametric or a real LUNA16 patch) is projected on the radiograph's pixel grid
   with the same physics as ``blend`` (:func:`cxrkit.synth.blend.project_nodule`): its
   silhouette is the mask, its projected thickness the soft mask;
2. it is placed in the lung field as ``blend`` places it (or at ``center_px``);
3. the model paints inside the silhouette (:func:`cxrkit.synthdit.paint`): the condition is the
   thickness map over its maximum (``soft_mask``, so the shape and depth profile of a real CT
   nodule steer the painting) or the binary silhouette. Every pixel outside the silhouette is
   the input's, bit for bit, so the record's ``mask``, the image and the label agree exactly.

With a user's nodule mask (:func:`read_nodule_mask`, ``synth --nodule-mask``) steps 1 and 2 are
replaced by the mask (:meth:`DiffusionEngine.insert_mask`): its support (values > 0) is the
record's ``mask`` and box, the window is centred on that box, and a soft mask (more than one
non-zero value, e.g. a projected thickness map normalised) conditions the model as a projected
nodule's thickness does (:func:`cxrkit.synthdit.data.soft_condition`); a binary one (0/1, 0/255,
or any one non-zero value) conditions it as a silhouette.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrkit.errors import InputError
from cxrkit.nodules.nodule import LABEL_KEYS
from cxrkit.synth.blend import BlendEngine, BlendScene, project_nodule
from cxrkit.synth.sampling import PlacedNodule, Sample, box_from_mask

if TYPE_CHECKING:
    from cxrkit.io import Radiograph
    from cxrkit.nodules import Nodule
    from cxrkit.synth import SynthConfig

def read_nodule_mask(path: str | Path, shape: tuple[int, int] | None = None
                     ) -> tuple[np.ndarray, bool]:
    """Read a nodule mask image (PNG, TIFF, ...: anything :func:`cxrkit.io.read_radiograph`
    reads).

    Binary when it has one non-zero value (0/1, 0/255, 0/65535 or float 0/1): returned as 0/1.
    Soft otherwise: its values must lie in [0, 1] as read (8/16-bit PNG and integer TIFF are
    scaled by their bit depth, a float TIFF is taken as is).

    Args:
        path: the image.
        shape: ``(H, W)`` it must have (the radiograph's), or None not to check.

    Returns:
        ``(mask, soft)``: ``(H, W)`` float32 in [0, 1], and whether it is soft.

    Raises:
        InputError: missing file, wrong size, an empty mask, non-finite values, or values
            outside [0, 1].
        FormatError: not an image cxrkit reads.
    """
    from cxrkit.io import read_radiograph

    pixels = read_radiograph(path).pixels  # NaN/inf are refused there
    where = str(path)
    if shape is not None and pixels.shape != tuple(shape):
        raise InputError(f"the nodule mask is {pixels.shape[1]}x{pixels.shape[0]} px, the "
                         f"radiograph {shape[1]}x{shape[0]}", path=where,
                         hint="give a mask of the radiograph's size")
    if pixels.min() < 0:
        raise InputError("the nodule mask has negative values", path=where)
    values = np.unique(pixels[pixels > 0])
    if len(values) == 0:
        raise InputError("the nodule mask is empty (no non-zero pixel)", path=where)
    if len(values) == 1:
        return (pixels > 0).astype(np.float32), False
    if values[-1] > 1:
        raise InputError(f"the soft nodule mask reaches {float(values[-1]):g}; values must be "
                         "in [0, 1]", path=where, hint="normalise it (e.g. thickness over its "
                                                       "maximum)")
    return pixels.astype(np.float32), True


def default_model_dir() -> Path:
    """The synthesis DiT shipped with cxrkit (``cxrkit/models/synthdit``; trained by
    ``repro/train_synth.sh``, see its ``run.json``), used when no ``--model`` is given."""
    return Path(__file__).resolve().parent.parent / "models" / "synthdit"


class DiffusionEngine:
    """The ``diffusion`` engine (see the module docstring).

    Args:
        config: the shared settings; reads ``model`` (None: :func:`default_model_dir`),
            ``steps``, ``sampler``, ``soft_mask``, ``device``, and what ``blend`` reads for
            projection and placement.

    Raises:
        InputError: no model folder given and no default model installed.
    """

    def __init__(self, config: SynthConfig) -> None:
        if not config.model and not (default_model_dir() / "config.json").is_file():
            raise InputError("the diffusion engine needs a model folder (--model DIR): this "
                             "install has no default model", path=str(default_model_dir()),
                             hint="train one with cxrkit train-synth (repro/train_synth.sh)")
        self.config = config
        self.blend = BlendEngine(config)
        self._model: Any = None
        self._model_sha256 = ""

    def model(self) -> Any:
        """The synthesis model, loaded once (a ModelError if the folder is not one)."""
        if self._model is None:
            from cxrkit.files import file_sha256
            from cxrkit.synthdit import SynthDiT
            from cxrkit.synthdit.model import WEIGHTS_NAME

            folder = Path(str(self.config.model)) if self.config.model else default_model_dir()
            self._model = SynthDiT.load(folder, device=self.config.device)
            self._model_sha256 = file_sha256(folder / WEIGHTS_NAME)
        return self._model

    def fits(self, nodule: Nodule) -> bool:
        """Whether ``nodule``, projected (magnified as :func:`project_nodule` does), fits in the
        model's window with a pixel to spare on each side: :func:`cxrkit.synth.sampling.synthesize`
        draws again until one does, so a size range wider than the window (the CLI's default
        6–25 mm with spicules reaches ~45 mm) never fails a sample."""
        settings = self.model().settings
        window_mm = (settings.patch_px - 2) * settings.pixel_mm
        sid = self.blend.geometry.sid_mm
        magnification = sid / (sid - self.config.nodule_depth_mm)
        return 2.0 * nodule.radius_mm() * magnification <= window_mm

    def prepare(self, data: Radiograph, lung: np.ndarray | None = None) -> BlendScene:
        """As the blend engine; display radiographs only.

        Raises:
            InputError: another kind of image, or a bad lung mask.
        """
        if data.kind != "display":
            raise InputError(f"the diffusion engine paints display radiographs, not "
                             f"{data.kind!r}", hint="use -e blend for line integrals")
        self.model()
        return self.blend.prepare(data, lung)

    def negative(self, scene: BlendScene) -> Sample:
        """The radiograph unchanged."""
        return Sample(scene.image.copy(), scene.kind, scene.spacing_mm,
                      np.zeros(scene.image.shape, dtype=bool), None, (), self._info(scene))

    def insert(self, scene: BlendScene, nodule: Nodule,
               generator: np.random.Generator) -> Sample:
        """Project ``nodule``, place it in the lung field, paint it with the model.

        Raises:
            InputError: no place for it, or a nodule too small or too large for the model.
        """
        import torch

        from cxrkit.synthdit import paint

        _, thickness, patch_mask = project_nodule(
            nodule, spacing_mm=scene.spacing_mm, sid_mm=self.blend.geometry.sid_mm,
            depth_mm=self.config.nodule_depth_mm, kev=self.config.kev)
        if not patch_mask.any():
            raise InputError("the nodule projects to nothing at this pixel size")
        row, col = self.blend._place(scene, patch_mask, generator)
        H, W = scene.image.shape
        half = (patch_mask.shape[0] - 1) // 2
        r0, c0 = row - half, col - half
        dst = (slice(max(r0, 0), min(r0 + 2 * half + 1, H)),
               slice(max(c0, 0), min(c0 + 2 * half + 1, W)))
        src = (slice(dst[0].start - r0, dst[0].stop - r0),
               slice(dst[1].start - c0, dst[1].stop - c0))
        mask = np.zeros((H, W), dtype=bool)
        mask[dst] = patch_mask[src]
        full_thickness = np.zeros((H, W), np.float32)
        full_thickness[dst] = thickness[src]
        if not mask.any():
            raise InputError("the nodule's mask falls outside the image")
        if self.config.soft_mask:
            from cxrkit.synthdit.data import soft_condition

            condition = soft_condition(full_thickness, mask)
        else:
            condition = mask.astype(np.float32)
        seed = int(generator.integers(0, 2**63 - 1))
        image = paint(self.model(), scene.image, condition.astype(np.float32),
                      (float(row), float(col)), scene.spacing_mm, steps=self.config.steps,
                      sampler=self.config.sampler,
                      generator=torch.Generator().manual_seed(seed))
        placed = PlacedNodule(box_from_mask(mask), (float(col), float(row)), None,
                              dict(nodule.labels), dict(nodule.source))
        info = {**self._info(scene), "model_seed": seed}
        return Sample(image, scene.kind, scene.spacing_mm, mask, full_thickness, (placed,), info)

    def insert_mask(self, scene: BlendScene, nodule_mask: np.ndarray, soft: bool,
                    generator: np.random.Generator, *,
                    source: dict[str, Any] | None = None) -> Sample:
        """Paint a nodule inside a given mask (see :func:`read_nodule_mask`).

        Args:
            scene: the prepared radiograph.
            nodule_mask: ``(H, W)`` in [0, 1]; its support (> 0) is painted.
            soft: condition on the mask's profile (with ``soft_mask``) rather than its support.
            generator: the model's seed is drawn from it.
            source: the record's ``nodule.source`` (``kind: "mask"`` is set).

        Returns:
            The sample: ``mask`` = the support, one nodule boxed on it, centred on its box, its
            ``diameter_mm`` the support's area-equivalent diameter, other labels unknown.

        Raises:
            InputError: a mask of another size, an empty one, or one that does not fit in the
                model's window.
        """
        import torch

        from cxrkit.synthdit import paint
        from cxrkit.synthdit.data import soft_condition

        nodule_mask = np.asarray(nodule_mask, dtype=np.float32)
        if nodule_mask.shape != scene.image.shape:
            raise InputError(f"the nodule mask is {nodule_mask.shape[1]}x{nodule_mask.shape[0]}"
                             f" px, the radiograph {scene.image.shape[1]}x"
                             f"{scene.image.shape[0]}")
        inside = nodule_mask > 0
        box = box_from_mask(inside)
        x1, y1, x2, y2 = box
        row, col = (y1 + y2 - 1) / 2, (x1 + x2 - 1) / 2
        use_soft = soft and self.config.soft_mask
        condition = (soft_condition(nodule_mask, inside) if use_soft
                     else inside.astype(np.float32))
        seed = int(generator.integers(0, 2**63 - 1))
        image = paint(self.model(), scene.image, condition, (row, col), scene.spacing_mm,
                      steps=self.config.steps, sampler=self.config.sampler,
                      generator=torch.Generator().manual_seed(seed))
        area_mm2 = float(inside.sum()) * scene.spacing_mm[0] * scene.spacing_mm[1]
        labels: dict[str, Any] = dict.fromkeys(LABEL_KEYS)
        labels["diameter_mm"] = round(2 * (area_mm2 / np.pi) ** 0.5, 3)
        placed = PlacedNodule(box, (float(col), float(row)), None, labels,
                              {**(source or {}), "kind": "mask",
                               "values": "soft" if soft else "binary"})
        info = {**self._info(scene), "model_seed": seed,
                "mask_condition": "soft" if use_soft else "binary"}
        return Sample(image, scene.kind, scene.spacing_mm, inside, None, (placed,), info)

    def _info(self, scene: BlendScene) -> dict[str, Any]:
        model = self.model()
        s = model.settings
        sid, depth = self.blend.geometry.sid_mm, self.config.nodule_depth_mm
        return {"engine": "diffusion", "spacing_mm": list(scene.spacing_mm),
                "spacing_source": scene.spacing_source, "lung_mask": scene.lung_method,
                "kev": self.config.kev, "sid_mm": sid, "nodule_depth_mm": depth,
                "magnification": round(sid / (sid - depth), 6),
                "model": str(self.config.model) if self.config.model else "default",
                "model_sha256": self._model_sha256,
                "model_pixel_mm": s.pixel_mm, "model_patch_px": s.patch_px,
                "steps": self.config.steps or s.default_steps,
                "sampler": self.config.sampler or s.default_sampler,
                "mask_condition": "soft" if self.config.soft_mask else "binary"}


ENGINE = DiffusionEngine
