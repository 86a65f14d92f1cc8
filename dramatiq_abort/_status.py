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
and ``max`` (numbers), ``set_unless_abort`` (set unless the record's mode
was ``abort`` before this update: a cancel's reason, as ``_merge`` keeps it).  Requests (rank 0)
always apply their fields but never move the state past a worker's, with
one exception: a request re-opens a ``too_late`` record (back to
``requested``), because each request is judged anew (a cancel found too
late for a running message, then an abort of it, must end ``interrupted``,
and ``wait()`` must not return the cancel's verdict for the abort).  A
worker's update of lower rank than the record's is ignored whole.  Values
are strings, whole numbers within 10^14 (ms stamps) or null, which both
rules store exactly (Lua's cjson keeps 14 significant digits).  The rule
exists twice, :func:`apply_update` for in-process backends and
:data:`STATUS_LUA` for Redis; a test checks that both agree.
"""

from __future__ import annotations

from typing import Any

from ._request import KEY_PREFIX, AbortRequest, stored_number
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
_OPS = ("set", "keep", "min", "max", "set_unless_abort")
#: The largest whole number a status field holds exactly in both rules.
_MAX_VALUE = 10**14


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
    is_abort = request.mode.value == "abort"
    changes: dict[str, tuple[str, Any]] = {
        # abort beats cancel, as in the request itself
        "mode": ("set", "abort") if is_abort else ("keep", "cancel"),
    }
    if request.reason is not None:
        changes["reason"] = ("set" if is_abort else "set_unless_abort", request.reason)
    if requested_at is not None:
        changes["requested_at"] = ("min", requested_at)
        changes["expires_at"] = ("max", requested_at + ttl)
    return StatusUpdate(request.message_id, REQUESTED, 0, changes)


def apply_update(record: Any, change: StatusUpdate) -> dict[str, Any] | None:
    """Return ``record`` with ``change`` applied, or ``None`` when it stays as it is."""
    current: dict[str, Any] = dict(record) if isinstance(record, dict) else {}
    rank = current.get("rank")
    rank = rank if isinstance(rank, int) and not isinstance(rank, bool) else -1
    if 0 < change.rank < rank:
        return None
    was_abort = current.get("mode") == "abort"  # before this update: order-free
    for name, (op, value) in change.changes.items():
        old = current.get(name)
        if (
            op == "set"
            or (op == "keep" and old is None)
            or (op == "set_unless_abort" and not was_abort)
            or (op in ("min", "max") and not stored_number(old))
            or (op == "min" and value < old)
            or (op == "max" and value > old)
        ):
            current[name] = value
    reopen = change.rank == 0 and current.get("state") == TOO_LATE
    if reopen:
        current.pop("ended_at", None)
    if change.rank >= rank or reopen:
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
        if op not in _OPS:
            msg = f"status field {name!r} must change by {', '.join(_OPS)}, not {op_value!r}"
            raise ValueError(msg)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if (op in ("min", "max") and not whole) or not (
            value is None or isinstance(value, str) or whole
        ):
            msg = (
                f"status field {name!r} must hold a string, a whole number or None "
                f"(min and max: a whole number), not {op_value!r}"
            )
            raise ValueError(msg)
        if whole and not -_MAX_VALUE < value < _MAX_VALUE:
            msg = f"status field {name!r} must be within 10**14, not {op_value!r}"
            raise ValueError(msg)
    return change


#: :func:`apply_update` for Redis, as a Lua function: ``apply_status(key,
#: change, keep)`` applies ``change`` (JSON: rank, state, changes) to the record
#: at ``key``, which then lives at least ``keep`` ms (a longer life it has is
#: kept).  Returns 1 if it wrote.
STATUS_FUNCTIONS = """
local function status_number(v)
  return type(v) == 'number' and v == v and v > -1e15 and v < 1e15  -- MAX_STAMP
end
local function apply_status(key, change_json, keep)
  local change = cjson.decode(change_json)
  local record = {}
  local raw = redis.pcall('GET', key)
  if type(raw) == 'string' then
    local ok, old = pcall(cjson.decode, raw)
    if ok and type(old) == 'table' then record = old end
  end
  local rank = record.rank
  if type(rank) ~= 'number' or rank ~= math.floor(rank) then rank = -1 end
  if change.rank > 0 and change.rank < rank then return 0 end
  local was_abort = record.mode == 'abort'
  for name, op_value in pairs(change.changes) do
    local op, value, old = op_value[1], op_value[2], record[name]
    if old == cjson.null then old = nil end
    if op == 'set' or (op == 'keep' and old == nil)
        or (op == 'set_unless_abort' and not was_abort)
        or ((op == 'min' or op == 'max') and not status_number(old))
        or (op == 'min' and value < old) or (op == 'max' and value > old) then
      record[name] = value
    end
  end
  local reopen = change.rank == 0 and record.state == 'too_late'
  if reopen then record.ended_at = nil end
  if change.rank >= rank or reopen then
    record.rank = change.rank
    record.state = change.state
  end
  local left = redis.call('PTTL', key)
  if left > keep then keep = left end
  redis.call('SET', key, cjson.encode(record), 'PX', keep)
  return 1
end
"""

#: One update: ``KEYS[1]`` the record's key, ``ARGV[1]`` the update (JSON),
#: ``ARGV[2]`` the least lifetime in ms.
STATUS_LUA = (
    STATUS_FUNCTIONS
    + """
return apply_status(KEYS[1], ARGV[1], tonumber(ARGV[2]))
"""
)
