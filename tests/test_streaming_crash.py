"""kill -9 the stream worker mid-stream, restart it, and get exactly the state of an uninterrupted run.

Two set-ups: embedded replay with the in-process store (restored from the checkpoint), and the real Kafka
broker (tansu) with the real Redis store (replayed events applied idempotently by transaction_id).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import model_state, require_service

pytestmark = pytest.mark.slow  # stream worker processes, run to the end and killed

PY = sys.executable


@pytest.fixture(autouse=True)
def _shared_signing_key(monkeypatch) -> None:
    """The workers (subprocesses, each with its own data dir) and this process read each other's signed
    checkpoints: one key for all, through the environment."""
    monkeypatch.setenv("FRAUD_SIGNING_KEY", "crash-test-signing-key-" + "0" * 32)


@pytest.fixture(scope="module")
def small_events(tmp_path_factory) -> Path:
    """~7k transactions (and their labels) of a small simulation, as a Parquet file."""
    from ml.data.simulate import SimulationConfig, simulate

    path = tmp_path_factory.mktemp("stream") / "tx.parquet"
    config = SimulationConfig(n_customers=150, n_terminals=300, n_days=25, seed=3)
    simulate(config, progress=False).write_parquet(path)
    return path


def _worker_cmd(*args: str) -> list[str]:
    return [PY, "-c", "from ml.cli import main; main()", "worker", "--no-champion",
            "--checkpoint-every", "1000", *args]


def _env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FRAUD_DATA_DIR"] = str(data_dir)
    env.pop("FRAUD_WAREHOUSE", None)
    env.pop("BENTOML_HOME", None)
    return env


def _run(cmd: list[str], data_dir: Path) -> None:
    out = subprocess.run(cmd, env=_env(data_dir), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


# `fraud worker` with a fault: it SIGKILLs itself (no cleanup, no flush) after N events once at least K
# checkpoints are on disk. Checkpoint writes are off-thread: on a loaded machine an event count alone would
# not say how many have landed.
_KILLED_WORKER = """
import os, signal, sys
from ml.online import checkpoint
from streaming.worker import Worker
after, min_landed = int(sys.argv.pop(1)), int(sys.argv.pop(1))
seen, landed = [0], [0]
write, process = checkpoint.write, Worker.process
def counting_write(directory, job):
    write(directory, job)
    landed[0] = job.seq
def killing_process(self, msgs):
    process(self, msgs)
    seen[0] += len(msgs)
    if seen[0] >= after and landed[0] >= min_landed:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.write, Worker.process = counting_write, killing_process
