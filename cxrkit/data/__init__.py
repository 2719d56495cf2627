"""Data helpers every model family shares (floor 2 of docs/architecture.md).

- :mod:`cxrkit.data.images`: reading display radiographs for training, and the resizers;
- :mod:`cxrkit.data.splits`: hold-out splits (by patient, by file) and data hashes for ``run.json``;
- :mod:`cxrkit.data.seeds`: per-item seeds, so results do not depend on order or sharding.

This package imports nothing heavy itself; :mod:`cxrkit.data.images` imports torch when a resizer
runs.
"""
