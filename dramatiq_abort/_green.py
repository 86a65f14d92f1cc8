"""gevent, when it patched the standard library (``dramatiq-gevent``): looked at, never imported.

Worked out once, at first use: gevent is only looked at if something
imported it already, so a process without it pays one dictionary lookup.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

#: The answer once worked out: ``None`` where gevent did not patch ``threading``.
_FOUND: list[Callable[[], tuple[Any, Any]] | None] = []


def current() -> Callable[[], tuple[Any, Any]] | None:
    """A function giving the calling greenlet and its hub, when gevent patched ``threading``."""
    if _FOUND:
        return _FOUND[0]
    found = None
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        gevent: Any = sys.modules["gevent"]  # imported with gevent.monkey

        def found() -> tuple[Any, Any]:
            return gevent.getcurrent(), gevent.get_hub()

    _FOUND.append(found)
    return found


def patched() -> bool:
    """Whether worker threads are greenlets here: a blocking system call would stop them all."""
    return current() is not None
