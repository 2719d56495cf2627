"""Degradation presets: fixed operator chains and the random high-order pipeline.

A preset draws the steps for one image with ``sample(generator, in_shape, out_shape, pixel_mm)``:
a list of ``(operator, params)`` run in order by :func:`cxrkit.degrade.degrade`. The last resize
brings the image to ``out_shape``; operators with physical lengths get the pixel pitch current at
their place in the chain. Four kinds: a fixed :class:`Chain`, a :class:`RandomChain` whose
operators each run with a probability, the random :class:`HighOrderPipeline`, and a
:class:`Mixture` that draws one of several presets per image (``broad``, for robust training).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cxrkit.degrade.operators import (
    Contrast,
    DetectorBlur,
    Gamma,
    GaussianNoise,
    Jpeg,
    Operator,
    Params,
    QuantumNoise,
    Range,
    Resize,
    Scatter,
    SliceBlur,
    Streaks,
    draw_choice,
    draw_uniform,
    resized_shape,
)

Step = tuple[Operator, Params]


@dataclass(frozen=True)
class Chain:
    """A fixed sequence of operators, each drawing its own parameters, around the final resize.

    Attributes:
        description: one line, for listings.
        operators: applied in order at the input resolution.
        after_resize: applied in order after the resize to the output size.
        kernel: kernel of the final resize (skipped when the scale is 1).
    """

    description: str
    operators: tuple[Operator, ...] = ()
    after_resize: tuple[Operator, ...] = ()
    kernel: str = "bicubic"

    def names(self) -> set[str]:
        """Names of the operators this chain can run."""
        return {op.name for op in (*self.operators, *self.after_resize)} | {Resize.name}

    def sample(self, generator: np.random.Generator, in_shape: tuple[int, int],
               out_shape: tuple[int, int], pixel_mm: float) -> list[Step]:
        """Draw the steps for an ``in_shape`` image of pitch ``pixel_mm`` made ``out_shape``."""
        steps = [_draw(op, pixel_mm, generator) for op in self.operators]
        if out_shape != in_shape:
            steps.append((Resize(), {"kernel": self.kernel, "size": list(out_shape)}))
        out_pixel_mm = pixel_mm * in_shape[0] / out_shape[0]
        return steps + [_draw(op, out_pixel_mm, generator) for op in self.after_resize]


@dataclass(frozen=True)
class Round:
    """Parameter ranges of one round of :class:`HighOrderPipeline`.

    Attributes:
        blur_prob: probability of a blur (detector blur, or slice blur with the pipeline's
            ``slice_blur_prob``).
        mtf50_lp_per_mm: MTF50 range of the detector blur.
        relative_size: range of the size after the resize, relative to the round's input.
        dose: range of the quantum-noise dose (log-uniform).
        gaussian_sigma: range of the Gaussian noise sigma, display units.
    """

    blur_prob: float
    mtf50_lp_per_mm: Range
    relative_size: Range
    dose: Range
    gaussian_sigma: Range


REALISTIC_ROUNDS = (
    Round(1.0, (0.8, 2.5), (0.5, 1.2), (0.05, 1.0), (1 / 255, 15 / 255)),
    Round(0.8, (1.2, 3.0), (0.7, 1.1), (0.1, 1.0), (1 / 255, 10 / 255)),
)
"""The two rounds of the ``realistic`` preset (Real-ESRGAN's, narrowed for radiographs)."""


@dataclass(frozen=True)
class HighOrderPipeline:
    """Random second-order degradation after Real-ESRGAN, made X-ray aware.

    Real-ESRGAN (Wang et al., ICCVW 2021, https://arxiv.org/abs/2107.10833) applies two rounds of
    blur → resize → noise → JPEG with drawn parameters, then the resize to the output size and a
    final JPEG in random order. Here, for radiographs: the blur is the detector MTF (or a slice
    blur), the noise is quantum noise at a drawn dose (else gray Gaussian noise), scatter may come
    first and a contrast/gamma change after the rounds (BSRGAN-style variety, Zhang et al., ICCV
    2021, https://arxiv.org/abs/2103.14006); there is no colour noise or sinc ringing.

    Attributes:
        description: one line, for listings.
        rounds: the ranges of each round.
        scatter_prob, slice_blur_prob, quantum_prob, jpeg_prob, tone_prob: probabilities of
            scatter first, of a slice blur instead of a detector blur, of quantum rather than
            Gaussian noise, of a JPEG in each round and at the end, of a contrast/gamma change.
        kernels: resize kernels drawn from.
    """

    description: str
    rounds: tuple[Round, ...] = REALISTIC_ROUNDS
    scatter_prob: float = 0.3
    slice_blur_prob: float = 0.2
    quantum_prob: float = 0.6
    jpeg_prob: float = 0.3
    tone_prob: float = 0.5
    kernels: tuple[str, ...] = ("area", "bilinear", "bicubic")

    def names(self) -> set[str]:
        """Names of the operators this pipeline can run."""
        return {op.name for op in (Scatter, DetectorBlur, SliceBlur, Resize, QuantumNoise,
                                   GaussianNoise, Jpeg, Contrast, Gamma)}

    def sample(self, generator: np.random.Generator, in_shape: tuple[int, int],
               out_shape: tuple[int, int], pixel_mm: float) -> list[Step]:
        """Draw the steps for an ``in_shape`` image of pitch ``pixel_mm`` made ``out_shape``."""
        steps: list[Step] = []
        if generator.random() < self.scatter_prob:
            steps.append(_draw(Scatter(), pixel_mm, generator))
        shape = in_shape
        for spec in self.rounds:
            round_steps, new_shape = self._round(generator, spec, shape, pixel_mm)
            steps += round_steps
            pixel_mm, shape = pixel_mm * shape[0] / new_shape[0], new_shape
        if generator.random() < self.tone_prob:
            steps += [_draw(Contrast(), pixel_mm, generator), _draw(Gamma(), pixel_mm, generator)]
        final: list[Step] = [
            (Resize(), {"kernel": draw_choice(generator, self.kernels), "size": list(out_shape)})]
        if generator.random() < self.jpeg_prob:
            jpeg = _draw(Jpeg(), pixel_mm, generator)
            final = [*final, jpeg] if generator.random() < 0.5 else [jpeg, *final]
        return steps + final

    def _round(self, generator: np.random.Generator, spec: Round, shape: tuple[int, int],
               pixel_mm: float) -> tuple[list[Step], tuple[int, int]]:
        """Blur → resize → noise → JPEG of one round, and the shape after it."""
        steps: list[Step] = []
        if generator.random() < spec.blur_prob:
            blur: Operator = (SliceBlur() if generator.random() < self.slice_blur_prob
                              else DetectorBlur(mtf50_lp_per_mm=spec.mtf50_lp_per_mm))
            steps.append(_draw(blur, pixel_mm, generator))
        size = resized_shape(shape, 1.0 / draw_uniform(generator, spec.relative_size))
        kernel = draw_choice(generator, self.kernels)
        steps.append((Resize(), {"kernel": kernel, "size": list(size)}))
        pixel_mm *= shape[0] / size[0]
        if generator.random() < self.quantum_prob:
            noise: Operator = QuantumNoise(dose=spec.dose)
        else:
            noise = GaussianNoise(sigma=spec.gaussian_sigma)
        steps.append(_draw(noise, pixel_mm, generator))
        if generator.random() < self.jpeg_prob:
            steps.append(_draw(Jpeg(), pixel_mm, generator))
        return steps, size


@dataclass(frozen=True)
class RandomChain:
    """Operators that each run with their own probability, around a resize of a drawn kernel.

    Attributes:
        description: one line, for listings.
        operators: ``(probability, operator)`` applied in order at the input resolution.
        after_resize: ``(probability, operator)`` applied in order after the resize.
        kernels: kernels the final resize draws from (skipped when the scale is 1).
    """

    description: str
    operators: tuple[tuple[float, Operator], ...] = ()
    after_resize: tuple[tuple[float, Operator], ...] = ()
    kernels: tuple[str, ...] = ("area", "bilinear", "bicubic", "lanczos")

    def names(self) -> set[str]:
        """Names of the operators this chain can run."""
        return {op.name for _, op in (*self.operators, *self.after_resize)} | {Resize.name}

    def sample(self, generator: np.random.Generator, in_shape: tuple[int, int],
               out_shape: tuple[int, int], pixel_mm: float) -> list[Step]:
        """Draw the steps for an ``in_shape`` image of pitch ``pixel_mm`` made ``out_shape``."""
        steps = [_draw(op, pixel_mm, generator) for p, op in self.operators
                 if generator.random() < p]
        if out_shape != in_shape:
            kernel = draw_choice(generator, self.kernels)
            steps.append((Resize(), {"kernel": kernel, "size": list(out_shape)}))
        out_pixel_mm = pixel_mm * in_shape[0] / out_shape[0]
        return steps + [_draw(op, out_pixel_mm, generator) for p, op in self.after_resize
                        if generator.random() < p]


@dataclass(frozen=True)
class Mixture:
    """One of several presets per image, drawn with the given weights.

    Attributes:
        description: one line, for listings.
        components: ``(weight, name, preset)``; weights need not sum to 1.
    """

    description: str
    components: tuple[tuple[float, str, Chain | RandomChain | HighOrderPipeline], ...]

    def names(self) -> set[str]:
        """Names of the operators any component can run."""
        return set().union(*(preset.names() for _, _, preset in self.components))

    def choose(self, generator: np.random.Generator) -> tuple[str, Chain | RandomChain
                                                              | HighOrderPipeline]:
        """Draw one component: its name and preset."""
        weights = np.asarray([w for w, _, _ in self.components], dtype=np.float64)
        index = int(np.searchsorted(np.cumsum(weights / weights.sum()), generator.random(),
                                    side="right"))
        _, name, preset = self.components[min(index, len(self.components) - 1)]
        return name, preset

    def sample(self, generator: np.random.Generator, in_shape: tuple[int, int],
               out_shape: tuple[int, int], pixel_mm: float) -> list[Step]:
        """Draw a component, then its steps for an ``in_shape`` image made ``out_shape``."""
        _, preset = self.choose(generator)
        return preset.sample(generator, in_shape, out_shape, pixel_mm)


DRR_LIKE = Chain(
    "the look of a DRR: slice blur along the body axis, flat contrast, no fine texture",
    # Tuned on NIH ChestX-ray14 at 1024², scale 2: ≈ 23 dB PSNR / 0.90 SSIM against the source.
    operators=(SliceBlur(slice_mm=(2.5, 5.0)), Gamma(gamma=(1.2, 1.35))),
)

WIDE_ROUNDS = (
    Round(0.8, (0.6, 4.0), (0.5, 1.2), (0.1, 4.0), (0.5 / 255, 8 / 255)),
    Round(0.6, (1.0, 5.0), (0.7, 1.1), (0.2, 4.0), (0.5 / 255, 6 / 255)),
)
"""Rounds of ``broad``'s high-order part: wider blur and size ranges than ``realistic``, and
lighter noise on average (clean-ish inputs must be seen too)."""

BROAD = Mixture(
    "robust training: drr-like, a wide high-order pipeline, random single operators (blur, "
    "noise, streaks, JPEG) and clean-ish resizes; no tone change apart from drr-like's",
    components=(
        (0.3, "drr-like", DRR_LIKE),
        (0.3, "high-order", HighOrderPipeline(
            "wide random second-order pipeline without tone change or slice blur",
            rounds=WIDE_ROUNDS, scatter_prob=0.2, slice_blur_prob=0.0, tone_prob=0.0,
            kernels=("area", "bilinear", "bicubic", "lanczos"))),
        (0.25, "single", RandomChain(
            "each operator with its probability: scatter, detector blur; after the resize "
            "quantum or Gaussian noise, streaks, JPEG",
            operators=((0.15, Scatter(spr=(0.1, 0.8))),
                       (0.8, DetectorBlur(mtf50_lp_per_mm=(0.6, 4.0)))),
            after_resize=((0.25, QuantumNoise(dose=(0.2, 4.0))),
                          (0.25, GaussianNoise(sigma=(1 / 255, 6 / 255))),
                          (0.3, Streaks()), (0.3, Jpeg(quality=(30, 95)))))),
        (0.15, "clean", RandomChain(
            "a resize with a random kernel, sometimes after a slight blur",
            operators=((0.5, DetectorBlur(mtf50_lp_per_mm=(2.0, 6.0))),))),
    ),
)
"""The ``broad`` mixture (issue 23: an enhancer that never does worse than bicubic)."""

PRESETS: dict[str, Chain | RandomChain | HighOrderPipeline | Mixture] = {
    "bicubic": Chain("plain antialiased bicubic downsampling by the scale (the SR baseline)"),
    "drr-like": DRR_LIKE,
    "low-dose": Chain(
        "quantum and electronic noise at 2-20 % of the reference dose, then detector blur",
        operators=(QuantumNoise(dose=(0.02, 0.2)), DetectorBlur(mtf50_lp_per_mm=(1.5, 2.5))),
    ),
    "portable": Chain(
        "bedside unit without a grid: scatter, quantum noise, some blur, contrast loss",
        operators=(Scatter(spr=(0.5, 1.5)), QuantumNoise(dose=(0.1, 0.5)),
                   DetectorBlur(mtf50_lp_per_mm=(0.8, 1.5)), Contrast(contrast=(0.7, 0.9))),
    ),
    "realistic": HighOrderPipeline("random second-order pipeline (Real-ESRGAN style, X-ray aware)"),
    "broad": BROAD,
}
"""Named degradations; each runs at the input resolution, then resizes to ``(H, W) // scale``."""


def _draw(operator: Operator, pixel_mm: float, generator: np.random.Generator) -> Step:
    """``operator`` at pitch ``pixel_mm`` (when it has lengths) with freshly drawn parameters."""
    if hasattr(operator, "pixel_mm"):
        operator = replace(operator, pixel_mm=pixel_mm)  # type: ignore[type-var]  # a dataclass
    return operator, operator.sample_params(generator)
