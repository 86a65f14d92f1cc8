"""How the status of an abort is stored: records, updates, and the rule that applies them.

A backend that stores statuses keeps one record per message (a JSON
object) and applies :class:`~dramatiq_abort.events.StatusUpdate` objects to
it.  Each update has a *rank*; the record's state only moves to an equal or
higher rank, so a late or repeated write never undoes a later one:

=====  ===============  =====================================================
rank   state            written by
=====  ===============  =====================================================
0      ``requested``    ``notify`` of the request (by the backend itself)
1      ``received``     the worker running the message, when the request lands
2      ``too_late``     the worker: a cancel of a running message, or a
                        request for a message that had finished
3      ``skipped``      the worker that skipped the message
3      ``interrupted``  the worker, when the message ended after the request
=====  ===============  =====================================================

``expired`` is never stored: a ``requested`` record read after its
``expires_at`` means no worker saw the request in time.

Fields change by operation: ``set``, ``keep`` (set when absent), ``min``
and ``max`` (numbers).  Requests (rank 0) always apply their fields but
never move the state past a worker's; a worker's update of lower rank than
the record's is ignored whole.  The rule exists twice, :func:`apply_update`
for in-process backends and :data:`STATUS_LUA` for Redis; a test checks
that both agree.
"""

from __future__ import annotations

import math
from typing import Any

from ._request import KEY_PREFIX, MAX_STAMP, AbortRequest
from .events import Event, StatusUpdate

REQUESTED, RECEIVED, TOO_LATE, SKIPPED, INTERRUPTED = (
    "requested",
    "received",
    "too_late",
    "skipped",
    "interrupted",
)
#: The rank of each stored state.
RANKS = {REQUESTED: 0, RECEIVED: 1, TOO_LATE: 2, SKIPPED: 3, INTERRUPTED: 3}
#: Event keys of stored statuses are this prefix followed by the message id.
STATUS_PREFIX = "status:"
_OPS = ("set", "keep", "min", "max")


def status_key(message_id: str) -> str:
    """Return the key of ``message_id``'s status record (under the backend's namespace)."""
    return STATUS_PREFIX + message_id


def update(state: str, message_id: str, **fields: Any) -> StatusUpdate:
    """A worker's update: move to ``state`` and set ``fields`` (``None`` values left out)."""
    changes = {name: ("set", value) for name, value in fields.items() if value is not None}
    return StatusUpdate(message_id, state, RANKS[state], changes)


def request_update(event: Event, ttl: int) -> StatusUpdate | None:
    """The update ``notify`` makes for an abort request event, ``None`` for any other event."""
    if not event.key.startswith(KEY_PREFIX):
        return None
    request = AbortRequest.from_event(event)
    if request is None:
        return None
    requested_at = round(request.requested_at) if request.requested_at is not None else None
    changes: dict[str, tuple[str, Any]] = {
        # abort beats cancel, as in the request itself
        "mode": ("set", "abort") if request.mode.value == "abort" else ("keep", "cancel"),
    }
    if request.reason is not None:
        changes["reason"] = ("set", request.reason)
    if requested_at is not None:
        changes["requested_at"] = ("min", requested_at)
        changes["expires_at"] = ("max", requested_at + ttl)
    return StatusUpdate(request.message_id, REQUESTED, 0, changes)


def _number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and -MAX_STAMP < value < MAX_STAMP
    )


def apply_update(record: Any, change: StatusUpdate) -> dict[str, Any] | None:
    """Return ``record`` with ``change`` applied, or ``None`` when it stays as it is."""
    current: dict[str, Any] = dict(record) if isinstance(record, dict) else {}
    rank = current.get("rank")
    rank = rank if isinstance(rank, int) and not isinstance(rank, bool) else -1
    if 0 < change.rank < rank:
        return None
    for name, (op, value) in change.changes.items():
        old = current.get(name)
        if (
            op == "set"
            or (op == "keep" and old is None)
            or (op in ("min", "max") and not _number(old))
            or (op == "min" and value < old)
            or (op == "max" and value > old)
        ):
            current[name] = value
    if change.rank >= rank:
        current["rank"] = change.rank
        current["state"] = change.state
    return current


def check_update(change: Any) -> StatusUpdate:
    """Return ``change`` if it is a :class:`StatusUpdate` both rules can apply."""
    if not isinstance(change, StatusUpdate):
        msg = f"each status update must be a StatusUpdate, not {change!r}"
        raise TypeError(msg)
    if change.state not in RANKS or RANKS[change.state] != change.rank:
        msg = (
            f"a status update must move to one of {', '.join(RANKS)} with its rank, "
            f"not {change.state!r} at rank {change.rank!r}"
        )
        raise ValueError(msg)
    for name, op_value in change.changes.items():
        op, value = op_value
        if op not in _OPS or (op in ("min", "max") and not _number(value)):
            msg = f"status field {name!r} must change by set, keep, min or max, not {op_value!r}"
            raise ValueError(msg)
    return change


#: :func:`apply_update` for Redis: ``KEYS[1]`` the record's key, ``ARGV[1]`` the
#: update (JSON: rank, state, changes), ``ARGV[2]`` the least lifetime in ms
#: (the record keeps a longer one it already has).  Returns 1 if it wrote.
STATUS_LUA = """
local change = cjson.decode(ARGV[1])
local record = {}
local raw = redis.pcall('GET', KEYS[1])
if type(raw) == 'string' then
  local ok, old = pcall(cjson.decode, raw)
  if ok and type(old) == 'table' then record = old end
end
local rank = record.rank
if type(rank) ~= 'number' or rank ~= math.floor(rank) then rank = -1 end
if change.rank > 0 and change.rank < rank then return 0 end
local function number(v)
  return type(v) == 'number' and v == v and v > -1e15 and v < 1e15  -- MAX_STAMP
end
for name, op_value in pairs(change.changes) do
  local op, value, old = op_value[1], op_value[2], record[name]
  if old == cjson.null then old = nil end
  if op == 'set' or (op == 'keep' and old == nil)
      or ((op == 'min' or op == 'max') and not number(old))
      or (op == 'min' and value < old) or (op == 'max' and value > old) then
    record[name] = value
  end
end
if change.rank >= rank then
  record.rank = change.rank
  record.state = change.state
end
local keep = tonumber(ARGV[2])
local left = redis.call('PTTL', KEYS[1])
if left > keep then keep = left end
redis.call('SET', KEYS[1], cjson.encode(record), 'PX', keep)
return 1
"""
