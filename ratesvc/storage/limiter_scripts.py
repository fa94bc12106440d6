"""The Lua scripts of :mod:`.shared_limiter`: every change to a shared window is one of these,
run atomically by Redis on Redis's own clock (``TIME``), so replicas never compare clocks.

A window is one hash (``KEYS[1]``), times in microseconds of Redis's clock:

=========== =================================================================================
``limit``     calls per window (from the configuration, then ``X-Rate-Limit-Limit``)
``remaining`` calls left in this window, every replica's grants taken off
``end``       the latest upstream's window can end: the window rolls then (absent: not known
              yet, probe first)
``soft``      the earliest it can end (absent: no Reset heard): nothing is granted from
              ``soft - margin`` until ``end`` (:mod:`ratesvc.limiter` says why)
``heard``     1 once an answer of this window set ``end`` (until then it is the roll's guess,
              which the first answer replaces; later answers only move it later)
``opened``    1 once a call was granted in this window (its first grant moves ``end`` to a
              window after it, when no answer set ``end``: upstream's window may start then)
``slot``      the pacing slot: no call before it (``min_interval_s``, Cin7 Core)
``probing``   1 until a probe's answer describes the window (start-up, after a 429, after an
              idle stretch past ``soft``)
``probe``     the lease of the probe in flight (0: none); a dead replica's lease runs out
``epoch``     counts windows and 429s: answers to calls of an older epoch are not adopted
``doubt``     until when replicas Redis has not heard from are presumed to spend their local
              shares (after a rejoin, or when Redis lost the members a replica knew it had)
=========== =================================================================================

Acquiring is idempotent: a client that retries a command whose answer was lost (the process's
client retries once) gets the first answer again, kept under ``KEYS[3]`` (one per replica) with
the call's token, rather than a second grant or a probe lease nobody holds.

The waiters of each replica are registered in a sorted set (``KEYS[2]``) as
``"<priority>:<replica>"`` scored by the time the registration lapses: a call is not granted
while another replica has a live registration of a better priority.

The members (``KEYS[4]``): every limiter instance using the window, scored by the time its
entry lapses (``lapse`` after its last heartbeat or acquire), removed ``expiry`` after that (or
when it closes or goes idle: no grant for two windows). ``KEYS[5]`` says the window had members
in the last day (see ``_MEMBERS``). A member whose entry lapsed may be cut off from Redis and
spending its local share, so each acquire holds ``limit // replicas`` calls aside per lapsed
member (``held``); while ``doubt`` lasts, per replica not heard from (``replicas`` less the
live members), since Redis may not know them.

Every script answers the window as it stands after it (BEAT: as it would stand, unstored):
``granted, wait, epoch, probe, counted, paced_from, paced_until, lease, limit, remaining,
ends_in, slot_in, probing, soft, now, held`` (microseconds; ``ends_in`` is -1 while the window
is unknown, ``soft`` Redis's time or 0, ``now`` Redis's time, which a grant carries; ``held``
-1 when the script did not count it).
"""

from __future__ import annotations

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local f = redis.call('HMGET', KEYS[1], 'limit', 'remaining', 'end', 'slot', 'probing', 'probe',
                     'epoch', 'soft', 'heard', 'doubt', 'opened')
local w = {limit = tonumber(f[1]) or tonumber(ARGV[1]), remaining = tonumber(f[2]) or 0,
           ends = tonumber(f[3]), slot = tonumber(f[4]) or 0, probing = f[5] ~= '0',
           probe = tonumber(f[6]) or 0, epoch = tonumber(f[7]) or 0, soft = tonumber(f[8]),
           heard = f[9] == '1', doubt = tonumber(f[10]) or 0, opened = f[11] == '1'}
local window, margin = tonumber(ARGV[2]), tonumber(ARGV[3])
if w.ends and now >= w.ends then  -- the roll (WindowModel.roll says why)
  w.epoch = w.epoch + 1
  w.remaining = w.limit
  w.heard, w.opened = false, false
  if w.soft and w.soft + window - margin > now then
    w.soft, w.ends = w.soft + window, w.ends + window
  else
    if w.soft then  -- idle past where upstream's next window may end: ask where it stands
      w.soft, w.probing = nil, true
    end
    w.ends = now + window + margin
  end
end
local granted, wait, probe, counted, paced_from, paced_until = 0, 0, 0, 0, w.slot, w.slot

local function reply(held)
  return {granted, wait, w.epoch, probe, counted, paced_from, paced_until, w.probe, w.limit,
          w.remaining, w.ends and (w.ends - now) or -1, math.max(0, w.slot - now),
          w.probing and 1 or 0, w.soft or 0, now, held or -1}
end

