"""A Redis connection that waits for a reply by polling its socket for a short while before it blocks.

On a VM, a process that blocks on a socket and is woken by the reply pays the wake-up (measured on the
project's 2-core VM: a PING answered in 85 µs back to back, 340-650 µs after an idle gap of 3-30 ms, of
which the client's own wake-up is about half). The scoring service waits for one short script per call,
so it polls for up to ``poll_us`` (FRAUD_REDIS_POLL_US; 0 turns it off) and only then blocks as usual.
"""

from __future__ import annotations

import os
import select
import time

import redis

DEFAULT_POLL_US = 1000


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
