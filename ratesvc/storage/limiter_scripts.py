"""The Lua scripts of :mod:`.shared_limiter`: every change to a shared window is one of these,
run atomically by Redis on Redis's own clock (``TIME``), so replicas never compare clocks.

A window is one hash (``KEYS[1]``), times in microseconds of Redis's clock:

=========== =================================================================================
``limit``     calls per window (from the configuration, then ``X-Rate-Limit-Limit``)
``remaining`` calls left in this window, every replica's grants taken off
``end``       when the window ends (absent: not known yet, probe first)
``slot``      the pacing slot: no call before it (``min_interval_s``, Cin7 Core)
``probing``   1 until a probe's answer describes the window (start-up, after a 429)
``probe``     the lease of the probe in flight (0: none); a dead replica's lease runs out
``epoch``     counts windows and 429s: answers to calls of an older epoch are not adopted
=========== =================================================================================

Acquiring is idempotent: a client that retries a command whose answer was lost (the process's
client retries once) gets the first answer again, kept under ``KEYS[3]`` (one per replica) with
the call's token, rather than a second grant or a probe lease nobody holds.

The waiters of each replica are registered in a sorted set (``KEYS[2]``) as
``"<priority>:<replica>"`` scored by the time the registration lapses: a call is not granted
while another replica has a live registration of a better priority.

Every script answers the window as it stands after it: ``granted, wait, epoch, probe, counted,
paced_from, paced_until, lease, limit, remaining, ends_in, slot_in, probing`` (microseconds;
``ends_in`` is -1 while the window is unknown).
"""

from __future__ import annotations

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local f = redis.call('HMGET', KEYS[1], 'limit', 'remaining', 'end', 'slot', 'probing', 'probe',
                     'epoch')
local w = {limit = tonumber(f[1]) or tonumber(ARGV[1]), remaining = tonumber(f[2]) or 0,
           ends = tonumber(f[3]), slot = tonumber(f[4]) or 0, probing = f[5] ~= '0',
           probe = tonumber(f[6]) or 0, epoch = tonumber(f[7]) or 0}
local window, margin = tonumber(ARGV[2]), tonumber(ARGV[3])
if w.ends and now >= w.ends then
  w.epoch = w.epoch + 1
  w.remaining = w.limit
  w.ends = now + window + margin
end
local granted, wait, probe, counted, paced_from, paced_until = 0, 0, 0, 0, w.slot, w.slot

local function answer()
  redis.call('HSET', KEYS[1], 'limit', w.limit, 'remaining', w.remaining, 'slot', w.slot,
             'probing', w.probing and 1 or 0, 'probe', w.probe, 'epoch', w.epoch)
  local last = math.max(w.slot, w.probe, now)
  if w.ends then
    redis.call('HSET', KEYS[1], 'end', w.ends)
    last = math.max(last, w.ends)
  else
    redis.call('HDEL', KEYS[1], 'end')
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil((last - now + 2 * window) / 1000) + 1000)
  return {granted, wait, w.epoch, probe, counted, paced_from, paced_until, w.probe, w.limit,
          w.remaining, w.ends and (w.ends - now) or -1, math.max(0, w.slot - now),
          w.probing and 1 or 0}
end
"""

# ARGV: limit, window, margin (the prelude's); replica, priority, wanted, "n0,n1,n2" (the
# replica's waiters by priority), interval, lease, reserve, registration ttl, poll, token.
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
    + """
local me, priority, wanted = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local interval, lease, reserve = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local ttl, poll = tonumber(ARGV[11]), tonumber(ARGV[12])

redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local yielding = false
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local level, owner = string.match(member, '^(%d+):(.*)$')
  if owner ~= me and tonumber(level) < priority then yielding = true end
end

local available = w.remaining
if priority > 0 then available = available - reserve end
if wanted > 0 then
  if yielding then wait = poll end
  if now < w.slot then wait = math.max(wait, w.slot - now) end
  if w.probing and w.probe > now then wait = math.max(wait, math.min(poll, w.probe - now)) end
  if (w.ends or not w.probing) and available <= 0 then
    wait = math.max(wait, (w.ends or now + poll) - now)
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
    if w.ends then
      counted = 1
      w.remaining = w.remaining - granted
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
local reply = answer()
local kept = {}
for i, n in ipairs(reply) do kept[i] = string.format('%d', n) end
redis.call('SET', KEYS[3], ARGV[13] .. '|' .. table.concat(kept, ','), 'PX', 10000)
return reply
"""
)

# ARGV: limit, window, margin; throttled (0/1), the call's epoch, and the answer's headers:
# limit, remaining, reset (-1: absent); the pause after a refusal without a reset.
OBSERVE = (
    _PRELUDE
    + """
local throttled, epoch = ARGV[4] == '1', tonumber(ARGV[5])
local limit, remaining, reset = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if throttled then
  if limit > 0 then w.limit = limit end
  if reset < 0 then reset = tonumber(ARGV[9]) end
  w.epoch = w.epoch + 1
  w.remaining, w.ends, w.probing, w.probe = 0, now + reset + margin, true, 0
elseif epoch == w.epoch then
  if limit > 0 and limit ~= w.limit then
    w.remaining = math.max(0, w.remaining + limit - w.limit)
    w.limit = limit
  end
  if remaining >= 0 and (w.probing or remaining < w.remaining) then
    w.remaining = remaining
  end
  if reset >= 0 then
    w.ends = now + reset + margin
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

# ARGV: limit, window, margin; pause (-1: none). A replica that counted calls on its own while
# Redis was away rejoins: the window no longer knows every call made, so the next call probes
# (and a 429 it saw meanwhile pauses everyone for what is left of the pause).
REJOIN = (
    _PRELUDE
    + """
local pause = tonumber(ARGV[4])
w.epoch = w.epoch + 1  -- a probe out now answers for the old epoch: another goes
w.probing, w.probe = true, 0
if pause >= 0 then
  w.remaining, w.ends = 0, now + pause + margin
end
return answer()
"""
)
