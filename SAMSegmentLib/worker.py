"""One long-lived thread that owns all torch work; jobs with progress, cancel and streamed results.

No Qt, no MRML: the caller (Slicer's main thread via a short timer, or the command line) polls ``Job.drain()``
or passes callbacks, which run on the worker thread.

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
    """A unit of work queued on the Worker. States: queued, running, done, cancelled, error."""

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
        self._events.put(event)
        if self._on_event is not None:
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
        """All events reported since the last drain, in order (non-blocking)."""
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


class Worker:
    """A single daemon thread running jobs one at a time, in submission order."""

    THREAD_NAME = "SAMSegment-worker"

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=self.THREAD_NAME, daemon=True)
        self._current: Job | None = None
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, name: str | None = None,
               on_event: Callable[[JobEvent], None] | None = None, **kwargs: Any) -> Job:
        job = Job(name or getattr(fn, "__name__", "job"), fn, args, kwargs, on_event)
        self._queue.put(job)
        return job

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (no context argument) on the worker and wait for its value."""
        return self.submit(lambda _ctx: fn(*args, **kwargs), name=getattr(fn, "__name__", "call")).get(timeout)

    def cancel_all(self) -> None:
        """Cancel the running job and every queued one."""
        if self._current is not None:
            self._current.cancel()
        pending = []
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for job in pending:
            if job is None:
                self._queue.put(None)
                continue
            job.cancel()
            self._queue.put(job)

    @property
    def is_worker_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def shutdown(self, timeout: float | None = 5.0) -> None:
        self.cancel_all()
        self._queue.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self._current = job
            job._run()
            self._current = None
