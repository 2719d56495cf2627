"""`python -m cxrkit` (so that `accelerate launch -m cxrkit <command>` works)."""

from __future__ import annotations

from cxrkit.cli import main

if __name__ == "__main__":
    main()
