"""How one entity's memory is laid out in Redis: a single string key holding a MessagePack map,
merged and re-encoded in Lua (cmsgpack, in Redis 6.2's Lua too), read back here.

The map, with one-letter keys to stay small (a booking is ~500 bytes, docs/performance.md):

- `g`: [[created, {field: value}], ...]: the fields grouped by the merge that set them, one
  `created` time (epoch seconds) per merge rather than one per field. A field's name is its
  dotted name or a one-byte code of a usual one (`FIELD_NAMES`); its value is its JSON text
  (`value_text`: a plain string bare), opaque to Lua, so `25.0` stays `25.0`;
- `v`: the version, raised when a merge really changed a value;
- `e`: {event type (or its code): event key (`event_text`)}: the latest event of each type
  about a booking;
- `p`, `s`: the agenda's marks (the professional set it is in, the version counted in `rev`).

Data names and bookkeeping live in different maps, so event data never reaches bookkeeping.
Memory written by earlier versions (one hash per entity, a `~field` time beside each field) is
read as it is and converted by the next merge (`load` in `LUA_HELPERS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import msgpack
from redis.client import Pipeline

# The platform's usual field names and event types, each stored as one control character (code
# 1, 2, ...): they are most of a booking's bytes otherwise. APPEND ONLY: a code's meaning is in
# every installed Redis. A one-character name that is a code, or a name starting with NUL, is
# stored with a NUL in front.
FIELD_NAMES = (
    "id", "codigo", "fecha", "hora_inicio", "hora_fin", "servicios", "profesional.id", "profesional.nombre",
    "cliente.id", "cliente.nombre", "cliente.email", "cliente.telefono", "total", "estado", "notas",
    "created_at", "completed_at", "marked_at", "updated_at", "nombre", "email", "telefono", "source",
    "numero", "items", "subtotal", "envio", "tracking_number", "tracking_url", "shipped_at", "delivered_at",
)  # fmt: skip
EVENT_TYPES = (
    "booking.created", "booking.updated", "booking.cancelled", "booking.completed", "booking.no_show",
    "payment.completed", "payment.failed", "payment.refunded", "order.created", "order.shipped",
    "order.delivered", "customer.created", "customer.updated",
)  # fmt: skip


def _codes(names: tuple[str, ...]) -> dict[str, str]:
    assert len(names) < 32, "codes are the control characters 1-31"
    return {name: chr(n) for n, name in enumerate(names, 1)}


_FIELD_CODES, _TYPE_CODES = _codes(FIELD_NAMES), _codes(EVENT_TYPES)
_FIELD_NAMES, _TYPE_NAMES = ({c: n for n, c in codes.items()} for codes in (_FIELD_CODES, _TYPE_CODES))


def _encode(name: str, codes: dict[str, str]) -> str:
    if name in codes:
        return codes[name]
    if name[:1] == "\0" or (len(name) == 1 and name < " "):
        return "\0" + name
    return name


def _decode(stored: str, names: dict[str, str]) -> str:
    if stored in names:
        return names[stored]
    return stored[1:] if stored[:1] == "\0" else stored


def field_pair(name: str, value: Any) -> tuple[str, str]:
    """A flattened field as the merge takes it: its stored name and its stored value."""
    return _encode(name, _FIELD_CODES), value_text(value)


def type_code(event_type: str) -> str:
    """How an event type is stored (in `e`)."""
    return _encode(event_type, _TYPE_CODES)


_JSON_START = frozenset('"[{-0123456789tfnNI')  # how a JSON text can start (NaN, Infinity: Python's)


def value_text(value: Any) -> str:
    """How a field's value is stored: its JSON text (compact), but a string that is not itself
    JSON text is stored bare (`2026-12-14`, `Juan`: two quotes fewer per string field)."""
    if isinstance(value, str) and value and not _is_json(value):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def value_of(text: str) -> Any:
    """The value `value_text` stored: JSON text when it parses, else a bare string."""
    return json.loads(text) if _is_json(text) else text


def _is_json(text: str) -> bool:
    if text[:1] not in _JSON_START:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def event_text(key: str) -> str:
    """How an event key is stored in `e`: without the `e-` nearly every key starts with."""
    return key[2:] if key.startswith("e-") else "\0" + key


def _event_key(stored: str) -> str:
    return stored[1:] if stored[:1] == "\0" else "e-" + stored


def _lua_table(codes: dict[str, str]) -> str:
    return "{" + ", ".join(f'["{name}"] = "\\{ord(code)}"' for name, code in codes.items()) + "}"


# Lua helpers shared by the merge, the note and the agenda index (prepended to each script).
# `load` gives the entity with `m.f` = {stored name: {time, JSON text}}, converting a hash of the
# earlier layout (and deleting it: the caller writes the entity back); `save` packs it, grouping
# the fields by the merge time that set them; `days` is days since 1970-01-01 of a `YYYY-MM-DD`.
LUA_HELPERS = (
    "local FIELDS, TYPES = "
    + _lua_table(_FIELD_CODES)
    + ", "
    + _lua_table(_TYPE_CODES)
    + """
