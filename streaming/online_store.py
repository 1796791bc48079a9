"""Online store: per-entity state for the online features (in-process default, or Redis).

State per entity (customer, terminal): its transactions of the last ``max_lookback(entity)`` (time, id,
amount) and, for entities with a fraud-rate feature, its known frauds (tx time, label time). Per
transaction id: its time and entities, so that a later label can find them. Writes are idempotent by
transaction id, so a retried event does not double count.

Redis layout (prefix ``fraud:`` by default): ``{p}h:{entity}:{id}`` sorted set of ``txid|amount`` scored by
time (µs), ``{p}f:{entity}:{id}`` sorted set of ``txid|label_time_us`` scored by tx time, ``{p}tx:{txid}``
hash (time, fraud keys, label time) that expires after ``tx_ttl_s``. Each transaction is one Lua call
(atomic: several service replicas can share one Redis), so scoring costs one round trip.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right, insort
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from ml.features.online import FRAUD_ENTITIES, WINDOW_ENTITIES, EntityState, TxEvent, to_us


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
    def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve."""

    @abstractmethod
    def clear(self) -> None:
        """Forget all state (tests, replays)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


@dataclass
class _Entity:
    history: list[tuple[int, str, float]] = field(default_factory=list)
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

    def _insert(self, tx: TxEvent) -> None:
        self._txs[tx.transaction_id] = (tx.t_us, dict(tx.entities))
        self._tx_order.append((tx.t_us, tx.transaction_id))
        self._latest_us = max(self._latest_us, tx.t_us)
        for e, eid in tx.entities.items():
            if e not in self.lookback_us:
                continue
            ent = self._entities.setdefault((e, eid), _Entity())
            insort(ent.history, (tx.t_us, tx.transaction_id, tx.amount))
            lo = tx.t_us - self.lookback_us[e]
            if ent.history[0][0] < lo:  # prune what no feature can reach any more
                del ent.history[:bisect_left(ent.history, (lo,))]
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
            i, j = bisect_left(ent.history, (lo,)), bisect_left(ent.history, (hi + 1,))
            states[e] = EntityState(history=ent.history[i:j],
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


# One call per transaction: record it once (idempotent by id), prune by event time, read the windows.
# Each window comes back as one string (members and scores joined by SEP): a client parses one string
# instead of hundreds of protocol elements, which was most of the cost of a scoring request.
# KEYS: tx key, then per entity: history key, fraud key.  ARGV: txid, t_us, ttl_s, write, read,
# fraud keys ("\n"-joined), then per entity: member, lower bound, prune bound ("(lo").
_APPLY_LUA = """
local t = ARGV[2]
local isnew = 0
if ARGV[4] == '1' then
  isnew = redis.call('HSETNX', KEYS[1], 't', t)
  if isnew == 1 then
    redis.call('HSET', KEYS[1], 'k', ARGV[6])
    if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
  end
