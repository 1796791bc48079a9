"""Worker checkpoints: River model + detectors + source offsets + join state (+ in-process store) as one unit.

A checkpoint is a *base* (the full join state and, with the in-process store, the store) plus the *change
log* of every state change since (transactions and labels applied to the store, feature vectors stored,
labels learnt, prunes), one delta file per checkpoint. Taking a checkpoint therefore costs what changed since
the last one, not the size of the state: the worker streams its changes into an in-memory pickle as it goes
(``ChangeLog``, < 1 µs per change), and a checkpoint hands those bytes to a writer thread. When the log
outgrows the base, the writer folds them into a new base in the background (``fold``).

Layout under ``<data_dir>/streaming/river/``:

- ``base-<seq>.pkl``: the full state as of checkpoint ``seq``;
- ``delta-<seq>.pkl``: the changes between checkpoint ``seq - 1`` and ``seq`` (a stream of pickled ops);
- ``latest.pkl``: the commit point: the River model and its detectors, the offsets, the small state (buffered
  labels, orphans, watermark), ``seq`` and the chain (base + deltas) to rebuild the rest. Written last, by
  atomic rename after the files it names are on disk (fsync), so a reader (the worker on restart, or the
  scoring service wanting River's opinion) sees the previous checkpoint or the new one, never a mix.

``load_model`` is what the service uses: it reads only ``latest.pkl``.

Every file is signed (``ml.signing``: HMAC-SHA256 with the platform's key, bound to the file's role) and
verified before it is unpickled, through an allow-list of classes: a file planted or modified in the
directory, or one written before checkpoints were signed, is refused (``CheckpointRefused``), never run.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml import signing
from ml.online.river_model import OnlineModel

log = logging.getLogger(__name__)

FORMAT = 3  # 3: signed files
HEAD = "latest.pkl"
PROTOCOL = pickle.HIGHEST_PROTOCOL

# Change-log ops (tuples, first item the kind).
OP_TX = "T"  # (OP_TX, transaction_id, t_us, entity ids (WINDOW_ENTITIES order), amount): applied to the store
OP_LABEL = "L"  # (OP_LABEL, transaction_id, tx_fraud, label_us): applied to the store
OP_PENDING = "P"  # (OP_PENDING, transaction_id, t_us, packed vector, river p, xgb p): awaiting its label
OP_LEARNED = "D"  # (OP_LEARNED, transaction_id): River learnt its label
OP_PRUNE = "X"  # (OP_PRUNE, horizon_us): pending transactions older than the horizon dropped


def river_dir(settings=None) -> Path:
    if settings is None:
        from ml.settings import get_settings

        settings = get_settings()
    return settings.river_checkpoint_dir


_FRESH = "start the worker with --fresh to discard the checkpoint"


class CheckpointRefused(ValueError):
    """A checkpoint file failed verification (or is of another format): it is not loaded."""


# Signing purposes: a file signed as one role cannot be passed off as another.
HEAD_PURPOSE, BASE_PURPOSE, DELTA_PURPOSE = ("river-checkpoint/head", "river-checkpoint/base",
                                             "river-checkpoint/delta")


def _atomic_write(path: Path, data: bytes, purpose: str, key: bytes) -> None:
    """Write ``data`` signed for ``purpose``, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(signing.header(data, key, purpose))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself must survive a power cut, not only a kill -9.
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_signed(path: Path, purpose: str, key: bytes | None = None) -> signing.RestrictedUnpickler:
    """An allow-list unpickler on the verified payload of ``path``; ``CheckpointRefused`` if it fails."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return signing.unpickler(data, key, purpose, source=str(path))
    except signing.SignatureError as e:
        log.error("refused checkpoint file %s", e)  # the message starts with the path
        raise CheckpointRefused(f"{e}; {_FRESH}") from None


def _load_signed(path: Path, purpose: str, key: bytes | None = None) -> Any:
    try:
        return _read_signed(path, purpose, key).load()
    except pickle.UnpicklingError as e:  # signed, yet names a class off the allow-list
        log.error("refused checkpoint file %s: %s", path, e)
        raise CheckpointRefused(f"{path}: {e}; {_FRESH}") from None


def _base_name(seq: int) -> str:
    return f"base-{seq:08d}.pkl"


def _delta_name(seq: int) -> str:
    return f"delta-{seq:08d}.pkl"


@dataclass
class Checkpoint:
    model: OnlineModel
    position: dict[str, int]  # "topic:partition" -> next offset to read
    # pending (tx id -> [t_us, vector, river p, xgb p, learned]), label_heap, orphans, watermark_us, store
    state: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    saved_at: float = 0.0
    base: int = 0  # the chain this checkpoint was rebuilt from (the worker appends to it)
    deltas: list[int] = field(default_factory=list)
    ops_since_base: int = 0


class ChangeLog:
    """State changes since the last checkpoint, pickled as they happen into an in-memory buffer."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._buf = io.BytesIO()
        self._pickler = pickle.Pickler(self._buf, protocol=PROTOCOL)
        self._pickler.fast = True  # no memo: ops are small tuples, and a memo would pin every one of them
        self.n = 0

    def append(self, op: tuple) -> None:
        self._pickler.dump(op)
        self.n += 1

    def take(self) -> bytes:
        data = self._buf.getvalue()
        self._reset()
        return data


