"""The online scorer behind the BentoML service: online features -> champion -> probability, decision, reasons.

Kept free of BentoML's HTTP layer so it can be reasoned about (and benchmarked) on its own. (Scoring a
warehouse date range with the offline features, ``fraud score``, is ``ml.batch_scoring``.)

Online-store failure policy (``FRAUD_STORE_FAILURE``):
- ``closed`` (default): a transaction that cannot get its features is not scored; the service answers 503
  with the reason, ``/readyz`` turns unready, and the payment switch applies its own fallback.
- ``open``: score anyway from the transaction alone (cold-start entity features), marked ``degraded``.
Either way no state is kept about the outage: the next request simply tries the store again, so the service
recovers by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from bento.explanations import Explainer
from bento.online_model import RiverWatcher, river_opinions
from bento.schemas import ColumnsResult, ScoreResult
from ml.champion import Champion, champion_tag, load_champion
from ml.features.per_transaction import TxEvent, compute_features, tx_event
from ml.features.spec import FEATURE_NAMES
from ml.features.vectorised import TxColumns
from ml.online.factory import make_store
from ml.online.features import OnlineFeatures
from ml.online.store import OnlineStore, StoreUnavailable
from ml.settings import Settings, get_settings

log = logging.getLogger(__name__)
POLICIES = ("closed", "open")
_RESULTS = TypeAdapter(list[ScoreResult])


class ModelNotLoaded(RuntimeError):
    """No champion could be loaded yet (the service answers 503 and stays unready)."""


class Scorer:
    def __init__(self, settings: Settings | None = None, store: OnlineStore | None = None,
                 policy: str | None = None, n_reasons: int = 3, threshold: float | None = None):
        self.settings = settings or get_settings()
        self.policy = policy or self.settings.store_failure
        if self.policy not in POLICIES:
            raise ValueError(f"FRAUD_STORE_FAILURE must be one of {POLICIES}, not {self.policy!r}")
        self.store = store or make_store(self.settings)
        self.features = OnlineFeatures(self.store)
        self.n_reasons = n_reasons
        self.threshold = threshold if threshold is not None else self.settings.threshold
        self.explainer: Explainer | None = None  # the champion, with its reasons
        self.load_error: str | None = "not loaded yet"
        self.river = RiverWatcher(self.settings.data_dir)
        self._reload_lock = threading.Lock()

    # -- model lifecycle -------------------------------------------------------------------------------
    def load(self, tag: str | None = None) -> bool:
        """Load ``tag`` (default: latest champion), swap it in atomically; keep the old one on error."""
        with self._reload_lock:
            try:
                # One thread: a request is one small prediction, where threads only add overhead.
                champ = load_champion(tag, threshold=self.threshold, nthread=1)
                explainer = Explainer.of(champ, exact=self.settings.exact_shap)
                explainer.warm_up()
            except Exception as exc:
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("cannot load champion %s: %s", tag or "latest", self.load_error)
                return False
            self.explainer, self.load_error = explainer, None  # one reference swap: in-flight requests keep theirs
            log.info("serving champion %s", champ.tag)
            return True

    @property
    def champion(self) -> Champion | None:
        return self.explainer.champion if self.explainer is not None else None

    def reload_if_newer(self, actor: str = "service:/reload") -> str | None:
        """Pick up a newly promoted champion; returns its tag if one was loaded (recorded in the decision
        log as done by ``actor``)."""
        self.river.refresh()
        tag = champion_tag()
        current = self.champion.tag if self.champion else None
        if tag is not None and tag != current and self.load(tag):
            _audit_reload(actor, current, tag)
            return tag
        return None

    def readiness(self) -> tuple[bool, str]:
        if self.champion is None:
            return False, f"model not loaded ({self.load_error})"
        try:
            self.store.ping()
        except StoreUnavailable as exc:
            return False, f"online store unreachable ({exc}); failure policy: {self.policy}"
        return True, f"ready: model {self.champion.tag}, store {type(self.store).__name__}"

    # -- scoring ---------------------------------------------------------------------------------------
    def score(self, txs: Sequence[Mapping[str, Any] | TxEvent], reasons: bool = True) -> list[ScoreResult]:
        """Score transactions (each applied to the online state). Raises StoreUnavailable (fail-closed)."""
        explainer = self._explainer()
        events = [tx_event(tx) for tx in txs]
        spec_x, degraded = self._features(lambda: self.features.features_matrix(events), events)
        return self._results(explainer, events, spec_x, degraded, reasons)

    async def score_async(self, txs: Sequence[Mapping[str, Any] | TxEvent], reasons: bool = True
                          ) -> list[ScoreResult]:
        """``score`` for a caller on the event loop (the /score micro-batcher): the online store's round trip
        is awaited, the computing done in place."""
        explainer = self._explainer()
        events = [tx_event(tx) for tx in txs]
        try:
            spec_x, degraded = await self.features.features_matrix_async(events), False
        except StoreUnavailable:
            if self.policy == "closed":
                raise
            spec_x, degraded = self._cold(events), True
        return self._results(explainer, events, spec_x, degraded, reasons)

    def _results(self, explainer: Explainer, events: list[TxEvent], spec_x: np.ndarray, degraded: bool,
                 reasons: bool) -> list[ScoreResult]:
        champ = explainer.champion
        x = spec_x if champ.columns is None else spec_x[:, champ.columns]
        proba, contribs = explainer.predict_explain(x) if reasons else (champ.predict(x), None)
        decline = proba >= champ.threshold
        opinions = river_opinions(self.river.model, spec_x, FEATURE_NAMES)
        rows = []
        for i, (ev, p, d, opinion) in enumerate(zip(events, proba.tolist(), decline.tolist(), opinions,
                                                    strict=True)):
            rows.append({"transaction_id": ev.transaction_id, "fraud_probability": p,
                         "decision": "decline" if d else "approve", "threshold": champ.threshold,
                         "model_tag": champ.tag,
                         "reasons": self._reasons(champ, x[i], contribs[i]) if contribs is not None else [],
                         "online_model_probability": opinion, "degraded": degraded})
        # One pydantic-core call for all: 3x faster than model_construct per result, and checked.
        return _RESULTS.validate_python(rows)

    def score_columns(self, txs: TxColumns) -> ColumnsResult:
        """Bulk scoring: transactions as columns in, columns out, no reasons and no per-transaction objects
        on the way (``score`` builds an event and a result model per transaction). Transactions in time
        order share store calls; others are applied one by one, in the order given, as by ``score``."""
        champ = self._explainer().champion
        if txs.in_time_order():
            spec_x, degraded = self._features(lambda: self.features.features_matrix(txs), txs)
        else:
            events = [txs.event(k) for k in range(len(txs))]
            spec_x, degraded = self._features(lambda: self.features.features_matrix(events), events)
        proba = champ.predict_spec(spec_x)
        decision = np.where(proba >= champ.threshold, "decline", "approve").tolist()
        opinions = (river_opinions(self.river.model, spec_x, FEATURE_NAMES) if self.river.model is not None
                    else None)
        return ColumnsResult.model_construct(
            transaction_id=txs.ids, fraud_probability=proba.tolist(), decision=decision,
            threshold=champ.threshold, model_tag=champ.tag, online_model_probability=opinions,
            degraded=degraded)

    def _explainer(self) -> Explainer:
        explainer = self.explainer
        if explainer is None:
            raise ModelNotLoaded(f"no champion loaded: {self.load_error}")
        return explainer

    def _features(self, online: Callable[[], np.ndarray], txs: Sequence[TxEvent] | TxColumns
                  ) -> tuple[np.ndarray, bool]:
        """The feature matrix from the online store, and whether it is degraded: under the fail-open policy
        a store outage gives the transactions alone (``_cold``)."""
        try:
            return online(), False
        except StoreUnavailable:
            if self.policy == "closed":
                raise
        return self._cold(txs), True

    @staticmethod
    def _cold(txs: Sequence[TxEvent] | TxColumns) -> np.ndarray:
        """Features from the transactions alone, as for customers and terminals never seen."""
        events = txs if not isinstance(txs, TxColumns) else [txs.event(k) for k in range(len(txs))]
        cold = [compute_features(ev, {}) for ev in events]
        return np.array([[f[n] for n in FEATURE_NAMES] for f in cold]).reshape(len(events), -1)

    def _reasons(self, champ: Champion, row: np.ndarray, contrib: np.ndarray) -> list[dict[str, Any]]:
        top = np.argsort(-contrib, kind="stable")[: self.n_reasons].tolist()
        values, contribs = row.tolist(), contrib.tolist()
        return [{"feature": champ.feature_names[j], "value": values[j], "contribution": contribs[j]}
                for j in top]


def _audit_reload(actor: str, from_tag: str | None, to_tag: str) -> None:
    from ml.registry import audit

    try:
        audit("reload", actor, "service picked up the latest champion", from_tag, to_tag, pid=os.getpid())
    except Exception as exc:  # a read-only data dir must not undo a reload that happened
        log.warning("reload of %s not recorded in the decision log: %s", to_tag, exc)


def reload_signal_path(settings: Settings) -> Path:
    """The file ``/reload`` touches so that every worker sharing the model store reloads, not only the one
    that answered (workers of one ``bentoml serve`` share no memory)."""
    return settings.bentoml_home / "fraud-reload-requested"


class ChampionPoller(threading.Thread):
    """Background check for a newly promoted champion every ``interval_s`` seconds (0: no periodic check),
    and within ``signal_check_s`` of another worker's ``/reload`` (the signal file's change time)."""

    def __init__(self, scorer: Scorer, interval_s: float, signal: Path | None = None,
                 signal_check_s: float = 1.0):
        super().__init__(daemon=True, name="champion-poller")
        self.scorer, self.interval_s, self.signal = scorer, interval_s, signal
        self.tick_s = min(interval_s, signal_check_s) if interval_s > 0 else signal_check_s
        self._seen = _mtime(signal)
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_poll = time.monotonic() + self.interval_s
        while not self._stop_event.wait(self.tick_s):
            seen = _mtime(self.signal)  # a stat a second: no model-store scan unless asked
            due = self.interval_s > 0 and time.monotonic() >= next_poll
            if seen == self._seen and not due:
                continue
            self._seen = seen
            next_poll = time.monotonic() + self.interval_s
            try:
                self.scorer.reload_if_newer(actor="service:poller")
            except Exception as exc:  # never let the poller die silently on a transient store error
                log.warning("champion poll failed: %s", exc)

    def signal_others(self) -> None:
        """Tell the other workers' pollers to check for a new champion now (this one just did)."""
        if self.signal is None:
            return
        try:
            self.signal.parent.mkdir(parents=True, exist_ok=True)
            self.signal.write_text(f"{time.time_ns()} {os.getpid()}\n")
        except OSError as exc:  # a read-only model store: the others still follow at their next poll
            log.warning("cannot signal a reload at %s: %s", self.signal, exc)
            return
        self._seen = _mtime(self.signal)

    def stop(self) -> None:
        self._stop_event.set()


