"""The agenda index: each tenant's bookings by start time, for the whole salon and per professional.

Kept from entity memory in the step that merges an event into it (`index_on`, queued on the same
pipeline right after the booking's merge, so it always sees the merged, newest fields; the
booking's own marks, which set it is in and the version counted in `rev`, are kept in its memory):

- `sb:agenda:<tenant>:all`: a sorted set of booking ids, scored by start;
- `sb:agenda:<tenant>:pro:<professional id>`: the same, one per professional;
- `sb:agenda:<tenant>:pros`, `sb:agenda:tenants`: the professionals and tenants seen;
- `sb:agenda:<tenant>:rev`: a counter raised whenever a booking of the tenant changes (feeds' ETag).

The score is the start as the salon's wall clock, in seconds since 1970-01-01 00:00 *wall time*
(`fecha` + `hora_inicio`, no zone arithmetic in Lua): ordering and day ranges are exact, and
`wall_score` turns any moment into the same scale. A move changes the score; a new
`profesional.id` moves the booking to the other professional's set; a cancelled or no-show
booking stays, with its status in memory. A booking without date or time is in no set.
Entries whose memory is gone (older than `retention.bookings` after their day) are trimmed at each
write; the sets live as long as the latest booking's memory.
Cost per booking: see docs/performance.md ("Agenda index").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from redis import Redis
from redis.client import Pipeline

from bridge import memory_codec
from bridge.memory_codec import Remembered
from bridge.store import PREFIX, key_part, text
from mappings.templates import EntityView

TENANTS_KEY = f"{PREFIX}agenda:tenants"
OWNERS_KEY = f"{PREFIX}agenda:owners"  # raised when a tenant or professional first enters the index

# KEYS: the booking's memory, the salon's set, the professionals' set, the tenants' set, the
# tenant's revision, the count of new owners (feeds look tokens up again when it rises).
# ARGV: booking id, prefix of professional sets, oldest score kept, tenant. Each set lives at least
# as long as the booking's memory (extended, never shortened: other bookings may be later).
_INDEX = (
    memory_codec.LUA_HELPERS
    + """
local id, prefix, oldest = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local ttl = redis.call('TTL', KEYS[1])
local function keep(key)
  if ttl > 0 and redis.call('TTL', key) < ttl then redis.call('EXPIRE', key, ttl) end
end
local m = load(KEYS[1])
local fecha, hora, pro = decoded(m, 'fecha'), decoded(m, 'hora_inicio'), decoded(m, 'profesional.id')
if type(pro) == 'number' then pro = string.format('%d', pro)
elseif type(pro) ~= 'string' or pro == '' then pro = nil end
local score = nil
local day = days(fecha)
if day and type(hora) == 'string' then
  local hh, mm = string.match(hora, '^(%d%d?):(%d%d)')
  if hh then score = day * 86400 + tonumber(hh) * 3600 + tonumber(mm) * 60 end
end
local old, marks = m.p, false
if old and old ~= pro then redis.call('ZREM', prefix .. old, id) end
if score then
  redis.call('ZADD', KEYS[2], score, id)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)
  keep(KEYS[2])
  if redis.call('SADD', KEYS[4], ARGV[4]) == 1 then redis.call('INCR', KEYS[6]) end
  keep(KEYS[4])
else
  redis.call('ZREM', KEYS[2], id)
end
if score and pro then
  redis.call('ZADD', prefix .. pro, score, id)
  redis.call('ZREMRANGEBYSCORE', prefix .. pro, '-inf', '(' .. oldest)
  keep(prefix .. pro)
  if redis.call('SADD', KEYS[3], pro) == 1 then redis.call('INCR', KEYS[6]) end
  keep(KEYS[3])
  if old ~= pro then m.p, marks = pro, true end
elseif old then
  m.p, marks = nil, true
end
local version = tostring(m.v)
if m.s ~= version then
  m.s, marks = version, true
  local now = redis.call('TIME')
  redis.call('HINCRBY', KEYS[5], 'n', 1)
  redis.call('HSET', KEYS[5], 'at', now[1])
  keep(KEYS[5])
end
if marks then redis.call('SET', KEYS[1], pack(m), 'KEEPTTL') end
return score
"""
)


def _tenant_prefix(tenant: str) -> str:
    return f"{PREFIX}agenda:{key_part(tenant)}:"


def salon_key(tenant: str) -> str:
    return _tenant_prefix(tenant) + "all"


def professional_key(tenant: str, professional: str) -> str:
    return _tenant_prefix(tenant) + "pro:" + professional


def revision_key(tenant: str) -> str:
    return _tenant_prefix(tenant) + "rev"


def memory_key(tenant: str, booking_id: str) -> str:
    """The booking's entity memory key (as bridge.state.EntityMemory.key)."""
    return f"{PREFIX}mem:{key_part(tenant)}:booking:{key_part(booking_id)}"