local function answer(held)
  redis.call('HSET', KEYS[1], 'limit', w.limit, 'remaining', w.remaining, 'slot', w.slot,
             'probing', w.probing and 1 or 0, 'probe', w.probe, 'epoch', w.epoch,
             'heard', w.heard and 1 or 0, 'doubt', w.doubt, 'opened', w.opened and 1 or 0)
  local last = math.max(w.slot, w.probe, now, w.doubt)
  if w.ends then
    redis.call('HSET', KEYS[1], 'end', w.ends)
    last = math.max(last, w.ends)
  else
    redis.call('HDEL', KEYS[1], 'end')
  end
  if w.soft then
    redis.call('HSET', KEYS[1], 'soft', w.soft)
  else
    redis.call('HDEL', KEYS[1], 'soft')
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil((last - now + 2 * window) / 1000) + 1000)
  return reply(held)
end
"""

# How long Redis remembers that a window had members (``KEYS[5]``, refreshed by every join).
KNOWN_S = 86_400

# With KEYS[4] and KEYS[5]: refresh this replica's member entry, and count who may be spending a
# local share. A replica that was a member before (``before``) finding that Redis no longer knows
# the window had members (KEYS[5] gone) means Redis lost its data (a restart): replicas it has
# not heard from may be spending their local shares. A cold start (nobody was ever a member
# here) or a window whose members all left while idle does not doubt.
_MEMBERS = """
local function join(me, lapse, expiry, before)
  if before == '1' and redis.call('EXISTS', KEYS[5]) == 0 then
    w.doubt = math.max(w.doubt, now + expiry)
  end
  redis.call('SET', KEYS[5], '1', 'PX', KNOWN_MS)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('(%d', now - expiry))
  redis.call('ZADD', KEYS[4], now + lapse, me)
  redis.call('PEXPIRE', KEYS[4], math.ceil((lapse + expiry) / 1000) + 1000)
end

local function held(replicas)
  local unheard = math.max(0, replicas - redis.call('ZCOUNT', KEYS[4], now, '+inf'))
  local absent = unheard
  if now >= w.doubt then
    absent = math.min(unheard, redis.call('ZCOUNT', KEYS[4], '-inf', string.format('(%d', now)))
  end
  return absent * math.max(1, math.floor(w.limit / replicas))
end
""".replace("KNOWN_MS", str(KNOWN_S * 1000))

# ARGV: limit, window, margin (the prelude's); replica, priority, wanted, "n0,n1,n2" (the
# replica's waiters by priority), interval, lease, reserve, registration ttl, poll, token;
# member lapse, member expiry, replicas, before (1: this replica was a member before).
ACQUIRE = (
    """
local last = redis.call('GET', KEYS[3])
if last then
  local token, kept = string.match(last, '^([^|]*)|(.*)$')
  if token == ARGV[13] then
    local again = {}
    for n in string.gmatch(kept, '-?%d+') do again[#again + 1] = tonumber(n) end
    return again
  end
end
"""
    + _PRELUDE
    + _MEMBERS
    + """
local me, priority, wanted = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local interval, lease, reserve = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local ttl, poll = tonumber(ARGV[11]), tonumber(ARGV[12])

join(me, tonumber(ARGV[14]), tonumber(ARGV[15]), ARGV[17])
local aside = held(tonumber(ARGV[16]))

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local yielding = false
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local level, owner = string.match(member, '^(%d+):(.*)$')
  if owner ~= me and tonumber(level) < priority then yielding = true end
end

local available = w.remaining - aside
if priority > 0 then available = available - reserve end
if wanted > 0 then
  if yielding then wait = poll end
  if now < w.slot then wait = math.max(wait, w.slot - now) end
  if w.probing and w.probe > now then wait = math.max(wait, math.min(poll, w.probe - now)) end
  if (w.ends or not w.probing) and available <= 0 then
    wait = math.max(wait, (w.ends or now + poll) - now)
  end
  if w.soft and w.ends and now >= w.soft - margin then
    wait = math.max(wait, w.ends - now)  -- a call now may land in upstream's next window
  end
  if wait == 0 then
    granted = math.min(wanted, available)
    if w.probing then
      granted, probe, w.probe = 1, 1, now + lease
    end
    if interval > 0 then
      granted, paced_until = 1, now + interval
      w.slot = paced_until
    end
    if w.ends and granted > 0 then
      counted = 1
      w.remaining = w.remaining - granted
      if not w.heard and not w.opened then  -- its first call may start upstream's window
        w.ends = math.max(w.ends, now + window + margin)
      end
      w.opened = true
    end
  end
end

local level = 0
for n in string.gmatch(ARGV[7], '%d+') do
  local left = tonumber(n)
  if level == priority then left = left - granted end
  if left > 0 then
    redis.call('ZADD', KEYS[2], now + ttl, level .. ':' .. me)
  else
    redis.call('ZREM', KEYS[2], level .. ':' .. me)
  end
  level = level + 1
end
redis.call('PEXPIRE', KEYS[2], math.ceil(ttl / 1000) + 1000)
local reply = answer(aside)
local kept = {}
for i, n in ipairs(reply) do kept[i] = string.format('%d', n) end
redis.call('SET', KEYS[3], ARGV[13] .. '|' .. table.concat(kept, ','), 'PX', 10000)
return reply
"""
)

# ARGV: limit, window, margin; throttled (0/1), the call's epoch, and the answer's headers:
# limit, remaining, reset (-1: absent); the pause after a refusal without a reset; when the
# call was granted (Redis's time; -1: unknown, a call of a replica's local share), the
# Reset's rounding, and 1 when the answer says nothing of the window (a server error without
# rate headers: a probe answered so learned nothing, and the next call probes again).
OBSERVE = (
    _PRELUDE
    + """
local throttled, epoch = ARGV[4] == '1', tonumber(ARGV[5])
local limit, remaining, reset = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local sent, unit, blank = tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12] == '1'
if throttled then
  if limit > 0 then w.limit = limit end
  w.epoch = w.epoch + 1
  w.remaining, w.probing, w.probe, w.heard, w.soft = 0, true, 0, true, nil
  if reset < 0 then
    w.ends = now + tonumber(ARGV[9]) + margin
  else
    w.ends = now + reset + math.max(margin, unit)
    if sent >= 0 then w.soft = sent + reset - unit end
  end
