"""Worker checkpoints: River model + detectors + source offsets + join state (+ in-process store) as one unit.

Layout under ``<data_dir>/streaming/river/``:

- ``state-<seq>.pkl``: the bulky part (features stored at transaction time awaiting their label, buffered
  labels, and, with the in-process store, the store itself);
- ``latest.pkl``: the commit point: the River model, its detectors, the offsets, ``seq`` and the name of
  its state file. Written last, by atomic rename, so a reader (the worker on restart, or the scoring
  service wanting River's opinion) sees the previous checkpoint or the new one, never a mix.

``load_model`` is what the service uses: it reads only ``latest.pkl``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streaming.river_model import OnlineModel

FORMAT = 1


def river_dir(settings=None) -> Path:
    if settings is None:
        from ml.settings import get_settings

        settings = get_settings()
    return settings.data_dir / "streaming" / "river"


def _atomic_write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
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


@dataclass
class Checkpoint:
    model: OnlineModel
    position: dict[str, int]  # "topic:partition" -> next offset to read
    state: dict[str, Any] = field(default_factory=dict)  # pending features, label buffer, store snapshot
    stats: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    saved_at: float = 0.0


def save(directory: Path, ckpt: Checkpoint) -> Path:
    """Write the state file, then commit ``latest.pkl`` pointing at it; drop older state files."""
    directory.mkdir(parents=True, exist_ok=True)
    ckpt.saved_at = time.time()
    state_name = f"state-{ckpt.seq:08d}.pkl"
    _atomic_write(directory / state_name, ckpt.state)
    head = {"format": FORMAT, "seq": ckpt.seq, "model": ckpt.model, "position": ckpt.position,
            "stats": ckpt.stats, "saved_at": ckpt.saved_at, "state_file": state_name}
    _atomic_write(directory / "latest.pkl", head)
    for old in directory.glob("state-*.pkl"):
        if old.name != state_name:
            old.unlink(missing_ok=True)
    return directory / "latest.pkl"


def load(directory: Path) -> Checkpoint | None:
    head_path = directory / "latest.pkl"
    if not head_path.exists():
        return None
    with open(head_path, "rb") as f:
        head = pickle.load(f)
    if head.get("format") != FORMAT:
        raise ValueError(f"{head_path}: checkpoint format {head.get('format')} is not {FORMAT}")
    with open(directory / head["state_file"], "rb") as f:
        state = pickle.load(f)
    return Checkpoint(model=head["model"], position=head["position"], state=state, stats=head["stats"],
                      seq=head["seq"], saved_at=head["saved_at"])


def load_model(path: Path | None = None) -> OnlineModel | None:
    """The River model of the latest checkpoint (for the scoring service), or None if there is none yet.

    ``path`` is ``latest.pkl`` or its directory (default ``<data_dir>/streaming/river``).
    """
    path = Path(path) if path is not None else river_dir()
    if path.is_dir():
        path = path / "latest.pkl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return pickle.load(f)["model"]


# --------------------------------------------------------------------- in-process store snapshot (adapter)

_MEMORY_FIELDS = ("_entities", "_txs", "_tx_order", "_latest_us", "lookback_us", "fraud_entities")


def snapshot_store(store) -> dict | None:
    """The in-process store's state (it holds a lock, so it is not picklable as is); None for Redis."""
    from streaming.online_store import MemoryStore

    if not isinstance(store, MemoryStore):
        return None  # Redis keeps its own state; replays into it are idempotent by transaction_id
    # References, not copies: the worker is single-threaded and pickles them right away in ``save``.
    return {k: getattr(store, k) for k in _MEMORY_FIELDS}


def restore_store(store, snap: dict | None) -> None:
    from streaming.online_store import MemoryStore

    if snap is None or not isinstance(store, MemoryStore):
        return
    with store._lock:
        for k, v in snap.items():
            setattr(store, k, v)
