"""Serving benchmark: `bentoml serve` with Redis features vs a bare XGBoost ASGI endpoint.

Load generators are Debian's `hey` (fixed rate: 300 req/s as 10 workers x 30 req/s, per-request latencies
from its CSV output) and `wrk` (maximum throughput, with a Lua script that sends a new transaction id,
time, customer and terminal on every request); the benchmark installs them with apt-get if missing.
Batch throughput is measured with a Python client posting /score_batch requests.

Results: benchmarks/results/serving.json (p50_ms, p99_ms at 300 req/s; max_rps; bare_max_rps; batch_tx_per_s).
Goals: p99 <= 5 ms at 300 req/s, >= 1,500 req/s, >= 0.5x the bare endpoint, batch >= 100k tx/s.
Needs Redis at FRAUD_REDIS_URL (default 127.0.0.1:6379); uses its own key prefix and removes it after.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import httpx

from ml.settings import PROJECT_ROOT, export_tool_env

RESULTS = Path(__file__).parent / "results" / "serving.json"
RATE, RATE_WORKERS, RATE_SECONDS = 300, 10, 20
MAX_SECONDS, MAX_CONNECTIONS = 15, 16
BATCH_SIZE, BATCH_REQUESTS = 5000, 8
N_CUSTOMERS, N_TERMINALS, WARM_TX = 500, 1000, 30_000
START = datetime(2018, 10, 1)

WRK_LUA = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local t = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S", %(base)d + counter)
  local body = string.format('{"transaction_id":"wrk-%%s-%%d","tx_datetime":"%%s","customer_id":"%%d",' ..
    '"terminal_id":"%%d","tx_amount":%%.2f}', tostring(id):sub(-6), counter, t,
    math.random(0, %(nc)d - 1), math.random(0, %(nt)d - 1), math.random() * 200)
  return wrk.format(nil, nil, nil, body)
end
function setup(thread) thread:set("id", math.random(1, 1000000)) end
"""


def _ensure_tools() -> None:
    missing = [t for t in ("hey", "wrk") if shutil.which(t) is None]
    if missing:
        print(f"[bench] installing {missing} with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready at {url}:\n{log.read_text()[-3000:]}")


def _tx(i: int, t: datetime, rng: random.Random) -> dict:
    return {"transaction_id": f"warm-{i}", "tx_datetime": t.isoformat(),
            "customer_id": str(rng.randrange(N_CUSTOMERS)), "terminal_id": str(rng.randrange(N_TERMINALS)),
            "tx_amount": round(rng.uniform(1, 200), 2)}


