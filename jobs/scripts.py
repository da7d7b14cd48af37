"""The job store's Redis scripts: every multi-key change is one atomic script, so the API and the
workers never race. `jobs.store.JobStore` registers them; each comment says its KEYS and ARGV.
"""

# KEYS: job, events, lease, then one set per JobState in declaration order, then the durations hash, then
# the finished index (sorted set by finish time, which retention reads), then the owner's active set.
# ARGV: job id, {from: to} JSON, now, extra fields JSON, require-no-lease flag, final states JSON, maxlen,
# duration bucket bounds JSON, holder (a worker id, or empty). Reaching a final state adds the run time
# (started, else created, to finished) to the durations histogram in the same step, whichever process
# made the transition.
# A holder fences the step: it is refused ('fenced') when the lease names another worker, or when nobody
# holds it and the job was handed back to the queue, so a worker woken after its lease lapsed cannot end
# a job another worker runs or is about to run. (A lapsed lease on a job still running is no refusal: a
# worker starved of CPU for a lease period still finishes what nobody else took over.)
# A change of state also counts up the job's `notice_seq` (its webhooks' `sequence`), and an 'ok' that
# changed the state returns the whole record as the step left it (the webhook's snapshot, no second read).
# Returns {status, current, target[, record fields]}; status is ok | missing | invalid | leased | fenced.
TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', '', ''} end
local to = cjson.decode(ARGV[2])[cur]
if not to then return {'invalid', cur, ''} end
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return {'leased', cur, to} end
if ARGV[9] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if (holder and holder ~= ARGV[9]) or (not holder and cur == 'queued') then return {'fenced', cur, to} end
end
local fields = cjson.decode(ARGV[4])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
if to == cur then return {'ok', cur, to} end
local states = {'queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled'}
for i, s in ipairs(states) do
  if s == cur then redis.call('SREM', KEYS[3 + i], ARGV[1]) end
  if s == to then redis.call('SADD', KEYS[3 + i], ARGV[1]) end
