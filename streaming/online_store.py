"""Online store: per-entity state for the online features (in-process default, or Redis).

State per entity (customer, terminal): its transactions of the last ``max_lookback(entity)`` (time, id,
amount) and, for entities with a fraud-rate feature, its known frauds (tx time, label time). Per
transaction id: its time and entities, so that a later label can find them. Writes are idempotent by
transaction id, so a retried event does not double count.

Redis layout (prefix ``fraud:`` by default): ``{p}h:{entity}:{id}`` list of ``time|amount|txid`` (time in
µs, in arrival order), ``{p}f:{entity}:{id}`` sorted set of ``txid|label_time_us`` scored by tx time,
``{p}v:{entity}:{id}`` the version token of the history set, ``{p}t:{txid}`` string "time, label time, fraud
keys" that expires after ``tx_ttl_s``. Scoring is one Lua call per batch (atomic: several service
replicas can share one Redis). Needs Redis 6.2 or newer (``SET ... GET``).
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from hiredis import pack_command  # redis[hiredis]: the C packer redis-py uses, called directly

from ml.features.batch import EMPTY as EMPTY_COLUMNS
from ml.features.batch import BatchColumns, EntityColumns, states_of
from ml.features.online import FRAUD_ENTITIES, WINDOW_ENTITIES, EntityState, TxEvent, to_us
from streaming.history_buffer import HistoryBuffer


@dataclass(frozen=True)
class Label:
    transaction_id: str
    tx_fraud: int
    label_us: int


SEP = "\x1f"  # joins a window's members and scores in Redis replies; ids must not contain it


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (Redis down): callers decide fail-open or fail-closed."""


