"""Jobs: a unit of engine work with progress, cancel and streamed results (the engine core runs them on its threads).

No Qt, no MRML: callers either drain ``Job.drain()`` or pass an event callback, which runs on the job's thread; a job
with a callback keeps no events of its own (a propagation's masks would otherwise stay in memory after it ended).

A job function has the signature ``fn(ctx: JobContext, *args, **kwargs)``; it reports with ``ctx.progress(done,
total)``, streams partial results with ``ctx.emit(item)`` and must call ``ctx.check_cancel()`` (or read
``ctx.cancelled``) at least once per slice so that Cancel takes effect within one slice's time.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """Raised inside a job when its cancel was requested; the job ends in state 'cancelled'."""


@dataclass
class JobEvent:
    """Something a job reported: kind is 'progress' (value=(done, total)), 'result' (value=item),
    'done' (value=return value), 'cancelled' or 'error' (value=the exception)."""

    kind: str
    value: Any = None
    time: float = field(default_factory=time.monotonic)


class JobContext:
    """What a running job sees: progress, emit, cancel checks."""

    def __init__(self, job: Job) -> None:
        self._job = job

    @property
    def cancelled(self) -> bool:
        return self._job._cancel.is_set()

    def check_cancel(self) -> None:
        if self._job._cancel.is_set():
            raise JobCancelled(f"{self._job.name} was cancelled")

    def progress(self, done: int, total: int) -> None:
        self._job._push(JobEvent("progress", (int(done), int(total))))

    def emit(self, item: Any) -> None:
        self._job._push(JobEvent("result", item))


class Job:
    """A unit of work for the engine's threads. States: queued, running, done, cancelled, error.
    ``_run()`` executes it (once) on the calling thread."""

    def __init__(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 on_event: Callable[[JobEvent], None] | None = None) -> None:
        self.name = name
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._on_event = on_event
        self._events: queue.SimpleQueue[JobEvent] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self.state = "queued"
        self.result: Any = None
        self.error: BaseException | None = None
        self.progress: tuple[int, int] = (0, 0)
        self.thread_name: str | None = None

    def _push(self, event: JobEvent) -> None:
        if event.kind == "progress":
            self.progress = event.value
        if self._on_event is None:
            self._events.put(event)
        else:
            try:
                self._on_event(event)
            except Exception:  # a broken callback must not kill the worker
                log.exception("job %s: event callback failed", self.name)

    def cancel(self) -> None:
        """Ask the job to stop; it stops at its next cancel check (within one slice)."""
        self._cancel.set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._finished.wait(timeout)

    def drain(self) -> list[JobEvent]:
        """All events reported since the last drain, in order (non-blocking); always empty for a job with a
        callback (the callback got them)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def get(self, timeout: float | None = None) -> Any:
        """Wait for the job and return its value; re-raises its exception; JobCancelled if cancelled."""
        self._finished.wait(timeout)
        if not self._finished.is_set():
            raise TimeoutError(f"{self.name} did not finish within {timeout} s")
        if self.state == "error" and self.error is not None:
            raise self.error
        if self.state == "cancelled":
            raise JobCancelled(f"{self.name} was cancelled")
        return self.result

    def _run(self) -> None:
        self.thread_name = threading.current_thread().name
        if self._cancel.is_set():
            self.state = "cancelled"
            self._push(JobEvent("cancelled"))
            self._finished.set()
            return
        self.state = "running"
        try:
            self.result = self._fn(JobContext(self), *self._args, **self._kwargs)
            self.state = "done"
            self._push(JobEvent("done", self.result))
        except JobCancelled:
            self.state = "cancelled"
            self._push(JobEvent("cancelled"))
        except BaseException as exc:  # carried to the caller
            log.debug("job %s failed", self.name, exc_info=True)
            self.error = exc
            self.state = "error"
            self._push(JobEvent("error", exc))
        finally:
            self._finished.set()
