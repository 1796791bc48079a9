"""The online store in Redis: shared by every service replica and the stream worker.

Layout (prefix ``fraud:`` by default):
- ``{p}h:{entity}:{id}``: the entity's history, a list of ``time|amount|txid`` (time in µs), appended as
  recorded (``RPUSH``: O(1), where a sorted-set insert scans its listpack) and pruned from the head; readers
  sort by time, so a late transaction may sit after later ones.
- ``{p}f:{entity}:{id}``: its known frauds, a sorted set of ``txid|label_time_us`` scored by tx time.
- ``{p}v:{entity}:{id}``: the history's version, "epoch count": the batch script counts the entries it pushes
  since the key was made (epoch: a new token); the per-transaction script deletes the key instead. A client
  holding a copy tagged with the version it read knows whether the copy is exact, or which entries it lacks.
- ``{p}r:{day}:{bucket}``: transaction records, a hash per day of transaction time and bucket of id
  (``record_bucket``): field txid, value "time\\nlabel time\\nfraud key\\n..." (label time '' until a
  label). A field is written once (idempotent by id; a re-delivery carries its transaction's time, so it
  meets its record on the same day), and the key expires ``tx_ttl_s`` after its last write. A label looks
  its transaction up on its own day minus the label delay the features assume, then day by day back to
  the last day whose frauds can still reach a feature; a label
  dated before its own transaction does not find it (the warehouse rejects such labels too: dbt's
  ``assert_label_after_transaction``), where the in-process store would apply it.

Records are hash fields rather than a key each so that a batch records its transactions with one ``HMGET``
and one ``HSET`` per (day, bucket): ``SET NX EX`` per transaction cost ~5.7 µs of Redis' time each on the
project's VM, more than the rest of a transaction's work. For the same reason the batch script builds its
keys from the prefix instead of declaring them: a declared key cost ~1.1 µs (measured, Redis 7.0). This
store therefore needs a single Redis (no cluster), 6.2 or newer.
"""

from __future__ import annotations

import itertools
import threading
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from hiredis import pack_command  # redis[hiredis]: the C packer redis-py uses, called directly

from ml.features.batch import BatchColumns, EntityColumns, TxColumns, states_of
from ml.features.online import EntityState, TxEvent, to_us
from ml.features.spec import RISK_DELAY
from streaming.history_buffer import HistoryBuffer
from streaming.online_store import SEP, Label, OnlineStore, StoreUnavailable

RECORD_BUCKETS = 16  # record hashes per day: keeps each hash small on a busy day
_DAY_US = 86_400_000_000
_LABEL_DELAY_US = to_us(RISK_DELAY)  # where a label first looks for its transaction's record


def record_bucket(txid: str) -> int:
    """The record hash of a transaction id within its day (the same in every process: crc32, not hash())."""
    return zlib.crc32(txid.encode()) & (RECORD_BUCKETS - 1)


_HELPERS = """
local function record(key, txid, value, ttl)
  local isnew = redis.call('HSETNX', key, txid, value)
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
  return isnew
end
local function push(cmd, key, list, first, last)  -- RPUSH-like commands, in runs that fit Lua's stack
  for s = first, last, 4000 do redis.call(cmd, key, unpack(list, s, math.min(s + 3999, last))) end
end
-- Entries with time < bound leave the history's head (a late entry behind a newer one goes with it), and
-- known frauds with tx time < bound leave the fraud set.
local function prune(hk, fk, bound)
  local b = tonumber(bound)
  while true do
    local heads = redis.call('LRANGE', hk, 0, 15)
    local k = 0
    for _, e in ipairs(heads) do
      if tonumber(string.match(e, '^(-?%d+)')) < b then k = k + 1 else break end
    end
    if k > 0 then redis.call('LPOP', hk, k) end
    if k < 16 then break end
  end
  if fk ~= '' then redis.call('ZREMRANGEBYSCORE', fk, '-inf', '(' .. bound) end
end
"""