class OnlineStore(ABC):
    """Backend interface; ``streaming.online_features.OnlineFeatures`` computes features on top of it."""

    def __init__(self, entities: dict[str, timedelta] | None = None,
                 fraud_entities: frozenset[str] | None = None):
        self.lookback_us = {e: to_us(lb) for e, lb in (entities or WINDOW_ENTITIES).items()}
        self.fraud_entities = FRAUD_ENTITIES if fraud_entities is None else fraud_entities

    @abstractmethod
    def process(self, events: Sequence[TxEvent | Label], write: bool = True, read: bool = True) -> list:
        """Apply events in order; per TxEvent its entity states as of its time (None unless ``read``;
        recorded only if ``write``), per Label True, or False if its transaction is unknown."""

    def apply(self, txs: Sequence[TxEvent], write: bool = True, read: bool = True
              ) -> list[dict[str, EntityState] | None]:
        return self.process(txs, write=write, read=read)

    def put_labels(self, labels: Sequence[Label]) -> list[bool]:
        return self.process(labels)

    @abstractmethod
    def apply_columns(self, txs: Sequence[TxEvent], write: bool = True) -> BatchColumns:
        """Record transactions given in time order (idempotent by id; nothing if not ``write``) and return,
        per entity they touch, its transactions and known frauds as columns after the recording
        (``ml.features.batch``)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve."""

    @abstractmethod
    def clear(self) -> None:
        """Forget all state (tests, replays)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class _Entity:
    history: HistoryBuffer = field(default_factory=HistoryBuffer)
    frauds: dict[str, tuple[int, int]] = field(default_factory=dict)  # txid -> (tx time, label time)


class MemoryStore(OnlineStore):
    """In-process store (the default): exact, fast, but private to one process."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self._entities: dict[tuple[str, str], _Entity] = {}
        self._txs: dict[str, tuple[int, dict[str, str]]] = {}
        self._tx_order: deque[tuple[int, str]] = deque()
        self._latest_us = 0

    def ping(self) -> None:
        return None

    def process(self, events, write=True, read=True):
        out: list = []
        with self._lock:
            for ev in events:
                if isinstance(ev, Label):
                    out.append(self._label(ev))
                    continue
                if write and ev.transaction_id not in self._txs:
                    self._insert(ev)
                out.append(self._read(ev) if read else None)
        return out

    def apply_columns(self, txs: Sequence[TxEvent], write: bool = True) -> BatchColumns:
        with self._lock:
            new = np.zeros(len(txs), bool)
            for k, tx in enumerate(txs):
                if write and tx.transaction_id not in self._txs:
                    self._insert(tx, prune=False)  # pruned after the reads: earlier ones still need it
                    new[k] = True
            index: dict[tuple[str, str], int] = {}
            slots = {e: np.empty(len(txs), np.int64) for e in self.lookback_us}
            for k, tx in enumerate(txs):
                for e in self.lookback_us:
                    slots[e][k] = index.setdefault((e, tx.entities[e]), len(index))
            entities = []
            for key in index:
                ent = self._entities.get(key)
                if ent is None:
                    entities.append(EMPTY_COLUMNS)
                    continue
                times, amounts, ids = ent.history.columns()
                fraud_times, fraud_labels = _fraud_columns(ent.frauds)
                entities.append(EntityColumns(times, amounts, ids, fraud_times, fraud_labels))
            for tx in (tx for k, tx in enumerate(txs) if new[k]):
                self._prune(tx)
        return BatchColumns(new=new, slots=slots, entities=entities)

    def _insert(self, tx: TxEvent, prune: bool = True) -> None:
        self._txs[tx.transaction_id] = (tx.t_us, dict(tx.entities))
        self._tx_order.append((tx.t_us, tx.transaction_id))
        self._latest_us = max(self._latest_us, tx.t_us)
        for e, eid in tx.entities.items():
            if e in self.lookback_us:
                self._entities.setdefault((e, eid), _Entity()).history.add(
                    tx.t_us, tx.amount, tx.transaction_id)
        if prune:
            self._prune(tx)

    def _prune(self, tx: TxEvent) -> None:
        """Forget what no feature can reach any more once ``tx`` is recorded."""
        for e, eid in tx.entities.items():
            ent = self._entities.get((e, eid))
            if ent is None or e not in self.lookback_us:
                continue
            lo = tx.t_us - self.lookback_us[e]
            if ent.history.oldest() < lo:
                ent.history.prune(lo)
                for k in [k for k, (ft, _) in ent.frauds.items() if ft < lo]:
                    del ent.frauds[k]
        # Labels for transactions older than every lookback cannot change a feature: forget them.
        horizon = self._latest_us - max(self.lookback_us.values(), default=0)
        while self._tx_order and self._tx_order[0][0] < horizon:
            _, old = self._tx_order.popleft()
            self._txs.pop(old, None)

    def _read(self, tx: TxEvent) -> dict[str, EntityState]:
        states = {}
        for e, eid in tx.entities.items():
            ent = self._entities.get((e, eid))
            if ent is None or e not in self.lookback_us:
                states[e] = EntityState()
                continue
            lo, hi = tx.t_us - self.lookback_us[e], tx.t_us
            times, amounts, ids = ent.history.columns()
            i, j = np.searchsorted(times, lo, "left"), np.searchsorted(times, hi, "right")
            states[e] = EntityState(columns=(times[i:j].tolist(), ids[i:j].tolist(), amounts[i:j].tolist()),
                                    frauds=[v for v in ent.frauds.values() if lo <= v[0] <= hi])
        return states

    def _label(self, lab: Label) -> bool:
        rec = self._txs.get(lab.transaction_id)
        if rec is None:
            return False
        t_us, ents = rec
        for e in self.fraud_entities:
            if e not in ents:
                continue
            ent = self._entities.setdefault((e, ents[e]), _Entity())
            if lab.tx_fraud == 1:
                ent.frauds[lab.transaction_id] = (t_us, lab.label_us)
            else:
                ent.frauds.pop(lab.transaction_id, None)
        return True


# Transaction records: ``{p}t:{txid}`` string "time\nlabel time\nfraud key\n..." (label time '' until a
# label), set once (SET NX: idempotent by id) with a TTL. Histories: ``{p}h:{entity}:{id}`` lists of
# "time|amount|txid", appended as recorded (RPUSH: O(1), where a sorted-set insert scans its listpack) and
# pruned from the head; readers sort by time, so a late transaction may sit after later ones. Version keys:
# ``{p}v:{entity}:{id}`` "epoch count": the batch script counts the entries it pushes since the key was
# made (epoch: a new token); the per-transaction script deletes the key instead. A client holding a copy
# tagged with the version it read knows whether the copy is exact, or which entries it lacks.
_HELPERS = """
local function record(key, value, ttl)
  if ttl > 0 then return redis.call('SET', key, value, 'NX', 'EX', ttl) and 1 or 0 end
  return redis.call('SET', key, value, 'NX') and 1 or 0
end
local function push(key, list, first, last)
  for s = first, last, 4000 do redis.call('RPUSH', key, unpack(list, s, math.min(s + 3999, last))) end
end
local function push_pairs(cmd, list)  -- MSET-like commands, in runs that fit Lua's stack
  for s = 1, #list, 4000 do redis.call(cmd, unpack(list, s, math.min(s + 3999, #list))) end
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
  redis.call('ZREMRANGEBYSCORE', fk, '-inf', '(' .. bound)
end
"""

