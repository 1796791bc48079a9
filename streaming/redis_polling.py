"""A Redis connection that can wait for a reply by polling its socket for a short while before it blocks.

On a VM, a process that blocks on a socket and is woken by the reply pays the wake-up (measured on the
project's 2-core VM: a PING answered in 85 µs back to back, 340-650 µs after an idle gap of 3-30 ms, of
which the client's own wake-up is about half). Polling for up to ``poll_us`` (FRAUD_REDIS_POLL_US) avoids
the client's half. It is off by default: measured against `bentoml serve` at 300 req/s over 10 connections,
one worker, polling for 1 ms gave p99 4.5-6.3 ms in seven rounds where blocking gave 4.6-5.0 (a polling
worker holds the core that wrk or Redis need when requests overlap), lone requests were equal (p50 0.89
ms either way) and so was maximum throughput.
"""

from __future__ import annotations

import os
import select
import time

import redis

DEFAULT_POLL_US = 0


class PollingConnection(redis.Connection):
    poll_s = float(os.environ.get("FRAUD_REDIS_POLL_US", DEFAULT_POLL_US)) / 1e6

    def read_response(self, *args, **kwargs):
        sock = self._sock
        if sock is not None and self.poll_s > 0 and not self._parser_has_data():
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
            end = time.perf_counter() + self.poll_s
            while not poller.poll(0) and time.perf_counter() < end:
                pass
        return super().read_response(*args, **kwargs)

    def _parser_has_data(self) -> bool:
        reader = getattr(self._parser, "_reader", None)  # hiredis: a reply may already be buffered
        return bool(reader is not None and reader.has_data())
