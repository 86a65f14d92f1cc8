"""How two requests for one message combine: the stronger one wins.

A backend that already holds a request for a message and is told of
another keeps their combination, so a second ``abort()`` can only make
the first stronger, never weaker:

* ``abort`` beats ``cancel`` (a cancel after an abort does not turn a
  running message's abort into a no-op);
* between two aborts the earlier deadline wins: the explicit grace whose
  ``requested_at + abort_timeout`` comes first is kept, and a request that
  left the grace to the actor (``abort_timeout`` null) is kept beside it as
  ``actor_grace_from`` (its stamp), because only the worker knows the
  actor's grace; the worker takes whichever deadline comes first;
* the stored request lives until the later of the two expiries;
* the ``reason`` is the latest one given, except that a cancel after an
  abort changes nothing at all.

Stored values that are not a request of this shape (1.x values without a
stamp count as the oldest; garbage is replaced) are overwritten.  The same
rule exists twice: :func:`merge_params` for in-process backends and
:data:`MERGE_LUA` for Redis, where it runs atomically on the server.  A
property test checks that both agree.
"""

from __future__ import annotations

from typing import Any

from ._request import MAX_MS, stored_number

__all__ = ["MERGE_FUNCTIONS", "MERGE_LUA", "merge_params"]

_MODES = ("abort", "cancel")


def _valid(params: Any) -> bool:
    if not isinstance(params, dict):
        return False
    mode = params.get("mode")
    if not isinstance(mode, str) or mode.lower() not in _MODES:
        return False
    timeout = params.get("abort_timeout", 0)
    if timeout is not None and not (stored_number(timeout) and 0 <= timeout <= MAX_MS):
        return False
    reason = params.get("reason")
    if reason is not None and not isinstance(reason, str):
        return False
    return all(
        params.get(name) is None or stored_number(params[name])
        for name in ("requested_at", "actor_grace_from")
    )


def merge_params(old: Any, new: dict[str, Any]) -> dict[str, Any]:
    """Return the combination of a stored request ``old`` and a new one ``new``."""
    if not isinstance(old, dict) or not _valid(old) or not _valid(new):
        return new
    old_mode, new_mode = old["mode"].lower(), new["mode"].lower()
    if old_mode != new_mode:
        return old if old_mode == "abort" else _with_reason(new, new, old)
    if old_mode == "cancel":
        return _with_reason(old, new, old)
    explicit: list[tuple[float, float, float | None]] = []  # (deadline, timeout, stamp)
    default: list[float | None] = []
    for params in (old, new):
        stamp = params.get("requested_at")
        timeout = params.get("abort_timeout", 0)
        if timeout is None:
            default.append(stamp)
        else:
            explicit.append(((stamp or 0) + timeout, timeout, stamp))
        if params.get("actor_grace_from") is not None:
            default.append(params["actor_grace_from"])
    earliest_default = min(default, key=lambda stamp: stamp or 0) if default else None
    merged: dict[str, Any] = {"mode": "abort"}
    if explicit:
        _, timeout, stamp = min(explicit, key=lambda candidate: candidate[0])
        merged["abort_timeout"] = timeout
        if stamp is not None:
            merged["requested_at"] = stamp
        if default:
            merged["actor_grace_from"] = earliest_default or 0
    else:
        merged["abort_timeout"] = None
        if earliest_default is not None:
            merged["requested_at"] = earliest_default
    return _with_reason(merged, new, old)


def _with_reason(merged: dict[str, Any], *latest_first: dict[str, Any]) -> dict[str, Any]:
    """``merged`` with the first reason found in ``latest_first`` (a copy when it changes)."""
    reason = next((p["reason"] for p in latest_first if p.get("reason") is not None), None)
    if reason == merged.get("reason"):
        return merged
    return {**merged, "reason": reason}


#: The same rule as :func:`merge_params`, for Redis, as Lua functions:
#: ``store_request(key, value, ttl)`` SETs the new request (JSON), combined
#: with one stored, with the later of the two expiries.
MERGE_FUNCTIONS = """
local function merge_number(v)
  return type(v) == 'number' and v == v and v > -1e15 and v < 1e15  -- MAX_STAMP
end
local function valid(p)
  if type(p) ~= 'table' or type(p.mode) ~= 'string' then return false end
  local mode = string.lower(p.mode)
  if mode ~= 'abort' and mode ~= 'cancel' then return false end
  local t = p.abort_timeout
  if t ~= nil and t ~= cjson.null and not (merge_number(t) and t >= 0 and t <= 1e12) then  -- MAX_MS
    return false
  end
  if p.reason ~= nil and p.reason ~= cjson.null and type(p.reason) ~= 'string' then
    return false
  end
  for _, name in ipairs({'requested_at', 'actor_grace_from'}) do
    local v = p[name]
    if v ~= nil and v ~= cjson.null and not merge_number(v) then return false end
  end
  return true
end
local function stamp(v)
  if v == nil or v == cjson.null then return nil end
  return v
end
local function reason(p)
  if type(p.reason) == 'string' then return p.reason end
  return nil
end
local function with_reason(merged, latest, older)
  local r = reason(latest) or (older and reason(older))
  if r ~= reason(merged) then merged.reason = r end
  return merged
end
local function merge(old, new)
  if not valid(old) or not valid(new) then return nil end
  local om, nm = string.lower(old.mode), string.lower(new.mode)
  if om ~= nm then
    if om == 'abort' then return old end
    return with_reason(new, new, old)
  end
  if om == 'cancel' then return with_reason(old, new, old) end
  local best, default = nil, nil
  local has_default = false
  for _, p in ipairs({old, new}) do
    local at = stamp(p.requested_at)
    local t = p.abort_timeout
    if t == cjson.null then
      if not has_default or (at or 0) < (default or 0) then default = at end
      has_default = true
    else
      if t == nil then t = 0 end
      local deadline = (at or 0) + t
      if best == nil or deadline < best[1] then best = {deadline, t, at} end
    end
    local from = stamp(p.actor_grace_from)
    if from ~= nil then
      if not has_default or from < (default or 0) then default = from end
      has_default = true
    end
  end
  local merged = {mode = 'abort'}
  if best ~= nil then
    merged.abort_timeout = best[2]
    merged.requested_at = best[3]
    if has_default then merged.actor_grace_from = default or 0 end
  else
    merged.abort_timeout = cjson.null
    merged.requested_at = default
  end
  return with_reason(merged, new, old)
end
local function store_request(key, value, ttl)
  local raw = redis.pcall('GET', key)
  if type(raw) == 'string' then
    local ok, old = pcall(cjson.decode, raw)
    if ok then
      local merged = merge(old, cjson.decode(value))
      if merged ~= nil then value = cjson.encode(merged) end
    end
  end
  local left = redis.call('PTTL', key)
  if left > ttl then ttl = left end
  redis.call('SET', key, value, 'PX', ttl)
end
"""

#: One request: ``KEYS[1]`` its key, ``ARGV[1]`` the request (JSON), ``ARGV[2]``
#: its TTL in ms.  Then, if ``ARGV[3]`` is not empty, ``ARGV[4]`` is published
#: on channel ``ARGV[3]``.
MERGE_LUA = (
    MERGE_FUNCTIONS
    + """
store_request(KEYS[1], ARGV[1], tonumber(ARGV[2]))
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return 1
"""
)