def wall_score(moment: datetime, zone: ZoneInfo) -> int:
    """A moment on the index's scale: its wall-clock time in `zone`, as if that were UTC."""
    local = moment.astimezone(zone).replace(tzinfo=UTC)
    return int(local.timestamp())


def day_score(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def index_on(pipe: Pipeline, memory_key: str, tenant: str, booking_id: str, window: int, zone: ZoneInfo) -> None:
    """Queue the booking's place in the agenda, computed from its merged memory; bookings that
    started more than `window` seconds ago are trimmed (their memory is gone by then)."""
    oldest = wall_score(datetime.now(UTC), zone) - window
    keys = (
        memory_key,
        salon_key(tenant),
        _tenant_prefix(tenant) + "pros",
        TENANTS_KEY,
        revision_key(tenant),
        OWNERS_KEY,
    )
    # EVAL, not EVALSHA, as for the merge (bridge.state).
    pipe.eval(_INDEX, len(keys), *keys, booking_id, _tenant_prefix(tenant) + "pro:", oldest, tenant)


def booking_ids(redis: Redis, tenant: str, start: int, end: int, professional: str | None = None) -> list[str]:
    """Ids of the bookings starting in [start, end) (index scores), in time order."""
    key = salon_key(tenant) if professional is None else professional_key(tenant, professional)
    return [text(member) for member in redis.zrangebyscore(key, start, f"({end}")]


def load_bookings(redis: Redis, tenant: str, ids: Iterable[str]) -> list[tuple[EntityView, Remembered]]:
    """Each booking's newest state and its memory as read (version, times), skipping expired ones."""
    ids = list(ids)
    pipe = redis.pipeline(transaction=False)
    for booking_id in ids:
        memory_codec.read_on(pipe, memory_key(tenant, booking_id))
    found = []
    for booking_id, raw in zip(ids, pipe.execute(), strict=True):
        remembered = memory_codec.decode(raw)
        if remembered is not None and remembered.values:
            found.append((EntityView(remembered.data(), "booking", booking_id), remembered))
    return found


def agenda(redis: Redis, tenant: str, day: date, professional: str | None, zone: ZoneInfo) -> list[EntityView]:
    """That day's bookings (of one professional, or the whole salon), in time order, newest state.
    `zone` is the salon's: the index is already in its wall-clock time."""
    del zone  # the scores are wall-clock; kept in the signature for callers that think in moments
    start = day_score(day)
    ids = booking_ids(redis, tenant, start, start + 86400, professional)
    return [view for view, _ in load_bookings(redis, tenant, ids)]


def owners_revision(redis: Redis) -> int:
    return int(redis.get(OWNERS_KEY) or 0)


def tenants(redis: Redis) -> list[str]:
    return sorted(text(t) for t in redis.smembers(TENANTS_KEY))


def professionals(redis: Redis, tenant: str) -> list[str]:
    """The professionals that have (had) bookings in the index, numeric ids in number order."""
    found = [text(p) for p in redis.smembers(_tenant_prefix(tenant) + "pros")]
    return sorted(found, key=lambda p: (not p.isdigit(), int(p) if p.isdigit() else 0, p))


def booked_on(redis: Redis, day: date) -> dict[str, list[str]]:
    """Per tenant, the professionals with at least one booking that day (for a daily digest)."""
    start = day_score(day)
    result: dict[str, list[str]] = {}
    for tenant in tenants(redis):
        pipe = redis.pipeline(transaction=False)
        pros = professionals(redis, tenant)
        for pro in pros:
            pipe.zcount(professional_key(tenant, pro), start, f"({start + 86400}")
        busy = [pro for pro, count in zip(pros, pipe.execute(), strict=True) if count]
        if busy or redis.zcount(salon_key(tenant), start, f"({start + 86400}"):
            result[tenant] = busy
    return result


def upcoming_memory_keys(redis: Redis, zone: ZoneInfo, now: datetime | None = None) -> Iterator[str]:
    """The memory keys of every tenant's bookings that start from now on (an hour early: a wall
    time repeated on a DST night), soonest first per tenant: what a config change can re-plan."""
    since = wall_score(now or datetime.now(UTC), zone) - 3600
    for tenant in tenants(redis):
        for booking_id in redis.zrangebyscore(salon_key(tenant), since, "+inf"):
            yield memory_key(tenant, text(booking_id))


def revision(redis: Redis, tenant: str) -> tuple[int, float | None]:
    """The tenant's change counter and when it last rose (epoch seconds), for feeds' caching."""
    raw = redis.hgetall(revision_key(tenant))
    count = int(raw.get(b"n", b"0"))
    at = raw.get(b"at")
    return count, float(at) if at else None


def today_range(zone: ZoneInfo, past_days: int, future_days: int, now: datetime | None = None) -> tuple[int, int]:
    today = (now or datetime.now(UTC)).astimezone(zone).date()
    return day_score(today - timedelta(days=past_days)), day_score(today + timedelta(days=future_days + 1))
