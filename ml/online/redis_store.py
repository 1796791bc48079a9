"""The online store in Redis: shared by every service replica and the stream worker.

Layout (prefix ``fraud:`` by default):
- ``{p}h:{entity}:{id}``: the entity's history, a binary string of 16-byte records (time in µs as int64,
  amount as float64, little-endian) in the order recorded (``APPEND``). A reader takes it as a numpy array
  without parsing (``np.frombuffer``) and sorts by time, so a late transaction may sit after later ones.
- ``{p}i:{entity}:{id}``: the ids of those records in the same order, each followed by ``SEP``.
- ``{p}f:{entity}:{id}``: its known frauds, a string of "tx time|label time|txid" entries, each followed by
  ``SEP`` (a string, not a sorted set, so that the ``MGET`` of the histories reads it too).
- ``{p}r:{day}:{bucket}``: transaction records, a hash per day of transaction time and bucket of id
  (``record_bucket``): field txid, value "time\\nlabel time\\nfraud key\\n..." (label time '' until a
  label). A field is written once (idempotent by id; a re-delivery carries its transaction's time, so it
  meets its record on the same day), and the key expires ``tx_ttl_s`` after its last write. A label looks
  its transaction up on its own day minus the label delay the features assume, then day by day back to
  the last day whose frauds can still reach a feature; a label
  dated before its own transaction does not find it (the warehouse rejects such labels too: dbt's
  ``assert_label_after_transaction``), where the in-process store would apply it.

Every call is one round trip: ``MULTI``, the batch script (``columns.lua``: record the transactions, append
the new ones to their entities' histories, prune what the caller saw had aged out), one ``MGET`` of every
entity's history and frauds, ``EXEC``. The histories come back whole, the call's own transactions
included, and no other client's commands run in between: a call sees exactly what came before it, as one
by one. Their ids are half the bytes and only ties and re-deliveries need them, so a bulk call reads them
afterwards if at all (``_ids``); a small call (a ``/score`` drain, the stream worker's runs) reads them in
the same ``MGET``. No replica keeps state of its own, so any number of them share one Redis and each sees
every other's writes at once.

Why binary histories, reads outside Lua and records as hash fields: docs/adr/0001 and 0002. The script
builds no key from parts (the caller sends them whole), so this store needs a single Redis (no cluster),
6.2 or newer.
"""

from __future__ import annotations

import threading
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from hiredis import pack_command  # redis[hiredis]: the C packer redis-py uses, called directly

from ml.features.per_transaction import TxEvent, to_us
from ml.features.spec import RISK_DELAY
from ml.features.vectorised import PER_TX_BELOW, BatchColumns, TxColumns, entity_keys, offsets_of, states_of
from ml.online.store import SEP, Label, OnlineStore, StoreUnavailable
from ml.settings import get_settings

RECORD_BUCKETS = 16  # record hashes per day: keeps each hash small on a busy day
RECORD = np.dtype([("t", "<i8"), ("a", "<f8")])  # one history entry as stored (16 bytes)
_DAY_US = 86_400_000_000
_LABEL_DELAY_US = to_us(RISK_DELAY)  # where a label first looks for its transaction's record
_FAR = 2**62  # a time no transaction has
PRUNE_AT = 16  # entries too old for any feature that an entity's history holds before it is pruned


