"""How one entity's memory is laid out in Redis: a single string key holding a MessagePack map,
merged and re-encoded in Lua (cmsgpack, in Redis 6.2's Lua too), read back here.

The map, with one-letter keys to stay small (a booking is ~500 bytes, docs/performance.md):

- `f`: {dotted field name: [merge index, JSON text]}: each value is the JSON text the event
  carried, opaque to Lua, so `25.0` stays `25.0`; the index points into `t`;
- `t`: the `created` times (epoch seconds) of the merges that still own a field: one per merge,
  not one per field, and those no field refers to any more are dropped;
- `v`: the version, raised when a merge really changed a value;
- `e`: {event type: event key}: the latest event of each type about a booking (bridge.schedules);
- `p`, `s`: the agenda's marks (the professional set it is in, the version counted in `rev`).

Data names and bookkeeping live in different maps, so event data never reaches bookkeeping.
Memory written by earlier versions (one hash per entity, a `~field` time beside each field) is
read as it is and converted by the next merge (`LOAD` below).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgpack
from redis.client import Pipeline

# Lua helpers shared by the merge, the note and the agenda index (prepended to each script).
# `load` gives the entity as the map above, converting a hash of the earlier layout (and deleting
# it: the caller writes the map back); `days` is days since 1970-01-01 of a `YYYY-MM-DD` text.
LUA_HELPERS = """
local function load(key)
  local kind = redis.call('TYPE', key).ok
  if kind == 'string' then return cmsgpack.unpack(redis.call('GET', key)) end
  local m = {f = {}, t = {}, v = 0, e = {}}
  if kind ~= 'hash' then return m end
  local raw, at, times = redis.call('HGETALL', key), {}, {}
  local h = {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  for k, v in pairs(h) do
    if k == '~~version' then m.v = tonumber(v)
    elseif k == '~~agenda.pro' then m.p = v
    elseif k == '~~agenda.seen' then m.s = v
    elseif string.sub(k, 1, 5) == '~~ev:' then m.e[string.sub(k, 6)] = v
    elseif string.sub(k, 1, 1) ~= '~' then
      local ts = tonumber(h['~' .. k] or '0')
      if not at[ts] then times[#times + 1] = ts; at[ts] = #times end
      local name = k
      if string.sub(k, 1, 1) == '\\\\' then name = string.sub(k, 2) end
      m.f[name] = {at[ts], v}
    end
  end
  m.t = times
  redis.call('DEL', key)
  return m
end
local function days(fecha)
  if type(fecha) ~= 'string' then return nil end
  local y, mo, d = string.match(fecha, '^(%d%d%d%d)-(%d%d)-(%d%d)$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  if mo <= 2 then y = y - 1 end  -- days from the civil date (H. Hinnant's algorithm)
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local doy = math.floor((153 * ((mo + 9) % 12) + 2) / 5) + d - 1
  return era * 146097 + yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy - 719468
end
local function decoded(m, name)
  local cur = m.f[name]
  if not cur then return nil end
  local ok, value = pcall(cjson.decode, cur[2])
  if ok then return value end
  return nil
end
"""

# KEYS: the entity's memory, the key whose lifetime it must at least match (a booking, for its
# customer; else the entity itself). ARGV: the event's `created`, now, seconds kept after the last
# event, seconds kept after the appointment day (0: not a booking kept by its date), then
# (name, JSON text) pairs. Per field: take the value when this event is at least as new as the one
# that set it; the version rises when a value really changed. Returns the count of changed values.
MERGE = (
    LUA_HELPERS
    + """
local m = load(KEYS[1])
local ts, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local after_event, after_day = tonumber(ARGV[3]), tonumber(ARGV[4])
local at = nil
for i, t in ipairs(m.t) do if t == ts then at = i end end
if not at then m.t[#m.t + 1] = ts; at = #m.t end
local changed = 0
for i = 5, #ARGV, 2 do
  local cur = m.f[ARGV[i]]
  if (not cur) or m.t[cur[1]] <= ts then
    if (not cur) or cur[2] ~= ARGV[i + 1] then changed = changed + 1 end
    m.f[ARGV[i]] = {at, ARGV[i + 1]}
  end
end
if changed > 0 then m.v = m.v + 1 end
local used, renumber, times = {}, {}, {}
for _, cur in pairs(m.f) do used[cur[1]] = true end
for i, t in ipairs(m.t) do
  if used[i] then times[#times + 1] = t; renumber[i] = #times end
end
for _, cur in pairs(m.f) do cur[1] = renumber[cur[1]] end
m.t = times
local keep = now + after_event
if after_day > 0 then
  local day = days(decoded(m, 'fecha'))
  if day then keep = math.max(keep, (day + 1) * 86400 + after_day) else keep = now + after_day end
end
if KEYS[2] ~= KEYS[1] then
  local left = redis.call('TTL', KEYS[2])
  if left > 0 then keep = math.max(keep, now + left) end
end
redis.call('SET', KEYS[1], cmsgpack.pack(m), 'EX', math.max(math.floor(keep - now), 1))
return changed
"""
)

# The latest event of a type about a booking (ARGV: type, event key). The merge came first in the
# same pipeline, so the entity exists; if it expired meanwhile there is nothing to note it on.
NOTE = (
    LUA_HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local m = load(KEYS[1])
if m.e[ARGV[1]] == ARGV[2] then return 0 end
m.e[ARGV[1]] = ARGV[2]
redis.call('SET', KEYS[1], cmsgpack.pack(m), 'KEEPTTL')
return 1
"""
)

# Either layout as it is: the string, or the earlier hash's field-value list (nil when absent).
_READ = """
if redis.call('TYPE', KEYS[1]).ok == 'hash' then return redis.call('HGETALL', KEYS[1]) end
return redis.call('GET', KEYS[1])
"""


@dataclass(frozen=True)
class Remembered:
    """What memory holds about one entity, decoded."""

    values: dict[str, str]  # dotted field name -> the JSON text of its newest value
    version: int = 0
    events: dict[str, str] = field(default_factory=dict)  # event type -> key of its latest event
    modified: float = 0.0  # the newest `created` that set a field still held
    marks: dict[str, str] = field(default_factory=dict)  # the agenda's (`pro`, `seen`)

    def data(self) -> dict[str, Any]:
        """The nested object the fields were flattened from."""
        return unflatten({name: json.loads(text) for name, text in self.values.items()})


def read_on(pipe: Pipeline, key: str) -> None:
    """Queue reading one entity's memory; `decode` its answer. EVAL, not EVALSHA: a restarted
    Redis that forgot its scripts cannot fail the pipeline with NOSCRIPT."""
    pipe.eval(_READ, 1, key)


def decode(raw: bytes | list[bytes] | None) -> Remembered | None:
    """The answer of `read_on` (None when the entity is not remembered)."""
    if not raw:
        return None
    if isinstance(raw, list):
        return _from_hash(dict(zip(raw[::2], raw[1::2], strict=True)))
    m = msgpack.unpackb(raw, raw=False)
    times = m.get("t") or []
    values = {name: cur[1] for name, cur in (m.get("f") or {}).items()}
    marks = {name: str(m[key]) for name, key in (("pro", "p"), ("seen", "s")) if key in m}
    return Remembered(
        values,
        int(m.get("v") or 0),
        dict(m.get("e") or {}),  # an empty map comes back from Lua as an empty list
        float(max(times, default=0.0)),
        marks,
    )


def _from_hash(raw: dict[bytes, bytes]) -> Remembered:
    """The earlier layout: data fields, a `~<field>` time beside each, `~~` bookkeeping."""
    values, times, events, marks = {}, [], {}, {}
    for key, value in raw.items():
        name, text = key.decode(), value.decode()
        if name.startswith("~~ev:"):
            events[name[5:]] = text
        elif name.startswith("~~agenda."):
            marks[name[9:]] = text
        elif name.startswith("~") and name != "~~version":
            times.append(float(text))
        elif not name.startswith("~"):
            values[name[1:] if name.startswith("\\") else name] = text
    version = int(raw.get(b"~~version", b"0"))
    return Remembered(values, version, events, max(times, default=0.0), marks)


def unflatten(fields: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for dotted, value in sorted(fields.items()):
        node = result
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return result
