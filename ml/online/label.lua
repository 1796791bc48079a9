-- A label (ml/online/redis_store.py, RedisStore).
-- ARGV: prefix, txid, tx_fraud, label_us, record bucket, the likeliest day, newest day, oldest day. The
-- record is looked up on the day of the label minus the label delay the features assume (usually right),
-- then day by day from the label's day back. Replaces any earlier label of the transaction.
local function find(d)
  local key = ARGV[1] .. 'r:' .. string.format('%d', d) .. ':' .. ARGV[5]
  return key, redis.call('HGET', key, ARGV[2])
end
local guess = tonumber(ARGV[6])
local key, rec = find(guess)
if not rec then
  for d = tonumber(ARGV[7]), tonumber(ARGV[8]), -1 do
    if d ~= guess then
      key, rec = find(d)
      if rec then break end
    end
  end
end
if not rec then return 0 end
local t, old, keys = string.match(rec, '^([^\n]*)\n([^\n]*)\n?(.*)$')
local SEP = '\31'
for fk in string.gmatch(keys, '[^\n]+') do
  local f = redis.call('GET', fk) or ''
  if old ~= '' then  -- the earlier label's entry goes
    local s, e = string.find(SEP .. f, SEP .. t .. '|' .. old .. '|' .. ARGV[2] .. SEP, 1, true)
    if s then f = string.sub(f, 1, s - 1) .. string.sub(f, e) end
  end
  if ARGV[3] == '1' then f = f .. t .. '|' .. ARGV[4] .. '|' .. ARGV[2] .. SEP end
  if f == '' then redis.call('DEL', fk) else redis.call('SET', fk, f) end
end
local label = ARGV[3] == '1' and ARGV[4] or ''
redis.call('HSET', key, ARGV[2], t .. '\n' .. label .. (keys ~= '' and ('\n' .. keys) or ''))
return 1