def redact_url(url: str) -> str:
    """The URL without its password (``redis://user:***@host``), for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def record_bucket(txid: str) -> int:
    """The record hash of a transaction id within its day (the same in every process: crc32, not hash())."""
    return zlib.crc32(txid.encode()) & (RECORD_BUCKETS - 1)


def _lua(name: str) -> str:
    """A Lua script shipped beside this module (``columns.lua``, ``label.lua``), for ``register_script``."""
    return resources.files(__package__).joinpath(name).read_text()


@dataclass
class _Call:
    """What the caller of one batch call keeps to read its reply."""

    txs: TxColumns
    write: bool
    order: list[int]  # the transactions in the order the script flags them
    columns: list[tuple[str, np.ndarray, list[str]]]  # per entity column: name, per transaction its entity's
    # code, the entities' ids (in order of code)
    bounds: np.ndarray | None  # per entity: entries older than this no later transaction of it can reach
    with_ids: bool  # whether the reply holds the histories' ids (else read when first needed: ``_ids``)

    def commands(self, script_sha: str, args: list, keys: list[str]) -> list[tuple]:
        if not self.write:  # nothing to record: the reads alone
            return [("MGET", *keys)]
        return [("MULTI",), ("EVALSHA", script_sha, 0, *args), ("MGET", *keys), ("EXEC",)]


class RedisStore(OnlineStore):
    """Redis-backed store shared by every replica: one round trip per call, whatever it holds."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "fraud:",
                 tx_ttl_s: int | None = None, socket_timeout: float | None = None, *args, **kwargs):
        import redis

        super().__init__(*args, **kwargs)
        # The URL carries the credentials and TLS (``rediss://user:password@host:port/db``); messages and
        # logs show it without the password.
        self.url, self.prefix = redact_url(url), prefix
        # Every command's reply, and a connection, within this (FRAUD_REDIS_TIMEOUT_S, default 0.5 s): a
        # stalled Redis fails the call (StoreUnavailable: the failure policy) instead of hanging it.
        settings = get_settings()
        if socket_timeout is None:
            socket_timeout = settings.redis_timeout_s
        # A label later than every lookback cannot change a feature; by default keep tx records that long.
        self.tx_ttl_s = tx_ttl_s if tx_ttl_s is not None else max(self.lookback_us.values()) // 1_000_000
        # How far back from its own time a label looks for its transaction: a fraud older than every
        # lookback at the label's time can reach no feature of a transaction at or after it.
        self.label_reach_days = -(-max(self.lookback_us.values()) // _DAY_US)
        self._redis_mod = redis
        options = dict(socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                       health_check_interval=5, retry_on_timeout=False)
        if url.startswith("rediss://") and settings.redis_ca:  # a private CA's bundle
            options["ssl_ca_certs"] = str(settings.redis_ca)
        self.client = redis.Redis.from_url(url, decode_responses=True, **options)
        # The scripts' replies hold binary histories: their connection does not decode.
        self._raw = redis.Redis.from_url(url, decode_responses=False, **options)
        # The same for calls awaited on an event loop (``apply_columns_async``), created on first use.
        self._async_options = options
        self._async_url = url
        self._aconns: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> connection
        self._columns = self.client.register_script(_lua("columns.lua"))
        self._label = self.client.register_script(_lua("label.lua"))
        self._entity_order = sorted(self.lookback_us)
        # Transactions per call (FRAUD_REDIS_CALL_TXS): a script blocks Redis while it runs and its reply must
        # come within socket_timeout, so larger batches go in several calls (the size: docs/adr/0006).
        self.max_call_txs = settings.redis_call_txs
        self._lock = threading.Lock()
        self._conn = None  # the store's own connection for its calls, used under _lock (see _run)
        self._prunes: dict[tuple[str, str], int] = {}  # entity -> bound its next call prunes it to

    def _call(self, fn):
        try:
            return fn()
        except self._redis_mod.RedisError as exc:  # connection refused, timeout, ...
            raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc

    def ping(self) -> None:
        self._call(self.client.ping)

    def _run(self, calls: list[list[tuple]]) -> list:
        """Send every call's commands in one write and return each call's last reply (a transaction's
        ``EXEC``), on a connection of the store's own: the pool's checkout and release and the retry
        wrappers cost about as much as a one-transaction call. It reconnects by itself on its next command
        after an error."""
        redis = self._redis_mod
        # Packed here: redis-py's send_command checks every argument's type in Python first. One buffer: a
        # list goes a command per sendall (each a wake-up of Redis, ~25 us here).
        data = b"".join([pack_command(c) for call in calls for c in call])
        with self._lock:
            if self._conn is None:
                self._conn = self._raw.connection_pool.make_connection()
            conn = self._conn
            for attempt in (0, 1):
                try:
                    conn.send_packed_command([data])
                    replies = []
                    for call in calls:
                        for _ in call:
                            try:
                                reply = conn.read_response()
                            except redis.exceptions.ResponseError as exc:  # NOSCRIPT: handled below
                                reply = exc
                        replies.append(reply)
                except redis.RedisError as exc:
                    conn.disconnect()
                    raise StoreUnavailable(f"redis at {self.url}: {exc}") from exc
                if self._replies_ok(replies, attempt):
                    return replies
                self._load_scripts()
        raise AssertionError("unreachable")

    async def _run_async(self, calls: list[list[tuple]]) -> list:
        """``_run`` awaiting Redis on the running event loop (the service's /score drains): the loop serves
        other requests, /livez included, while the reply is due, and a stalled Redis costs the call its
        socket timeout, not the loop. One connection per event loop; its drains run one at a time."""
        import asyncio

        redis = self._redis_mod
        data = b"".join([pack_command(c) for call in calls for c in call])
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            conn = self._aconns.get(loop)
            if conn is None:
                conn = self._aconns[loop] = self._async_pool.make_connection()
            try:
                await conn.send_packed_command(data, check_health=False)
                replies = []
                for call in calls:
                    for _ in call:
                        try:
                            reply = await conn.read_response()
                        except redis.exceptions.ResponseError as exc:  # NOSCRIPT: handled below
                            reply = exc
                    replies.append(reply)
            except (redis.RedisError, OSError) as exc:  # OSError: TimeoutError too
                del self._aconns[loop]
                await conn.disconnect()
                raise StoreUnavailable(f"redis at {self.url}: {type(exc).__name__} {exc}") from exc
            if self._replies_ok(replies, attempt):
                return replies
            await loop.run_in_executor(None, self._load_scripts)
        raise AssertionError("unreachable")

    def _replies_ok(self, replies: list, attempt: int) -> bool:
        """True if no reply is an error; False if the scripts must be loaded and the call run again (a
        restarted or flushed Redis: recording transactions is idempotent by id, and a label replaces
        itself); else StoreUnavailable."""
        redis = self._redis_mod
        errors = [r for r in replies if isinstance(r, Exception)] + [
            x for r in replies if isinstance(r, list) for x in r if isinstance(x, Exception)]
        if not errors:
            return True
        lost, aborted = redis.exceptions.NoScriptError, redis.exceptions.ExecAbortError
        if attempt or not any(isinstance(e, lost) for e in errors) or not all(
                isinstance(e, lost | aborted) for e in errors):
            raise StoreUnavailable(f"redis at {self.url}: {errors[0]}")
        return False

    def _load_scripts(self) -> None:
        for script in (self._columns, self._label):
            self._call(lambda s=script: self.client.script_load(s.script))

    def clear(self) -> None:
        def run():
            for batch in _chunks(list(self.client.scan_iter(f"{self.prefix}*", count=1000)), 1000):
                self.client.unlink(*batch)
        self._call(run)

    def _label_args(self, lab: Label) -> list[str]:
        day = lab.label_us // _DAY_US
        oldest = day - self.label_reach_days
        guess = min(max((lab.label_us - _LABEL_DELAY_US) // _DAY_US, oldest), day)
        return [self.prefix, lab.transaction_id, str(int(lab.tx_fraud)), str(lab.label_us),
                str(record_bucket(lab.transaction_id)), str(guess), str(day), str(oldest)]

    def process(self, events, write=True, read=True):
        """Events in order, in one round trip: labels one script call each, transactions in runs of time
        order (a late one starts a new run, so that it sees only what came before it)."""
        calls: list[TxColumns | Label] = []
        run: list[TxEvent] = []

        def flush() -> None:
            if run:
                cols, step = TxColumns.of(list(run)), self.max_call_txs
                calls.extend(cols.slice(i, i + step) for i in range(0, len(cols), step))
                run.clear()

        for ev in events:
            if isinstance(ev, Label):
                flush()
                calls.append(ev)
                continue
            if write and run and ev.t_us < run[-1].t_us:
                flush()
            run.append(ev)
        flush()
        commands, prepared = [], []
        for call in calls:
            if isinstance(call, Label):
                commands.append([("EVALSHA", self._label.sha, 0, *self._label_args(call))])
                prepared.append(None)
            else:
                # Every transaction's state is built from its windows' ids here: read them at once.
                cmds, ctx = self._batch_call(call, write, with_ids=read)
                commands.append(cmds)
                prepared.append(ctx)
        replies = self._run(commands) if commands else []
        out: list = []
        for call, ctx, reply in zip(calls, prepared, replies, strict=True):
            if ctx is None:
                out.append(bool(reply))
            elif read:
                applied = self._batch_result(ctx, reply)
                out += [states_of(call, k, applied) for k in range(len(call))]
            else:
                out += [None] * len(call)
        return out

    def apply_columns(self, txs: Sequence[TxEvent] | TxColumns, write: bool = True) -> BatchColumns:
        commands, ctx = self._columns_call(txs, write)
        return self._batch_result(ctx, self._run([commands])[0])

    async def apply_columns_async(self, txs: Sequence[TxEvent] | TxColumns, write: bool = True
                                  ) -> BatchColumns:
        """``apply_columns`` awaiting Redis on the running event loop (``_run_async``)."""
        commands, ctx = self._columns_call(txs, write)
        return self._batch_result(ctx, (await self._run_async([commands]))[0])

    @property
    def _async_pool(self):
        import redis.asyncio

        pool = getattr(self, "_apool", None)
        if pool is None:
            pool = self._apool = redis.asyncio.Redis.from_url(
                self._async_url, decode_responses=False, **self._async_options).connection_pool
        return pool

    def _columns_call(self, txs: Sequence[TxEvent] | TxColumns, write: bool) -> tuple[list[tuple], _Call]:
        txs = TxColumns.of(txs)
        if write and not txs.in_time_order():
            raise ValueError("a batch that records transactions must be in time order")
        # A small call (a /score drain) is likely computed one by one, which needs every window's ids:
        # read them with the histories rather than in a second round trip.
        return self._batch_call(txs, write, with_ids=len(txs) < PER_TX_BELOW)

    def _batch_call(self, txs: TxColumns, write: bool, with_ids: bool = False) -> tuple[list[tuple], _Call]:
        """The commands of one call for transactions in time order (numpy per entity column; Python only per
        entity: a call holds ~0.3 entities a transaction in bulk and one or two in a /score drain)."""
        ids, n = txs.ids, len(txs)
        if SEP in "".join(ids):
            raise ValueError(f"a transaction_id contains the control character \\x1f: {ids}")
        # What the call records: each id once (a later copy in the same call is a re-delivery of the first).
        recorded = None
        if write and len(set(ids)) < n:
            seen: set[str] = set()
            recorded = [not (tid in seen or seen.add(tid)) for tid in ids]
        args: list = [self.prefix, str(self.tx_ttl_s)]
        order = self._record_args(txs, txs.t_us.tolist(), recorded, args) if write else []
        candidates = np.arange(n) if recorded is None else np.flatnonzero(recorded)
        records = np.empty(n, RECORD)
        records["t"], records["a"] = txs.t_us, txs.amounts
        columns, keys, prunes, appends, bounds = [], [], [], [], []
        pending = self._prunes
        for e in self._entity_order:
            index: dict[str, int] = {}
            codes = np.array([index.setdefault(eid, len(index)) for eid in txs.entities[e]], np.int64)
            eids = list(index)
            columns.append((e, codes, eids))
            hp, ip = f"{self.prefix}h:{e}:", f"{self.prefix}i:{e}:"
            fp = f"{self.prefix}f:{e}:" if e in self.fraud_entities else None
            for eid in eids:
                keys += [hp + eid, ip + eid] if with_ids else [hp + eid]
                if fp:
                    keys.append(fp + eid)
            if not write:
                continue
            push = candidates[np.argsort(codes[candidates], kind="stable")]
            ends_arr = offsets_of(np.bincount(codes[push], minlength=len(eids)))
            ends = ends_arr.tolist()
            # Per entity its first and last transaction the call records (in time order, by entity).
            some = ends_arr[1:] > ends_arr[:-1]
            t_sorted = np.append(txs.t_us[push], 0)
            first = np.where(some, t_sorted[ends_arr[:-1]], _FAR) - self.lookback_us[e]
            bounds.append(np.where(some, t_sorted[ends_arr[1:] - 1] - self.lookback_us[e], -_FAR))
            if pending:  # entries too old for its first transaction go, if an earlier call saw many
                for u, eid in enumerate(eids):
                    bound = pending.pop((e, eid), None)
                    if bound is not None:
                        prunes += (hp + eid, ip + eid, fp + eid if fp else "", str(min(bound, int(first[u]))))
            blob = records[push].tobytes()
            push_ids = [ids[k] for k in push.tolist()]
            for u, eid in enumerate(eids):
                i, j = ends[u], ends[u + 1]
                if j > i:
                    appends += (hp + eid, ip + eid, blob[16 * i:16 * j], SEP.join(push_ids[i:j]) + SEP)
        args += (str(len(prunes) // 4), *prunes, str(len(appends) // 4), *appends)
        call = _Call(txs, write, order, columns, np.concatenate(bounds) if bounds else None, with_ids)
        return call.commands(self._columns.sha, args, keys), call

    def _record_args(self, txs: TxColumns, t_list: list[int], recorded: list[bool] | None, args: list
                     ) -> list[int]:
        """Append the call's records, grouped by record hash, to ``args``; returns the transactions in the
        order the script flags them. Grouped with numpy: a dict of lists per transaction cost ~1 µs each."""
        ids, n = txs.ids, len(txs)
        crc = zlib.crc32
        buckets = np.fromiter((crc(tid.encode()) for tid in ids), np.int64, n) & (RECORD_BUCKETS - 1)
        group = txs.t_us // _DAY_US * RECORD_BUCKETS + buckets
        keep = np.arange(n) if recorded is None else np.flatnonzero(recorded)
        by_hash = keep[np.argsort(group[keep], kind="stable")]
        hashes, starts = np.unique(group[by_hash], return_index=True)
        order = by_hash.tolist()
        fraud_cols = [(f"{self.prefix}f:{e}:", txs.entities[e]) for e in self._entity_order
                      if e in self.fraud_entities]
        if len(fraud_cols) == 1:  # the usual spec: one fraud entity (the terminal)
            pre, col = fraud_cols[0]
            records = [f"{t_list[k]}\n\n{pre}{col[k]}" for k in order]  # as _record writes it
        else:
            records = [_record(t_list[k], [pre + col[k] for pre, col in fraud_cols]) for k in order]
        pairs: list = [None] * (2 * len(order))  # (id, record) pairs
        pairs[0::2], pairs[1::2] = [ids[k] for k in order], records
        ends = [*starts.tolist(), len(order)]
        args.append(str(len(hashes)))
        for j, key in enumerate(hashes.tolist()):
            day, bucket = divmod(key, RECORD_BUCKETS)
            args += (f"r:{day}:{bucket}", str(ends[j + 1] - ends[j]), *pairs[2 * ends[j]:2 * ends[j + 1]])
        return order

    def _batch_result(self, call: _Call, reply: list) -> BatchColumns:
        """The call's entities as flat columns, each entity's sorted by time; notes the entities whose
        history holds enough entries too old for every later transaction to prune them in their next call."""
        new = np.zeros(len(call.txs), bool)
        if call.write:
            flags, reply = reply
            if call.order:
                new[call.order] = np.frombuffer(flags, np.uint8) == ord("1")
        values = [v or b"" for v in reply]
        slots: dict[str, np.ndarray] = {}
        histories: list[bytes] = []
        ids: list[bytes] = []
        frauds: list[bytes] = []
        i, base = 0, 0
        for e, codes, eids in call.columns:
            m = len(eids)
            slots[e] = codes + base
            base += m
            reads_frauds = e in self.fraud_entities
            width = 1 + call.with_ids + reads_frauds
            part = values[i:i + width * m]
            i += width * m
            histories += part[0::width]
            if call.with_ids:
                ids += part[1::width]
            frauds += part[width - 1::width] if reads_frauds else [b""] * m
        records = np.frombuffer(b"".join(histories), RECORD)
        lengths = np.fromiter(map(len, histories), np.int64, len(histories)) // RECORD.itemsize
        offsets = offsets_of(lengths)
        times, amounts = records["t"], records["a"]  # strided views: copied only where a pass needs them
        parsed = [_parse_frauds(f) for f in frauds]
        fraud_times = _concat([f[0] for f in parsed])
        # (entity, time) keys, the features' own (``_Flat``): one pass sorts, notes prunes and searches them.
        t = call.txs.t_us
        low, high = int(t.min()) - max(self.lookback_us.values(), default=0), int(t.max())
        for arr in (times, fraud_times):
            if len(arr):
                low, high = min(low, int(arr.min())), max(high, int(arr.max()))
        span = high - low + 1
        keys = entity_keys(lengths, times, low, span)
        # Each entity's entries sorted by time: already so unless a late transaction was recorded.
        resort = None
        if len(keys) > 1 and bool((keys[1:] < keys[:-1]).any()):
            # One stable argsort of the keys: ~1 ms for 150,000 entries (lexsort took ~20).
            resort = np.argsort(keys, kind="stable")
            keys, times, amounts = keys[resort], times[resort], amounts[resort]
        if call.bounds is not None:
            self._note_prunes(call, keys, low, span, lengths, offsets)

        def ids_of(u: int) -> list[str]:
            if not ids:  # the rare transactions that need them: read for every entity of the call at once
                ids.extend(self._ids(call, histories))
            got = ids[u].decode().split(SEP)[:lengths[u]] if isinstance(ids[u], bytes) else ids[u]
            if resort is not None:
                got = [got[p] for p in (resort[offsets[u]:offsets[u + 1]] - offsets[u]).tolist()]
            return got

        return BatchColumns(new, slots, times, amounts, offsets, fraud_times, _concat([f[1] for f in parsed]),
                            offsets_of([len(f[0]) for f in parsed]), ids_of, keys, low, span)

    def _ids(self, call: _Call, histories: list[bytes]) -> list[list[str]]:
        """The ids of the entries a call read, read after it (bulk scoring reads them only for the few
        transactions that need them: ties and re-deliveries; they are half a reply's bytes). Since the call,
        entries can only have been appended at the end or pruned from the start, so each entity's entries
        are found in its history as it is now, and ids with them; pruned ones (older than any window of a
        later transaction) get '' (as do all of an entity's if its state was wiped in between)."""
        keys = [f"{self.prefix}{kind}:{e}:{eid}" for e, _, eids in call.columns for eid in eids
                for kind in ("h", "i")]
        now = self._run([[("MGET", *keys)]])[0]
        out = []
        for then, history, ids in zip(histories, now[0::2], now[1::2], strict=True):
            history, ids = history or b"", (ids or b"").decode().split(SEP)[:-1]
            n = len(then) // RECORD.itemsize
            gone = next(k for k in range(n + 1) if history.startswith(then[RECORD.itemsize * k:]))
            out.append([""] * gone + ids[:n - gone])
        return out

    def _note_prunes(self, call: _Call, keys: np.ndarray, low: int, span: int, lengths: np.ndarray,
                     offsets: np.ndarray) -> None:
        """Entities whose history now holds at least PRUNE_AT entries (and a quarter of it) older than their
        last transaction's lookback: their next call prunes them. Waiting until it pays keeps the rewrite of
        a history (Lua reads and writes it whole) off most calls. ``keys`` as ``_batch_result`` sorts them:
        an entity's entries older than its bound are one searchsorted away."""
        if len(keys) < PRUNE_AT:
            return
        entity = np.arange(len(lengths), dtype=np.int64)
        bound = np.clip(call.bounds, low, low + span)  # outside the keys' range: none or all of its entries
        old = np.searchsorted(keys, entity * span + (bound - low), "left") - offsets[:-1]
        due = np.flatnonzero((old >= PRUNE_AT) & (4 * old >= lengths))
        if not len(due):
            return
        if len(self._prunes) > 100_000:  # entities seen once and never again: forget rather than grow
            self._prunes.clear()
        names = [(e, eid) for e, _, eids in call.columns for eid in eids]
        for u, b in zip(due.tolist(), call.bounds[due].tolist(), strict=True):
            self._prunes[names[u]] = b

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self.client.close()
        self._raw.close()


def _record(t_us: int, fraud_keys: list[str]) -> str:
    """A transaction record: time, label time ('' until a label), the fraud sets a label goes to."""
    return f"{t_us}\n\n" + "\n".join(fraud_keys)


def _parse_frauds(frauds: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A fraud string ("tx time|label time|txid" entries, each followed by SEP) -> (tx times, label times)."""
    if not frauds:
        return _NO_TIMES, _NO_TIMES
    entries = [e.split("|", 2) for e in frauds.decode().split(SEP)[:-1]]
    return (np.array([e[0] for e in entries], dtype=np.int64),
            np.array([e[1] for e in entries], dtype=np.int64))


_NO_TIMES = np.empty(0, np.int64)


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else _NO_TIMES


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i:i + n]
