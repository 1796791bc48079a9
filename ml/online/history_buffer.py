"""One entity's recorded transactions as growable, time-sorted columns: what the online stores keep.

A scoring batch reads every entity it touches as whole-history columns (``ml.features.vectorised``). Rebuilding
those arrays from per-entry tuples, or concatenating a copy with the batch's records, on every call cost
more than the features themselves; here appends in time order are amortised O(1), pruning moves a start
offset, and a read is three slices (views, no copy).

Views handed out stay exact while the buffer changes: an append writes past their end, and anything that
would move data under them (a late transaction, growth, compaction) builds new arrays instead.
"""

from __future__ import annotations

import numpy as np


class HistoryBuffer:
    __slots__ = ("times", "amounts", "ids", "start", "end")

    def __init__(self, times: np.ndarray | None = None, amounts: np.ndarray | None = None,
                 ids: np.ndarray | None = None):
        """From time-sorted columns (adopted, not copied), or empty."""
        if times is None:
            self.times, self.amounts, self.ids = np.empty(8, np.int64), np.empty(8), np.empty(8, object)
            self.start = self.end = 0
        else:
            self.times, self.amounts, self.ids = times, amounts, ids
            self.start, self.end = 0, len(times)

    def __len__(self) -> int:
        return self.end - self.start

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HistoryBuffer):
            return NotImplemented
        return all(np.array_equal(a, b) for a, b in zip(self.columns(), other.columns(), strict=True))

    def __repr__(self) -> str:
        return f"HistoryBuffer({len(self)} entries)"

    # Pickled (stream worker checkpoints) as its entries only, not the spare capacity.
    def __getstate__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(c.copy() for c in self.columns())

    def __setstate__(self, state: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.times, self.amounts, self.ids = state
        self.start, self.end = 0, len(self.times)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, amounts, ids) as views: valid however the buffer changes later."""
        s, e = self.start, self.end
        return self.times[s:e], self.amounts[s:e], self.ids[s:e]

    def oldest(self) -> int:
        return int(self.times[self.start]) if self.end > self.start else 2**62

    def add(self, t_us: int, amount: float, tid: str) -> None:
        """Record one transaction (after any same-instant entries already held)."""
        if self.end > self.start and t_us < self.times[self.end - 1]:
            self._merge(np.array([t_us], np.int64), np.array([amount]), np.array([tid], object))
            return
        if self.end == len(self.times):
            self._regrow(1)
        self.times[self.end], self.amounts[self.end], self.ids[self.end] = t_us, amount, tid
        self.end += 1

    def extend(self, times: np.ndarray, amounts: np.ndarray, ids: np.ndarray) -> None:
        """Record several transactions, given sorted by time."""
        k = len(times)
        if not k:
            return
        if self.end > self.start and times[0] < self.times[self.end - 1]:
            self._merge(times, amounts, ids)
            return
        if self.end + k > len(self.times):
            self._regrow(k)
        e = self.end
        self.times[e:e + k], self.amounts[e:e + k], self.ids[e:e + k] = times, amounts, ids
        self.end = e + k

    def prune(self, lo_us: int) -> None:
        """Forget entries with time < lo_us."""
        if self.end > self.start and self.times[self.start] < lo_us:
            self.start += int(np.searchsorted(self.times[self.start:self.end], lo_us, "left"))

    def _regrow(self, extra: int) -> None:
        n = len(self)
        cap = max(8, 2 * (n + extra))
        times, amounts, ids = np.empty(cap, np.int64), np.empty(cap), np.empty(cap, object)
        times[:n], amounts[:n], ids[:n] = self.columns()
        self.times, self.amounts, self.ids, self.start, self.end = times, amounts, ids, 0, n

    def _merge(self, times: np.ndarray, amounts: np.ndarray, ids: np.ndarray) -> None:
        """Late entries: new arrays, sorted by time (held entries first among equal times)."""
        held_t, held_a, held_i = self.columns()
        all_t = np.concatenate([held_t, times])
        order = np.argsort(all_t, kind="stable")
        self.times, self.amounts = all_t[order], np.concatenate([held_a, amounts])[order]
        self.ids = np.concatenate([held_i, ids])[order]
        self.start, self.end = 0, len(order)