local function code(name, codes)
  if codes[name] then return codes[name] end
  local first = string.byte(name, 1)
  if first == 0 or (#name == 1 and first < 32) then return '\\0' .. name end
  return name
end
local function load(key)
  local kind = redis.call('TYPE', key).ok
  local m = {f = {}, v = 0, e = {}}
  if kind == 'string' then
    local packed = cmsgpack.unpack(redis.call('GET', key))
    for _, group in ipairs(packed.g) do
      for name, value in pairs(group[2]) do m.f[name] = {group[1], value} end
    end
    m.v, m.e, m.p, m.s = packed.v, packed.e, packed.p, packed.s
    return m
  end
  if kind ~= 'hash' then return m end
  local raw, h = redis.call('HGETALL', key), {}
  for i = 1, #raw, 2 do h[raw[i]] = raw[i + 1] end
  for k, v in pairs(h) do
    if k == '~~version' then m.v = tonumber(v)
    elseif k == '~~agenda.pro' then m.p = v
    elseif k == '~~agenda.seen' then m.s = v
    elseif string.sub(k, 1, 5) == '~~ev:' then
      if string.sub(v, 1, 2) == 'e-' then v = string.sub(v, 3) else v = '\\0' .. v end
      m.e[code(string.sub(k, 6), TYPES)] = v
    elseif string.sub(k, 1, 1) ~= '~' then
      local name = k
      if string.sub(k, 1, 1) == '\\\\' then name = string.sub(k, 2) end
      m.f[code(name, FIELDS)] = {tonumber(h['~' .. k] or '0'), v}
    end
  end
  redis.call('DEL', key)
  return m
end
local function pack(m)
  local at, groups = {}, {}
  for name, cur in pairs(m.f) do
    local group = at[cur[1]]
    if not group then group = {cur[1], {}}; at[cur[1]] = group; groups[#groups + 1] = group end
    group[2][name] = cur[2]
  end
  table.sort(groups, function(a, b) return a[1] < b[1] end)
  return cmsgpack.pack({g = groups, v = m.v, e = m.e, p = m.p, s = m.s})
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
  local cur = m.f[code(name, FIELDS)]
  if not cur then return nil end
  local ok, value = pcall(cjson.decode, cur[2])
  if ok then return value end
  return cur[2]  -- a bare string (`value_text`)
end
"""
)

# KEYS: the entity's memory, the key whose lifetime it must at least match (a booking, for its
# customer; else the entity itself). ARGV: the event's `created`, now, seconds kept after the last
# event, seconds kept after the appointment day (0: not a booking kept by its date), the stored
# type and key of the event to note as the latest of its type ('' and '': none), then the (stored
# name, JSON text) pairs as one MessagePack array (redis-py copies its whole buffer for each
# argument after a long one, the script: 40 arguments cost more than the merge itself). Per field:
# take the value when this event is at least as new as the one that set it; the version rises when
# a value really changed. Returns the count of changed values.
MERGE = (
    LUA_HELPERS
    + """
local m = load(KEYS[1])
local ts, now = tonumber(ARGV[1]), tonumber(ARGV[2])
local after_event, after_day = tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[5] ~= '' then m.e[ARGV[5]] = ARGV[6] end
local changed, given = 0, cmsgpack.unpack(ARGV[7])
for i = 1, #given, 2 do
  local cur = m.f[given[i]]
  if (not cur) or cur[1] <= ts then
    if (not cur) or cur[2] ~= given[i + 1] then changed = changed + 1 end
    m.f[given[i]] = {ts, given[i + 1]}
  end
end
if changed > 0 then m.v = m.v + 1 end
local keep = now + after_event
if after_day > 0 then
  local day = days(decoded(m, 'fecha'))
  if day then keep = math.max(keep, (day + 1) * 86400 + after_day) else keep = now + after_day end
end
if KEYS[2] ~= KEYS[1] then
  local left = redis.call('TTL', KEYS[2])
  if left > 0 then keep = math.max(keep, now + left) end
end
redis.call('SET', KEYS[1], pack(m), 'EX', math.max(math.floor(keep - now), 1))
return changed
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
        return unflatten({name: value_of(text) for name, text in self.values.items()})


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
    values, times = {}, []
    for moment, group in m.get("g") or []:
        times.append(moment)
        values.update({_decode(name, _FIELD_NAMES): text for name, text in group.items()})
    events = {_decode(t, _TYPE_NAMES): _event_key(key) for t, key in (m.get("e") or {}).items()}  # {} comes back as []
    marks = {name: str(m[key]) for name, key in (("pro", "p"), ("seen", "s")) if m.get(key) is not None}
    return Remembered(values, int(m.get("v") or 0), events, float(max(times, default=0.0)), marks)


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
