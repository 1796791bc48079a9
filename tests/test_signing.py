"""Signed pickles (ml.signing) and the stream checkpoint that uses them: nothing planted in the data directory
is unpickled, by the worker's restore, the service's River watcher or the Dagster snapshot asset."""

from __future__ import annotations

import os
import pickle
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

KEY = b"k" * 32


class Planted:
    """What an attacker writes: unpickling it runs a shell command (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_sign_verify_round_trip_and_every_kind_of_refusal() -> None:
    from ml.signing import SignatureError, loads, sign, verify

    payload = pickle.dumps({"a": [1, 2.5, "x"]})
    signed = sign(payload, KEY, "p")
    assert bytes(verify(signed, KEY, "p")) == payload
    assert loads(signed, KEY, "p") == {"a": [1, 2.5, "x"]}
    tampered = bytearray(signed)
    tampered[-3] ^= 1
    with pytest.raises(SignatureError, match="does not match"):
        verify(bytes(tampered), KEY, "p", source="f.pkl")
    with pytest.raises(SignatureError, match="does not match"):
        verify(signed, b"o" * 32, "p")  # another key
    with pytest.raises(SignatureError, match="does not match"):
        verify(signed, KEY, "q")  # signed for another use
    with pytest.raises(SignatureError, match="not signed"):
        verify(payload, KEY, "p", source="f.pkl")  # an unsigned (older) file
    with pytest.raises(SignatureError, match="truncated"):
        verify(signed[:30], KEY, "p")


def test_allow_list_refuses_code_even_when_signed(tmp_path: Path) -> None:
    """Defence in depth: with the key leaked, a signed pickle still cannot name os.system."""
    from ml.signing import dumps, loads

    marker = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        loads(dumps(Planted(marker), KEY), KEY)
    assert not marker.exists()


def test_key_file_created_0600_once_and_env_overrides(tmp_path: Path, monkeypatch) -> None:
    from ml.signing import key_path, load_key

    monkeypatch.delenv("FRAUD_SIGNING_KEY", raising=False)
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(load_key(tmp_path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    path = key_path(tmp_path)
    assert len(keys) == 8 and len(set(keys)) == 1 and len(keys[0]) >= 32  # racing processes agree on one key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["signing.key"]  # no temp file left behind
    assert load_key(tmp_path) == keys[0]

    monkeypatch.setenv("FRAUD_SIGNING_KEY", "e" * 40)
    assert load_key(tmp_path) == b"e" * 40
    assert load_key(tmp_path / "elsewhere") == b"e" * 40 and not (tmp_path / "elsewhere").exists()


def test_unsafe_or_short_keys_are_refused(tmp_path: Path, monkeypatch) -> None:
    from ml.signing import SigningKeyError, key_path, load_key

    monkeypatch.setenv("FRAUD_SIGNING_KEY", "short")
    with pytest.raises(SigningKeyError, match="at least 32"):
        load_key(tmp_path)
    monkeypatch.delenv("FRAUD_SIGNING_KEY")
    load_key(tmp_path)
    path = key_path(tmp_path)
    path.chmod(0o640)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_key(tmp_path)
    path.chmod(0o600)
    path.write_text("too short\n")
    with pytest.raises(SigningKeyError, match="shorter"):
        load_key(tmp_path)


# ----------------------------------------------------------------------------------- stream checkpoints


def _chain(directory: Path) -> None:
    """A checkpoint with a base and one delta (a change-log op)."""
    from ml.online import checkpoint as ckpt
    from ml.online.river_model import make_model

    c = ckpt.Checkpoint(model=make_model(), position={"transactions:0": 5})
    ckpt.save(directory, c)
    log = ckpt.ChangeLog()
    log.append((ckpt.OP_PENDING, "t1", 1_000, b"\0" * 8, 0.1, 0.2))
    c.seq, c.deltas, c.ops_since_base = 2, [2], 1
    small = {"label_heap": [], "orphans": {}, "watermark_us": 1_000}
    ckpt.write(directory, ckpt.WriteJob(2, ckpt.head_bytes(c, small), delta=log.take()))


def test_signed_checkpoint_round_trip_and_files_are_signed(tmp_path: Path) -> None:
    from ml.online import checkpoint as ckpt
    from ml.signing import is_signed

    _chain(tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.pkl"))
    assert names == ["base-00000000.pkl", "delta-00000002.pkl", "latest.pkl"]
    assert all(is_signed((tmp_path / n).read_bytes()) for n in names)
    c = ckpt.load(tmp_path)
    assert c is not None and c.seq == 2 and c.position == {"transactions:0": 5}
    assert c.state["pending"]["t1"][:2] == [1_000, b"\0" * 8]
    assert ckpt.load_model(tmp_path) is not None


@pytest.mark.parametrize("name", ["latest.pkl", "delta-00000002.pkl", "base-00000000.pkl"])
def test_planted_pickle_is_never_unpickled(tmp_path: Path, name: str, caplog) -> None:
    from ml.online import checkpoint as ckpt
    from ml.signing import dumps, load_key

    directory, marker = tmp_path / "river", tmp_path / "pwned"
    _chain(directory)
    (directory / name).write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(ckpt.CheckpointRefused, match="not signed.*--fresh"):
        ckpt.load(directory)
    assert f"refused checkpoint file {directory / name}" in caplog.text
    # Signed with the real key for its role (a leaked key): the allow-list still refuses it.
    purpose = {"latest.pkl": ckpt.HEAD_PURPOSE, "delta-00000002.pkl": ckpt.DELTA_PURPOSE}.get(name,
                                                                                           ckpt.BASE_PURPOSE)
    (directory / name).write_bytes(dumps(Planted(marker), load_key(), purpose))
    with pytest.raises(ckpt.CheckpointRefused, match="not allowed"):
        ckpt.load(directory)
    if name == "latest.pkl":
        with pytest.raises(ckpt.CheckpointRefused, match="not allowed"):
            ckpt.load_model(directory)
    assert not marker.exists()


def test_tampered_byte_and_swapped_or_old_files_are_refused(tmp_path: Path) -> None:
    from ml.online import checkpoint as ckpt

    _chain(tmp_path)
    delta = tmp_path / "delta-00000002.pkl"
    good = delta.read_bytes()
    bad = bytearray(good)
    bad[-5] ^= 0x01
    delta.write_bytes(bytes(bad))
    with pytest.raises(ckpt.CheckpointRefused, match="does not match"):
        ckpt.load(tmp_path)
    delta.write_bytes(good)
    # A signed base passed off as the head: signed for another purpose.
    head = (tmp_path / "latest.pkl").read_bytes()
    (tmp_path / "latest.pkl").write_bytes((tmp_path / "base-00000000.pkl").read_bytes())
    with pytest.raises(ckpt.CheckpointRefused, match="does not match"):
        ckpt.load_model(tmp_path)
    # A checkpoint of an older version (unsigned, format 2).
    old = pickle.loads(head[len(b"FRAUD-SIGNED-PICKLE/1\n") + 32:])
    (tmp_path / "latest.pkl").write_bytes(pickle.dumps(dict(old, format=2)))
    with pytest.raises(ckpt.CheckpointRefused, match="older version.*--fresh"):
        ckpt.load(tmp_path)


def test_worker_cli_refuses_a_tampered_checkpoint_with_a_clear_message(tmp_path: Path, monkeypatch) -> None:
    from ml.cli import main
    from ml.data.simulate import SimulationConfig, simulate
    from ml.online import checkpoint as ckpt

    monkeypatch.setenv("FRAUD_DATA_DIR", str(tmp_path))
    marker = tmp_path / "pwned"
    directory = ckpt.river_dir()
    _chain(directory)
    (directory / "latest.pkl").write_bytes(pickle.dumps(Planted(marker)))
    events = tmp_path / "tx.parquet"
    simulate(SimulationConfig(n_customers=20, n_terminals=40, n_days=3, seed=1), progress=False).write_parquet(
        events)
    r = CliRunner().invoke(main, ["worker", "--no-champion", "--path", str(events)])
    assert r.exit_code != 0 and not marker.exists()
    assert "checkpoint not restored" in r.output and "--fresh" in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)  # a message, not a traceback
    r = CliRunner().invoke(main, ["worker", "--no-champion", "--path", str(events), "--fresh"])
    assert r.exit_code == 0, r.output
    assert ckpt.load(directory) is not None and not marker.exists()


def test_river_watcher_keeps_its_model_on_a_planted_file(tmp_path: Path, caplog) -> None:
    from bento.online_model import RiverWatcher, checkpoint_path
    from ml.online import checkpoint as ckpt
    from ml.online.river_model import make_model

    marker = tmp_path / "pwned"
    ckpt.save(checkpoint_path(tmp_path).parent, ckpt.Checkpoint(model=make_model(), position={}))
    watcher = RiverWatcher(tmp_path)
    watcher.refresh()
    good = watcher.model
    assert good is not None and watcher.error is None
    checkpoint_path(tmp_path).write_bytes(pickle.dumps(Planted(marker)))
    caplog.clear()
    for _ in range(3):  # the poller's checks: reported once, the good model kept
        watcher.refresh()
    assert watcher.model is good and "not signed" in watcher.error
    assert caplog.text.count("not loaded, keeping the current River model") == 1
    assert not marker.exists()
    # The worker's next checkpoint is picked up.
    ckpt.save(checkpoint_path(tmp_path).parent, ckpt.Checkpoint(model=make_model(), position={}))
    watcher.refresh()
    assert watcher.model is not None and watcher.model is not good and watcher.error is None


@pytest.mark.pipeline
def test_river_snapshot_asset_fails_on_a_planted_checkpoint(tmp_path: Path, monkeypatch) -> None:
    import dagster as dg

    from ml.online import checkpoint as ckpt
    from orchestration.assets.streaming import river_snapshot

    monkeypatch.setenv("FRAUD_DATA_DIR", str(tmp_path))
    marker = tmp_path / "pwned"
    directory = ckpt.river_dir()
    directory.mkdir(parents=True)
    (directory / "latest.pkl").write_bytes(pickle.dumps(Planted(marker)))
    with pytest.raises(dg.Failure, match="refused"):
        river_snapshot(dg.build_asset_context())
    assert not marker.exists() and not (directory.parent / "snapshots").exists()
