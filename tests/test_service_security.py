"""The scoring service's trust boundary through HTTP (the real ASGI app, in process): bearer tokens and least
privilege, loopback-only serving without tokens, the contract's bounds on every field, body size and type,
per-transaction failure isolation, logs of rejected requests without their values, a truthful OpenAPI
document (schemathesis against it), Redis credentials, and /livez during a Redis stall."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from datetime import datetime

import pytest

from ml.settings import export_tool_env

export_tool_env()  # BENTOML_HOME inside the tests' private data dir, before BentoML reads it

from conftest import private_redis_store  # noqa: E402
from test_service import ADMIN, API_TOKEN, AUTH, TX, _client, _columns  # noqa: E402

from bento import security  # noqa: E402
from ml.champion import champion_tag  # noqa: E402
from tests._training_helpers import save_standin_champion  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def champion() -> str:
    return champion_tag() or save_standin_champion(n_trees=20)


@pytest.fixture
def client(monkeypatch):
    with _client(monkeypatch, FRAUD_ONLINE_STORE="memory") as c:
        yield c


def _tx(**change) -> dict:
    return {**TX, "transaction_id": f"sec-{uuid.uuid4().hex[:12]}", **change}


# -- authentication and least privilege --------------------------------------------------------------------
def test_scoring_needs_the_token(client) -> None:
    r = client.post("/score", json=_tx(), headers={"Authorization": ""})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), r.text
    r = client.post("/score", json=_tx(), headers={"Authorization": "Bearer wrong-token-0123456789abcdef"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    r = client.post("/score", json=_tx(), headers={"Authorization": f"Basic {API_TOKEN}"})
    assert r.status_code == 401
    for route, body in (("/score_batch", {"transactions": [_tx()]}), ("/score_columns", _columns([_tx()]))):
        assert client.post(route, json=body, headers={"Authorization": ""}).status_code == 401
        assert client.post(route, json=body).status_code == 200
    r = client.post("/score", json=_tx())
    assert r.status_code == 200 and r.headers["x-request-id"], r.text
    assert client.post("/score", json=_tx(), headers=ADMIN).status_code == 200  # admin may score


def test_reload_needs_the_admin_token(client) -> None:
    r = client.post("/reload")  # the scoring token
    assert r.status_code == 403 and "admin" in r.json()["error"]
    assert client.post("/reload", headers={"Authorization": ""}).status_code == 401
    r = client.post("/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json()["model_tag"], r.text


def test_probes_and_docs_stay_open(client) -> None:
    bare = {"Authorization": ""}
    assert client.get("/livez", headers=bare).status_code == 200
    assert client.get("/readyz", headers=bare).status_code == 200
    # /metrics answers only under `bentoml serve` (test_service.test_bentoml_serve_process, without a token).
    assert client.get("/docs.json", headers=bare).status_code == 200


def test_without_tokens_only_loopback_clients_score(monkeypatch) -> None:
    with _client(monkeypatch, headers={}, FRAUD_ONLINE_STORE="memory", FRAUD_API_TOKEN="",
                 FRAUD_ADMIN_TOKEN="") as remote:
        r = remote.post("/score", json=_tx())
        assert r.status_code == 403 and "loopback" in r.json()["error"], r.text
    with _client(monkeypatch, client=("127.0.0.1", 50000), headers={}, FRAUD_ONLINE_STORE="memory",
                 FRAUD_API_TOKEN="", FRAUD_ADMIN_TOKEN="") as local:
        assert local.post("/score", json=_tx()).status_code == 200
        r = local.post("/reload")
        assert r.status_code == 403 and "FRAUD_ADMIN_TOKEN is not set" in r.json()["error"]


def test_network_bind_without_token_is_refused() -> None:
    policy = security.AccessPolicy(None, None)
    security.check_bind(policy, ["127.0.0.1", "::1", "localhost", ""])
    for host in ("0.0.0.0", "10.1.2.3", "::"):
        with pytest.raises(RuntimeError, match="FRAUD_API_TOKEN"):
            security.check_bind(policy, ["127.0.0.1", host])
    security.check_bind(security.AccessPolicy(b"x" * 32, None), ["0.0.0.0"])
    assert "0.0.0.0" in security.requested_hosts(["bentoml", "serve", "--host", "0.0.0.0"])
    assert "10.0.0.1" in security.requested_hosts(["bentoml", "serve", "--host=10.0.0.1"])
    with socket.socket() as s:  # a BentoML worker is handed its listening socket as --fd
        s.bind(("127.0.0.1", 0))
        assert "127.0.0.1" in security.requested_hosts(["worker", "--fd", str(s.fileno())])


def test_short_tokens_are_refused(monkeypatch) -> None:
    monkeypatch.setenv("FRAUD_API_TOKEN", "short")
    with pytest.raises(RuntimeError, match="at least 16"):
        security.AccessPolicy.from_env()


# -- bounds ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    ({"tx_amount": 1.5e308}, "tx_amount"),
    ({"tx_amount": 1_000_001}, "tx_amount"),
    ({"tx_amount": True}, "tx_amount"),
    ({"tx_datetime": "0001-01-01T00:00:00+01:00"}, "tx_datetime"),  # OverflowError converting to UTC
    ({"tx_datetime": "9999-12-31T23:59:00-01:00"}, "tx_datetime"),
    ({"tx_datetime": "1500-06-01T00:00:00Z"}, "tx_datetime"),
    ({"tx_datetime": "9999-06-01T00:00:00Z"}, "tx_datetime"),
    ({"tx_datetime": 1538352000000}, "tx_datetime"),  # a bare number: seconds or milliseconds?
    ({"customer_id": "c" * 65}, "customer_id"),
    ({"customer_id": "c" * 1_000_000}, "customer_id"),
    ({"customer_id": "c\u00851"}, "customer_id"),  # NEL
    ({"terminal_id": "t\u20281"}, "terminal_id"),  # line separator
    ({"transaction_id": "   "}, "transaction_id"),
    ({"transaction_id": 10**70}, "transaction_id"),
])
def test_out_of_contract_values_are_400_with_field(client, change, field) -> None:
    r = client.post("/score", json=_tx(**change))
    assert r.status_code == 400, r.text
    assert any(field in d["loc"] for d in r.json()["detail"]), r.text
    r = client.post("/score_batch", json={"transactions": [_tx(), _tx(**change)]})
    assert r.status_code == 400 and field in r.text, r.text
    cols = _columns([_tx(tx_datetime="2018-09-30T12:00:00Z"), _tx(**change)])
    r = client.post("/score_columns", json=cols)
    assert r.status_code == 400, r.text
    assert any(d["loc"][0] == field for d in r.json()["detail"]), r.text


def test_times_are_utc(client) -> None:
    """An offset is converted to UTC: the same instant scores the same, whichever way it is written."""
    a = client.post("/score", json=_tx(customer_id="utc-a", tx_datetime="2018-09-30T14:00:00+02:00")).json()
    b = client.post("/score", json=_tx(customer_id="utc-b", tx_datetime="2018-09-30T12:00:00")).json()
    assert a["fraud_probability"] == b["fraud_probability"]
    cols = _columns([_tx(tx_datetime="2018-09-30T14:00:00+02:00"), _tx(tx_datetime="2018-09-30T12:00:01Z")])
    assert client.post("/score_columns", json=cols).status_code == 200


def test_poisoned_amounts_cannot_reach_the_state(client) -> None:
    """Two /score calls with 1.5e308 once made every later request of that customer a 500 (fsum overflow)."""
    for _ in range(2):
        assert client.post("/score", json=_tx(customer_id="poison", tx_amount=1.5e308)).status_code == 400
    r = client.post("/score", json=_tx(customer_id="poison", tx_amount=12.0))
    assert r.status_code == 200, r.text


def test_body_size_and_type(client) -> None:
    big = b'{"transaction_id": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    r = client.post("/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "FRAUD_MAX_BODY_BYTES" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(6):
            yield b" " * (1024 * 1024)

    r = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    body = json.dumps(_tx()).encode()
    r = client.post("/score", content=body, headers={"content-type": "multipart/form-data"})
    assert r.status_code == 415
    r = client.post("/score", files={"f": ("tx.json", b"{}")})
    assert r.status_code == 415
    r = client.post("/score", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415
    json_utf8 = {"content-type": "application/json; charset=utf-8"}
    r = client.post("/score", content=json.dumps(_tx()), headers=json_utf8)
    assert r.status_code == 200, r.text
    unauth = client.post("/score", content=big, headers={"content-type": "text/plain", "Authorization": ""})
    assert unauth.status_code == 401  # who may call is checked before what they send


def test_a_maximum_columns_request_fits_the_body_limit(client) -> None:
    """A 10,000-transaction /score_columns request, longest ids and times, fits FRAUD_MAX_BODY_BYTES."""
    from bento.schemas import MAX_BATCH

    n = MAX_BATCH
    cols = {"transaction_id": [f"{k:064d}" for k in range(n)],
            "tx_datetime": ["2018-09-30T12:00:00.123456+01:00"] * n,
            "customer_id": [f"c{k:063d}" for k in range(n)], "terminal_id": [f"t{k:063d}" for k in range(n)],
            "tx_amount": [999999.99] * n}
    body = json.dumps(cols).encode()
    assert len(body) < security.DEFAULT_MAX_BODY
    r = client.post("/score_columns", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["decision"]) == n, r.text


# -- failure isolation -------------------------------------------------------------------------------------
def test_one_bad_transaction_fails_only_itself() -> None:
    """A drain that fails for a reason of one transaction (here: a customer whose state an older version let
    overflow, which fails the one-by-one feature path with OverflowError) is retried one transaction at a
    time: the other requests of the drain are scored, and the state is applied in arrival order."""
    from bento.scorer import MicroBatcher, Scorer
    from ml.online.store import MemoryStore

    def tx(i: int, customer: str, amount: float) -> dict:
        return {"transaction_id": f"iso-{i}", "tx_datetime": datetime(2018, 9, 30, 12, 0, i),
                "customer_id": customer, "terminal_id": f"t-{i}", "tx_amount": amount}

    class Fragile(Scorer):  # as the one-by-one path does: any chunk holding the poisoned customer fails
        async def score_async(self, txs, reasons=True):
            if len(txs) > 1 and any(t["customer_id"] == "poisoned" for t in txs):
                raise OverflowError("intermediate overflow in fsum")
            return await super().score_async(txs, reasons)

    scorer = Fragile(store=MemoryStore())
    scorer.load()
    scorer.score([tx(0, "poisoned", 1.5e308)])  # straight to the scorer: the schema refuses these
    scorer.score([tx(1, "poisoned", 1.5e308)])
    batcher = MicroBatcher(scorer)
    txs = [tx(10 + i, "poisoned" if i == 7 else f"fine-{i}", 20.0) for i in range(30)]

    async def all_at_once():
        return await asyncio.gather(*(batcher.score(t) for t in txs), return_exceptions=True)

    got = asyncio.run(all_at_once())
    batcher.close()
    assert batcher.drains == 1
    failed = [i for i, r in enumerate(got) if isinstance(r, BaseException)]
    assert failed == [7] and isinstance(got[7], OverflowError)
    expected = Scorer(store=MemoryStore())
    expected.load()
    want = [expected.score([t])[0] for i, t in enumerate(txs) if i != 7]
    assert [r.fraud_probability for i, r in enumerate(got) if i != 7] == [w.fraud_probability for w in want]


# -- logs --------------------------------------------------------------------------------------------------
def test_rejections_are_logged_with_request_id_and_fields_not_values(client, caplog) -> None:
    card = "4111111111111111"
    with caplog.at_level(logging.INFO):
        r = client.post("/score", json=_tx(customer_id=card + "\u2028", tx_amount=-3),
                        headers={**AUTH, "X-Request-ID": "req-abc.123"})
    assert r.status_code == 400 and r.headers["x-request-id"] == "req-abc.123"
    text = "\n".join(rec.getMessage() + (rec.exc_text or "") for rec in caplog.records)
    assert card not in text and "Traceback" not in text
    line = next(rec.getMessage() for rec in caplog.records if "req-abc.123" in rec.getMessage())
    assert "/score" in line and "customer_id" in line and "tx_amount" in line


# -- the OpenAPI document ----------------------------------------------------------------------------------
def test_openapi_tells_the_truth(client) -> None:
    spec = client.get("/docs.json").json()
    op = spec["paths"]["/score"]["post"]
    assert {"200", "400", "401", "403", "413", "415", "503"} <= set(op["responses"])
    assert op["security"] == [{"bearerAuth": []}]
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert spec["paths"]["/reload"]["post"]["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"].get("/livez", {}).get("get", {})
    body = op["requestBody"]["content"]["application/json"]["schema"]
    assert {"type": "integer"} in body["properties"]["customer_id"]["anyOf"]  # ids: strings or integers
    assert body["example"]["tx_amount"] == 57.35
    result = op["responses"]["200"]["content"]["application/json"]["schema"]
    assert result["properties"]["online_model_probability"]["nullable"] is True
    text = json.dumps(spec)
    assert '"type": "null"' not in text and '"example": "string"' not in text


def _fuzz(operation, headers: dict, examples: int, calls: list) -> None:
    """Schemathesis' generated requests for one operation, valid and invalid ones, each checked against the
    document."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(operation.as_strategy(), operation.as_strategy(GenerationMode.NEGATIVE)))
    def run(case) -> None:
        calls.append(operation.path)
        case.call_and_validate(headers=headers, checks=checks)

    run()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_schemathesis_finds_no_server_error_and_no_schema_violation(monkeypatch, tmp_path) -> None:
    """Schemathesis against the ASGI app (its own document): >= 1,000 generated requests over every
    operation, valid and invalid, with the scoring token (the admin token for /reload). No 5xx, and every
    answer has a declared status, content type and a body of the declared schema."""
    import schemathesis

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # as `bentoml serve` sets it, for /metrics
    app = _client(monkeypatch, FRAUD_ONLINE_STORE="memory").app  # schemathesis runs its lifespan
    schema = schemathesis.openapi.from_asgi("/docs.json", app)
    calls: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        admin = operation.path in security.ADMIN_PATHS
        _fuzz(operation, ADMIN if admin else AUTH, 40 if admin else 350, calls)
    assert len(calls) >= 1000 and {"/score", "/score_batch", "/score_columns", "/reload"} <= set(calls)


