"""DDPM-LQ: learned HQ → LQ degradation with a diffusion model of the LQ domain (real DRRs).

Two routes, selected by :attr:`DdpmLQSettings.route`:

- ``img2img`` (Yang, Ren, Xie & Zhang, "Synthesizing realistic image restoration training pairs:
  a diffusion approach", https://arxiv.org/abs/2303.06994): an *unconditional* DDPM trained on
  real LQ images only, on the low-noise part of the schedule (``t < max_train_timestep``). To
  degrade, the HQ image is noised to ``t = strength·T`` (strength ≤ 0.25 by default) and denoised
  (DDIM): the low strength keeps the anatomy, the LQ prior supplies the look. No pairs needed.
- ``two-stage`` (DiffusionXRay, Goyal, Mittal et al. 2025, https://arxiv.org/abs/2603.01686,
  ``qureai/DiffusionXray``): stage 1 trains the 2-channel model ``[x_t, cond]`` on real LQ images
  with the condition channel zeroed (instead of the repository's two-noise trick); stage 2
  fine-tunes it on (HQ, LQ) pairs with ``cond = HQ``, keeping a share of zero-condition LQ samples
  so the LQ prior stays. To degrade, sample the LQ conditioned on the HQ, from pure noise
  (strength 1) or from the noised HQ.

The network is the enhancer's diffusers ``UNet2DModel`` behind a pixel-unshuffle (see
:mod:`cxrkit.diffusion.denoiser`, the shared diffusion floor), under a cosine schedule with ε- or
v-prediction; sampling uses the floor's schedulers (:func:`cxrkit.diffusion.make_scheduler`).
Images inside are ``(B, 1, H, W)`` in [-1, 1]; the public functions take display radiographs
``(H, W)`` float32 in [0, 1], bone bright. The package follows the data:

- :mod:`~cxrkit.ddpm_lq.model`: :class:`DdpmLQSettings`, :class:`DdpmLQ` and the model folder
  (``config.json`` with ``"kind": "ddpm-lq"``, ``model_index.json``, ``unet/``, ``scheduler/``,
  ``run.json``);
- :mod:`~cxrkit.ddpm_lq.data`: crops of real LQ images and of (HQ, LQ) pairs, the hold-out;
- :mod:`~cxrkit.ddpm_lq.training`: the diffusion loss, :func:`train_ddpm_lq` (both routes) and
  its validation on held-out images;
- :mod:`~cxrkit.ddpm_lq.degrader`: :func:`degrade_lq` (the DDIM loop) and
  :class:`DdpmDegrader`, the ``ddpm`` method of ``cxrkit degrade``.
"""

from cxrkit.ddpm_lq.data import ConditionedCrops, HeldOut, LQCrops
from cxrkit.ddpm_lq.degrader import DdpmDegrader, degrade_lq, sampling_timesteps
from cxrkit.ddpm_lq.model import (
    DDPM_LQ_KIND,
    PREDICTION_TYPES,
    ROUTES,
    DdpmLQ,
    DdpmLQSettings,
)
from cxrkit.ddpm_lq.training import (
    StageTwo,
    ddpm_lq_loss,
    high_frequency_energy,
    train_ddpm_lq,
)

__all__ = [
    "DDPM_LQ_KIND", "PREDICTION_TYPES", "ROUTES", "ConditionedCrops", "DdpmDegrader", "DdpmLQ",
    "DdpmLQSettings", "HeldOut", "LQCrops", "StageTwo", "ddpm_lq_loss", "degrade_lq",
    "high_frequency_energy", "sampling_timesteps", "train_ddpm_lq",
]
