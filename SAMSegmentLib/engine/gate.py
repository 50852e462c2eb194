"""One device, many jobs: a priority gate that lets one job at a time run model code on a device.

Lower priority values go first (a click's preview before a propagation before a prefetch); jobs of equal priority
go in arrival order. Long jobs hold the gate only between their yield points: a propagation calls ``yield_turn``
before each slice, which hands the device to any waiting job of the same or a more urgent priority and queues
it again behind them. So a preview waits at most for the slice in progress, and two propagations alternate slice by
slice.

Written by hand: no standard-library or kept lock offers priorities with FIFO order and a cancellable wait.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class GateCancelled(Exception):
    """The job was cancelled while it waited for the device."""


class DeviceGate:
    """Serialises model work on one device by priority (lower first), FIFO within a priority."""

    POLL_S = 0.05  # how often a waiting job re-checks its cancel flag

    def __init__(self, name: str = "device") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []
        self._seq = itertools.count()
        self._holder: int | None = None  # thread ident
        self.grants = 0

    def acquire(self, priority: int, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Wait for the device; raises GateCancelled when ``cancelled()`` turns true while waiting."""
        ticket = (int(priority), next(self._seq))
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            try:
                while self._holder is not None or self._waiting[0] != ticket:
                    if cancelled():
                        raise GateCancelled("cancelled while waiting for the device")
                    self._cond.wait(self.POLL_S)
            except BaseException:
                self._waiting.remove(ticket)
                heapq.heapify(self._waiting)
                self._cond.notify_all()
                raise
            heapq.heappop(self._waiting)
            self._holder = threading.get_ident()
            self.grants += 1

    def release(self) -> None:
        """Give the device back (a no-op when this thread does not hold it)."""
        with self._cond:
            if self._holder == threading.get_ident():
                self._holder = None
                self._cond.notify_all()

    def others_waiting(self, priority: int) -> bool:
        """True when a job of the same or a more urgent priority waits."""
        with self._cond:
            return bool(self._waiting) and self._waiting[0][0] <= priority

    def yield_turn(self, priority: int, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Between two steps of a long job: let waiting jobs of priority <= ``priority`` run first.
        Returns True when it yielded. The caller must hold the gate."""
        if not self.others_waiting(priority):
            return False
        self.release()
        self.acquire(priority, cancelled)
        return True

    @contextmanager
    def hold(self, priority: int, cancelled: Callable[[], bool] = lambda: False) -> Iterator[None]:
        self.acquire(priority, cancelled)
        try:
            yield
        finally:
            self.release()

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._holder is not None