def _hey_rate(url: str, body: Path) -> tuple[float, float, int]:
    out = subprocess.run(["hey", "-z", f"{RATE_SECONDS}s", "-c", str(RATE_WORKERS),
                          "-q", str(RATE // RATE_WORKERS), "-m", "POST", "-T", "application/json",
                          "-D", str(body), "-o", "csv", url],
                         check=True, capture_output=True, text=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    lat = sorted(float(r["response-time"]) * 1000 for r in rows if r["status-code"] == "200")
    bad = sum(1 for r in rows if r["status-code"] != "200")
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return q[49], q[98], bad


def _wrk_max(url: str, script: Path) -> float:
    out = subprocess.run(["wrk", "-t1", f"-c{MAX_CONNECTIONS}", f"-d{MAX_SECONDS}s", "-s", str(script), url],
                         check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.startswith("Requests/sec:"):
            if "Non-2xx" in out:
                print(f"[bench] wrk saw errors:\n{out}", flush=True)
            return float(line.split()[1])
    raise RuntimeError(out)


def main() -> None:
    _ensure_tools()
    settings = export_tool_env()
    from bento.champion import latest_tag, load_champion, save_standin_champion

    tag = latest_tag()
    stand_in = tag is None
    if stand_in:
        tag = save_standin_champion()
        print(f"[bench] no champion in {settings.bentoml_home}: using a stand-in ({tag})", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    booster_file = tmp / "booster.ubj"
    load_champion(tag).booster.save_model(str(booster_file))
    prefix = f"bench:{uuid.uuid4().hex}:"
    import redis

    redis.Redis.from_url(settings.redis_url).ping()  # fail early: the benchmark is defined with Redis

    port, bare_port = _free_port(), _free_port()
    env = {**os.environ, "FRAUD_ONLINE_STORE": "redis", "FRAUD_REDIS_PREFIX": prefix,
           "FRAUD_MODEL_POLL_S": "0", "BARE_BOOSTER": str(booster_file)}
    exe = Path(sys.executable).parent
    svc_log, bare_log = tmp / "serve.log", tmp / "bare.log"
    svc = subprocess.Popen([str(exe / "bentoml"), "serve", "--port", str(port)], cwd=PROJECT_ROOT, env=env,
                           stdout=open(svc_log, "wb"), stderr=subprocess.STDOUT)
    bare = subprocess.Popen([str(exe / "uvicorn"), "benchmarks.bare_endpoint:app", "--port", str(bare_port),
                             "--log-level", "warning", "--no-access-log"], cwd=PROJECT_ROOT, env=env,
                            stdout=open(bare_log, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(f"{base}/readyz", svc, svc_log)
        _wait_ready(f"http://127.0.0.1:{bare_port}/", bare, bare_log)
        rng = random.Random(0)
        # Warm state: 30 days of history for the entity pool, through the service itself.
        step = timedelta(days=30) / WARM_TX
        warm = [_tx(i, START - timedelta(days=30) + i * step, rng) for i in range(WARM_TX)]
        with httpx.Client(timeout=120) as client:
            for i in range(0, WARM_TX, BATCH_SIZE):
                r = client.post(f"{base}/score_batch", json={"transactions": warm[i:i + BATCH_SIZE]})
                r.raise_for_status()
            one = {**_tx(0, START, rng), "transaction_id": "rate-probe"}
            body = tmp / "tx.json"
            body.write_text(json.dumps(one))
            client.post(f"{base}/score", json=one).raise_for_status()

            print(f"[bench] {RATE} req/s for {RATE_SECONDS}s (hey)", flush=True)
            p50, p99, rate_errors = _hey_rate(f"{base}/score", body)
            script = tmp / "post.lua"
            script.write_text(WRK_LUA % {"base": int((START - datetime(1970, 1, 1)).total_seconds()) + 86400,
                                         "nc": N_CUSTOMERS, "nt": N_TERMINALS})
            print("[bench] max throughput (wrk)", flush=True)
            max_rps = _wrk_max(f"{base}/score", script)
            bare_rps = _wrk_max(f"http://127.0.0.1:{bare_port}/", script)

            print("[bench] batch throughput", flush=True)
            t_batch = START + timedelta(days=3)
            step = timedelta(milliseconds=50)
            batches = [[{**_tx(k, t_batch + k * step, rng), "transaction_id": f"batch-{k}"}
                        for k in range(b * BATCH_SIZE, (b + 1) * BATCH_SIZE)] for b in range(BATCH_REQUESTS)]
            payloads = [json.dumps({"transactions": b}) for b in batches]
            t0 = time.perf_counter()
            for p in payloads:
                client.post(f"{base}/score_batch", content=p,
                            headers={"content-type": "application/json"}).raise_for_status()
            batch_tx_per_s = BATCH_SIZE * BATCH_REQUESTS / (time.perf_counter() - t0)
    finally:
        for proc in (svc, bare):
            proc.terminate()
        for proc in (svc, bare):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        from streaming.online_store import RedisStore

        RedisStore(settings.redis_url, prefix=prefix).clear()

    result = {
        "p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "rate_rps": RATE, "rate_errors": rate_errors,
        "max_rps": round(max_rps, 1), "bare_max_rps": round(bare_rps, 1),
        "ratio_to_bare": round(max_rps / bare_rps, 3), "batch_tx_per_s": round(batch_tx_per_s, 1),
        "batch_size": BATCH_SIZE, "model_tag": tag, "stand_in_model": stand_in, "online_store": "redis",
        "workers": int(os.environ.get("FRAUD_SERVE_WORKERS", "1")), "cpu_count": os.cpu_count(),
        "load_generators": {"rate": "hey", "max": f"wrk -t1 -c{MAX_CONNECTIONS}"},
        "goals": {"p99_ms": 5.0, "max_rps": 1500, "ratio_to_bare": 0.5, "batch_tx_per_s": 100_000},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