end
local out = {isnew}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local hk, fk = KEYS[2 * i], KEYS[2 * i + 1]
  local member, lo, prune = ARGV[4 + 3 * i], ARGV[5 + 3 * i], ARGV[6 + 3 * i]
  if isnew == 1 then
    redis.call('ZADD', hk, t, member)
    redis.call('ZREMRANGEBYSCORE', hk, '-inf', prune)
    redis.call('ZREMRANGEBYSCORE', fk, '-inf', prune)
  end
  if ARGV[5] == '1' then
    out[#out + 1] = table.concat(redis.call('ZRANGEBYSCORE', hk, lo, t, 'WITHSCORES'), '\\31')
    out[#out + 1] = table.concat(redis.call('ZRANGEBYSCORE', fk, lo, t, 'WITHSCORES'), '\\31')
  end
end
return out
"""

# Many transactions in one call (the service's batches): each is recorded in order as by _APPLY_LUA, but
# each entity's window is read once for the whole call, [earliest lower bound, latest time], and pruned
# after the reads. For transactions in time order this is what _APPLY_LUA returns per transaction (the
# client cuts each one's window out and drops peers recorded after it at the same instant); the entries,
# the Redis work and the parsing are per entity instead of per transaction.
# KEYS: tx keys (n), then per entity: history key, fraud key.  ARGV: ttl_s, n, number of entities m, write,
# read, entities per tx; per entity: lower bound, upper bound, lookback, 1 if its fraud set is read; per tx:
# t_us, fraud keys ("\n"-joined), then per entity of the tx: entity index (1-based), member.
# Returns: the new-record flags ("0"/"1" per tx), then per entity: history window, fraud window.
_APPLY_MANY_LUA = """
local ttl, n, m, ne = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[6])
local base, stride = 6 + 4 * m, 2 + 2 * ne
local flags, newest = {}, {}
local function window(key, lo, hi)
  return table.concat(redis.call('ZRANGEBYSCORE', key, lo, hi, 'WITHSCORES'), '\\31')
end
for i = 1, n do
  local a = base + (i - 1) * stride
  local t = ARGV[a + 1]
  local isnew = 0
  if ARGV[4] == '1' then
    isnew = redis.call('HSETNX', KEYS[i], 't', t)
    if isnew == 1 then
      redis.call('HSET', KEYS[i], 'k', ARGV[a + 2])
      if ttl > 0 then redis.call('EXPIRE', KEYS[i], ttl) end
      local tn = tonumber(t)
      for j = 1, ne do
        local u = tonumber(ARGV[a + 1 + 2 * j])
        redis.call('ZADD', KEYS[n + 2 * u - 1], t, ARGV[a + 2 + 2 * j])
        if newest[u] == nil or tn > newest[u] then newest[u] = tn end
      end
    end
  end
  flags[i] = isnew
end
local out = {table.concat(flags)}
for u = 1, m do
  local e = 6 + 4 * (u - 1)
  local hk, fk = KEYS[n + 2 * u - 1], KEYS[n + 2 * u]
  if ARGV[5] == '1' then
    out[#out + 1] = window(hk, ARGV[e + 1], ARGV[e + 2])
    if ARGV[e + 4] == '1' then
      out[#out + 1] = window(fk, ARGV[e + 1], ARGV[e + 2])
    else
      out[#out + 1] = ''
    end
  end
  if newest[u] ~= nil then
    local prune = '(' .. string.format('%d', newest[u] - tonumber(ARGV[e + 3]))
    redis.call('ZREMRANGEBYSCORE', hk, '-inf', prune)
    redis.call('ZREMRANGEBYSCORE', fk, '-inf', prune)
  end
end
return out
"""

# KEYS: tx key.  ARGV: txid, tx_fraud, label_us.  Replaces any earlier label of the transaction.
_LABEL_LUA = """
local rec = redis.call('HMGET', KEYS[1], 't', 'k', 'l')
if not rec[1] then return 0 end
for fk in string.gmatch(rec[2] or '', '[^\\n]+') do
  if rec[3] then redis.call('ZREM', fk, ARGV[1] .. '|' .. rec[3]) end
  if ARGV[2] == '1' then redis.call('ZADD', fk, rec[1], ARGV[1] .. '|' .. ARGV[3]) end
end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'l', ARGV[3]) else redis.call('HDEL', KEYS[1], 'l') end
return 1
"""


class RedisStore(OnlineStore):
    """Redis-backed store shared by every replica; one round trip per transaction (a Lua script)."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "fraud:",
                 tx_ttl_s: int | None = None, socket_timeout: float = 0.5, *args, **kwargs):
        import redis

        super().__init__(*args, **kwargs)
        self.url, self.prefix = url, prefix
        # A label later than every lookback cannot change a feature; by default keep tx records that long.
        self.tx_ttl_s = tx_ttl_s if tx_ttl_s is not None else max(self.lookback_us.values()) // 1_000_000
        self._redis_mod = redis
        self.client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                           socket_connect_timeout=socket_timeout, decode_responses=True,
                                           health_check_interval=5, retry_on_timeout=False)
        self._apply = self.client.register_script(_APPLY_LUA)
        self._apply_many = self.client.register_script(_APPLY_MANY_LUA)
        self._label = self.client.register_script(_LABEL_LUA)
        self._entity_order = sorted(self.lookback_us)
        # Transactions per _APPLY_MANY_LUA call: a script blocks Redis (other replicas, the stream worker)
        # while it runs and its reply must come within socket_timeout, so large batches go in several calls.
        self.max_call_txs = 2500

    def _key(self, kind: str, entity: str, eid: str) -> str:
        return f"{self.prefix}{kind}:{entity}:{eid}"

    def _call(self, fn):
        try:
            return fn()
        except self._redis_mod.RedisError as exc:  # connection refused, timeout, ...
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc

    def ping(self) -> None:
        self._call(self.client.ping)

    def clear(self) -> None:
        def run():
            for batch in _chunks(list(self.client.scan_iter(f"{self.prefix}*", count=1000)), 1000):
                self.client.unlink(*batch)
        self._call(run)

    def _args(self, tx: TxEvent, write: bool, read: bool) -> tuple[list[str], list[str]]:
        if SEP in tx.transaction_id:
            raise ValueError(f"transaction_id {tx.transaction_id!r} contains the control character \\x1f")
        keys = [f"{self.prefix}tx:{tx.transaction_id}"]
        member_args: list[str] = []
        fraud_keys = []
        for e in self._entity_order:
            eid = tx.entities[e]
            keys += [self._key("h", e, eid), self._key("f", e, eid)]
            if e in self.fraud_entities:
                fraud_keys.append(self._key("f", e, eid))
            lo = tx.t_us - self.lookback_us[e]
            member_args += [f"{tx.transaction_id}|{tx.amount!r}", str(lo), f"({lo}"]
        argv = [tx.transaction_id, str(tx.t_us), str(self.tx_ttl_s), "1" if write else "0",
                "1" if read else "0", "\n".join(fraud_keys)] + member_args
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
                    self._label(keys=[f"{self.prefix}tx:{ev.transaction_id}"],
                                args=[ev.transaction_id, str(int(ev.tx_fraud)), str(ev.label_us)],
                                client=pipe)
                else:
                    keys, argv = self._args(ev, write, read)
                    self._apply(keys=keys, args=argv, client=pipe)
            return pipe.execute() if events else []

        replies = self._call(run)
        return [bool(r) if isinstance(ev, Label) else (self._parse(r) if read else None)
                for ev, r in zip(events, replies, strict=True)]

    def _process_many(self, txs: list[TxEvent], write: bool, read: bool) -> list:
        """Transactions in time order (or read-only) through one _APPLY_MANY_LUA call."""
        order, lookback, fraud_entities = self._entity_order, self.lookback_us, self.fraud_entities
        index: dict[tuple[str, str], int] = {}  # (entity, id) -> 0-based position in the call
        bounds: list[list[int]] = []  # per entity: lower bound, upper bound
        keys = [f"{self.prefix}tx:{tx.transaction_id}" for tx in txs]
        ent_keys: list[str] = []
        tx_args: list[str] = []
        tx_ents: list[list[int]] = []
        for tx in txs:
            if SEP in tx.transaction_id:
                raise ValueError(f"transaction_id {tx.transaction_id!r} contains the control character \\x1f")
            t = tx.t_us
            fraud_keys, mine, member, ent_args = [], [], f"{tx.transaction_id}|{tx.amount!r}", []
            for e in order:
                eid = tx.entities[e]
                u = index.get((e, eid))
                if u is None:
                    u = index[(e, eid)] = len(bounds)
                    bounds.append([t - lookback[e], t])
                    ent_keys += [self._key("h", e, eid), self._key("f", e, eid)]
                else:
                    b = bounds[u]
                    b[0], b[1] = min(b[0], t - lookback[e]), max(b[1], t)
                if e in fraud_entities:
                    fraud_keys.append(self._key("f", e, eid))
                mine.append(u)
                ent_args += [str(u + 1), member]
            tx_args += [str(t), "\n".join(fraud_keys), *ent_args]
            tx_ents.append(mine)
        ents = list(index)
        argv = [str(self.tx_ttl_s), str(len(txs)), str(len(ents)), "1" if write else "0",
                "1" if read else "0", str(len(order))]
        for (e, _), (lo, hi) in zip(ents, bounds, strict=True):
            argv += [str(lo), str(hi), str(lookback[e]), "1" if e in fraud_entities else "0"]
        reply = self._call(lambda: self._apply_many(keys=keys + ent_keys, args=argv + tx_args))
        if not read:
            return [None] * len(txs)
        flags = reply[0]
        hist = [_columns(reply[1 + 2 * u]) for u in range(len(ents))]
        frauds = [_frauds(reply[2 + 2 * u]) for u in range(len(ents))]
        out = []
        for k, tx in enumerate(txs):
            t = tx.t_us
            # Peers at the same instant recorded after this one by the call: not there yet for it.
            later: set[str] = set()
            nxt = k + 1
            while write and nxt < len(txs) and txs[nxt].t_us == t:
                if flags[nxt] == "1":
                    later.add(txs[nxt].transaction_id)
                nxt += 1
            states = {}
            for e, u in zip(order, tx_ents[k], strict=True):
                times, ids, amounts = hist[u]
                lo = t - lookback[e]
                i, j = bisect_left(times, lo), bisect_right(times, t)
                cols = (times[i:j], ids[i:j], amounts[i:j])
                if later:
                    keep = [n for n, tid in enumerate(cols[1]) if tid not in later]
                    cols = tuple([c[n] for n in keep] for c in cols)
                fr = frauds[u]
                states[e] = EntityState(columns=cols, frauds=[f for f in fr if lo <= f[0] <= t] if fr else [])
            out.append(states)
        return out

    def _parse(self, reply: list) -> dict[str, EntityState]:
        states = {}
        for i, e in enumerate(self._entity_order):
            hist = reply[1 + 2 * i].split(SEP) if reply[1 + 2 * i] else []
            frauds = reply[2 + 2 * i].split(SEP) if reply[2 + 2 * i] else []
            history = []
            for member, score in zip(hist[0::2], hist[1::2], strict=True):
                txid, amount = member.rsplit("|", 1)
                history.append((int(score), txid, float(amount)))
            known = [(int(score), int(member.rsplit("|", 1)[1]))
                     for member, score in zip(frauds[0::2], frauds[1::2], strict=True)]
            states[e] = EntityState(history=history, frauds=known)
        return states

    def close(self) -> None:
        self.client.close()


def _columns(window: str) -> tuple[list[int], list[str], list[float]]:
    """History window reply ("member SEP score SEP ...", member "txid|amount") -> (times, ids, amounts), in
    Redis' (time) order. Whole-list conversions (split, map) instead of a tuple per entry: this parse is most
    of a batch's Python time."""
    if not window:
        return [], [], []
    parts = window.split(SEP)
    members = [m.rpartition("|") for m in parts[0::2]]  # the txid may hold '|', the amount not
    return list(map(int, parts[1::2])), [m[0] for m in members], [float(m[2]) for m in members]


def _frauds(window: str) -> list[tuple[int, int]]:
    """Fraud window reply (member "txid|label_us", scored by tx time) -> [(tx time, label time)]."""
    if not window:
        return []
    parts = window.split(SEP)
    return list(zip(map(int, parts[1::2]), (int(m.rpartition("|")[2]) for m in parts[0::2]), strict=True))


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
        return RedisStore(settings.redis_url, **kwargs)
    raise ValueError(f"unknown online store {settings.online_store!r} (expected 'memory' or 'redis')")