# -- Redis: credentials and a stall ------------------------------------------------------------------------
@pytest.mark.redis
def test_redis_url_with_a_password(monkeypatch) -> None:
    """A URL with user and password reaches Redis as an ACL login (a user made for the test on the shared
    Redis, limited to its key prefix, deleted after); the password never appears in an answer."""
    from ml.online.redis_store import RedisStore, redact_url

    admin = private_redis_store("acl")
    user, password = f"fraud-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.client.execute_command("ACL", "SETUSER", user, "on", f">{password}", f"~{admin.prefix}*", "+@all")
    try:
        assert redact_url(f"rediss://{user}:{password}@db.example:6380/0") == f"rediss://{user}:***@db.example:6380/0"
        store = RedisStore(f"redis://{user}:{password}@127.0.0.1:6379/0", prefix=admin.prefix)
        store.ping()
        assert store.client.execute_command("ACL", "WHOAMI") == user
        url = f"redis://{user}:{password}@127.0.0.1:6379/0"
        with _client(monkeypatch, FRAUD_ONLINE_STORE="redis", FRAUD_REDIS_URL=url,
                     FRAUD_REDIS_PREFIX=admin.prefix) as c:
            assert c.post("/score", json=_tx()).status_code == 200
        wrong = f"redis://{user}:not-{password}@127.0.0.1:6379/0"
        with _client(monkeypatch, FRAUD_ONLINE_STORE="redis", FRAUD_REDIS_URL=wrong,
                     FRAUD_REDIS_PREFIX=admin.prefix) as c:
            r = c.post("/score", json=_tx())
            assert r.status_code == 503 and password not in r.text
            ready = c.get("/readyz")
            assert ready.status_code == 503 and password not in ready.text and "***" in ready.text
        store.close()
    finally:
        admin.client.execute_command("ACL", "DELUSER", user)
        admin.clear()


