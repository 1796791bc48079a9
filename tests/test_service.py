"""The BentoML scoring service through HTTP: valid scoring, every bad-input case, cold start, hot reload,
Redis down and back (a private redis-server on its own port; the shared one on 6379 is never touched),
and a real `bentoml serve` process answering /score, /readyz, /metrics and the OpenAPI document."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest

from ml.settings import PROJECT_ROOT, export_tool_env

export_tool_env()  # BENTOML_HOME inside the tests' private data dir, before BentoML reads it

from conftest import require_service  # noqa: E402  (pytest imports tests/conftest.py as `conftest`)

from bento.schemas import MAX_BATCH  # noqa: E402
from ml.champion import champion_tag  # noqa: E402
from tests._training_helpers import save_standin_champion  # noqa: E402

TX = {"transaction_id": "t-1", "tx_datetime": "2018-09-30T12:00:00Z", "customer_id": 7,
      "terminal_id": "T-9", "tx_amount": 42.5}
API_TOKEN, ADMIN_TOKEN = "test-api-token-0123456789abcdef", "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def champion() -> str:
    return champion_tag() or save_standin_champion(n_trees=20)


_APP = []


def _client(monkeypatch, client: tuple[str, int] = ("203.0.113.7", 50000), headers: dict | None = None,
            **env: str):
    """A client on the service's ASGI app; the service instance (built at startup) reads ``env``. By default
    both tokens are set and the client, a non-loopback address, sends the scoring token."""
    from starlette.testclient import TestClient

    from bento.service import FraudScorer

    env = {"FRAUD_MODEL_POLL_S": "0", "FRAUD_API_TOKEN": API_TOKEN, "FRAUD_ADMIN_TOKEN": ADMIN_TOKEN, **env}
    for k, v in env.items():
        if v:
            monkeypatch.setenv(k, v)
        else:
            monkeypatch.delenv(k, raising=False)
    if not _APP:  # one app per process: BentoML registers its Prometheus metrics once
        _APP.append(FraudScorer.to_asgi())
    return TestClient(_APP[0], client=client, headers=AUTH if headers is None else headers)


@pytest.fixture
def client(monkeypatch):
    with _client(monkeypatch, FRAUD_ONLINE_STORE="memory") as c:
        yield c


def test_score_valid(client) -> None:
    r = client.post("/score", json=TX)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transaction_id"] == "t-1"
    assert 0.0 <= body["fraud_probability"] <= 1.0
    assert body["decision"] in ("approve", "decline")
    assert body["model_tag"].startswith("fraud-champion:")
    assert len(body["reasons"]) == 3 and {"feature", "value", "contribution"} <= set(body["reasons"][0])
    # None without a River checkpoint; another test module's stream worker may have left one in the data dir.
    assert body["online_model_probability"] is None or 0.0 <= body["online_model_probability"] <= 1.0
    assert body["degraded"] is False
    assert client.get("/readyz").status_code == 200 and client.get("/livez").status_code == 200


def test_probability_is_the_boosters(champion: str) -> None:
    """The probability derived from the contributions (sigmoid of their sum) is XGBoost's own prediction,
    and the reasons are its contributions, whether XGBoost or numpy walks the trees."""
    import numpy as np
    import xgboost as xgb

    from bento.explanations import Explainer
    from ml.champion import load_champion

    champ = Explainer.of(load_champion(champion, nthread=1))
    assert champ.logistic
    x = np.random.default_rng(0).gamma(2.0, 20.0, size=(200, len(champ.champion.feature_names)))
    proba, contribs = champ.predict_explain(x)
    dm = xgb.DMatrix(x)
    assert np.allclose(proba, champ.champion.booster.predict(dm, validate_features=False), rtol=0, atol=1e-6)
    assert np.allclose(proba, champ.champion.predict(x), rtol=0, atol=1e-6)
    want = champ.champion.booster.predict(dm, pred_contribs=True, approx_contribs=True, validate_features=False)
    assert np.array_equal(contribs, want[:, :-1])
    # A few rows (a /score request, a micro-batch): the numpy walk of the same trees, float32 aside.
    assert champ.paths is not None
    few_proba, few = champ.predict_explain(x[:20])
    assert np.allclose(few_proba, proba[:20], rtol=0, atol=1e-6)
    assert np.allclose(few, contribs[:20], rtol=0, atol=1e-5)


def test_cold_start_then_history(client) -> None:
    """Never-seen customer/terminal: scored, not an error; its state then builds up."""
    r1 = client.post("/score", json={**TX, "transaction_id": "cold-1", "customer_id": "new-c",
                                     "terminal_id": "new-t"})
    assert r1.status_code == 200, r1.text
    from bento.scorer import Scorer
    from ml.online.store import MemoryStore

    scorer = Scorer(store=MemoryStore())
    feats = scorer.features.features_for([{**TX, "tx_datetime": "2018-09-30T12:00:00", "customer_id": "x"}])[0]
    assert feats["customer_nb_tx_1d"] == 1.0 and feats["terminal_risk_30d"] == 0.0


@pytest.mark.parametrize("payload, field", [
    ({k: v for k, v in TX.items() if k != "customer_id"}, "customer_id"),  # missing field
    ({**TX, "tx_amount": "12.5"}, "tx_amount"),  # wrong type
    ({**TX, "tx_amount": -1.0}, "tx_amount"),  # negative amount
    ({**TX, "terminal_id": {"id": 3}}, "terminal_id"),  # wrong type
    ({**TX, "transaction_id": ""}, "transaction_id"),  # empty id
    ({**TX, "tx_datetime": "yesterday"}, "tx_datetime"),  # invalid time
    ({**TX, "customer_id": "c\x1f1"}, "customer_id"),  # control character (a store separator)
])
def test_bad_input_is_400_with_reason(client, payload, field) -> None:
    r = client.post("/score", json=payload)
    assert r.status_code == 400, r.text
    assert any(field in d["loc"] for d in r.json()["detail"]), r.text


def test_malformed_json_is_400(client) -> None:
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "json" in r.text.lower()


def test_batch(client) -> None:
    txs = [{**TX, "transaction_id": f"b-{i}", "tx_datetime": f"2018-09-30T12:00:{i:02d}"} for i in range(5)]
    r = client.post("/score_batch", json={"transactions": txs})
    assert r.status_code == 200, r.text
    assert [x["transaction_id"] for x in r.json()["results"]] == [t["transaction_id"] for t in txs]
    r = client.post("/score_batch", json={"transactions": txs[:1], "with_reasons": True})
    assert len(r.json()["results"][0]["reasons"]) == 3


def test_batch_limits(client) -> None:
    r = client.post("/score_batch", json={"transactions": [TX] * (MAX_BATCH + 1)})
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["transactions"], r.text
    assert client.post("/score_batch", json={"transactions": []}).status_code == 400
    r = client.post("/score_batch", json={"transactions": [TX, {**TX, "tx_amount": -5}]})
    assert r.status_code == 400 and "tx_amount" in r.text


def _columns(txs: list[dict]) -> dict[str, list]:
    return {k: [tx[k] for tx in txs] for k in TX}


def test_columns_score_as_rows_do(client) -> None:
    """/score_columns gives the probabilities /score_batch gives the same transactions (sent again: a
    re-delivery is scored as of its time without itself, so on the same features), in the request's order."""
    txs = [{**TX, "transaction_id": f"col-{i}", "customer_id": f"cc-{i % 2}", "tx_amount": 10.0 + 30 * i,
            "tx_datetime": f"2018-09-30T13:00:{i:02d}"} for i in range(6)]
    r = client.post("/score_columns", json=_columns(txs))
    assert r.status_code == 200, r.text
    cols = r.json()
    assert cols["transaction_id"] == [t["transaction_id"] for t in txs]
    assert cols["model_tag"] and cols["degraded"] is False and len(cols["decision"]) == 6
    rows = client.post("/score_batch", json={"transactions": txs}).json()["results"]
    assert cols["fraud_probability"] == pytest.approx([x["fraud_probability"] for x in rows], abs=1e-9)
    assert cols["decision"] == [x["decision"] for x in rows]