# One call per transaction: record it once, prune by event time, read the state. The history comes back
# whole (the caller cuts the window), the frauds as the window; each as one string joined by SEP: a client
# parses one string, not hundreds of elements.
# KEYS: record key, then per entity: history key, fraud key, version key.  ARGV: txid, t_us, ttl_s, write,
# read, record value, then per entity: member, lower bound (entries older go; the window starts there).
_APPLY_LUA = _HELPERS + """
local t = ARGV[2]
local isnew = 0
if ARGV[4] == '1' then isnew = record(KEYS[1], ARGV[1], ARGV[6], tonumber(ARGV[3])) end
local out = {isnew}
local n = (#KEYS - 1) / 3
for i = 1, n do
  local hk, fk = KEYS[3 * i - 1], KEYS[3 * i]
  local member, lo = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  if isnew == 1 then
    redis.call('RPUSH', hk, member)
    prune(hk, fk, lo)
    redis.call('DEL', KEYS[3 * i + 1])
  end
  if ARGV[5] == '1' then
    out[#out + 1] = table.concat(redis.call('LRANGE', hk, 0, -1), '\\31')
    out[#out + 1] = table.concat(redis.call('ZRANGEBYSCORE', fk, lo, t, 'WITHSCORES'), '\\31')
  end
end
return out
"""

# A batch in one call (transactions in time order). First the records, one HMGET and (if any is new) one HSET
# per record hash; then per entity the batch touches: its version after the call, its whole history unless
# the caller's copy can be brought up to date ("+" and the entries other callers pushed since the copy's
# version, often none: the caller adds them, then the call's own records), its fraud set (small, and
# changed by every label, so never cached), then the pruning the caller asks for (it knows from its copy
# whether anything is old enough; without a current copy it always asks). Pruning takes entries from the
# head only, so the entries pushed after a version are the list's tail while the list is at least that long.
# ARGV: prefix, ttl_s, new epoch token, number of record hashes g; per hash: key suffix, count c, the c
# (id, record) pairs; then the number of entities; per entity: history key, version key, fraud
# key ('' unless its frauds are read), version of the caller's copy ('' if none) and that version plus the
# c pushed, prune bound ('' for none), count c, its c members (new transactions only, so nothing if the call
# only reads). Keys and versions come whole from the caller: building a string in Lua cost ~1.7 µs (Redis
# 7.0 on the project's VM), more than passing it.
# Returns: the new-record flags ("0"/"1" per transaction, in the order of the hashes' ids), then per entity:
# "+" and what the copy misses, or the whole history and its version; then its frauds if they are read.
_COLUMNS_LUA = _HELPERS + """
local p, ttl, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local flags, old = {}, nil
local a = 5
for _ = 1, tonumber(ARGV[4]) do
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
  else  -- re-deliveries: only the new ones are recorded, and their members alone are pushed below
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
local out = {table.concat(flags)}
-- Where each entity's arguments start, and every version in one MGET (the new ones go in one MSET).
local at, vkeys = {}, {}
for _ = 1, tonumber(ARGV[a]) do
  a = a + 1
  at[#at + 1] = a
  vkeys[#vkeys + 1] = ARGV[a + 1]
  a = a + 6 + tonumber(ARGV[a + 6])
end
local olds, sets = {}, {}
for s = 1, #vkeys, 4000 do
  local got = redis.call('MGET', unpack(vkeys, s, math.min(s + 3999, #vkeys)))
  for j = 1, #got do olds[s + j - 1] = got[j] end
end
for u, b in ipairs(at) do
  local hk, vk, fk, cached, nextv = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local bound, c, mem = ARGV[b + 5], tonumber(ARGV[b + 6]), b + 7
  if cached ~= '' and cached == olds[u] and not old then
    -- The usual case: the caller's copy is current and every member is new. Its version after the push
    -- is the caller's own ``nextv``: no version to parse or format here.
    if c > 0 then
      push('RPUSH', hk, ARGV, mem, mem + c - 1)
      sets[#sets + 1] = vk
      sets[#sets + 1] = nextv
    end
    out[#out + 1] = '+'
  else
    local epoch, count
    if olds[u] then
      local e, k = string.match(olds[u], '^(%S+) (%d+)$')
      epoch, count = e, tonumber(k)
    end
    -- What the caller's copy misses: nothing, the entries pushed after it (the list's tail, read before
    -- this call's pushes), or (nil) too much to tell: the whole history, read after them.
    local missed
    if cached ~= '' and epoch then
      local ce, ck = string.match(cached, '^(%S+) (%d+)$')
      local k = ce == epoch and count - tonumber(ck) or -1
      if k == 0 then
        missed = ''
      elseif k > 0 and k <= redis.call('LLEN', hk) then
        missed = table.concat(redis.call('LRANGE', hk, -k, -1), '\\31')
      end
    end
    local pushed = 0
    if c > 0 and not old then
      push('RPUSH', hk, ARGV, mem, mem + c - 1)
      pushed = c
    elseif c > 0 then  -- members are "time|amount|txid": leave out those of already recorded transactions
      local list = {}
      for j = mem, mem + c - 1 do
        if not old[string.match(ARGV[j], '^[^|]*|[^|]*|(.*)$')] then list[#list + 1] = ARGV[j] end
      end
      if #list > 0 then push('RPUSH', hk, list, 1, #list) end
      pushed = #list
    end
    local version = ''
    if pushed > 0 or (c > 0 and not epoch) then
      if epoch then count = count + pushed else epoch, count = token, redis.call('LLEN', hk) end
      version = epoch .. ' ' .. count
      sets[#sets + 1] = vk
      sets[#sets + 1] = version
    elseif epoch and not missed then
      version = epoch .. ' ' .. count
    end
    -- The caller knows the version of a copy it can bring up to date (its own plus what it is sent and
    -- what it pushed), so only a whole history comes with its version.
    if missed == '' then
      out[#out + 1] = '+'
    elseif missed then
      out[#out + 1] = '+' .. missed
    else
      out[#out + 1] = table.concat(redis.call('LRANGE', hk, 0, -1), '\\31')
      out[#out + 1] = version
    end
  end
  if fk ~= '' then out[#out + 1] = table.concat(redis.call('ZRANGE', fk, 0, -1, 'WITHSCORES'), '\\31') end
  if bound ~= '' then prune(hk, fk, bound) end
end
for s = 1, #sets, 4000 do redis.call('MSET', unpack(sets, s, math.min(s + 3999, #sets))) end
return out
"""

