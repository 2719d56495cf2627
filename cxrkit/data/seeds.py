"""Per-item seeds: the seed of one item depends on the run's seed and the item's id only, so a
result does not depend on the batch order, the batch size or sharding across processes.

This module imports no numpy or torch at import time (the CLI imports it while it starts).
"""

from __future__ import annotations

import hashlib
import zlib

from cxrkit.errors import InputError

TORCH_SEED_BITS = 63
"""``torch.Generator.manual_seed`` takes seeds below ``2**63``: pass ``bits=TORCH_SEED_BITS``."""


def item_seed(seed: int, item_id: str, *, index: int | None = None, bits: int = 64) -> int:
    """The seed of one item (or of sample ``index`` of one item) under the run's ``seed``.

    Two numeric schemes live here, each kept bit for bit because recorded outputs depend on them:

    - ``index`` None (``degrade``, ``enhance``): the first 8 bytes of
      ``sha256("<seed>:<item id>")``, little-endian, masked to ``bits`` bits (``enhance`` seeds
      torch and passes :data:`TORCH_SEED_BITS`; the lower 63 bits are the same number);
    - ``index`` given (``synth``'s samples): the first 64-bit word of
      ``numpy.random.SeedSequence([seed, crc32(item id), index])``; ``seed`` must be ≥ 0.

    Raises:
        InputError: ``bits`` outside 1..64, or a negative ``seed`` with an ``index``.
    """
    if not 1 <= bits <= 64:
        raise InputError(f"seed bits must be in 1..64, got {bits}")
    if index is None:
        digest = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()
        value = int.from_bytes(digest[:8], "little")
    else:
        import numpy as np

        if seed < 0:
            raise InputError(f"seed must be >= 0, got {seed}")
        sequence = np.random.SeedSequence([seed, zlib.crc32(item_id.encode()), index])
        value = int(sequence.generate_state(1, dtype=np.uint64)[0])
    return value & ((1 << bits) - 1)
