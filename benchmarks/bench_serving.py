"""Serving benchmark: `bentoml serve` with Redis features vs a bare XGBoost ASGI endpoint.

Load generator: `wrk` (Debian package; the benchmark installs it with apt-get if missing). Every request is a
new transaction (new id, time one second later than the previous one, random customer and terminal, from a
Lua script), so each one writes to and reads from the online store as production traffic would.
- Fixed rate: open-loop load at 300 requests/s in total, as wrk2 makes it (PACING_LUA): each of 10
  connections sends on a schedule of its own, phases spread over one interval, whatever the responses do;
  p50/p99 are wrk's latency percentiles (HdrHistogram, microsecond resolution). Then Poisson arrivals at the
  same rate over 30 connections (p50_ms_poisson, p99_ms_poisson): independent payments, which collide. Each
  schedule also goes to the bare endpoint (bare_*): the floor that HTTP and process wake-ups set here.
  (Pacing a connection by a delay after each response, as wrk's delay() alone does, is closed-loop: requests
  that were answered together are sent together again, so the connections clump into bursts over a run.)
- Maximum throughput: wrk unpaced with 16 connections, same script, against the service and then against the
  bare endpoint (benchmarks/bare_endpoint.py: XGBoost ``inplace_predict`` on a fixed vector, no framework).
- The paced runs, the batch and a first set of maximum-throughput runs use one worker process a side (the
  service's own overhead); a second set of maximum-throughput runs uses one process per core a side
  (BENCH_WORKERS overrides; the service's workers share Redis): max_rps, bare_max_rps, ratio_to_bare.
- Each comparison runs ROUNDS times (MAX_ROUNDS unpaced: with several workers a run's split of the
  connections between them is chance, recorded as connections_per_worker), the service and the bare
  endpoint in turn; the JSON keeps every round
  and the medians (a ratio is the median of the rounds' ratios).
- Batch throughput: BATCH_REQUESTS requests of BATCH_SIZE (the documented maximum) transactions to
  ``/score_columns`` (bulk scoring, columns in and out), ROUNDS times, the median as batch_tx_per_s (each
  round's transactions join the history the next reads: the rounds are in the JSON); then as many rows to
  ``/score_batch`` once (batch_rows_tx_per_s): from one client against one worker (one_worker), and from one
  client per worker against one worker per core (the machine's capacity, as max_rps).

Results: benchmarks/results/serving.json (p50_ms, p99_ms at 300 req/s; max_rps; bare_max_rps; batch_tx_per_s,
batch_rows_tx_per_s).
Goals: p99 <= 5 ms at 300 req/s, >= 1,500 req/s, >= 0.5x the bare endpoint, batch >= 100k tx/s.
Needs Redis at FRAUD_REDIS_URL (default 127.0.0.1:6379); uses its own key prefix and removes it after. The
model is the promoted champion when the model store has one (`make demo`), else a stand-in booster.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import secrets
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
from urllib.parse import urlsplit

import httpx

from bento.schemas import MAX_BATCH
from ml.settings import PROJECT_ROOT, export_tool_env

RESULTS = Path(__file__).parent / "results" / "serving.json"
RATE, RATE_CONNECTIONS, POISSON_CONNECTIONS, RATE_SECONDS = 300, 10, 30, 12
MAX_SECONDS, MAX_CONNECTIONS = 10, 16
ROUNDS = 3
MAX_ROUNDS = 5  # maximum-throughput rounds: a connection split's luck (see _connections_per_process)
BATCH_SIZE, BATCH_REQUESTS = MAX_BATCH, 8  # bulk scoring at its documented maximum request
# The service authenticates every scoring request (bento.security): the benchmark sends a bearer token to
# both sides, and the bare endpoint checks it as the service does (one compare_digest), for a fair ratio.
TOKEN = secrets.token_hex(24)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_CUSTOMERS, N_TERMINALS, WARM_TX = 500, 1000, 30_000
START = datetime(2018, 10, 1)

# %-formatted by Python (base time, pool sizes, the pacing block: empty = unpaced).
WRK_LUA = """
counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", math.random(1, 1000000))
  thread:set("idx", #threads - 1)
  if pace_setup then pace_setup(thread) end
end
request = function()
  counter = counter + 1
  local t = os.date("!%%Y-%%m-%%dT%%H:%%M:%%S", %(base)d + counter)
  local body = string.format('{"transaction_id":"wrk-%%d-%%d","tx_datetime":"%%s","customer_id":"%%d",' ..
    '"terminal_id":"%%d","tx_amount":%%.2f}', id, counter, t,
    math.random(0, %(nc)d - 1), math.random(0, %(nt)d - 1), math.random() * 200)
  return wrk.format(nil, nil, nil, body)
end
%(pacing)s
done = function(summary, latency, requests)
  local e, late = summary.errors, 0
  for _, t in ipairs(threads) do late = late + (t:get("late") or 0) end
  io.write(string.format("RESULT requests=%%d duration_us=%%d p50_us=%%d p99_us=%%d mean_us=%%.1f " ..
    "errors=%%d late=%%d\\n", summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(99), latency.mean, e.connect + e.read + e.write + e.status + e.timeout, late))
end
"""

# Open-loop pacing (wrk2's model, in wrk's Lua hooks; wrk is built with LuaJIT): one connection per thread,
# each on a schedule of its own, a request every interval_ms (fixed) or after exponential gaps of that mean
# (poisson), whatever the responses do. init() runs for each thread before wrk starts it, so sleeping there
# until the thread's phase spreads the connections' first requests over one interval. delay() waits until
# the next due time (wrk waits whole milliseconds); a request that is due before its connection is free is
# sent at once and counted as late: a count above zero means the schedule was not kept.
PACING_LUA = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk, bench_timespec *ts);
int usleep(unsigned int usec);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local interval_ms, connections, poisson = %(interval_ms).6f, %(connections)d, %(poisson)s
local function gap()
  if poisson then return -math.log(1 - math.random()) * interval_ms end
  return interval_ms
end
function pace_setup(thread)  -- in wrk's main Lua state: one start time for all threads
  start0 = start0 or now_ms()
  thread:set("start0", start0)
end
function init(args)
  math.randomseed(id)
  local wait = idx * interval_ms / connections - (now_ms() - start0)
  if wait > 0 then ffi.C.usleep(math.floor(wait * 1000)) end
  due, late = now_ms(), 0
end
function delay()
  due = due + gap()
  local wait = due - now_ms()
  if wait < -1 then late = late + 1 end
  return math.max(wait, 0)
end
"""


def _ensure_tools() -> None:
    if shutil.which("wrk") is None:
        print("[bench] installing wrk with apt-get", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env)


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
            if httpx.get(url, timeout=2, headers=AUTH).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready at {url}:\n{log.read_text()[-3000:]}")


def _tx(i: int, t: datetime, rng: random.Random) -> dict:
    return {"transaction_id": f"warm-{i}", "tx_datetime": t.isoformat(),
            "customer_id": str(rng.randrange(N_CUSTOMERS)), "terminal_id": str(rng.randrange(N_TERMINALS)),
            "tx_amount": round(rng.uniform(1, 200), 2)}


def _as_columns(txs: list[dict]) -> dict[str, list]:
    return {k: [tx[k] for tx in txs] for k in txs[0]}


def _as_rows(txs: list[dict]) -> dict[str, list]:
    return {"transactions": txs}


def _wrk(url: str, script_dir: Path, base_s: int, seconds: int, connections: int,
         rate: float = 0.0, arrivals: str = "fixed") -> dict[str, float]:
    """One wrk run: unpaced (``rate`` 0: ``connections`` on one thread, each sending its next request on the
    last one's response) or open-loop at ``rate`` req/s in total (``arrivals`` fixed or poisson, one thread a
    connection). Returns requests/s, p50/p99/mean latency (ms), errors and late sends from done()."""
    if rate > 0:
        pacing = PACING_LUA % {"interval_ms": 1000 * connections / rate, "connections": connections,
                               "poisson": str(arrivals == "poisson").lower()}
    else:
        pacing = "function init(args) math.randomseed(id) end"
    script = script_dir / f"wrk-{base_s}.lua"
    script.write_text(WRK_LUA % {"base": base_s, "nc": N_CUSTOMERS, "nt": N_TERMINALS, "pacing": pacing,
                                 "token": TOKEN})
    threads = connections if rate > 0 else 1
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url]
    wrk = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(min(2.0, seconds / 2))
    split = _connections_per_process(urlsplit(url).port)
    out, err = wrk.communicate()
    if wrk.returncode:
        raise RuntimeError(f"wrk failed ({wrk.returncode}):\n{err}")
    m = re.search(r"RESULT requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) mean_us=([\d.]+) "
                  r"errors=(\d+) late=(\d+)", out)
    if m is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    n, dur, p50, p99, mean, errors, late = (float(g) for g in m.groups())
    if errors:
        print(f"[bench] wrk saw {errors:.0f} errors:\n{out}", flush=True)
    return {"rps": n / (dur / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "mean_ms": mean / 1000,
            "errors": errors, "late": late, "requests": n, "connections_per_worker": split}


def _connections_per_process(port: int | None) -> list[int]:
    """How the server's processes share the load generator's connections (largest first): the workers share
    one listening socket and each connection stays with the one that accepted it, so a run's split is
    chance, and a lopsided one leaves a worker idle while the other queues."""
    ss = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                        text=True).stdout
    return sorted(collections.Counter(re.findall(r"pid=(\d+)", ss)).values(), reverse=True)


