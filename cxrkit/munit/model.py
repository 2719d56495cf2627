"""The MUNIT-LQ model: both domains' generators and discriminators, the loss terms, and the
model folder (``save_pretrained`` / ``from_pretrained``).

A model directory::

    config.json         MunitSettings (with "kind": "munit-lq")
    model.safetensors   the two generators (the discriminators are training-only)
    run.json            how it was trained (written by :mod:`cxrkit.train`)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.modelfiles import CONFIG_NAME, load_weights, read_config
from cxrkit.modelfiles import settings_values as _settings_values
from cxrkit.munit.networks import (
    MUNIT_KIND,
    Generator,
    MultiScaleDiscriminator,
    MunitSettings,
)

WEIGHTS_NAME = "model.safetensors"
DOMAINS = ("hq", "lq")

class Munit(nn.Module):
    """MUNIT-LQ: generators and (for training) discriminators of the ``hq`` and ``lq`` domains.

    ``forward(phase, …)`` computes the loss of one training phase (discriminator update, then
    generator update, each with its own optimizer; see :mod:`cxrkit.munit.training`).

    Args:
        settings: architecture and loss weights.
        discriminators: build the discriminators (False for inference).
    """

    def __init__(self, settings: MunitSettings, *, discriminators: bool = True) -> None:
        super().__init__()
        self.settings = settings
        self.gen = nn.ModuleDict({d: Generator(settings) for d in DOMAINS})
        self.dis = nn.ModuleDict({d: MultiScaleDiscriminator(settings) for d in DOMAINS}
                                 if discriminators else {})

    @classmethod
    def new(cls, settings: MunitSettings, *, generator: torch.Generator) -> Munit:
        """Freshly initialised weights from ``generator``: Kaiming-normal convs and linears in the
        generators (MUNIT's ``kaiming``); the discriminators as ``settings.disc_init`` says
        (He-normal for LeakyReLU(0.2), or MUNIT's ``gaussian`` N(0, 0.02))."""
        model = cls(settings)
        for part, init in ((model.gen, "generator"), (model.dis, settings.disc_init)):
            for module in part.modules():
                if isinstance(module, nn.Conv2d | nn.Linear):
                    if init == "gaussian":
                        nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
                    elif init == "kaiming":  # LeakyReLU(0.2) between the discriminator's convs
                        nn.init.kaiming_normal_(module.weight, a=0.2, generator=generator)
                    else:
                        nn.init.kaiming_normal_(module.weight, generator=generator)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
        return model

    def forward(self, phase: str, hq: torch.Tensor, lq: torch.Tensor, style_hq: torch.Tensor,
                style_lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms of one phase of a training step (``forward``, so it goes through DDP).

        Args:
            phase: ``discriminator`` (both discriminators on real images and on fakes made
                without gradients) or ``generator`` (both auto-encoders, translations scored by
                the discriminators); see :data:`cxrkit.munit.training.PHASES`.
            hq, lq: ``(B, 1, h, w)`` unpaired crops in [-1, 1].
            style_hq, style_lq: ``(B, style_dim)`` random style codes, N(0, I).

        Returns:
            Scalars. ``discriminator``: ``discriminator``. ``generator``: ``generator`` (the
            weighted total, MUNIT eq. 5) and the unweighted terms ``recon_image``,
            ``recon_style``, ``recon_content``, ``recon_cycle``, ``tone`` (:func:`tone_l1`, both
            directions; weighted only when ``tone_weight > 0``) and ``gan``.

        Raises:
            ValueError: another phase.
        """
        if phase == "discriminator":
            return {"discriminator": self._discriminator_loss(hq, lq, style_hq, style_lq)}
        if phase == "generator":
            return self._generator_losses(hq, lq, style_hq, style_lq)
        raise ValueError(f"unknown MUNIT phase {phase!r}")

    def _discriminator_loss(self, hq: torch.Tensor, lq: torch.Tensor, style_hq: torch.Tensor,
                            style_lq: torch.Tensor) -> torch.Tensor:
        """LSGAN: real → 1, translated → 0, in both domains (MUNIT's ``dis_update``)."""
        with torch.no_grad():
            fake_lq = self.translate(hq, style_lq, source="hq", target="lq")
            fake_hq = self.translate(lq, style_hq, source="lq", target="hq")
        return (_lsgan(self.dis["lq"](fake_lq), 0.0) + _lsgan(self.dis["lq"](lq), 1.0)
                + _lsgan(self.dis["hq"](fake_hq), 0.0) + _lsgan(self.dis["hq"](hq), 1.0))

    def _generator_losses(self, hq: torch.Tensor, lq: torch.Tensor, style_hq: torch.Tensor,
                          style_lq: torch.Tensor) -> dict[str, torch.Tensor]:
        """MUNIT's ``gen_update``: reconstructions within and across domains, and LSGAN with
        fakes → 1. Gradients reach the discriminators too; the training engine drops them."""
        s = self.settings
        gen = {d: self.generator(d) for d in DOMAINS}
        c_hq, s_hq = gen["hq"].encode(hq)
        c_lq, s_lq = gen["lq"].encode(lq)
        recon_image = (F.l1_loss(gen["hq"].decoder(c_hq, s_hq), hq)
                       + F.l1_loss(gen["lq"].decoder(c_lq, s_lq), lq))
        fake_lq = gen["lq"].decoder(c_hq, style_lq)  # HQ anatomy, LQ look
        fake_hq = gen["hq"].decoder(c_lq, style_hq)
        c_hq2, s_lq2 = gen["lq"].encode(fake_lq)
        c_lq2, s_hq2 = gen["hq"].encode(fake_hq)
        recon_style = F.l1_loss(s_lq2, style_lq) + F.l1_loss(s_hq2, style_hq)
        recon_content = F.l1_loss(c_hq2, c_hq) + F.l1_loss(c_lq2, c_lq)
        gan = _lsgan(self.dis["lq"](fake_lq), 1.0) + _lsgan(self.dis["hq"](fake_hq), 1.0)
        generator = (s.gan_weight * gan + s.recon_image_weight * recon_image
                     + s.recon_style_weight * recon_style
                     + s.recon_content_weight * recon_content)
        recon_cycle = torch.zeros((), device=hq.device)
        if s.recon_cycle_weight > 0:
            recon_cycle = (F.l1_loss(gen["hq"].decoder(c_hq2, s_hq), hq)
                           + F.l1_loss(gen["lq"].decoder(c_lq2, s_lq), lq))
            generator = generator + s.recon_cycle_weight * recon_cycle
        tone = tone_l1(fake_lq, hq, s.tone_pool) + tone_l1(fake_hq, lq, s.tone_pool)
        if s.tone_weight > 0:
            generator = generator + s.tone_weight * tone
        return {"generator": generator, "recon_image": recon_image, "recon_style": recon_style,
                "recon_content": recon_content, "recon_cycle": recon_cycle, "tone": tone,
                "gan": gan}

    def translate(self, image: torch.Tensor, style: torch.Tensor, *, source: str = "hq",
                  target: str = "lq") -> torch.Tensor:
        """``G_target(E_c^source(image), style)``.

        Args:
            image: ``(B, 1, H, W)`` in [-1, 1], ``H, W`` multiples of ``settings.multiple``.
            style: ``(B, style_dim)`` style code of the target domain.

        Returns:
            ``(B, 1, H, W)`` in [-1, 1].
        """
        return self.generator(target).decoder(self.generator(source).content(image), style)

    def generator(self, domain: str) -> Generator:
        """The generator of ``domain`` (``hq`` or ``lq``)."""
        return cast(Generator, self.gen[domain])

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors`` (generators only)."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in self.gen.state_dict().items()}
        save_file(state, out / WEIGHTS_NAME, metadata={"format": "pt", "kind": MUNIT_KIND})
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu"
                        ) -> Munit:
        """Load a model directory written by :meth:`save_pretrained` (safetensors only).

        Raises:
            ModelError: not a folder, another kind of model, no safetensors weights, or weights
                that do not fit the settings.
        """
        folder = Path(directory)
        settings = MunitSettings(**_settings_values(read_config(folder, MUNIT_KIND),
                                                    MunitSettings, folder))
        model = cls(settings, discriminators=False)
        load_weights(model.gen, folder / WEIGHTS_NAME, what="MUNIT-LQ model")
        return model.to(device).eval().requires_grad_(False)


def tone_l1(translated: torch.Tensor, source: torch.Tensor, pool: int) -> torch.Tensor:
    """L1 between ``pool``-px block means of a translation and of its source: how far the
    translation moved the local brightness (MUNIT-LQ's optional tone-keeping term)."""
    pool = min(pool, *source.shape[-2:])
    return F.l1_loss(F.avg_pool2d(translated, pool), F.avg_pool2d(source, pool))


def _lsgan(scores: Sequence[torch.Tensor], target: float) -> torch.Tensor:
    """Least-squares GAN loss summed over scales: ``Σ mean((D - target)²)``."""
    return torch.stack([torch.mean((d - target) ** 2) for d in scores]).sum()
