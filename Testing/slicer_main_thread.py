"""An emulation of Slicer's main thread, for tests and benchmarks.

Slicer never enables PythonQt's thread support, so its main thread holds the GIL while it waits in the Qt event
loop and releases it only while it runs Python (a timer tick, a mouse move). This loop does the same: it waits in a
C call that keeps the GIL (``usleep`` through ``ctypes.PyDLL``, which does not release it, unlike ``time.sleep``),
then runs one short Python tick, like the effect's 40 ms QTimer. Python threads of this process starve exactly as
they would inside Slicer; other processes (the engine) are unaffected.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Tick:
    started: float  # time.time() when the tick began
    wall_s: float  # how long the tick ran (wall clock)
    cpu_s: float  # CPU time this thread spent in it


@dataclass
class MainThreadRun:
    ticks: list[Tick] = field(default_factory=list)
    finished: bool = False
    seconds: float = 0.0

    @property
    def max_tick_wall_ms(self) -> float:
        return 1000 * max((t.wall_s for t in self.ticks), default=0.0)

    @property
    def max_tick_cpu_ms(self) -> float:
        return 1000 * max((t.cpu_s for t in self.ticks), default=0.0)


class EmulatedMainThread:
    """Run ``tick()`` every ``interval_s`` while holding the GIL in between, until it returns True."""

    def __init__(self, interval_s: float = 0.040) -> None:
        self.interval_us = int(interval_s * 1e6)
        self._usleep = ctypes.PyDLL(None).usleep  # keeps the GIL: PyDLL calls do not release it
        self._usleep.argtypes = [ctypes.c_uint]

    def run(self, tick: Callable[[], bool], timeout_s: float) -> MainThreadRun:
        run = MainThreadRun()
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            self._usleep(self.interval_us)
            began, wall0, cpu0 = time.time(), time.perf_counter(), time.thread_time()
            done = tick()
            run.ticks.append(Tick(began, time.perf_counter() - wall0, time.thread_time() - cpu0))
            if done:
                run.finished = True
                break
        run.seconds = time.monotonic() - start
        return run