def _post_batches(url: str, payloads: list[str], clients: int) -> float:
    """Transactions per second of posting ``payloads`` (BATCH_SIZE each) from ``clients`` connections at once,
    each sending its share one request after another."""
    from concurrent.futures import ThreadPoolExecutor

    def send(share: list[str]) -> None:
        # A connection per request ("connection: close"): the workers share one listening socket and the
        # kernel gives a connection to whichever accepts it, so two kept-alive connections landed on one
        # worker half the time. One client per thread all the same: creating an httpx.Client builds an SSL
        # context, ~27 ms of the load generator's CPU, taken from the 2 cores the service runs on.
        headers = {"content-type": "application/json", "connection": "close", **AUTH}
        with httpx.Client(timeout=120) as client:
            for p in share:
                client.post(url, content=p, headers=headers).raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, [payloads[c::clients] for c in range(clients)]))
    return BATCH_SIZE * len(payloads) / (time.perf_counter() - t0)


def _epoch_s(t: datetime) -> int:
    return int((t - datetime(1970, 1, 1)).total_seconds())


def _run_pair(workers: int, booster_file: Path, tmp: Path, redis_url: str, latency: bool) -> dict:
    """Start `bentoml serve` (Redis features) and the bare endpoint with ``workers`` processes each, warm the
    online state, and measure: the paced rounds (if ``latency``), the maximum-throughput rounds and the
    batch throughput. Both servers are stopped and the run's Redis keys removed before it returns."""
    prefix = f"bench:{uuid.uuid4().hex}:"
    port, bare_port = _free_port(), _free_port()
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "FRAUD_ONLINE_STORE": "redis",
           "FRAUD_SERVE_WORKERS": str(workers), "FRAUD_REDIS_PREFIX": prefix, "FRAUD_MODEL_POLL_S": "0",
           "BARE_BOOSTER": str(booster_file), "FRAUD_API_TOKEN": TOKEN, "BARE_TOKEN": TOKEN}
    exe = Path(sys.executable).parent
    svc_log, bare_log = tmp / f"serve-{workers}.log", tmp / f"bare-{workers}.log"
    svc = subprocess.Popen([str(exe / "bentoml"), "serve", "--port", str(port)], cwd=PROJECT_ROOT, env=env,
                           stdout=open(svc_log, "wb"), stderr=subprocess.STDOUT)
    bare = subprocess.Popen([str(exe / "uvicorn"), "benchmarks.bare_endpoint:app", "--port", str(bare_port),
                             "--workers", str(workers), "--log-level", "warning", "--no-access-log"],
                            cwd=PROJECT_ROOT, env=env, stdout=open(bare_log, "wb"), stderr=subprocess.STDOUT)
    base, bare_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}/"
    url = f"{base}/score"
    out: dict = {"fixed": [], "poisson": [], "max": []}
    try:
        _wait_ready(f"{base}/readyz", svc, svc_log)
        _wait_ready(bare_url, bare, bare_log)
        rng = random.Random(0)
        # Warm state: 30 days of history for the entity pool, through the service itself.
        step = timedelta(days=30) / WARM_TX
        warm = [_tx(i, START - timedelta(days=30) + i * step, rng) for i in range(WARM_TX)]
        with httpx.Client(timeout=120) as client:
            for i in range(0, WARM_TX, BATCH_SIZE):
                r = client.post(f"{base}/score_batch", json={"transactions": warm[i:i + BATCH_SIZE]},
                                headers=AUTH)
                r.raise_for_status()
        t_rate = _epoch_s(START)
        _wrk(url, tmp, t_rate, 3, MAX_CONNECTIONS)  # warm-up of the request path (not recorded)
        # The service and the bare endpoint take turns, round after round: this VM's speed drifts within
        # minutes, and alternating puts both sides of each comparison in the same minute.
        if latency:
            # Open-loop at RATE req/s: a fixed schedule (wrk2's model, the issue's "fixed rate"), then Poisson
            # arrivals (independent payments) over more connections, so that a connection is rarely still
            # busy when its next request is due.
            for r in range(ROUNDS):
                for arrivals, connections in (("fixed", RATE_CONNECTIONS), ("poisson", POISSON_CONNECTIONS)):
                    base_s = t_rate + 40_000 + r * 10_000 + (5_000 if arrivals == "poisson" else 0)
                    print(f"[bench] {workers} worker(s), round {r + 1}/{ROUNDS}: {RATE} req/s, {arrivals} "
                          f"arrivals", flush=True)
                    svc_r = _wrk(url, tmp, base_s, RATE_SECONDS, connections, rate=RATE, arrivals=arrivals)
                    # The same schedule on the bare endpoint: the floor of this machine's HTTP and wake-ups.
                    bare_r = _wrk(bare_url, tmp, base_s, RATE_SECONDS, connections, rate=RATE,
                                  arrivals=arrivals)
                    out[arrivals].append({"service": svc_r, "bare": bare_r})
                    print(f"[bench] service {svc_r}\n[bench] bare {bare_r}", flush=True)
        for r in range(MAX_ROUNDS):
            base_s = t_rate + 86_400 + r * 100_000
            print(f"[bench] {workers} worker(s), round {r + 1}/{MAX_ROUNDS}: max throughput", flush=True)
            svc_m = _wrk(url, tmp, base_s, MAX_SECONDS, MAX_CONNECTIONS)
            bare_m = _wrk(bare_url, tmp, base_s, MAX_SECONDS, MAX_CONNECTIONS)
            out["max"].append({"service": svc_m, "bare": bare_m})
            print(f"[bench] service {svc_m}\n[bench] bare {bare_m}", flush=True)
        # Bulk scoring: /score_columns (columns in and out) ROUNDS times, then the same volume as rows through
        # /score_batch once; each on transactions of its own, later than everything scored before (so each
        # round adds BATCH_REQUESTS * BATCH_SIZE transactions to the history the next one reads). One client
        # against one worker; as many concurrent clients as workers against several.
        clients = 1 if latency else workers
        t_batch = START + timedelta(days=3 if latency else 10)
        step = timedelta(milliseconds=50)
        runs = [("batch_tx_per_s", "score_columns", _as_columns)] * ROUNDS + [
            ("batch_rows_tx_per_s", "score_batch", _as_rows)]
        for r, (key, route, shape) in enumerate(runs):
            print(f"[bench] {workers} worker(s), {clients} client(s): batch throughput /{route}", flush=True)
            batches = [[{**_tx(k, t_batch + k * step, rng), "transaction_id": f"{route}-{workers}-{r}-{k}"}
                        for k in range(i * BATCH_SIZE, (i + 1) * BATCH_SIZE)]
                       for i in range(BATCH_REQUESTS)]
            t_batch += BATCH_REQUESTS * BATCH_SIZE * step
            tps = _post_batches(f"{base}/{route}", [json.dumps(shape(b)) for b in batches], clients)
            out.setdefault(key, []).append(tps)
            print(f"[bench] {tps:.0f} tx/s", flush=True)
    finally:
        for proc in (svc, bare):
            proc.terminate()
        for proc in (svc, bare):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        from ml.online.redis_store import RedisStore

        RedisStore(redis_url, prefix=prefix).clear()
    return out