def _mtime(path: Path | None) -> int | None:
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except FileNotFoundError:
        return None


class MicroBatcher:
    """Scores concurrent ``/score`` requests together, without waiting for any.

    A request queues its transaction and, unless a drain is already under way, schedules one on the event
    loop (``call_soon``); the drain scores everything queued by then as one ``Scorer.score_async`` call: one
    store round trip, one DMatrix, one prediction. At low load a drain holds one transaction, so latency is
    that of scoring it alone; under load the requests that arrived while the previous drain ran share the
    next one, so the per-call costs (Redis round trip, DMatrix, XGBoost call) are paid once per drain
    instead of once per request. One drain at a time, so transactions are applied to the online state in
    arrival order, as they would be one by one. The drain computes on the loop and awaits the store there:
    the loop answers other requests (/livez, /readyz) while Redis is due, and a stalled Redis costs the
    drain its socket timeout, not the loop. (On a thread, each handover of the GIL between the loop and the
    drain waited for the interpreter's switch interval: max /score halved.)

    A drain that fails for a reason of its own transactions (not StoreUnavailable or ModelNotLoaded, which
    every transaction shares) is retried one transaction at a time, so one bad transaction fails only itself.
    """

    def __init__(self, scorer: Scorer, max_size: int = 256, on_drain: Callable[[int], None] | None = None):
        self.scorer, self.max_size, self.on_drain = scorer, max_size, on_drain
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._scheduled = False  # a drain is scheduled or running: new requests wait for the next one
        self.defer = scorer.settings.drain_defer
        self.drains = 0  # scoring calls so far (the service exports their sizes as a histogram)
        self._task: asyncio.Task | None = None  # the running drain (a reference keeps it alive)

    async def score(self, tx: Any) -> ScoreResult:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._pending.append((tx, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._drain, loop, self.defer)
        return await fut

    def _drain(self, loop: asyncio.AbstractEventLoop, defer: int) -> None:
        if defer > 0:  # let the loop poll its sockets once more: requests already received join this drain
            loop.call_soon(self._drain, loop, defer - 1)
            return
        pending, self._pending = self._pending, []
        pending = [(tx, fut) for tx, fut in pending if not fut.done()]  # clients that went away
        if not pending:
            self._next(loop)
            return
        self._task = loop.create_task(self._score_all(loop, pending))

    async def _score_all(self, loop: asyncio.AbstractEventLoop,
                         pending: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            for i in range(0, len(pending), self.max_size):
                chunk = pending[i:i + self.max_size]
                self.drains += 1
                if self.on_drain is not None:
                    self.on_drain(len(chunk))
                txs = [tx for tx, _ in chunk]
                try:
                    results: list = await self.scorer.score_async(txs)
                except (StoreUnavailable, ModelNotLoaded) as exc:  # shared by the chunk: each request gets it
                    results = [exc] * len(chunk)
                except Exception as exc:
                    if len(chunk) == 1:
                        results = [exc]
                    else:
                        log.warning("a /score drain of %d failed (%s): scoring its transactions one by one",
                                    len(chunk), type(exc).__name__)
                        results = [await self._one(tx) for tx in txs]
                for (_, fut), result in zip(chunk, results, strict=True):
                    if fut.done():  # a client that went away cancelled its future
                        continue
                    if isinstance(result, BaseException):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            for _, fut in pending:  # only if the drain itself broke (cancelled at shutdown, say)
                if not fut.done():
                    fut.set_exception(RuntimeError("the scoring drain stopped"))
            self._next(loop)

    async def _one(self, tx: Any) -> ScoreResult | BaseException:
        try:
            return (await self.scorer.score_async([tx]))[0]
        except Exception as exc:
            return exc

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending:  # arrived while the drain ran: the next drain, at once
            loop.call_soon(self._drain, loop, 0)
        else:
            self._scheduled = False

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
