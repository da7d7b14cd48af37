"""The job store's Redis scripts: every multi-key change is one atomic script, so the API and the
workers never race. `jobs.store.JobStore` registers them; each comment says its KEYS and ARGV.
"""

# KEYS: job, events, lease, then one set per JobState in declaration order, then the durations hash.
# ARGV: job id, {from: to} JSON, now, extra fields JSON, require-no-lease flag, final states JSON, maxlen,
# duration bucket bounds JSON. Reaching a final state adds the run time (started, else created, to
# finished) to the durations histogram in the same step, whichever process made the transition.
# Returns {status, current, target}; status is ok | missing | invalid | leased.
TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', '', ''} end
local to = cjson.decode(ARGV[2])[cur]
if not to then return {'invalid', cur, ''} end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {'leased', cur, to} end
local fields = cjson.decode(ARGV[4])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
if to == cur then return {'ok', cur, to} end
local states = {'queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled'}
for i, s in ipairs(states) do
  if s == cur then redis.call('SREM', KEYS[3 + i], ARGV[1]) end
  if s == to then redis.call('SADD', KEYS[3 + i], ARGV[1]) end
end
redis.call('HSET', KEYS[1], 'state', to)
if to == 'running' and redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
end
local is_final = false
for _, s in ipairs(cjson.decode(ARGV[6])) do if s == to then is_final = true end end
if is_final then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
  local h = redis.call('HMGET', KEYS[1], 'kind', 'started_at', 'created_at')
  local start = tonumber(h[2] or '') or tonumber(h[3] or '')
  if start then
    local d = math.max(0, tonumber(ARGV[3]) - start)
    local label = (h[1] or '') .. '|' .. to .. '|'
    for i, bound in ipairs(cjson.decode(ARGV[8])) do
      if d <= bound then redis.call('HINCRBY', KEYS[10], label .. 'le' .. i, 1) end
    end
    redis.call('HINCRBY', KEYS[10], label .. 'count', 1)
    redis.call('HINCRBYFLOAT', KEYS[10], label .. 'sum', tostring(d))
  end
end
local data = {state = to, previous = cur, at = tonumber(ARGV[3])}
if fields['error'] then data['error'] = fields['error'] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'event', 'state', 'data', cjson.encode(data))
return {'ok', cur, to}
"""

# KEYS: lease, job. ARGV: worker id, lease ms. A delivery after one that left no clean-release
# marker (its worker was killed, ran out of memory, or hung until the sweeper took the job) is a crash.
CLAIM_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local n = redis.call('HINCRBY', KEYS[2], 'deliveries', 1)
  if n > 1 and redis.call('HGET', KEYS[2], 'released') ~= '1' then
    redis.call('HINCRBY', KEYS[2], 'crashes', 1)
  end
  redis.call('HSET', KEYS[2], 'released', '0')
  return 1
end
return 0
"""

RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# KEYS: lease, job. ARGV: worker id. Only the holder releases, and that marks the delivery clean.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'released', '1') end
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lease, job, events. ARGV: holder, fields JSON, event data, maxlen. Fenced: only the lease holder writes.
PROGRESS_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for k, v in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[2], k, v) end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'event', 'progress', 'data', ARGV[3])
return 1
"""

# KEYS: job, lease. ARGV: now, older-than seconds. Stamps a new send of a queued job nobody holds whose
# last send (or creation) is older than that; of several sweepers only the one that stamps re-sends.
RESTAMP_STALE_LUA = """
local h = redis.call('HMGET', KEYS[1], 'state', 'created_at', 'sent_at')
if h[1] ~= 'queued' or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local last = tonumber(h[3] or '') or tonumber(h[2] or '') or 0
if tonumber(ARGV[1]) - last < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'sent_at', ARGV[1])
return 1
"""

# KEYS: idempotency hash. ARGV: body hash, in-flight ttl.
IDEM_BEGIN_LUA = """
local h = redis.call('HMGET', KEYS[1], 'body_hash', 'status', 'response')
if not h[1] then
  redis.call('HSET', KEYS[1], 'body_hash', ARGV[1], 'status', 'in_flight')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'new', ''}
end
if h[1] ~= ARGV[1] then return {'mismatch', ''} end
if h[2] == 'in_flight' then return {'in_flight', ''} end
return {'replay', h[3]}
"""

IDEM_FINISH_LUA = """
if redis.call('HGET', KEYS[1], 'body_hash') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', 'done', 'response', ARGV[2])
return redis.call('EXPIRE', KEYS[1], ARGV[3])
"""

IDEM_ABORT_LUA = """
local h = redis.call('HMGET', KEYS[1], 'body_hash', 'status')
if h[1] == ARGV[1] and h[2] == 'in_flight' then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: job, events, lease, owner index, owner-kind index, then every state set. ARGV: job id, final
# states JSON. Deletes only a finished job whose worker has let go (released its lease): nothing that
# may still write to it.
DELETE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
local finished = false
for _, s in ipairs(cjson.decode(ARGV[2])) do if s == state then finished = true end end
if not finished then return {'active', state} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'leased', state} end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
for i = 6, #KEYS do redis.call('SREM', KEYS[i], ARGV[1]) end
return {'ok', state}
"""