# One call per transaction: record it once, prune by event time, read the state. The history comes back
# whole (the caller cuts the window), the frauds as the window; each as one string joined by SEP: a client
# parses one string, not hundreds of elements.
# KEYS: tx key, then per entity: history key, fraud key, version key.  ARGV: txid, t_us, ttl_s, write, read,
# record value, then per entity: member, lower bound (entries older go; the window starts there).
_APPLY_LUA = _HELPERS + """
local t = ARGV[2]
local isnew = 0
if ARGV[4] == '1' then isnew = record(KEYS[1], ARGV[6], tonumber(ARGV[3])) end
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

# A batch in one call (transactions in time order): each new one is recorded as by _APPLY_LUA, then per
# entity the batch touches: its version after the call, its whole history unless the caller's copy can be
# brought up to date ("+" and the entries other callers pushed since the copy's version, often none: the
# caller adds them, then the call's own records), its fraud set (small, and changed by every label, so
# never cached), then the pruning the caller asks for (it knows from its copy whether anything is old
# enough; without a current copy it always asks). Pruning takes entries from the head only, so the
# entries pushed after a version are the list's tail while the list is at least that long.
# KEYS: tx keys (n), then per entity: history key, fraud key, version key.
# ARGV: ttl_s, n, number of entities m, new epoch token, write; per tx: record value; per entity: the
# version of the caller's copy ('' if none), prune bound ('' for none), 1 if its fraud set is read, the
# number c of its members in the call, the c transaction indices (1-based) they belong to, the c members.
# Returns: the new-record flags ("0"/"1" per tx), then per entity: version, history or "+" and what the
# copy misses, frauds.
_COLUMNS_LUA = _HELPERS + """
local ttl, n, m = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local token, write = ARGV[4], ARGV[5] == '1'
local flags, allnew = {}, true
for i = 1, n do
  local isnew = 0
  if write then isnew = record(KEYS[i], ARGV[5 + i], ttl) end
  if isnew == 0 then allnew = false end
  flags[i] = isnew
end
local out = {table.concat(flags)}
-- Every version in one MGET and the new ones in one MSET: a call each per entity was a third of the calls.
local vkeys, olds, sets = {}, {}, {}
for u = 1, m do vkeys[u] = KEYS[n + 3 * u] end
for s = 1, m, 4000 do
  local got = redis.call('MGET', unpack(vkeys, s, math.min(s + 3999, m)))
  for j = 1, #got do olds[s + j - 1] = got[j] end
