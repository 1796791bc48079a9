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
from bisect import bisect_left, insort
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
        self._label = self.client.register_script(_LABEL_LUA)
        self._entity_order = sorted(self.lookback_us)

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
        def run():
            if len(events) == 1 and isinstance(events[0], TxEvent):
                keys, argv = self._args(events[0], write, read)
                return [self._apply(keys=keys, args=argv)]
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
