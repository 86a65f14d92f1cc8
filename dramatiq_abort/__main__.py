"""``python -m dramatiq_abort``: the same commands as the ``dramatiq-abort`` script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
