"""Argument checks shared by the built-in backends: keys, TTLs and timeouts."""

from __future__ import annotations

import math
import reprlib
import threading
from collections.abc import Iterable
from typing import Any

from ..events import Event

#: The longest TTL or wait, in ms; the same bound as the public API's durations.
MAX_MS = 10**12


def check_events(events: Any) -> list[Event]:
    """Return ``events`` as a list of :class:`Event` with string keys."""
    if isinstance(events, (str, bytes, Event)) or not isinstance(events, Iterable):
        msg = f"events must be an iterable of Event objects, such as [Event(...)], not {events!r}"
        raise TypeError(msg)
    batch = list(events)
    for event in batch:
        if not isinstance(event, Event) or not isinstance(event.key, str):
            msg = (
                f"each event must be an Event with a string key, not {event!r} "
                f"(in {reprlib.repr(batch)})"
            )
            raise TypeError(msg)
        if not encodable(event.key):
            msg = (
                f"an event's key must be a string that can be encoded as UTF-8 "
                f"(no lone surrogates), not {event.key!r}"
            )
            raise ValueError(msg)
        if not isinstance(event.params, dict):
            msg = f"an event's params must be a dict, not {event.params!r}"
            raise TypeError(msg)
    return batch


def check_pairs(batch: Any) -> list[tuple[Event, int]]:
    """Return ``batch`` as a list of ``(Event, ttl)`` pairs, each checked."""
    if isinstance(batch, (str, bytes, Event)) or not isinstance(batch, Iterable):
        msg = f"batch must be an iterable of (Event, ttl) pairs, not {batch!r}"
        raise TypeError(msg)
    pairs = []
    for pair in batch:
        if not isinstance(pair, tuple) or len(pair) != 2:
            msg = f"each item must be an (Event, ttl) pair, not {pair!r}"
            raise TypeError(msg)
        event, ttl = pair
        check_events([event])
        pairs.append((event, check_ttl(ttl)))
    return pairs


def check_key(key: Any) -> str:
    """Return ``key`` if it is a string (one that cannot be stored simply has no event)."""
    if not isinstance(key, str):
        msg = f"key must be an event key string such as 'abort:<message id>', not {key!r}"
        raise TypeError(msg)
    return key


def check_keys(keys: Any) -> list[str]:
    """Return ``keys`` as a list of event keys."""
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        msg = f"keys must be an iterable of event key strings, such as ['abort:<id>'], not {keys!r}"
        raise TypeError(msg)
    return [check_key(key) for key in keys]


def check_ids(message_ids: Any) -> list[str]:
    """Return ``message_ids`` as a list of message id strings."""
    if isinstance(message_ids, (str, bytes)) or not isinstance(message_ids, Iterable):
        msg = (
            f"message_ids must be an iterable of message id strings, such as "
            f"[message.message_id], not {message_ids!r}"
        )
        raise TypeError(msg)
    ids = list(message_ids)
    for message_id in ids:
        if not isinstance(message_id, str):
            msg = f"each message id must be a string, not {message_id!r}"
            raise TypeError(msg)
    return ids


def check_tracking(changes: Any) -> list[tuple[str, str, str, int]]:
    """Return ``changes`` (``track()``'s argument) as a list of checked tuples."""
    if isinstance(changes, (str, bytes)) or not isinstance(changes, Iterable):
        msg = f"changes must be an iterable of (change, actor, message id, ms), not {changes!r}"
        raise TypeError(msg)
    batch = []
    for item in changes:
        ok = (
            isinstance(item, tuple)
            and len(item) == 4
            and item[0] in ("add", "remove")
            and isinstance(item[1], str)
            and isinstance(item[2], str)
            and isinstance(item[3], int)
            and not isinstance(item[3], bool)
        )
        if not ok:
            msg = (
                f"each change must be ('add' or 'remove', actor name, message id, whole ms), "
                f"not {item!r}"
            )
            raise TypeError(msg)
        batch.append(item)
    return batch


def check_ttl(ttl: Any) -> int:
    """Return ``ttl`` if it is a positive whole number of ms, at most :data:`MAX_MS`."""
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= MAX_MS:
        msg = f"ttl must be a positive whole number of milliseconds, at most {MAX_MS}, not {ttl!r}"
        raise ValueError(msg)
    return ttl


def check_timeout(timeout: Any) -> float:
    """Return a ``wait_many`` timeout (ms) as seconds, bounded by ``threading``'s limit."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        msg = f"timeout must be a number of milliseconds, not {timeout!r}"
        raise TypeError(msg)
    if not (isinstance(timeout, int) or math.isfinite(timeout)) or not 0 <= timeout <= MAX_MS:
        msg = f"timeout must be from 0 to {MAX_MS} milliseconds, not {timeout!r}"
        raise ValueError(msg)
    return min(timeout / 1000, threading.TIMEOUT_MAX)


def encodable(key: str) -> bool:
    """Whether ``key`` can be encoded as UTF-8 (a lone surrogate cannot)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