elseif epoch == w.epoch and blank and w.probing then
  w.probe = 0  -- the next call probes again
elseif epoch == w.epoch then
  if limit > 0 and limit ~= w.limit then
    w.remaining = math.max(0, w.remaining + limit - w.limit)
    w.limit = limit
  end
  if remaining >= 0 and (w.probing or remaining < w.remaining) then
    w.remaining = remaining
  end
  if reset >= 0 then
    local latest = now + reset + math.max(margin, unit)
    if w.heard and w.ends then latest = math.max(latest, w.ends) end  -- never earlier
    w.ends, w.heard = latest, true
    if sent >= 0 then
      local earliest = sent + reset - unit
      if not w.soft or w.soft > latest then
        w.soft = earliest  -- the roll's assumption proved wrong: evidence wins
      else
        w.soft = math.max(w.soft, earliest)
      end
    end
  elseif not w.ends then
    w.ends = now + window + margin
    w.remaining = math.max(0, w.limit - 1)
  end
  w.probing, w.probe = false, 0
end
return answer()
"""
)

# ARGV: limit, window, margin; the permit's epoch, counted (0/1), paced_from, paced_until and
# lease: a call granted and never sent gives its window call, its pacing slot (when no grant
# followed) and its probe lease back.
HAND_BACK = (
    _PRELUDE
    + """
local epoch, was_counted = tonumber(ARGV[4]), ARGV[5] == '1'
local from, till, held = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if was_counted and epoch == w.epoch then w.remaining = math.min(w.limit, w.remaining + 1) end
if till > 0 and w.slot == till then w.slot = from end
if held > 0 and w.probe == held then w.probe = 0 end
return answer()
"""
)

# ARGV: limit, window, margin; pause (-1: none); replica, member lapse, member expiry,
# replicas, before. A replica that counted calls on its own while Redis was away rejoins: the
# window no longer knows every call made, so the next call probes (and a 429 it saw meanwhile
# pauses everyone for what is left of the pause); others may still be cut off, spending their
# shares.
REJOIN = (
    _PRELUDE
    + _MEMBERS
    + """
local pause, expiry = tonumber(ARGV[4]), tonumber(ARGV[7])
join(ARGV[5], tonumber(ARGV[6]), expiry, ARGV[9])
w.doubt = math.max(w.doubt, now + expiry)
w.epoch = w.epoch + 1  -- a probe out now answers for the old epoch: another goes
w.probing, w.probe = true, 0
if pause >= 0 then
  w.remaining, w.ends, w.heard, w.soft = 0, now + pause + margin, true, nil
end
return answer(held(tonumber(ARGV[8])))
"""
)

# ARGV: limit, window, margin; replica, member lapse, member expiry, replicas, before: the
# heartbeat. It refreshes the member entry and reads ``held``, and changes nothing else of the
# window (at most ``doubt``): the window as it would stand now is answered but not stored, so
# heartbeats never roll an idle window (each roll without an answer is a guess, and an idle
# stretch must be seen as one by the next call: it probes).
BEAT = (
    _PRELUDE
    + _MEMBERS
    + """
local doubt = w.doubt
join(ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[8])
if w.doubt ~= doubt then  -- only what the join changed: the window is not rolled here
  redis.call('HSET', KEYS[1], 'doubt', w.doubt)
  local keep = math.ceil((w.doubt - now + 2 * window) / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
end
return reply(held(tonumber(ARGV[7])))
"""
)
