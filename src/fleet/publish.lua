-- pnsd fleet: append one publish to the log, atomically (see src/fleet/script.rs).
--
-- KEYS[1] P:seq    the fleet's last assigned sequence number (INCR)
-- KEYS[2] P:log    the stream; an entry's id is <seq>-0
-- KEYS[3] P:epoch  the fleet's epoch (12 lowercase hex digits)
-- KEYS[4] P:key:K  optional: the idempotency key of this publish
-- ARGV[1] the epoch the caller believes in
-- ARGV[2] the highest seq the caller has seen in that epoch (a lower P:seq = Redis lost data)
-- ARGV[3] MAXLEN (approximate trim)
-- ARGV[4] dedup window in seconds (used with KEYS[4])
-- ARGV[5] channels, comma separated (channel names never hold a comma)
-- ARGV[6] type as decimal text, or "" for none
-- ARGV[7] data, the publisher's JSON text
--
-- Appends with XADD <head+1>-0 and then INCR P:seq (so a failed XADD writes nothing).
-- Returns {seq, 0} after appending, {seq, 1} for a repeat of a key seen within the window
-- (nothing appended), or an error whose first word is PNSD_NOEPOCH, PNSD_EPOCH <current> or
-- PNSD_ROLLBACK <P:seq>; nothing is written in any error case.
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  return redis.error_reply('PNSD_NOEPOCH the fleet has no epoch')
end
if epoch ~= ARGV[1] then
  return redis.error_reply('PNSD_EPOCH ' .. epoch)
end
local head = tonumber(redis.call('GET', KEYS[1]) or '0')
if head < tonumber(ARGV[2]) then
  return redis.error_reply('PNSD_ROLLBACK ' .. head)
end
if KEYS[4] then
  local first = tonumber(redis.call('GET', KEYS[4]))
  -- A key naming a seq above P:seq outlived a loss of data: its entry is gone, append anew.
  if first and first <= head then
    return {first, 1}
  end
end
-- XADD before INCR: if XADD fails (an id at or below the stream's top, which only a log and
-- counter out of step can cause) the script stops before anything is written.
local seq = head + 1
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if ARGV[6] == '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0',
    'c', ARGV[5], 'm', ms, 'd', ARGV[7])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0',
    'c', ARGV[5], 'm', ms, 't', ARGV[6], 'd', ARGV[7])
end
redis.call('INCR', KEYS[1])
if KEYS[4] then
  redis.call('SET', KEYS[4], seq, 'EX', ARGV[4])
end
return {seq, 0}