def read_ops(unpickler: pickle.Unpickler, source: str = "delta"):
    """The ops of one delta (an unpickler on its verified payload), in order."""
    while True:
        try:
            yield unpickler.load()
        except EOFError:
            return
        except pickle.UnpicklingError as e:  # signed, yet names a class off the allow-list
            log.error("refused checkpoint file %s: %s", source, e)
            raise CheckpointRefused(f"{source}: {e}; {_FRESH}") from None


@dataclass(frozen=True)
class WriteJob:
    """One checkpoint, serialised on the worker's thread, written (possibly) on another."""

    seq: int
    head: bytes
    delta: bytes | None = None
    base: bytes | None = None  # a full base at this seq (first checkpoint of a fresh worker, ``save``)
    base_seq: int | None = None
    fold: bool = False  # after committing, fold the chain into a new base (log compaction)
    # The head's (base seq, delta seqs): which files stay. None: read back from the written head.
    chain: tuple[int, tuple[int, ...]] | None = None


def head_bytes(ckpt: Checkpoint, small: dict[str, Any]) -> bytes:
    ckpt.saved_at = time.time()
    head = {"format": FORMAT, "seq": ckpt.seq, "model": ckpt.model, "position": ckpt.position,
            "stats": ckpt.stats, "saved_at": ckpt.saved_at, "base": ckpt.base, "deltas": list(ckpt.deltas),
            "ops_since_base": ckpt.ops_since_base, "small": small}
    return pickle.dumps(head, protocol=PROTOCOL)


def base_bytes(pending: dict, store_snapshot: dict | None) -> bytes:
    return pickle.dumps({"pending": pending, "store": store_snapshot}, protocol=PROTOCOL)


def write(directory: Path, job: WriteJob) -> Path:
    """Write the job's files, then commit ``latest.pkl``; fold if asked; drop files no longer referenced."""
    directory.mkdir(parents=True, exist_ok=True)
    key = signing.load_key()
    if job.base is not None:
        _atomic_write(directory / _base_name(job.base_seq if job.base_seq is not None else job.seq), job.base,
                      BASE_PURPOSE, key)
    if job.delta is not None:
        _atomic_write(directory / _delta_name(job.seq), job.delta, DELTA_PURPOSE, key)
    _atomic_write(directory / HEAD, job.head, HEAD_PURPOSE, key)
    if job.fold or job.chain is None:  # the head as committed, through the verified reader
        head = _load_signed(directory / HEAD, HEAD_PURPOSE, key)
        if job.fold:
            head = fold(directory, head, key)
        chain = (head["base"], tuple(head["deltas"]))
    else:
        chain = job.chain
    _cleanup(directory, *chain)
    return directory / HEAD


def fold(directory: Path, head: dict, key: bytes | None = None) -> dict:
    """Rebuild the state from the head's chain, write it as ``base-<seq>``, commit a head pointing at it."""
    key = key if key is not None else signing.load_key()
    pending, store = _materialise(directory, head, key)
    _atomic_write(directory / _base_name(head["seq"]), base_bytes(pending, store), BASE_PURPOSE, key)
    head = dict(head, base=head["seq"], deltas=[], ops_since_base=0)
    _atomic_write(directory / HEAD, pickle.dumps(head, protocol=PROTOCOL), HEAD_PURPOSE, key)
    return head


def _cleanup(directory: Path, base: int, deltas: tuple[int, ...]) -> None:
    keep = {_base_name(base)} | {_delta_name(s) for s in deltas}
    for pattern in ("base-*.pkl", "delta-*.pkl", "state-*.pkl"):  # state-*: the format-1 layout
        for old in directory.glob(pattern):
            if old.name not in keep:
                old.unlink(missing_ok=True)