def _med(rounds: list[dict], side: str, key: str) -> float:
    return round(statistics.median(r[side][key] for r in rounds), 3)


def _throughput(rounds: list[dict]) -> dict:
    ratios = [r["service"]["rps"] / r["bare"]["rps"] for r in rounds]
    return {"max_rps": _med(rounds, "service", "rps"), "bare_max_rps": _med(rounds, "bare", "rps"),
            "ratio_to_bare": round(statistics.median(ratios), 3),
            "max_errors": sum(r["service"]["errors"] for r in rounds),
            "max_p99_ms": _med(rounds, "service", "p99_ms"), "ratios": [round(x, 3) for x in ratios]}


def _rounded(rounds: list[dict]) -> list[dict]:
    return [{side: {k: round(v, 3) if isinstance(v, float) else v for k, v in r[side].items()} for side in r}
            for r in rounds]


def main() -> None:
    _ensure_tools()
    settings = export_tool_env()
    from ml.champion import champion_tag, load_champion
    from tests._training_helpers import save_standin_champion

    tag = champion_tag()
    if tag is None:
        tag = save_standin_champion()
        print(f"[bench] no champion in {settings.bentoml_home}: using a stand-in ({tag})", flush=True)
    import bentoml

    stand_in = bentoml.models.get(tag).info.labels.get("stand_in") == "true"
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    booster_file = tmp / "booster.ubj"
    booster = load_champion(tag).booster
    n_trees = booster.num_boosted_rounds()
    booster.save_model(str(booster_file))
    import redis

    redis_url = settings.redis_url.get_secret_value()
    redis.Redis.from_url(redis_url).ping()  # fail early: the benchmark is defined with Redis

    # One process a side: latency, batch, and the service's own overhead against the bare endpoint's. Then
    # one process per core a side (BENCH_WORKERS overrides): what the machine serves (Redis is the shared
    # state, so the service's workers may be several).
    workers = int(os.environ.get("BENCH_WORKERS", os.cpu_count() or 1))
    one = _run_pair(1, booster_file, tmp, redis_url, latency=True)
    many = _run_pair(workers, booster_file, tmp, redis_url, latency=False) if workers > 1 else one
    per_process, machine = _throughput(one["max"]), _throughput(many["max"])
    rate, poisson = one["fixed"], one["poisson"]
    result = {
        # p50_ms / p99_ms: RATE req/s on a fixed schedule, one worker a side; *_poisson: Poisson arrivals.
        "p50_ms": _med(rate, "service", "p50_ms"), "p99_ms": _med(rate, "service", "p99_ms"),
        "rate_rps": _med(rate, "service", "rps"), "rate_errors": sum(r["service"]["errors"] for r in rate),
        "rate_late_sends": sum(r["service"]["late"] for r in rate),
        "bare_p50_ms_at_rate": _med(rate, "bare", "p50_ms"),
        "bare_p99_ms_at_rate": _med(rate, "bare", "p99_ms"),
        "p50_ms_poisson": _med(poisson, "service", "p50_ms"),
        "p99_ms_poisson": _med(poisson, "service", "p99_ms"),
        "poisson_rps": _med(poisson, "service", "rps"),
        "poisson_late_sends": sum(r["service"]["late"] for r in poisson),
        "bare_p50_ms_poisson": _med(poisson, "bare", "p50_ms"),
        "bare_p99_ms_poisson": _med(poisson, "bare", "p99_ms"),
        # max_rps / bare_max_rps / ratio_to_bare: one process per core on both sides (the machine's capacity).
        **{k: v for k, v in machine.items() if k != "ratios"},
        # batch_tx_per_s: /score_columns (bulk scoring), batch_rows_tx_per_s: /score_batch, the same volume;
        # one worker per core and as many clients (one_worker: one worker, one client).
        "batch_tx_per_s": round(statistics.median(many["batch_tx_per_s"]), 1),
        "batch_rows_tx_per_s": round(many["batch_rows_tx_per_s"][0], 1),
        "one_worker": {**{k: v for k, v in per_process.items() if k != "ratios"},
                       "batch_tx_per_s": round(statistics.median(one["batch_tx_per_s"]), 1),
                       "batch_rows_tx_per_s": round(one["batch_rows_tx_per_s"][0], 1)},
        "rounds": {
            "rate_one_worker": _rounded(rate), "poisson_one_worker": _rounded(poisson),
            "max_one_worker": _rounded(one["max"]), "ratios_one_worker": per_process["ratios"],
            f"max_{workers}_workers": _rounded(many["max"]), f"ratios_{workers}_workers": machine["ratios"],
            "batch_one_worker": [round(x, 1) for x in one["batch_tx_per_s"]],
            f"batch_{workers}_workers": [round(x, 1) for x in many["batch_tx_per_s"]],
        },
        "config": {
            "batch_size": BATCH_SIZE, "model_tag": tag, "stand_in_model": stand_in,
            "model_trees": n_trees, "online_store": "redis", "workers": workers, "bare_workers": workers,
            "cpu_count": os.cpu_count(),
            "load_generator": (f"wrk, open-loop at {RATE} req/s for {RATE_SECONDS}s (one worker a side): "
                               f"a fixed schedule over {RATE_CONNECTIONS} connections, Poisson arrivals over "
                               f"{POISSON_CONNECTIONS}; wrk -t1 {MAX_CONNECTIONS} connections unpaced "
                               f"for {MAX_SECONDS}s (one worker, then {workers}, a side); service and bare "
                               f"endpoint alternate, {ROUNDS} paced, {MAX_ROUNDS} unpaced rounds, medians"),
            "entities": {"customers": N_CUSTOMERS, "terminals": N_TERMINALS, "warm_transactions": WARM_TX},
        },
        "goals": {"p99_ms": 5.0, "max_rps": 1500, "ratio_to_bare": 0.5, "batch_tx_per_s": 100_000},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
