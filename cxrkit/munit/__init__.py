"""MUNIT-LQ: unpaired HQ radiograph → DRR-style LQ translation with a content/style split.

MUNIT (Huang, Liu, Belongie & Kautz, ECCV 2018, https://arxiv.org/abs/1804.04732) encodes an
image of domain ``d`` into a *content* code ``c`` (a spatial map, shared by both domains) and a
*style* code ``s`` (an 8-d vector, per domain), and decodes ``(c, s)`` with AdaIN residual blocks
whose affine parameters an MLP computes from ``s``. Translation HQ → LQ is
``G_lq(E_c^hq(x_hq), s)`` with ``s ~ N(0, I)`` (diversity) or ``s = E_s^lq(x_ref)`` (the look of a
reference DRR). The content code keeps the anatomy, so HQ and LQ stay aligned: a training pair.

Domain ``hq`` is real radiographs, domain ``lq`` real DRRs. The package follows the data:

- :mod:`~cxrkit.munit.networks`: :class:`MunitSettings`, encoders, AdaIN decoder, discriminators;
- :mod:`~cxrkit.munit.model`: :class:`Munit` (both domains, the loss terms, the model folder);
- :mod:`~cxrkit.munit.data`: unpaired crops of the two domains (loading, resizing and the
  hold-out are the shared :mod:`cxrkit.data` helpers);
- :mod:`~cxrkit.munit.training`: the alternating discriminator and generator updates
  (:data:`PHASES`, :func:`phases`) and :func:`train_munit`;
- :mod:`~cxrkit.munit.degrader`: :class:`MunitDegrader`, the ``munit`` method of ``degrade``.

Losses (MUNIT eq. 5, its default weights): ``gan_weight·L_GAN + recon_image_weight·L1(x, x̂) +
recon_style_weight·L1(s, ŝ) + recon_content_weight·L1(c, ĉ)`` in both directions, plus an optional
cycle term (MUNIT's ``recon_x_cyc_w``, 0 by default). Widths default to a quarter of the paper's
so that CPU training is possible; the paper's values are given per field.

Images inside the networks are ``(B, 1, H, W)`` in [-1, 1]; the public functions take display
radiographs ``(H, W)`` float32 in [0, 1], bone bright.
"""

from cxrkit.munit.data import UnpairedCrops
from cxrkit.munit.degrader import MunitDegrader
from cxrkit.munit.model import (
    CONFIG_NAME,
    DOMAINS,
    WEIGHTS_NAME,
    Munit,
    read_config,
)
from cxrkit.munit.networks import (
    DISC_INITS,
    MUNIT_KIND,
    ContentEncoder,
    Decoder,
    Generator,
    MultiScaleDiscriminator,
    MunitSettings,
    StyleEncoder,
    adain,
)
from cxrkit.munit.training import (
    PHASES,
    discriminator_loss,
    generator_loss,
    phases,
    train_munit,
)

__all__ = [
    "CONFIG_NAME", "DISC_INITS", "DOMAINS", "MUNIT_KIND", "PHASES", "WEIGHTS_NAME",
    "ContentEncoder", "Decoder", "Generator", "MultiScaleDiscriminator", "Munit",
    "MunitDegrader", "MunitSettings", "StyleEncoder", "UnpairedCrops", "adain",
    "discriminator_loss", "generator_loss", "phases", "read_config", "train_munit",
]
