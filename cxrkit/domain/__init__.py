"""The domain classifier: P(real radiograph) of lung patches, against raw DRRs.

A realism score for ``cxrkit eval --domain-model`` (issue 23): a tiny CNN trained on patches of
real chest radiographs (label 1) against patches of raw DRRs (label 0), both resampled to one
pixel pitch. An enhancer whose outputs score near 1 makes DRRs that this classifier cannot tell
from radiographs; raw DRRs score near 0.

- :mod:`~cxrkit.domain.model`: :class:`DomainSettings`, :class:`DomainClassifier` (a model folder
  is ``config.json`` (``"kind": "domain-classifier"``) + ``model.safetensors`` + ``run.json``);
- :mod:`~cxrkit.domain.data`: :class:`PatchImage` (an image at the model's pitch with its lung
  field), :class:`DomainPatches` (random lung patches of both classes), :func:`grid_patches`;
- :mod:`~cxrkit.domain.training`: :func:`train_domain` on the shared loop, validated by accuracy
  and AUC on held-out images' patches; :func:`probability`, the mean P(real) of an image.

Importing this package imports torch.
"""

from cxrkit.domain.data import DomainPatches, PatchImage, grid_patches
from cxrkit.domain.model import DOMAIN_KIND, DomainClassifier, DomainSettings
from cxrkit.domain.training import HeldOutPatches, probability, train_domain

__all__ = ["DOMAIN_KIND", "DomainClassifier", "DomainPatches", "DomainSettings", "HeldOutPatches",
           "PatchImage", "grid_patches", "probability", "train_domain"]