@pytest.mark.parametrize("change, field", [
    (lambda c: {**c, "tx_amount": c["tx_amount"][:-1] + [-1.0]}, "tx_amount"),  # negative amount
    (lambda c: {**c, "customer_id": c["customer_id"][:-1]}, "customer_id"),  # columns of different lengths
    (lambda c: {k: v for k, v in c.items() if k != "terminal_id"}, "terminal_id"),  # missing column
    (lambda c: {**c, "transaction_id": ["x", ""]}, "transaction_id"),  # empty id
    (lambda c: {**c, "terminal_id": ["T", "t\x1f"]}, "terminal_id"),  # control character
    (lambda c: {**c, "tx_datetime": ["2018-09-30T12:00:00", "yesterday"]}, "tx_datetime"),  # invalid time
    (lambda c: {k: [] for k in c}, "transaction_id"),  # empty batch
    (lambda c: {k: v * (MAX_BATCH // 2 + 1) for k, v in c.items()}, "transaction_id"),  # oversized batch
])
def test_columns_bad_input_is_400_with_reason(client, change, field) -> None:
    good = _columns([TX, {**TX, "transaction_id": "t-2"}])
    r = client.post("/score_columns", json=change(good))
    assert r.status_code == 400, r.text
    assert field in r.text, r.text


def test_hot_reload(client) -> None:
    before = client.post("/score", json=TX).json()["model_tag"]
    new_tag = save_standin_champion(n_trees=10, seed=1)
    r = client.post("/reload", headers=ADMIN)
    assert r.status_code == 200 and r.json() == {"reloaded": True, "model_tag": new_tag, "error": None}
    after = client.post("/score", json={**TX, "transaction_id": "t-2"}).json()["model_tag"]
    assert (before, after) != (after, after) and after == new_tag


def test_concurrent_requests_share_a_drain() -> None:
    """Concurrent /score requests are scored together, each gets its own result, and the online state is
    applied in arrival order exactly as one by one."""
    import asyncio

    from bento.scorer import MicroBatcher, Scorer
    from ml.online.store import MemoryStore

    txs = [{"transaction_id": f"mb-{i}", "tx_datetime": datetime(2018, 9, 30, 12, 0, i),
            "customer_id": "c-mb", "terminal_id": "t-mb", "tx_amount": 10.0 + i} for i in range(20)]
    one_by_one = Scorer(store=MemoryStore())
    one_by_one.load()
    expected = [one_by_one.score([tx])[0] for tx in txs]

    scorer = Scorer(store=MemoryStore())
    scorer.load()
    batcher = MicroBatcher(scorer)

    async def all_at_once():
        return await asyncio.gather(*(batcher.score(tx) for tx in txs))

    got = asyncio.run(all_at_once())
    assert batcher.drains < len(txs)
    assert [r.transaction_id for r in got] == [tx["transaction_id"] for tx in txs]
    assert [r.fraud_probability for r in got] == [r.fraud_probability for r in expected]
    assert [r.reasons for r in got] == [r.reasons for r in expected]


def test_river_opinion_when_a_checkpoint_exists(client) -> None:
    """With a River checkpoint from the streaming worker, /score carries the online model's opinion."""
    from ml.online.checkpoint import Checkpoint, save
    from ml.online.river_model import OnlineModel
    from ml.settings import get_settings

    model = OnlineModel()
    x = {"tx_amount": 10.0, "customer_nb_tx_1d": 1.0}
    for i in range(20):
        model.learn(x, i % 2, datetime(2018, 9, 1), 0.5)
    river_dir = get_settings().river_checkpoint_dir
    save(river_dir, Checkpoint(model=model, position={}))
    try:
        assert client.post("/reload", headers=ADMIN).status_code == 200  # also re-reads the River checkpoint
        r = client.post("/score", json={**TX, "transaction_id": "river-1"})
        assert r.status_code == 200, r.text
        p = r.json()["online_model_probability"]
        assert isinstance(p, float) and 0.0 <= p <= 1.0
    finally:
        for f in river_dir.glob("*.pkl"):
            f.unlink()
        client.post("/reload", headers=ADMIN)
    after = client.post("/score", json={**TX, "transaction_id": "river-2"}).json()
    assert after["online_model_probability"] is None


@pytest.fixture
def private_redis():
    """A redis-server of our own on a free port, so it can be stopped and restarted."""
    exe = shutil.which("redis-server")
    require_service(exe is not None, "redis-server binary")
    port = _free_port()

    def start() -> None:
        subprocess.run([exe, "--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "yes"],
                       check=True, capture_output=True)
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def stop() -> None:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        time.sleep(0.2)

    start()
    yield port, start, stop
    stop()


@pytest.mark.redis
def test_redis_down_and_back_fail_closed(monkeypatch, private_redis) -> None:
    port, start, stop = private_redis
    with _client(monkeypatch, FRAUD_ONLINE_STORE="redis", FRAUD_REDIS_URL=f"redis://127.0.0.1:{port}/0",
                 FRAUD_STORE_FAILURE="closed") as c:
        assert c.post("/score", json=TX).status_code == 200
        stop()
        r = c.post("/score", json={**TX, "transaction_id": "t-down"})
        assert r.status_code == 503 and "online store" in r.text
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "online store unreachable" in ready.text
        assert c.get("/livez").status_code == 200  # alive, just not ready
        r = c.post("/score_columns", json=_columns([{**TX, "transaction_id": "t-down-2"}]))
        assert r.status_code == 503 and "online store" in r.text
        start()
        r = c.post("/score", json={**TX, "transaction_id": "t-back"})
        assert r.status_code == 200, r.text
        assert c.get("/readyz").status_code == 200
        r = c.post("/score_columns", json=_columns([{**TX, "transaction_id": "t-back-2"}]))
        assert r.status_code == 200 and r.json()["degraded"] is False, r.text


@pytest.mark.redis
def test_redis_down_fail_open(monkeypatch, private_redis) -> None:
    port, start, stop = private_redis
    with _client(monkeypatch, FRAUD_ONLINE_STORE="redis", FRAUD_REDIS_URL=f"redis://127.0.0.1:{port}/0",
                 FRAUD_STORE_FAILURE="open") as c:
        stop()
        r = c.post("/score", json=TX)
        assert r.status_code == 200 and r.json()["degraded"] is True
        r = c.post("/score_columns", json=_columns([TX, {**TX, "transaction_id": "t-3"}]))
        assert r.status_code == 200 and r.json()["degraded"] is True, r.text
        assert c.get("/readyz").status_code == 503
        start()
        assert c.post("/score", json={**TX, "transaction_id": "t-2"}).json()["degraded"] is False


@contextmanager
def _served(tmp_path: Path, args: tuple[str, ...] = (), scheme: str = "http", verify: object = True,
            **env: str):
    """A `bentoml serve` process from the repo root (its base URL once /readyz is 200), stopped after; both
    tokens set (``AUTH``, ``ADMIN``)."""
    import httpx

    port = _free_port()
    env = {**os.environ, "FRAUD_MODEL_POLL_S": "0", "FRAUD_ONLINE_STORE": "memory",
           "FRAUD_API_TOKEN": API_TOKEN, "FRAUD_ADMIN_TOKEN": ADMIN_TOKEN, **env}
    bentoml = os.path.join(os.path.dirname(sys.executable), "bentoml")
    log = tmp_path / f"serve-{port}.log"
    proc = subprocess.Popen([bentoml, "serve", "--port", str(port), *args], cwd=PROJECT_ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    base = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        yield base, log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.service
def test_bentoml_serve_process(tmp_path) -> None:
    """`bentoml serve` from the repo root: /score with reasons, /readyz, /metrics, OpenAPI."""
    import httpx

    with _served(tmp_path) as (base, log):
        r = httpx.post(f"{base}/score", json={**TX, "transaction_id": f"srv-{uuid.uuid4().hex}"}, timeout=10,
                       headers=AUTH)
        assert r.status_code == 200 and len(r.json()["reasons"]) == 3, log.read_text()[-3000:]
        port = int(base.rsplit(":", 1)[1])  # listening on loopback only (FRAUD_SERVE_HOST's default)
        import psutil

        listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}, listening
        metrics = httpx.get(f"{base}/metrics", timeout=5).text  # open: no token
        assert "fraud_decisions_total" in metrics and "bentoml_service_request_duration_seconds" in metrics
        spec = httpx.get(f"{base}/docs.json", timeout=5).json()
        assert {"/score", "/score_batch", "/reload"} <= set(spec["paths"])
        # A rejected request is logged as one line with its id and the fields, not the values.
        card = "4111111111111111"
        r = httpx.post(f"{base}/score", json={**TX, "customer_id": card + "\u2028"}, timeout=10,
                       headers={**AUTH, "X-Request-ID": "srv-reject-1"})
        assert r.status_code == 400
        deadline = time.monotonic() + 5
        while "srv-reject-1" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = log.read_text()
        assert "srv-reject-1" in text and "customer_id" in text, text[-3000:]
        assert card not in text and "Traceback" not in text, text[-3000:]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made for the test (cryptography, else the openssl CLI)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        import ipaddress
        from datetime import UTC, timedelta

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True)
        return cert, key
    pkey = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(pkey.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
                   .not_valid_after(now + timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(pkey, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return cert, key


@pytest.mark.service
def test_bentoml_serve_over_tls_with_a_token(tmp_path) -> None:
    """`bentoml serve --ssl-certfile/--ssl-keyfile`: HTTPS with a self-signed certificate, a client that
    verifies it, the token required; plain HTTP is not answered."""
    import ssl

    import httpx

    cert, key = _self_signed(tmp_path)
    verify = ssl.create_default_context(cafile=str(cert))
    with _served(tmp_path, args=("--ssl-certfile", str(cert), "--ssl-keyfile", str(key)), scheme="https",
                 verify=verify) as (base, log):
        tx = {**TX, "transaction_id": f"tls-{uuid.uuid4().hex}"}
        r = httpx.post(f"{base}/score", json=tx, headers=AUTH, verify=verify, timeout=10)
        assert r.status_code == 200, log.read_text()[-3000:]
        r = httpx.post(f"{base}/score", json=tx, verify=verify, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        with pytest.raises(httpx.HTTPError):
            httpx.post(base.replace("https://", "http://") + "/score", json=tx, headers=AUTH, timeout=5)


@pytest.mark.service
def test_serving_a_network_address_without_a_token_is_refused(tmp_path) -> None:
    """`bentoml serve` on 0.0.0.0 without FRAUD_API_TOKEN stops at start with the reason."""
    env = {k: v for k, v in os.environ.items() if k not in ("FRAUD_API_TOKEN", "FRAUD_ADMIN_TOKEN")}
    env.update(FRAUD_SERVE_HOST="0.0.0.0", FRAUD_MODEL_POLL_S="0", FRAUD_ONLINE_STORE="memory")
    bentoml = os.path.join(os.path.dirname(sys.executable), "bentoml")
    out = subprocess.run([bentoml, "serve", "--port", str(_free_port())], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "without FRAUD_API_TOKEN" in out.stdout + out.stderr


@pytest.mark.service
@pytest.mark.redis
def test_reload_reaches_every_worker(tmp_path) -> None:
    """Two workers (Redis features, no periodic poll): one /reload, answered by one worker, and within a
    couple of seconds every answer, on fresh connections spread over both workers, has the new champion."""
    import httpx
    from conftest import private_redis_store

    store = private_redis_store("reload")
    try:
        with _served(tmp_path, FRAUD_SERVE_WORKERS="2", FRAUD_ONLINE_STORE="redis",
                     FRAUD_REDIS_PREFIX=store.prefix) as (base, log):
            def served_tags(n: int) -> set[str]:
                tags = set()
                for _ in range(n):  # a new client each: a new connection, accepted by either worker
                    tx = {**TX, "transaction_id": uuid.uuid4().hex}
                    r = httpx.post(f"{base}/score", json=tx, timeout=10, headers=AUTH)
                    assert r.status_code == 200, log.read_text()[-3000:]
                    tags.add(r.json()["model_tag"])
                return tags

            old = served_tags(4)
            new_tag = save_standin_champion(n_trees=12, seed=2)
            assert new_tag not in old
            assert httpx.post(f"{base}/reload", timeout=30, headers=ADMIN).json()["model_tag"] == new_tag
            # The other worker's poller checks the reload signal every second, then loads the model (its
            # warm-up included): on a busy 2-core machine that took over 2.5 s now and then.
            deadline = time.monotonic() + 15
            while (tags := served_tags(30)) != {new_tag} and time.monotonic() < deadline:
                time.sleep(0.5)
            assert tags == {new_tag}
    finally:
        store.clear()


@pytest.mark.service
def test_bento_packs_the_champion_and_every_module_the_service_imports() -> None:
    """`bentoml build`: the Bento declares the champion, and its source holds every project module that
    the service imports (a module missing from bentofile.yaml's include fails only where the Bento runs
    without this checkout, so it is checked here)."""
    import bentoml

    from ml.champion import CHAMPION_NAME

    # A Redis store is built too (it connects lazily): its modules are imported when the service makes one.
    listing = ("import sys, bento.service, ml.online.redis_store as s; s.RedisStore(prefix='x:'); "
               "print('\\n'.join(getattr(m, '__file__', None) or '' for m in list(sys.modules.values())))")
    out = subprocess.run([sys.executable, "-c", listing], cwd=PROJECT_ROOT, env=dict(os.environ),
                         capture_output=True, text=True, check=True).stdout.split()
    root = PROJECT_ROOT.resolve()
    imported = {Path(f).resolve().relative_to(root) for f in out
                if Path(f).resolve().is_relative_to(root) and ".venv" not in Path(f).parts}
    assert Path("bento/service.py") in imported and Path("ml/online/store.py") in imported
    bento = bentoml.bentos.build_bentofile("bentofile.yaml", build_ctx=str(PROJECT_ROOT))
    try:
        src = Path(bento.path) / "src"
        # The Redis store's Lua scripts are read, not imported: checked by name.
        shipped = imported | {p.relative_to(root) for p in (root / "ml" / "online").glob("*.lua")}
        missing = sorted(str(p) for p in shipped if not (src / p).is_file())
        assert not missing, f"bentofile.yaml does not include {missing}"
        assert CHAMPION_NAME in {m.tag.name for m in bento.info.all_models}
    finally:
        bentoml.bentos.delete(str(bento.tag))


class _Planted:
    """A pickle that runs a shell command when loaded (the reproduced attack on latest.pkl)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_planted_river_checkpoint_is_not_run_and_the_service_keeps_its_model(monkeypatch, tmp_path) -> None:
    """A pickle planted as latest.pkl, then /reload: refused, never unpickled; the River opinion unchanged."""
    import pickle

    from ml.online.checkpoint import Checkpoint, save
    from ml.online.river_model import OnlineModel
    from ml.settings import get_settings

    token = f"admin-{uuid.uuid4().hex}"  # /reload is an admin call (FRAUD_ADMIN_TOKEN)
    auth = {"Authorization": f"Bearer {token}"}
    model = OnlineModel()
    for i in range(20):
        model.learn({"tx_amount": 10.0 + i, "customer_nb_tx_1d": 1.0}, i % 2, datetime(2018, 9, 1), 0.5)
    river_dir = get_settings().river_checkpoint_dir
    marker = tmp_path / "pwned"
    with _client(monkeypatch, FRAUD_ONLINE_STORE="memory", FRAUD_ADMIN_TOKEN=token) as c:
        save(river_dir, Checkpoint(model=model, position={}))
        try:
            assert c.post("/reload", headers=auth).status_code == 200
            fresh = {**TX, "customer_id": "planted-c1", "terminal_id": "planted-t1", "transaction_id": "p-1"}
            before = c.post("/score", json=fresh).json()["online_model_probability"]
            assert isinstance(before, float)
            (river_dir / "latest.pkl").write_bytes(pickle.dumps(_Planted(marker)))
            assert c.post("/reload", headers=auth).status_code == 200
            again = {**fresh, "customer_id": "planted-c2", "terminal_id": "planted-t2",
                     "transaction_id": "p-2"}
            r = c.post("/score", json=again)
            assert r.status_code == 200, r.text
            assert r.json()["online_model_probability"] == before  # same features, the same River model
            assert not marker.exists()
        finally:
            for f in river_dir.glob("*.pkl"):
                f.unlink()
            c.post("/reload", headers=auth)
