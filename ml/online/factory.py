"""The one place that turns settings into an online store (``FRAUD_ONLINE_STORE``: memory | redis)."""

from __future__ import annotations

from datetime import timedelta

from ml.features.per_transaction import WINDOW_ENTITIES
from ml.online.redis_store import RedisStore
from ml.online.store import MemoryStore, OnlineStore
from ml.settings import Settings, get_settings

# Redis keeps this much history beyond the longest window, so a transaction the stream worker replays after
# a crash (up to a checkpoint interval of event time late) still reads the window it read the first time.
# The service and the worker share that state, so both keep the same history.
REPLAY_MARGIN = timedelta(days=2)


def make_store(settings: Settings | None = None, *, prefix: str | None = None) -> OnlineStore:
    """The configured backend; ``prefix`` (default FRAUD_REDIS_PREFIX) namespaces a Redis store's keys."""
    settings = settings or get_settings()
    prefix = prefix or settings.redis_prefix
    if settings.online_store == "memory":
        return MemoryStore()
    if settings.online_store == "redis":
        entities = {e: lb + REPLAY_MARGIN for e, lb in WINDOW_ENTITIES.items()}
        return RedisStore(settings.redis_url.get_secret_value(), entities=entities,
                          **({"prefix": prefix} if prefix else {}))
    raise ValueError(f"unknown online store {settings.online_store!r} (expected 'memory' or 'redis')")