# ARGV: prefix, txid, tx_fraud, label_us, record bucket, the likeliest day, newest day, oldest day. The record
# is looked up on the day of the label minus the label delay the features assume (usually right), then day
# by day from the label's day back. Replaces any earlier label of the transaction.
_LABEL_LUA = """
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
local t, old, keys = string.match(rec, '^([^\\n]*)\\n([^\\n]*)\\n?(.*)$')
for fk in string.gmatch(keys, '[^\\n]+') do
  if old ~= '' then redis.call('ZREM', fk, ARGV[2] .. '|' .. old) end
  if ARGV[3] == '1' then redis.call('ZADD', fk, t, ARGV[2] .. '|' .. ARGV[4]) end
end
local label = ARGV[3] == '1' and ARGV[4] or ''
redis.call('HSET', key, ARGV[2], t .. '\\n' .. label .. (keys ~= '' and ('\\n' .. keys) or ''))
return 1
"""


class _Column:
    """One entity column of a call: its entities in order of first appearance, per transaction its entity's
    position (``codes``), and per entity the call's transactions of it in call (= time) order."""

    def __init__(self, name: str, entity_ids: list[str]):
        self.name = name
        index: dict[str, int] = {}
        self.codes = [index.setdefault(eid, len(index)) for eid in entity_ids]
        self.ids = list(index)
        self.groups: list[list[int]] = [[] for _ in self.ids]
        for k, u in enumerate(self.codes):
            self.groups[u].append(k)


@dataclass
class _Cached:
    version: str  # "epoch count", as the batch script returned it
    history: HistoryBuffer


