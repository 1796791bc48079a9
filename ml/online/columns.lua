-- The batch call (ml/online/redis_store.py, RedisStore: one EVALSHA per call, inside MULTI).
-- ARGV: prefix, ttl_s, number of record hashes g; per hash: key suffix, count c, the c (id, record) pairs;
-- the number of prunes; per prune: history key, ids key, fraud key ('' if none), bound (entries older than
-- it leave); then the number of entities; per entity: history key, ids key, the call's records of it
-- (bytes) and their ids (each followed by SEP).
-- Returns the new-record flags: "0"/"1" per transaction, in the order of the hashes' ids.
local SEP = '\31'
local function push(cmd, key, list, first, last)  -- HSET-like commands, in runs that fit Lua's stack
  for s = first, last, 4000 do redis.call(cmd, key, unpack(list, s, math.min(s + 3999, last))) end
end
-- Entries older than bound leave the history's head (a late entry behind a newer one stays until that one
-- goes), and known frauds older than bound leave the fraud string.
local function prune(hk, ik, fk, bound)
  local h = redis.call('GET', hk) or ''
  local n, k = #h / 16, 0
  while k < n and struct.unpack('<i8', h, 16 * k + 1) < bound do k = k + 1 end
  if k > 0 then
    local ids, pos = redis.call('GET', ik) or '', 0
    for _ = 1, k do pos = string.find(ids, SEP, pos + 1, true) end
    redis.call('SET', hk, string.sub(h, 16 * k + 1))
    redis.call('SET', ik, string.sub(ids, pos + 1))
  end
  local f = fk ~= '' and redis.call('GET', fk)
  if f then
    local keep = {}
    for e in string.gmatch(f, '[^' .. SEP .. ']*' .. SEP) do
      if tonumber(string.match(e, '^(-?%d+)')) >= bound then keep[#keep + 1] = e end
    end
    if #keep == 0 then redis.call('DEL', fk) else redis.call('SET', fk, table.concat(keep)) end
  end
end
local function unrecorded(blob, ids, old)  -- the records and ids of transactions not recorded before
  local b, i, j = {}, {}, 0
  for id in string.gmatch(ids, '([^' .. SEP .. ']*)' .. SEP) do
    if not old[id] then
      b[#b + 1] = string.sub(blob, 16 * j + 1, 16 * j + 16)
      i[#i + 1] = id .. SEP
    end
    j = j + 1
  end
  return table.concat(b), table.concat(i)
end
local p, ttl = ARGV[1], tonumber(ARGV[2])
local flags, old = {}, nil
local a = 4
for _ = 1, tonumber(ARGV[3]) do
  local key, c = p .. ARGV[a], tonumber(ARGV[a + 1])
  local pairs_at = a + 2
  a = pairs_at + 2 * c
  local ids, got, known = {}, {}, 0
  for j = 1, c do ids[j] = ARGV[pairs_at + 2 * j - 2] end
  for s = 0, c - 1, 4000 do
    local part = redis.call('HMGET', key, unpack(ids, s + 1, math.min(s + 4000, c)))
    for j = 1, #part do
      if part[j] then known = known + 1 end
      got[s + j] = part[j]
    end
  end
  if known == 0 then  -- the usual case: every transaction is new, the pairs are one ARGV range
    flags[#flags + 1] = string.rep('1', c)
    push('HSET', key, ARGV, pairs_at, pairs_at + 2 * c - 1)
  else  -- re-deliveries: only the new ones are recorded, and only their entries are appended below
    old = old or {}
    local list = {}
    for j = 1, c do
      if got[j] then
        flags[#flags + 1] = '0'
        old[ids[j]] = true
      else
        flags[#flags + 1] = '1'
        list[#list + 1] = ARGV[pairs_at + 2 * j - 2]
        list[#list + 1] = ARGV[pairs_at + 2 * j - 1]
      end
    end
    if #list > 0 then push('HSET', key, list, 1, #list) end
  end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
for _ = 1, tonumber(ARGV[a]) do
  prune(ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], tonumber(ARGV[a + 4]))
  a = a + 4
end
for _ = 1, tonumber(ARGV[a + 1]) do
  local hk, ik, blob, ids = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  a = a + 4
  if old then blob, ids = unrecorded(blob, ids, old) end
  if blob ~= '' then
    redis.call('APPEND', hk, blob)
    redis.call('APPEND', ik, ids)
  end
end
return table.concat(flags)
