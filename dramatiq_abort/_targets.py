"""What ``abort()`` can be given: ids, messages, groups, pipelines, and iterables of them.

Each target becomes the ids of the messages it stands for, each with the
milliseconds its request must live beyond the usual TTL, because the
message may start that much later:

* a ``Message`` (what ``actor.send()`` returns) with an ``eta`` (sent with
  ``delay``): until that ETA; one that carries a ``delay`` option (a
  member of a group or a pipeline, not sent yet): that delay;
* the stages of a ``pipeline`` after the first: the delays of the stages
  up to them, plus the longest grace of the stages before them (a stage
  that returns within its grace still hands its result to the next one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import dramatiq
from dramatiq.broker import MessageProxy

from ._request import MAX_MS, check_message_id

#: What a single target may be.
Single = str | dramatiq.Message[Any] | MessageProxy


def is_many(target: object) -> bool:
    """Whether ``target`` stands for several messages (a group, a pipeline, an iterable)."""
    if isinstance(target, (str, bytes, dramatiq.Message, MessageProxy)):
        return False
    return isinstance(target, (dramatiq.group, dramatiq.pipeline, Iterable))


def message_id_of(target: object) -> str:
    """The id a single target names: a message id, or a ``Message``'s."""
    if isinstance(target, (dramatiq.Message, MessageProxy)):
        return check_message_id(target.message_id)
    if isinstance(target, (dramatiq.group, dramatiq.pipeline)):
        msg = (
            f"this takes one message or its id, not {target!r}: pass the group or "
            "pipeline to abort() or abort_many(), which abort every message in it"
        )
        raise TypeError(msg)
    return check_message_id(target)


#: The grace (ms) a running message of the named actor gets from the abort.
GraceOf = Callable[[str], int]


def expand(target: object, grace_of: GraceOf = lambda actor_name: 0) -> dict[str, int]:
    """Every message id ``target`` stands for, with its extra lifetime in ms (the largest)."""
    found: dict[str, int] = {}
    now = time.time() * 1000
    for message_id, extra in _walk(target, grace_of, now, depth=0):
        found[message_id] = max(extra, found.get(message_id, 0))
    return found


def _walk(target: object, grace_of: GraceOf, now: float, depth: int) -> Iterator[tuple[str, int]]:
    if depth > 20:
        msg = f"groups and pipelines nest too deeply (more than 20 levels) in {target!r}"
        raise ValueError(msg)
    if isinstance(target, (dramatiq.Message, MessageProxy)):
        yield message_id_of(target), _later(target, now)
    elif isinstance(target, dramatiq.pipeline):
        waited = grace = 0
        for stage in target.messages:
            waited += _later(stage, now)
            yield message_id_of(stage), waited + grace
            grace = max(grace, grace_of(stage.actor_name))
    elif isinstance(target, dramatiq.group):
        for child in target.children:
            yield from _walk(child, grace_of, now, depth + 1)
    elif isinstance(target, str):
        yield check_message_id(target), 0
    elif isinstance(target, Iterable) and not isinstance(target, bytes):
        for item in target:
            if is_many(item) and not isinstance(item, (dramatiq.group, dramatiq.pipeline)):
                msg = (
                    "an iterable of targets may hold ids, messages, groups and pipelines, "
                    f"not {item!r}"
                )
                raise TypeError(msg)
            yield from _walk(item, grace_of, now, depth + 1)
    else:
        msg = (
            f"expected a message id, a dramatiq Message, a group, a pipeline, or an "
            f"iterable of them, not {target!r}"
        )
        raise TypeError(msg)


def _later(message: Any, now: float) -> int:
    """Milliseconds from now until ``message`` may start, as far as it says."""
    options = message.options
    eta = options.get("eta")
    if _finite(eta):
        return min(MAX_MS, max(0, round(float(eta) - now)))
    delay = options.get("delay")
    if _finite(delay) and delay > 0:
        return min(MAX_MS, round(float(delay)))
    return 0


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
