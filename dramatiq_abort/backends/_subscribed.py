"""What the backends with a push subscription (Redis, PostgreSQL) share."""

from __future__ import annotations

import time
from collections.abc import Iterable

from ..events import Event, EventBackend
from ._checks import check_keys, check_timeout


def wait_many(backend: EventBackend, keys: Iterable[str], timeout: int) -> Event | None:
    """Wait up to ``timeout`` ms for one of ``keys``, stored or announced.

    Subscribes first, then reads what is stored, so a request made in
    between is announced to the subscription: none falls between the two.
    """
    wanted = check_keys(keys)
    deadline = time.monotonic() + check_timeout(timeout)
    subscription = backend.subscribe()
    if subscription is None:
        raise TypeError(f"{backend!r} offers no subscription to wait on")
    try:
        found = backend.poll_many(wanted)
        if found:
            return found[0]
        keyset = set(wanted)
        while (remaining := deadline - time.monotonic()) > 0:
            for event in subscription.get(remaining):
                if event.key in keyset:
                    return event
        return None
    finally:
        subscription.close()