def _materialise(directory: Path, head: dict, key: bytes | None = None) -> tuple[dict, dict | None]:
    """(pending, store snapshot) as of the head: its base with its deltas applied in order."""
    from ml.features.per_transaction import WINDOW_ENTITIES, TxEvent, from_us
    from ml.online.store import Label, MemoryStore

    key = key if key is not None else signing.load_key()
    base = _load_signed(directory / _base_name(head["base"]), BASE_PURPOSE, key)
    pending: dict[str, list] = base["pending"]
    store = None
    if base["store"] is not None:
        store = MemoryStore()
        restore_store(store, base["store"])
    entities = tuple(WINDOW_ENTITIES)
    batch: list = []
    for seq in head["deltas"]:
        # The whole delta is verified before its first op is unpickled.
        path = directory / _delta_name(seq)
        for op in read_ops(_read_signed(path, DELTA_PURPOSE, key), str(path)):
            kind = op[0]
            if kind == OP_TX:
                _, tid, t_us, ids, amount = op
                batch.append(TxEvent(tid, t_us, dict(zip(entities, ids, strict=True)), amount, from_us(t_us)))
            elif kind == OP_LABEL:
                batch.append(Label(op[1], op[2], op[3]))
            elif kind == OP_PENDING:
                _, tid, t_us, vec, p, px = op
                pending[tid] = [t_us, vec, p, px, False]
            elif kind == OP_LEARNED:
                rec = pending.get(op[1])
                if rec is not None:
                    rec[4] = True
            elif kind == OP_PRUNE:
                prune_pending(pending, op[1])
            else:
                raise ValueError(f"{directory}/{_delta_name(seq)}: unknown change-log op {kind!r}")
            if len(batch) >= 10_000:
                _apply(store, batch)
    _apply(store, batch)
    return pending, (snapshot_store(store) if store is not None else None)


def _apply(store, batch: list) -> None:
    if batch and store is not None:
        store.process(batch, write=True, read=False)
    batch.clear()


def prune_pending(pending: dict[str, list], horizon_us: int) -> None:
    """Drop pending transactions older than the horizon (they are in time order)."""
    while pending:
        k = next(iter(pending))
        if pending[k][0] >= horizon_us:
            break
        del pending[k]


def save(directory: Path, ckpt: Checkpoint) -> Path:
    """Write a self-contained checkpoint (a base and no deltas)."""
    ckpt.base, ckpt.deltas, ckpt.ops_since_base = ckpt.seq, [], 0
    st = ckpt.state
    small = {"label_heap": st.get("label_heap", []), "orphans": st.get("orphans", {}),
             "watermark_us": st.get("watermark_us", 0)}
    job = WriteJob(ckpt.seq, head_bytes(ckpt, small), base=base_bytes(st.get("pending", {}), st.get("store")),
                   chain=(ckpt.base, ()))
    return write(directory, job)


def read_head(head_path: Path, key: bytes | None = None) -> dict | None:
    """The verified head (``latest.pkl``), None if there is none; ``CheckpointRefused`` if it fails."""
    if not head_path.exists():
        return None
    head = _load_signed(head_path, HEAD_PURPOSE, key)
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        fmt = head.get("format") if isinstance(head, dict) else None
        log.error("refused checkpoint file %s: format %s is not %s", head_path, fmt, FORMAT)
        raise CheckpointRefused(f"{head_path}: checkpoint format {fmt} is not {FORMAT}; {_FRESH}")
    return head


def load(directory: Path) -> Checkpoint | None:
    """The checkpoint in ``directory`` (None if there is none); ``CheckpointRefused`` if any of its files
    fails verification: nothing of it is used then."""
    key = signing.load_key()
    head = read_head(directory / HEAD, key)
    if head is None:
        return None
    pending, store = _materialise(directory, head, key)
    state = {"pending": pending, **head["small"], "store": store}
    return Checkpoint(model=head["model"], position=head["position"], state=state, stats=head["stats"],
                      seq=head["seq"], saved_at=head["saved_at"], base=head["base"],
                      deltas=list(head["deltas"]), ops_since_base=head["ops_since_base"])


def load_model(path: Path | None = None) -> OnlineModel | None:
    """The River model of the latest checkpoint (for the scoring service), or None if there is none yet.

    ``path`` is ``latest.pkl`` or its directory (default ``<data_dir>/streaming/river``). Raises
    ``CheckpointRefused`` for a file that fails verification (or of another format).
    """
    path = Path(path) if path is not None else river_dir()
    if path.is_dir():
        path = path / HEAD
    head = read_head(path)
    return None if head is None else head["model"]


# --------------------------------------------------------------------- in-process store snapshot (adapter)

_MEMORY_FIELDS = ("_entities", "_txs", "_tx_order", "_latest_us", "lookback_us", "fraud_entities")


def snapshot_store(store) -> dict | None:
    """The in-process store's state (it holds a lock, so it is not picklable as is); None for Redis."""
    from ml.online.store import MemoryStore

    if not isinstance(store, MemoryStore):
        return None  # Redis keeps its own state; replays into it are idempotent by transaction_id
    # References, not copies: pickled right away on the caller's thread.
    return {k: getattr(store, k) for k in _MEMORY_FIELDS}


def restore_store(store, snap: dict | None) -> None:
    from ml.online.store import MemoryStore

    if snap is None or not isinstance(store, MemoryStore):
        return
    with store._lock:
        for k, v in snap.items():
            setattr(store, k, v)