from ml.cli import main
main()
"""


def _run_and_kill(cmd: list[str], data_dir: Path, ref_dir: Path, after_events: int = 6700) -> None:
    """Run the worker (``cmd``, a ``_worker_cmd``) until it SIGKILLs itself after ``after_events`` events,
    once checkpoint 2 is on disk.

    The kill is injected (``_KILLED_WORKER``) rather than timed from outside, so it lands past checkpoint 2
    on a loaded machine too (a later write may be in flight): the worker dies with nothing flushed and
    nothing cleaned up, with events processed since its last checkpoint.
    """
    assert cmd[1:3] == ["-c", "from ml.cli import main; main()"]
    cmd = [PY, "-c", _KILLED_WORKER, str(after_events), "2", *cmd[3:]]
    out = subprocess.run(cmd, env=_env(data_dir), capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, f"not killed: rc={out.returncode} {out.stderr[-2000:]}"
    def head(d: Path) -> dict:
        from ml.online.checkpoint import HEAD, read_head
        from ml.settings import RIVER_CHECKPOINT_SUBDIR

        return read_head(d / RIVER_CHECKPOINT_SUBDIR / HEAD)

    left, end = head(data_dir), head(ref_dir)  # ref_dir: the uninterrupted run, already finished
    assert left["seq"] >= 2, "kill after checkpoint 2"
    assert sum(left["position"].values()) < sum(end["position"].values()), "kill before the stream's end"


def _final(data_dir: Path):
    from ml.online import checkpoint as ckpt
    from ml.settings import RIVER_CHECKPOINT_SUBDIR

    c = ckpt.load(data_dir / RIVER_CHECKPOINT_SUBDIR)
    assert c is not None
    return c, model_state(c.model)


def test_kill9_replay_memory_store_equals_uninterrupted(small_events: Path, tmp_path: Path) -> None:
    # --compact-after: the change log is folded into a new base every few checkpoints, so the restart
    # rebuilds its state from a folded base plus deltas (and the kill may land during a fold).
    args = ["--events", "replay", "--store", "memory", "--path", str(small_events), "--compact-after", "5000"]
    _run(_worker_cmd(*args), tmp_path / "ref")
    _run_and_kill(_worker_cmd(*args), tmp_path / "crash", tmp_path / "ref")
    _run(_worker_cmd(*args), tmp_path / "crash")  # restart: resumes from the checkpoint

    ref, ref_model = _final(tmp_path / "ref")
    got, got_model = _final(tmp_path / "crash")
    assert got.position == ref.position
    assert got_model == ref_model  # River weights, scaler, counters, rolling window: identical
    assert got.model.n_learned > 1000
    assert got.base > 0 and ref.base > 0  # both chains were folded at least once
    ref_store, got_store = ref.state["store"], got.state["store"]
    assert got_store["_entities"] == ref_store["_entities"]
    assert got_store["_txs"] == ref_store["_txs"]
    assert got.state["pending"] == ref.state["pending"]


def _redis_dump(client, prefix: str) -> dict:
    """Every key of the run (histories are bytes: ``client`` does not decode), names and values without the
    run's prefix (records and fraud keys name fraud keys)."""
    out = {}
    raw = prefix.encode()
    for key in client.scan_iter(f"{prefix}*", count=1000):
        kind = client.type(key)
        name = key[len(raw):]
        if kind == b"hash":  # transaction records
            out[name] = {f: v.replace(raw, b"") for f, v in client.hgetall(key).items()}
        elif kind == b"string":  # histories, their ids, fraud strings
            out[name] = client.get(key)
    return out


@pytest.mark.kafka
@pytest.mark.redis
def test_kill9_kafka_redis_equals_uninterrupted(small_events: Path, tmp_path: Path) -> None:
    import redis

    from streaming.broker import running_broker
    from streaming.kafka_io import read_topic

    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        ok = bool(client.ping())
    except redis.RedisError:
        ok = False
    require_service(ok, "Redis at 127.0.0.1:6379")
    run_id = uuid.uuid4().hex[:8]
    p_ref, p_crash = f"test-crash-{run_id}-ref:", f"test-crash-{run_id}-kill:"
    try:
        with running_broker() as broker:
            _run([PY, "-c", "from ml.cli import main; main()", "publish", "--path", str(small_events),
                  "--bootstrap", broker.bootstrap], tmp_path)
            base = ["--events", "kafka", "--store", "redis", "--bootstrap", broker.bootstrap,
                    "--idle-timeout", "3"]
            _run(_worker_cmd(*base, "--redis-prefix", p_ref), tmp_path / "ref")
            _run_and_kill(_worker_cmd(*base, "--redis-prefix", p_crash), tmp_path / "crash", tmp_path / "ref")
            _run(_worker_cmd(*base, "--redis-prefix", p_crash), tmp_path / "crash")

            ref, ref_model = _final(tmp_path / "ref")
            got, got_model = _final(tmp_path / "crash")
            assert got.position == ref.position
            assert got_model == ref_model
            assert got.model.n_learned > 1000
            ref_dump, got_dump = _redis_dump(client, p_ref), _redis_dump(client, p_crash)
            assert ref_dump and got_dump == ref_dump
            # At least once: every transaction has a score event (some twice, from the replayed tail).
            scores = read_topic(broker.bootstrap, "scores")
            import pandas as pd

            n_tx = len(pd.read_parquet(small_events))
            assert len({s["transaction_id"] for s in scores}) == n_tx
            assert len(scores) >= 2 * n_tx  # two workers scored the stream; the crashed one maybe more
    finally:
        for prefix in (p_ref, p_crash):
            keys = list(client.scan_iter(f"{prefix}*", count=1000))
            for i in range(0, len(keys), 1000):
                client.unlink(*keys[i:i + 1000])