end
redis.call('HSET', KEYS[1], 'state', to)
redis.call('HINCRBY', KEYS[1], 'notice_seq', 1)
if to == 'running' and redis.call('HEXISTS', KEYS[1], 'started_at') == 0 then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
end
local is_final = false
for _, s in ipairs(cjson.decode(ARGV[6])) do if s == to then is_final = true end end
if is_final then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
  redis.call('ZADD', KEYS[11], ARGV[3], ARGV[1])
  redis.call('SREM', KEYS[12], ARGV[1])
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
return {'ok', cur, to, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: the due set. ARGV: delivery id, cutoff, now. Of several webhooks workers sweeping at once, only
# the one that moves a due entry still older than the cutoff to `now` sends it again.
RESTAMP_DUE_LUA = """
local due = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '')
if not due or due >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: job. A notice that is no change of state (progress, a train job's range test done) takes the next
# `notice_seq` and a snapshot of the record in one step; nil when the job is gone (never recreated).
NEXT_NOTICE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
redis.call('HINCRBY', KEYS[1], 'notice_seq', 1)
return redis.call('HGETALL', KEYS[1])
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

# KEYS: lease, job. ARGV: worker id, lease ms, seconds run since the last renewal. The job's run time
# (`run_seconds`) grows with each renewal, so the time limit counts across deliveries.
RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if tonumber(ARGV[3]) > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[2], 'run_seconds', ARGV[3])
  end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
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

# KEYS: lease, job. ARGV: holder (or empty: unfenced), field, value. Fenced like TRANSITION_LUA: refused
# when the lease names another worker, or nobody holds it and the job is back in the queue; also once the
# job is final (a worker registers its files before its final transition, so a late one is a superseded
# worker's, woken after the job's new holder finished and let go).
ADD_ARTIFACT_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if ARGV[1] ~= '' then
  local holder = redis.call('GET', KEYS[1])
  if holder and holder ~= ARGV[1] then return 0 end
  local state = redis.call('HGET', KEYS[2], 'state')
  if not holder and (state == 'queued' or state == 'succeeded' or state == 'failed' or state == 'cancelled') then
    return 0
  end
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
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

# KEYS: idempotency hash. ARGV: body hash, in-flight ttl. 'created' (with the job id): the first request
# stored its job (`JobRecords.create` records the id in the same transaction) but never answered, e.g.
# the API died before sending or answering; the caller answers from the job record.
IDEM_BEGIN_LUA = """
local h = redis.call('HMGET', KEYS[1], 'body_hash', 'status', 'response', 'job_id')
if not h[1] then
  redis.call('HSET', KEYS[1], 'body_hash', ARGV[1], 'status', 'in_flight')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return {'new', ''}
end
if h[1] ~= ARGV[1] then return {'mismatch', ''} end
if h[2] == 'in_flight' and h[4] then return {'created', h[4]} end
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

# KEYS: job, events, lease, owner index, owner-kind index, finished index, then every state set. ARGV: job id, final
# states JSON. Deletes only a finished job whose worker has let go (released its lease): nothing that
# may still write to it. 'ok' returns the record as it was (the `deleted` webhook's snapshot).
DELETE_LUA = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'missing', ''} end
local finished = false
for _, s in ipairs(cjson.decode(ARGV[2])) do if s == state then finished = true end end
if not finished then return {'active', state} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'leased', state} end
local record = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
for i = 7, #KEYS do redis.call('SREM', KEYS[i], ARGV[1]) end
return {'ok', state, record}
"""

# Fair turns across keys (`jobs.turns`). KEYS: the owner's waiting list, the queue's ring of owners.
# ARGV: job id, owner. Called inside `JobRecords.create`'s MULTI, so a stored job always waits its turn.
TURN_PUSH_LUA = """
redis.call('RPUSH', KEYS[1], ARGV[1])
if not redis.call('LPOS', KEYS[2], ARGV[2]) then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
"""

# KEYS: the queue's ring of owners, the Celery queue (a kombu list), the workers' last-seen sorted set.
# ARGV: key prefix, queue, now, seconds a worker counts as live, running cap per key (0: none), every
# queue name JSON. Moves one job per owner in turn, round the ring, while the Celery queue holds fewer
# messages than live workers consume that queue (at least one), so the queue never holds more than the
# next turns and one key's hundreds of jobs wait in its own list. Each moved job is stamped `sent_at`
# (the stale sweep re-sends it if the caller dies before sending). Ids no longer queued (cancelled)
# are dropped. An owner with `cap` jobs dispatched and not finished keeps its place and waits. The
# per-owner and per-job keys are built here from the prefix (one Redis, no cluster), like kombu's.
# Returns the ids to send, in order.
TURN_DISPATCH_LUA = """
local p, queue, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local cap = tonumber(ARGV[5])
local slots = 0
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now - tonumber(ARGV[4]), '+inf')) do
  if redis.call('HGET', p .. ':worker:' .. w, 'queue') == queue then slots = slots + 1 end
end
if slots < 1 then slots = 1 end
local out = {}
local waiting = redis.call('LLEN', KEYS[2])
local passed = 0
while waiting + #out < slots do
  local n = redis.call('LLEN', KEYS[1])
  if n == 0 or passed >= n then break end
  local owner = redis.call('LPOP', KEYS[1])
  local list = p .. ':waiting:' .. queue .. ':' .. owner
  local capped = false
  if cap > 0 then
    local dispatched = redis.call('SCARD', p .. ':active:' .. owner)
    for _, q in ipairs(cjson.decode(ARGV[6])) do
      dispatched = dispatched - redis.call('LLEN', p .. ':waiting:' .. q .. ':' .. owner)
    end
    capped = dispatched >= cap
  end
  if capped then
    redis.call('RPUSH', KEYS[1], owner)
    passed = passed + 1
  else
    local id = redis.call('LPOP', list)
    while id and redis.call('HGET', p .. ':job:' .. id, 'state') ~= 'queued' do id = redis.call('LPOP', list) end
    if id then
      redis.call('HSET', p .. ':job:' .. id, 'sent_at', ARGV[3])
      out[#out + 1] = id
      passed = 0
    end
    if redis.call('LLEN', list) > 0 then redis.call('RPUSH', KEYS[1], owner) end
  end
end
return out
"""