class RedisStore(OnlineStore):
    """Redis-backed store shared by every replica; one round trip per scoring call (a Lua script).

    ``apply_columns`` keeps a copy of the entities' histories it has read, tagged with their version, and
    gets from Redis only what the copy lacks: nothing, the entries another replica pushed since (the list's
    tail), or, after the per-transaction script or a restart, the whole history. In steady state a batch
    moves its own writes, a few versions, other replicas' new entries and the (small) fraud sets instead
    of every window it reads. The copy holds the ``cache_entities`` most recently used entities
    (FRAUD_REDIS_CACHE_ENTITIES; 0 turns it off).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "fraud:",
                 tx_ttl_s: int | None = None, socket_timeout: float = 0.5, cache_entities: int = 50_000,
                 *args, **kwargs):
        import redis

        super().__init__(*args, **kwargs)
        self.url, self.prefix = url, prefix
        # A label later than every lookback cannot change a feature; by default keep tx records that long.
        self.tx_ttl_s = tx_ttl_s if tx_ttl_s is not None else max(self.lookback_us.values()) // 1_000_000
        # How far back from its own time a label looks for its transaction: a fraud older than every
        # lookback at the label's time can reach no feature of a transaction at or after it.
        self.label_reach_days = -(-max(self.lookback_us.values()) // _DAY_US)
        self._redis_mod = redis
        from streaming.redis_polling import PollingConnection

        self.client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                           socket_connect_timeout=socket_timeout, decode_responses=True,
                                           health_check_interval=5, retry_on_timeout=False,
                                           **({"connection_class": PollingConnection}
                                              if url.startswith("redis://") else {}))
        self._apply = self.client.register_script(_APPLY_LUA)
        self._columns = self.client.register_script(_COLUMNS_LUA)
        self._label = self.client.register_script(_LABEL_LUA)
        self._entity_order = sorted(self.lookback_us)
        # Transactions per call: a script blocks Redis (other replicas, the stream worker) while it runs and
        # its reply must come within socket_timeout, so large batches go in several calls.
        self.max_call_txs = 2500
        self.cache_entities = cache_entities
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._conn = None  # apply_columns' own connection, used under _cache_lock (see _eval)
        self._tokens = itertools.count()
        self._token_base = uuid.uuid4().hex[:16]

    def _key(self, kind: str, entity: str, eid: str) -> str:
        return f"{self.prefix}{kind}:{entity}:{eid}"

    def _call(self, fn):
        try:
            return fn()
        except self._redis_mod.RedisError as exc:  # connection refused, timeout, ...
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc

    def ping(self) -> None:
        self._call(self.client.ping)

    def _eval(self, script, keys: list[str], args: list[str]):
        """EVALSHA on a connection of the store's own (callers hold _cache_lock): the pool's checkout and
        release and the retry wrappers cost about as much as the script of a one-transaction call. The
        connection reconnects by itself on its next command after an error."""
        redis = self._redis_mod
        if self._conn is None:
            self._conn = self.client.connection_pool.make_connection()
        conn = self._conn
        for attempt in (0, 1):
            try:
                # Packed here: redis-py's send_command checks every argument's type in Python first.
                conn.send_packed_command([pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))])
                return conn.read_response()
            except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: load it, once
                if attempt:
                    raise
                self._call(lambda: self.client.script_load(script.script))
            except redis.RedisError as exc:
                conn.disconnect()
                raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc

    def clear(self) -> None:
        def run():
            for batch in _chunks(list(self.client.scan_iter(f"{self.prefix}*", count=1000)), 1000):
                self.client.unlink(*batch)
        with self._cache_lock:
            self._cache.clear()
        self._call(run)

    def _record_key(self, txid: str, t_us: int) -> str:
        return f"{self.prefix}r:{t_us // _DAY_US}:{record_bucket(txid)}"

    def _args(self, tx: TxEvent, write: bool, read: bool) -> tuple[list[str], list[str]]:
        _check_id(tx)
        keys = [self._record_key(tx.transaction_id, tx.t_us)]
        member_args: list[str] = []
        fraud_keys = []
        member = _member(tx)
        for e in self._entity_order:
            eid = tx.entities[e]
            keys += [self._key("h", e, eid), self._key("f", e, eid), self._key("v", e, eid)]
            if e in self.fraud_entities:
                fraud_keys.append(self._key("f", e, eid))
            member_args += [member, str(tx.t_us - self.lookback_us[e])]
        argv = [tx.transaction_id, str(tx.t_us), str(self.tx_ttl_s), "1" if write else "0",
                "1" if read else "0", _record(tx.t_us, fraud_keys)] + member_args
        return keys, argv

    def _label_args(self, lab: Label) -> list[str]:
        day = lab.label_us // _DAY_US
        oldest = day - self.label_reach_days
        guess = min(max((lab.label_us - _LABEL_DELAY_US) // _DAY_US, oldest), day)
        return [self.prefix, lab.transaction_id, str(int(lab.tx_fraud)), str(lab.label_us),
                str(record_bucket(lab.transaction_id)), str(guess), str(day), str(oldest)]

    def process(self, events, write=True, read=True):
        if events and all(isinstance(ev, TxEvent) for ev in events) and (
                not write or all(a.t_us <= b.t_us for a, b in zip(events, events[1:], strict=False))):
            cols = TxColumns.of(events)
            out: list = []
            for i in range(0, len(cols), self.max_call_txs):
                chunk = cols.slice(i, i + self.max_call_txs)
                applied = self.apply_columns(chunk, write=write)
                out += ([states_of(chunk, k, applied) for k in range(len(chunk))] if read
                        else [None] * len(chunk))
            return out

        def run():
            pipe = self.client.pipeline(transaction=False)
            for ev in events:
                if isinstance(ev, Label):
                    self._label(keys=[], args=self._label_args(ev), client=pipe)
                else:
                    keys, argv = self._args(ev, write, read)
                    self._apply(keys=keys, args=argv, client=pipe)
            return pipe.execute() if events else []

        replies = self._call(run)
        return [bool(r) if isinstance(ev, Label) else (self._parse(ev, r) if read else None)
                for ev, r in zip(events, replies, strict=True)]

    def apply_columns(self, txs: Sequence[TxEvent] | TxColumns, write: bool = True) -> BatchColumns:
        txs = TxColumns.of(txs)
        if write and not txs.in_time_order():
            raise ValueError("a batch that records transactions must be in time order")
        with self._cache_lock:
            return self._apply_columns(txs, write)

    def _apply_columns(self, txs: TxColumns, write: bool) -> BatchColumns:
        # Plain Python over lists: a call is usually one to a few transactions (the service's drains), where
        # each numpy call on a tiny array cost more than the loop it replaces; bulk calls lose little.
        prefix, cache, n = self.prefix, self._cache, len(txs)
        ids = txs.ids
        if SEP in "".join(ids):
            raise ValueError(f"a transaction_id contains the control character \\x1f: {ids}")
        t_list = txs.t_us.tolist()
        # What the call records: each id once (a later copy in the same call is a re-delivery of the first).
        recorded = None
        if write and len(set(ids)) < n:
            seen: set[str] = set()
            recorded = [not (tid in seen or seen.add(tid)) for tid in ids]
        args = [prefix, str(self.tx_ttl_s), f"{self._token_base}:{next(self._tokens)}"]
        order = self._record_args(txs, t_list, recorded, args) if write else []
        if not write:
            args.append("0")
        members = ([f"{t}|{a!r}|{tid}" for t, a, tid in zip(t_list, txs.amounts.tolist(), ids, strict=True)]
                   if write else [])  # as _member writes them, without a call per transaction
        # The call's entities, column by column in order of first appearance; per entity its transactions.
        columns: list[_Column] = []
        keys: list[tuple[str, str]] = []
        slots: dict[str, np.ndarray] = {}
        ent_args: list[str] = []
        prunes: list[int | None] = []
        # Per entity: its members in the call, and its copy's version once they are pushed (if it has a copy).
        pushes: list[int] = []
        next_versions: list[str] = []
        for e in self._entity_order:
            column = _Column(e, txs.entities[e])
            slots[e] = np.array(column.codes, np.int64) + len(keys)
            columns.append(column)
            keys += [(e, eid) for eid in column.ids]
            lookback = self.lookback_us[e]
            hp, vp = f"{prefix}h:{e}:", f"{prefix}v:{e}:"
            fp = f"{prefix}f:{e}:" if e in self.fraud_entities else None
            for eid, mine in zip(column.ids, column.groups, strict=True):
                held = cache.get((e, eid))
                bound = None
                if write:  # the entity's latest transaction sets what can go
                    bound = t_list[mine[-1]] - lookback
                    if held is not None and held.history.oldest() >= bound:
                        bound = None  # nothing is old enough, says our copy (a stale copy: Redis keeps more)
                    if recorded is not None:
                        mine = [k for k in mine if recorded[k]]
                else:
                    mine = []
                prunes.append(bound)
                version = next_version = ""
                if held is not None:
                    version = held.version
                    epoch, count = version.split(" ")
                    next_version = f"{epoch} {int(count) + len(mine)}"
                next_versions.append(next_version)
                pushes.append(len(mine))
                ent_args += (hp + eid, vp + eid, fp + eid if fp else "", version, next_version,
                             "" if bound is None else str(bound), str(len(mine)))
                ent_args += [members[k] for k in mine]
        args.append(str(len(keys)))
        reply = self._eval(self._columns, [], args + ent_args)
        new = [False] * n
        for k, flag in zip(order, reply[0], strict=True):
            new[k] = flag == "1"
        entities = self._read_reply(txs, reply, columns, keys, prunes, pushes, next_versions, new)
        return BatchColumns(new=np.array(new, bool), slots=slots, entities=entities)

    def _record_args(self, txs: TxColumns, t_list: list[int], recorded: list[bool] | None, args: list[str]
                     ) -> list[int]:
        """Append the call's records, grouped by record hash, to ``args``; returns the transactions in the
        order the script flags them."""
        ids = txs.ids
        fraud_cols = [(f"{self.prefix}f:{e}:", txs.entities[e]) for e in self._entity_order
                      if e in self.fraud_entities]
        hashes: dict[tuple[int, int], list[int]] = {}
        for k, (tid, t) in enumerate(zip(ids, t_list, strict=True)):
            if recorded is None or recorded[k]:
                hashes.setdefault((t // _DAY_US, record_bucket(tid)), []).append(k)
        args.append(str(len(hashes)))
        order: list[int] = []
        for (day, bucket), ks in hashes.items():
            args += (f"r:{day}:{bucket}", str(len(ks)))
            for k in ks:  # (id, record) pairs
                args += (ids[k], _record(t_list[k], [pre + col[k] for pre, col in fraud_cols]))
            order += ks
        return order

    def _read_reply(self, txs: TxColumns, reply: list, columns: list[_Column], keys: list[tuple[str, str]],
                    prunes: list[int | None], pushes: list[int], next_versions: list[str], new: list[bool]
                    ) -> list[EntityColumns]:
        """Bring the copy up to date from the script's reply; the call's entities as columns."""
        cache = self._cache
        ids_arr = np.empty(len(txs), object)
        ids_arr[:] = txs.ids
        entities: list[EntityColumns] = []
        u, i = 0, 1
        for column in columns:
            reads_frauds = column.name in self.fraud_entities
            # This column's new transactions grouped by entity: entity v's are fresh[s[v]:s[v + 1]].
            fresh: list[int] = []
            s = [0]
            for group in column.groups:
                fresh += [k for k in group if new[k]]
                s.append(len(fresh))
            t_new, a_new, i_new = txs.t_us[fresh], txs.amounts[fresh], ids_arr[fresh]
            for v in range(len(column.ids)):
                key, hist = keys[u], reply[i]
                i += 1
                if hist[:1] == "+":  # our copy, plus what other callers pushed since, then the call's records
                    held = cache[key]
                    buffer = held.history
                    missed = 0
                    if len(hist) > 1:
                        parsed = _parse_history(hist[1:])
                        buffer.extend(*parsed)
                        missed = len(parsed[0])
                    lo, hi = s[v], s[v + 1]
                    if hi > lo:
                        buffer.extend(t_new[lo:hi], a_new[lo:hi], i_new[lo:hi])
                    if not missed and hi - lo == pushes[u]:
                        version = next_versions[u]  # the usual case: what the arguments said
                    else:
                        epoch, count = held.version.split(" ")
                        version = f"{epoch} {int(count) + missed + hi - lo}"
                else:
                    held, buffer, version = None, HistoryBuffer(*_parse_history(hist)), reply[i]
                    i += 1
                if reads_frauds:
                    fraud_times, fraud_labels = _parse_frauds(reply[i])
                    i += 1
                else:
                    fraud_times, fraud_labels = _NO_TIMES, _NO_TIMES
                entities.append(EntityColumns(*buffer.columns(), fraud_times, fraud_labels))  # views
                if version and self.cache_entities > 0:  # keep what Redis holds after the call
                    if prunes[u] is not None:
                        buffer.prune(prunes[u])
                    if held is None:
                        cache[key] = _Cached(version, buffer)
                    else:
                        held.version = version
                    cache.move_to_end(key)
                else:
                    cache.pop(key, None)
                u += 1
        while len(cache) > self.cache_entities:
            cache.popitem(last=False)
        return entities

    def _parse(self, tx: TxEvent, reply: list) -> dict[str, EntityState]:
        """A per-transaction script reply (whole history, fraud window per entity) -> entity states."""
        states = {}
        for i, e in enumerate(self._entity_order):
            times, amounts, ids = _parse_history(reply[1 + 2 * i])
            lo = np.searchsorted(times, tx.t_us - self.lookback_us[e], "left")
            hi = np.searchsorted(times, tx.t_us, "right")
            fraud_times, fraud_labels = _parse_frauds(reply[2 + 2 * i])
            frauds = list(zip(fraud_times.tolist(), fraud_labels.tolist(), strict=True))
            history = (times[lo:hi].tolist(), ids[lo:hi].tolist(), amounts[lo:hi].tolist())
            states[e] = EntityState(columns=history, frauds=frauds)
        return states

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self.client.close()


def _check_id(tx: TxEvent) -> None:
    if SEP in tx.transaction_id:
        raise ValueError(f"transaction_id {tx.transaction_id!r} contains the control character \\x1f")


def _record(t_us: int, fraud_keys: list[str]) -> str:
    """A transaction record: time, label time ('' until a label), the fraud sets a label goes to."""
    return f"{t_us}\n\n" + "\n".join(fraud_keys)


def _member(tx: TxEvent) -> str:
    """A history entry: "time|amount|txid" (the txid last, as it may hold '|')."""
    return f"{tx.t_us}|{tx.amount!r}|{tx.transaction_id}"


def _parse_history(history: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A history list ("member SEP member ...", members as ``_member`` writes them) -> (times, amounts,
    ids) columns sorted by time (arrival order among equal times)."""
    fields = [m.split("|", 2) for m in history.split(SEP)] if history else []
    times = np.array([f[0] for f in fields], dtype=np.int64)
    amounts = np.array([f[1] for f in fields], dtype=np.float64)
    ids = np.empty(len(fields), object)
    ids[:] = [f[2] for f in fields]
    if len(times) > 1 and (times[1:] < times[:-1]).any():  # late transactions were appended
        order = np.argsort(times, kind="stable")
        times, amounts, ids = times[order], amounts[order], ids[order]
    return times, amounts, ids


def _parse_frauds(frauds: str) -> tuple[np.ndarray, np.ndarray]:
    """A fraud set (members "txid|label_us", scored by tx time) -> (tx times, label times)."""
    if not frauds:
        return _NO_TIMES, _NO_TIMES
    parts = frauds.split(SEP)
    return (np.array(parts[1::2], dtype=np.int64),
            np.array([m.rpartition("|")[2] for m in parts[0::2]], dtype=np.int64))


_NO_TIMES = np.empty(0, np.int64)


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]
