"""BentoML scoring service: ``make serve``, or ``BENTOML_HOME=data/bentoml bentoml serve`` from the repo root
(= ``bento.service:FraudScorer``). ``BENTOML_HOME`` is the model store that holds the champion: the project's
is ``<FRAUD_DATA_DIR>/bentoml`` (BentoML's own default, ``~/bentoml``, has no champion).

Endpoints: ``POST /score`` (one transaction), ``POST /score_batch`` (up to ``MAX_BATCH``),
``POST /score_columns`` (the same as columns: bulk scoring), ``POST /reload`` (pick up a newly promoted
champion now, in every worker), plus BentoML's ``/livez``, ``/readyz`` (model loaded and online store
reachable; the 503 body says why not), ``/metrics`` (Prometheus), the OpenAPI UI at ``/`` and its document
at ``/docs.json``.

Configuration (environment): ``FRAUD_ONLINE_STORE`` memory|redis, ``FRAUD_REDIS_URL``, ``FRAUD_REDIS_PREFIX``,
``FRAUD_STORE_FAILURE`` closed|open, ``FRAUD_THRESHOLD`` (overrides the champion's), ``FRAUD_MODEL_POLL_S``
(seconds between checks for a new champion, default 30, 0 = off), ``FRAUD_SERVE_WORKERS`` (default 1;
use Redis for more than one, the in-process store is private to a worker), ``FRAUD_EXACT_SHAP`` (1: reasons
from exact TreeSHAP instead of Saabas attributions), ``FRAUD_TRACE_SCORING`` (1: OpenTelemetry spans for the
scoring routes too; off by default because the middleware costs as much as scoring and no exporter is set),
``FRAUD_BULK_THREADS`` (bulk requests a worker scores at once, off the event loop; default 2),
``FRAUD_REDIS_CALL_TXS`` (transactions per Redis call, default 10,000).

Security (``bento.security``): ``FRAUD_API_TOKEN`` (bearer token of the scoring routes), ``FRAUD_ADMIN_TOKEN``
(``/reload``; may score too), ``FRAUD_SERVE_HOST`` (the address served, default 127.0.0.1; a non-loopback
one needs FRAUD_API_TOKEN, else the service refuses to start), ``FRAUD_MAX_BODY_BYTES`` (default 4 MiB).
TLS: ``bentoml serve --ssl-certfile cert.pem --ssl-keyfile key.pem``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, TypeVar

import bentoml
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from bento import security
from bento.schemas import (
    MAX_BATCH,
    BatchResult,
    ColumnsResult,
    ReloadResult,
    ScoreResult,
    Transaction,
    TransactionColumns,
    as_event,
)
from bento.scorer import ChampionPoller, MicroBatcher, ModelNotLoaded, Scorer, reload_signal_path
from ml.champion import CHAMPION_NAME
from ml.online.store import StoreUnavailable
from ml.settings import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")
_settings = get_settings()  # the service decorator takes its arguments when the module is imported
BULK_THREADS = _settings.bulk_threads  # bulk requests scored at once, per worker
_decisions = bentoml.metrics.Counter(name="fraud_decisions_total", documentation="Scored transactions.",
                                     labelnames=["decision"])
_drain_sizes = bentoml.metrics.Histogram(
    name="fraud_score_drain_size", documentation="Concurrent /score requests scored together (one store "
    "round trip, one prediction).", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
_SCORING_ROUTES = ["/score", "/score_batch", "/score_columns"]
_store_errors = bentoml.metrics.Counter(name="fraud_store_errors_total",
                                        documentation="Requests that could not reach the online store.")


def _unavailable(exc: Exception) -> JSONResponse:
    rid = security.request_id.get()
    if isinstance(exc, StoreUnavailable):
        _store_errors.inc()
        log.warning("request %s: online store unavailable: %s", rid, exc)
        return JSONResponse({"error": "online store unavailable (fail-closed policy)",
                             "detail": "the online store did not answer in time", "request_id": rid},
                            status_code=503)
    log.warning("request %s: %s", rid, exc)
    return JSONResponse({"error": "no champion model loaded", "detail": "the service is not ready",
                         "request_id": rid}, status_code=503)


@bentoml.service(
    name="fraud_scorer",
    workers=_settings.serve_workers,
    traffic={"timeout": 10},
    http={"host": security.serve_host()},
    logging={"access": {"enabled": _settings.access_log}},
    tracing={"excluded_urls": [] if _settings.trace_scoring else _SCORING_ROUTES},
)
class FraudScorer:
    # Declared so `bentoml build` packs the champion into the Bento; loaded (and hot-swapped) by Scorer.
    model = bentoml.models.BentoModel(f"{CHAMPION_NAME}:latest")

    @bentoml.on_deployment
    def _refuse_unsafe_bind() -> None:
        """Once, in the `bentoml serve` process, before anything listens: a network address without a token
        is refused (``UnsafeConfiguration``: BentoML prints it as one line and exits)."""
        security.check_bind(security.AccessPolicy.from_env(), security.requested_hosts())

    def __init__(self) -> None:
        policy = security.AccessPolicy.from_env()
        security.check_bind(policy, security.requested_hosts())  # a worker: the socket it was handed
        security.configure(policy, spec=lambda: FraudScorer.openapi_spec.asdict(), models=lambda: {
            api.route: (api.input_spec, api.output_spec) for api in FraudScorer.apis.values()})
        security.install_log_filter()
        self.scorer = Scorer()
        self.batcher = MicroBatcher(self.scorer, on_drain=_drain_sizes.observe)
        # Bulk requests are scored off the event loop, two at a time: while one waits for Redis (a third of
        # its time in a bulk request), the loop parses the next request and the other thread computes; and
        # /livez, /readyz and /score stay answered while a bulk request is scored.
        self._bulk = ThreadPoolExecutor(BULK_THREADS, thread_name_prefix="bulk-scoring")
        self._decision_counters: dict[str, object] = {}
        try:
            tag = str(self.model.tag)
        except Exception as exc:  # no champion yet: stay up, unready, and keep polling for one
            log.error("no %s in the model store (BENTOML_HOME=%s): %s", CHAMPION_NAME,
                      os.environ.get("BENTOML_HOME", "unset, BentoML's default ~/bentoml"), exc)
            tag = None
        if tag is not None:
            self.scorer.load(tag)
        self.scorer.river.refresh()
        # What start-up allocated (libraries, model) lives as long as the process: freezing it keeps the
        # full collections, whose pause is proportional to the objects tracked, out of the latency tail.
        gc.collect()
        gc.freeze()
        self.poller = ChampionPoller(self.scorer, self.scorer.settings.model_poll_s,
                                     signal=reload_signal_path(self.scorer.settings))
        self.poller.start()

    def _count(self, decision: str, n: int = 1) -> None:
        # Labelled children are cached: prometheus' labels() lookup costs as much as a feature computation.
        child = self._decision_counters.get(decision)
        if child is None:
            child = self._decision_counters[decision] = _decisions.labels(decision=decision)
        if n:
            child.inc(n)

    async def _off_loop(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._bulk, fn)

    def __is_ready__(self) -> bool:
        ok, why = self.scorer.readiness()
        if not ok:
            raise HTTPException(status_code=503, detail=why)
        return True

    @bentoml.api(route="/score")
    async def score(self, tx: Transaction, /) -> ScoreResult:
        """Score one transaction: fraud probability, decision, model tag, top reasons, River's opinion."""
        try:
            result = await self.batcher.score(as_event(tx))
        except (StoreUnavailable, ModelNotLoaded) as exc:
            return _unavailable(exc)  # type: ignore[return-value]
        self._count(result.decision)
        return result

    @bentoml.api(route="/score_batch")
    async def score_batch(
            self, transactions: Annotated[list[Transaction], Field(min_length=1, max_length=MAX_BATCH)],
            with_reasons: bool = False) -> BatchResult:
        """Score up to MAX_BATCH transactions (in time order). Reasons only if ``with_reasons``."""
        try:
            events = [as_event(t) for t in transactions]
            results = await self._off_loop(lambda: self.scorer.score(events, reasons=with_reasons))
        except (StoreUnavailable, ModelNotLoaded) as exc:
            return _unavailable(exc)  # type: ignore[return-value]
        declined = sum(1 for r in results if r.decision == "decline")
        self._count("decline", declined)
        self._count("approve", len(results) - declined)
        return BatchResult(results=results)

    @bentoml.api(route="/score_columns")
    async def score_columns(self, columns: TransactionColumns, /) -> ColumnsResult:
        """Bulk scoring: up to MAX_BATCH transactions as columns (one list per field, in time order), the
        answer as columns in the same order; no reasons. The fastest way to score many transactions."""
        try:
            result = await self._off_loop(lambda: self.scorer.score_columns(columns.as_columns()))
        except (StoreUnavailable, ModelNotLoaded) as exc:
            return _unavailable(exc)  # type: ignore[return-value]
        declined = result.decision.count("decline")
        self._count("decline", declined)
        self._count("approve", len(result.decision) - declined)
        return result

    @bentoml.api(route="/reload")
    def reload(self) -> ReloadResult:
        """Load the latest promoted champion now (without dropping requests); returns what this worker
        serves. The other workers follow within a second (the reload signal file). Admin token only."""
        loaded = self.scorer.reload_if_newer()
        self.poller.signal_others()
        champ = self.scorer.champion
        log.info("request %s: /reload: serving %s", security.request_id.get(), champ.tag if champ else None)
        return ReloadResult(reloaded=loaded is not None, model_tag=champ.tag if champ else None,
                            error=self.scorer.load_error)

    @bentoml.on_shutdown
    def _shutdown(self) -> None:
        self.poller.stop()
        self.batcher.close()
        self._bulk.shutdown(wait=True)
        self.scorer.store.close()


FraudScorer.add_asgi_middleware(security.Guard)  # authentication and request bounds before BentoML parses