end
local a = 6 + n
for u = 1, m do
  local hk, fk, vk = KEYS[n + 3 * u - 2], KEYS[n + 3 * u - 1], vkeys[u]
  local cached, bound, readf, c = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local idx, mem = a + 4, a + 4 + c
  a = mem + c
  -- The version: "epoch count", the epoch named when the key was created, count = entries pushed since.
  local before = olds[u]
  local epoch, count
  if before then
    local e, k = string.match(before, '^(%S+) (%d+)$')
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
  if c > 0 and allnew then  -- the usual case: the members are one ARGV range
    push(hk, ARGV, mem, mem + c - 1)
    pushed = c
  elseif c > 0 then  -- re-deliveries in the call: only the new transactions' members
    local list = {}
    for j = 0, c - 1 do
      if flags[tonumber(ARGV[idx + j])] == 1 then list[#list + 1] = ARGV[mem + j] end
    end
    if #list > 0 then push(hk, list, 1, #list) end
    pushed = #list
  end
  if write and (pushed > 0 or not epoch) then
    if epoch then count = count + pushed else epoch, count = token, redis.call('LLEN', hk) end
    sets[#sets + 1] = vk
    sets[#sets + 1] = epoch .. ' ' .. count
  end
  out[#out + 1] = epoch and (epoch .. ' ' .. count) or ''
  if missed then
    out[#out + 1] = '+' .. missed
  else
    out[#out + 1] = table.concat(redis.call('LRANGE', hk, 0, -1), '\\31')
  end
  out[#out + 1] = readf == '1' and table.concat(redis.call('ZRANGE', fk, 0, -1, 'WITHSCORES'), '\\31') or ''
  if bound ~= '' then prune(hk, fk, bound) end
end
push_pairs('MSET', sets)
return out
"""

# KEYS: tx key.  ARGV: txid, tx_fraud, label_us.  Replaces any earlier label of the transaction.
_LABEL_LUA = """
local rec = redis.call('GET', KEYS[1])
if not rec then return 0 end
local t, old, keys = string.match(rec, '^([^\\n]*)\\n([^\\n]*)\\n?(.*)$')
for fk in string.gmatch(keys, '[^\\n]+') do
  if old ~= '' then redis.call('ZREM', fk, ARGV[1] .. '|' .. old) end
  if ARGV[2] == '1' then redis.call('ZADD', fk, t, ARGV[1] .. '|' .. ARGV[3]) end
end
local label = ARGV[2] == '1' and ARGV[3] or ''
redis.call('SET', KEYS[1], t .. '\\n' .. label .. (keys ~= '' and ('\\n' .. keys) or ''), 'KEEPTTL')
return 1
"""


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
    of every window it reads. The copy holds
    the ``cache_entities`` most recently used entities (FRAUD_REDIS_CACHE_ENTITIES; 0 turns it off).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "fraud:",
                 tx_ttl_s: int | None = None, socket_timeout: float = 0.5, cache_entities: int = 50_000,
                 *args, **kwargs):
        import redis

        super().__init__(*args, **kwargs)
        self.url, self.prefix = url, prefix
        # A label later than every lookback cannot change a feature; by default keep tx records that long.
        self.tx_ttl_s = tx_ttl_s if tx_ttl_s is not None else max(self.lookback_us.values()) // 1_000_000
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

    def _args(self, tx: TxEvent, write: bool, read: bool) -> tuple[list[str], list[str]]:
        _check_id(tx)
        keys = [f"{self.prefix}t:{tx.transaction_id}"]
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
                "1" if read else "0", _record(tx, fraud_keys)] + member_args
        return keys, argv

    def process(self, events, write=True, read=True):
        if events and all(isinstance(ev, TxEvent) for ev in events) and (
                not write or all(a.t_us <= b.t_us for a, b in zip(events, events[1:], strict=False))):
            out: list = []
            for chunk in _chunks(list(events), self.max_call_txs):
                out += self._process_many(chunk, write, read)
            return out

        def run():
            pipe = self.client.pipeline(transaction=False)
            for ev in events:
                if isinstance(ev, Label):
                    args = [ev.transaction_id, str(int(ev.tx_fraud)), str(ev.label_us)]
                    self._label(keys=[f"{self.prefix}t:{ev.transaction_id}"], args=args, client=pipe)
                else:
                    keys, argv = self._args(ev, write, read)
                    self._apply(keys=keys, args=argv, client=pipe)
            return pipe.execute() if events else []

        replies = self._call(run)
        return [bool(r) if isinstance(ev, Label) else (self._parse(ev, r) if read else None)
                for ev, r in zip(events, replies, strict=True)]

    def _process_many(self, txs: list[TxEvent], write: bool, read: bool) -> list:
        """Transactions in time order (or read-only) through one _COLUMNS_LUA call, cut per transaction."""
        cols = self.apply_columns(txs, write=write)
        return [states_of(txs, k, cols) for k in range(len(txs))] if read else [None] * len(txs)

    def apply_columns(self, txs: Sequence[TxEvent], write: bool = True) -> BatchColumns:
        with self._cache_lock:
            return self._apply_columns(txs, write)

    def _apply_columns(self, txs: Sequence[TxEvent], write: bool) -> BatchColumns:
        order, lookback, cache, prefix = self._entity_order, self.lookback_us, self._cache, self.prefix
        n = len(txs)
        ids = [tx.transaction_id for tx in txs]
        if SEP in "".join(ids):
            raise ValueError(f"a transaction_id contains the control character \\x1f: {ids}")
        times = [tx.t_us for tx in txs]
        # The call's entities, column by column in order of first appearance.
        index: dict[tuple[str, str], int] = {}  # (entity, id) -> 0-based position in the call
        slots: dict[str, list[int]] = {}
        rows: list[list[int]] = []  # per entity: the call's transactions of it, in order
        for e in order:
            column = slots[e] = []
            for k, tx in enumerate(txs):
                key = (e, tx.entities[e])
                u = index.get(key)
                if u is None:
                    u = index[key] = len(rows)
                    rows.append([k])
                else:
                    rows[u].append(k)
                column.append(u)
        ent_keys: list[str] = []
        for e, eid in index:
            ent_keys += (f"{prefix}h:{e}:{eid}", f"{prefix}f:{e}:{eid}", f"{prefix}v:{e}:{eid}")
        fraud_slots = [slots[e] for e in order if e in self.fraud_entities]
        records = [f"{t}\n\n" + "\n".join([ent_keys[3 * s[k] + 1] for s in fraud_slots])  # as _record
                   for k, t in enumerate(times)]
        members = [_member(tx) for tx in txs] if write else []
        labels = [str(k + 1) for k in range(n)]
        in_order = n < 2 or all(a <= b for a, b in zip(times, times[1:], strict=False))
        ent_args: list[str] = []
        bounds: list[int | None] = []
        for (e, eid), mine in zip(index, rows, strict=True):
            held = cache.get((e, eid))
            bound = None
            if write:  # the entity's latest transaction sets what can go
                bound = (times[mine[-1]] if in_order else max(times[k] for k in mine)) - lookback[e]
                if held is not None and held.history.oldest() >= bound:
                    bound = None  # nothing is old enough, says our copy (a stale copy: Redis keeps more)
            bounds.append(bound)
            if not write:
                mine = []
            ent_args += (held.version if held else "", "" if bound is None else str(bound),
                         "1" if e in self.fraud_entities else "0", str(len(mine)))
            ent_args += [labels[k] for k in mine]
            ent_args += [members[k] for k in mine]
        token = f"{self._token_base}:{next(self._tokens)}"
        argv = [str(self.tx_ttl_s), str(n), str(len(index)), token, "1" if write else "0"]
        keys = [f"{prefix}t:{tid}" for tid in ids]
        reply = self._eval(self._columns, keys + ent_keys, argv + records + ent_args)
        new = np.frombuffer(reply[0].encode(), np.uint8) == ord("1")
        is_new = new.tolist()
        entities = []
        for u, key in enumerate(index):
            version, hist, frauds = reply[1 + 3 * u], reply[2 + 3 * u], reply[3 + 3 * u]
            if hist[:1] == "+":  # our copy, plus what other callers pushed since, then the call's records
                held = cache[key]
                buffer = held.history
                if len(hist) > 1:
                    buffer.extend(*_parse_history(hist[1:]))
                for k in rows[u]:
                    if is_new[k]:
                        tx = txs[k]
                        buffer.add(tx.t_us, tx.amount, tx.transaction_id)
            else:
                held, buffer = None, HistoryBuffer(*_parse_history(hist))
            fraud_times, fraud_labels = _parse_frauds(frauds)
            entities.append(EntityColumns(*buffer.columns(), fraud_times, fraud_labels))  # views
            if version and self.cache_entities > 0:  # keep what Redis holds after the call
                if bounds[u] is not None:
                    buffer.prune(bounds[u])
                if held is None:
                    cache[key] = _Cached(version, buffer)
                else:
                    held.version = version
                cache.move_to_end(key)
            else:
                cache.pop(key, None)
        while len(cache) > self.cache_entities:
            cache.popitem(last=False)
        slot_arrays = {e: np.array(s, np.int64) for e, s in slots.items()}
        return BatchColumns(new=new, slots=slot_arrays, entities=entities)

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


def _member(tx: TxEvent) -> str:
    """A history entry: "time|amount|txid" (the txid last, as it may hold '|')."""
    return f"{tx.t_us}|{tx.amount!r}|{tx.transaction_id}"


def _record(tx: TxEvent, fraud_keys: list[str]) -> str:
    """A transaction record: time, label time ('' until labelled), the fraud sets a label goes to."""
    return f"{tx.t_us}\n\n" + "\n".join(fraud_keys)


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


def _fraud_columns(frauds: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The in-process store's known frauds (txid -> (tx time, label time)) as (tx times, label times)."""
    if not frauds:
        return _NO_TIMES, _NO_TIMES
    pairs = np.array(list(frauds.values()), np.int64)
    return pairs[:, 0], pairs[:, 1]


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def make_store(settings=None, **kwargs) -> OnlineStore:
    """The backend the settings name (``FRAUD_ONLINE_STORE``: memory | redis)."""
    if settings is None:
        from ml.settings import get_settings

        settings = get_settings()
    if settings.online_store == "memory":
        return MemoryStore()
    if settings.online_store == "redis":
        kwargs.setdefault("cache_entities", int(os.environ.get("FRAUD_REDIS_CACHE_ENTITIES", "50000")))
        return RedisStore(settings.redis_url, **kwargs)
    raise ValueError(f"unknown online store {settings.online_store!r} (expected 'memory' or 'redis')")