class _StallingProxy:
    """A TCP proxy to the shared Redis that can stop forwarding (a stalled Redis, as the client sees it)."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 6379)) -> None:
        self.target, self.stalled = target, threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.stalled.is_set():  # hold the bytes: the reply never comes while stalled
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
        for s in self._socks:
            s.close()


@pytest.mark.redis
def test_livez_answers_during_a_redis_stall(monkeypatch) -> None:
    """Redis stops answering: /livez still answers within 100 ms while /score waits for Redis (off the event
    loop), and /score fails closed with 503 within its timeout instead of hanging."""
    base = private_redis_store("stall")
    proxy = _StallingProxy()
    try:
        with _client(monkeypatch, FRAUD_ONLINE_STORE="redis", FRAUD_REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
                     FRAUD_REDIS_PREFIX=base.prefix, FRAUD_REDIS_TIMEOUT_S="1.0",
                     FRAUD_STORE_FAILURE="closed") as c:
            assert c.post("/score", json=_tx()).status_code == 200
            proxy.stalled.set()
            answers: list = []
            scoring = [threading.Thread(target=lambda: answers.append(
                (c.post("/score", json=_tx()), time.monotonic()))) for _ in range(3)]
            t0 = time.monotonic()
            for t in scoring:
                t.start()
            time.sleep(0.2)  # the drain is now awaiting Redis, off the event loop
            latencies = []
            for _ in range(5):
                s = time.perf_counter()
                assert c.get("/livez").status_code == 200
                latencies.append(time.perf_counter() - s)
            for t in scoring:
                t.join(timeout=10)
            assert max(latencies) < 0.1, latencies
            assert len(answers) == 3
            for r, done in answers:
                assert r.status_code == 503 and "online store" in r.text, r.text
                assert done - t0 < 5
            proxy.stalled.clear()
            assert c.post("/score", json=_tx()).status_code == 200  # recovers by itself
    finally:
        proxy.close()
        base.clear()
