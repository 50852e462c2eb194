"""The session API: what every caller (CLI, Slicer effect, web front end, tests) asks of an engine.

Two implementations with the same behaviour (see DESIGN.md):

- ``engine.local.InProcessEngine``: the engine core in the calling process, model work on its threads (CLI
  default, tests);
- ``engine.client.RemoteEngine``: the same core in another process behind ``samsegment serve`` (Slicer's local
  engine child process, or a shared GPU server), spoken to over HTTP with non-blocking sockets.

Everything here is plain data plus the abstract classes; no torch, no sockets. Calls never block: each returns a
``Request`` handle whose events the caller drains (``Request.drain()``) after ``Engine.poll()``, or waits for with
``Request.wait()`` (blocking, for the CLI and tests).

Coordinates follow the engine's conventions: volumes are numpy ``[k, j, i]``; a slice is (axis I/J/K, index);
in-plane (x, y) are the two other axes in I, J, K order; masks come back as bool ``[rows, cols]`` of that slice.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from ..prompts import SlicePrompt

# Bumped whenever a request or response changes shape; client and server refuse each other when it differs.
PROTOCOL_VERSION = 1

PRIORITY_PREVIEW = 0  # a click: always first
PRIORITY_OPEN = 1  # loading a model / opening a session
PRIORITY_PROPAGATE = 2  # long jobs: yield between slices
PRIORITY_PREFETCH = 3  # background embeddings

__all__ = [
    "PROTOCOL_VERSION",
    "Engine",
    "EngineError",
    "EngineEvent",
    "EngineSession",
    "EngineUnavailable",
    "PreviewResult",
    "PropagationSummary",
    "Request",
    "SessionExpired",
    "SessionSpec",
    "__version__",
]


class EngineError(RuntimeError):
    """A problem the user can act on, reported by (or about) the engine; the message is one plain sentence."""


class EngineUnavailable(EngineError):
    """The engine process or server cannot be reached, or stopped while working."""


class SessionExpired(EngineError):
    """The server no longer holds the session (evicted, or the server restarted): reopen and replay."""


@dataclass(frozen=True)
class SessionSpec:
    """How a session runs: model, where and how (device, backend, precision), what the model sees (window), and
    the embedding cache budget in MiB.

    ``window`` is an explicit intensity window (low, high) in the volume's units (e.g. what the user sees in
    Slicer), or None for an automatic one: ``window_mode`` "fit" fits one to each object from its first prompt,
    "volume" uses one for the whole volume (see SegmentationSession).
    """

    model: str = "litemedsam"
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    window: tuple[float, float] | None = None
    cache_mb: int = 512
    window_mode: str = "fit"

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "device": self.device, "backend": self.backend, "precision": self.precision,
                "window": None if self.window is None else [float(self.window[0]), float(self.window[1])],
                "cache_mb": int(self.cache_mb), "window_mode": self.window_mode}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionSpec:
        window = data.get("window")
        if window is not None:
            if not (isinstance(window, (list, tuple)) and len(window) == 2):
                raise ValueError("window must be [low, high]")
            window = (float(window[0]), float(window[1]))
            if not window[1] > window[0]:
                raise ValueError("window must have high > low")
        cache_mb = int(data.get("cache_mb", 512))
        if not 0 < cache_mb <= 1 << 20:
            raise ValueError("cache_mb must be between 1 and 1048576")
        window_mode = str(data.get("window_mode", "fit"))
        if window_mode not in ("fit", "volume"):
            raise ValueError(f"window_mode must be fit or volume, not {window_mode!r}")
        return cls(model=str(data.get("model", "litemedsam")), device=str(data.get("device", "auto")),
                   backend=str(data.get("backend", "auto")), precision=str(data.get("precision", "auto")),
                   window=window, cache_mb=cache_mb, window_mode=window_mode)


@dataclass
class PreviewResult:
    """One slice's prediction: ``mask`` bool [rows, cols] on the voxel slice grid, ``score`` the model's predicted
    IoU, ``window`` the (low, high, name) intensity window the model saw; ``ready_at`` the engine's wall-clock time
    (``time.time()``, seconds) when the mask was ready (for latency measurements on one machine)."""

    axis: str
    index: int
    mask: np.ndarray
    score: float
    window: tuple[float, float, str] | None = None
    ready_at: float = 0.0


@dataclass
class PropagationSummary:
    """End of a propagation: the slices the model ran on (others were reused) and the window it used."""

    axis: str
    recomputed: list[int] = field(default_factory=list)
    window: tuple[float, float, str] | None = None
    ready_at: float = 0.0


@dataclass
class EngineEvent:
    """Something a request reported. ``kind``: 'progress' (value=(done, total)), 'result' (value=a streamed item:
    a propagation's ``SliceOutcome``), 'done' (value=the request's result), 'cancelled', or 'error' (value=an
    exception whose message is for the user)."""

    kind: str
    value: Any = None
    time: float = field(default_factory=time.monotonic)


class Request:
    """A pending engine call: its events in order, its state, cancel, and a blocking wait.

    States: 'pending', 'done', 'cancelled', 'error'. Implementations push events with ``_push``; ``wait`` needs the
    engine's ``poll`` (given as ``pump``) to make progress when I/O is driven by the caller.
    """

    def __init__(self, kind: str, pump: Callable[[float], None] | None = None,
                 on_cancel: Callable[[Request], None] | None = None) -> None:
        self.kind = kind
        self.state = "pending"
        self.result: Any = None
        self.error: BaseException | None = None
        self.progress: tuple[int, int] = (0, 0)
        self._events: list[EngineEvent] = []
        self._pump = pump
        self._on_cancel = on_cancel
        self._cancel_requested = False
        self._listeners: list[Callable[[EngineEvent], None]] = []
        self._lock = threading.Lock()  # events may be pushed from an engine thread (in-process engine)
        self._finished = threading.Event()

    # -------------------------------------------------------------------------------------- for implementations

    def _push(self, event: EngineEvent) -> None:
        with self._lock:
            if self.done:
                return
            if event.kind == "progress":
                self.progress = tuple(event.value)
            elif event.kind == "done":
                self.result, self.state = event.value, "done"
            elif event.kind == "cancelled":
                self.state = "cancelled"
            elif event.kind == "error":
                self.error, self.state = event.value, "error"
            self._events.append(event)
            listeners = list(self._listeners)
        if self.done:
            self._finished.set()
        for listener in listeners:
            listener(event)

    def _fail(self, exc: BaseException) -> None:
        self._push(EngineEvent("error", exc))

    def add_listener(self, fn: Callable[[EngineEvent], None]) -> None:
        """Call ``fn(event)`` for every later event (on whichever thread pushes it)."""
        self._listeners.append(fn)

    # -------------------------------------------------------------------------------------- for callers

    @property
    def done(self) -> bool:
        return self.state != "pending"

    @property
    def cancel_requested(self) -> bool:
        return self._cancel_requested

    def drain(self) -> list[EngineEvent]:
        """Events reported since the last drain, in order (non-blocking)."""
        with self._lock:
            out, self._events = self._events, []
        return out

    def cancel(self) -> None:
        """Ask the engine to stop this request (a propagation stops within one slice)."""
        if self.done or self._cancel_requested:
            return
        self._cancel_requested = True
        if self._on_cancel is not None:
            self._on_cancel(self)

    def wait(self, timeout: float | None = None, on_event: Callable[[EngineEvent], None] | None = None) -> Any:
        """Block until the request ends and return its result; raises its error, or EngineError when cancelled,
        or TimeoutError. ``on_event`` receives every event as it arrives (they are drained)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_event is not None:
                for event in self.drain():
                    on_event(event)
            if self.done:
                if on_event is not None:
                    for event in self.drain():
                        on_event(event)
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"the engine did not answer the {self.kind} request within {timeout:.0f} s")
            step = 0.05 if remaining is None else max(0.0, min(0.05, remaining))
            if self._pump is not None:
                self._pump(step)
            else:
                self._finished.wait(step)
        if self.state == "error" and self.error is not None:
            raise self.error
        if self.state == "cancelled":
            raise EngineError(f"the {self.kind} request was cancelled")
        return self.result


class EngineSession(ABC):
    """One model on one volume in an engine: previews, prefetch, propagation. Obtain with Engine.open_session."""

    spec: SessionSpec

    @abstractmethod
    def preview(self, axis: str, index: int, prompt: SlicePrompt) -> Request:
        """Predict one slice from its prompt; ``done`` carries a PreviewResult."""

    @abstractmethod
    def prefetch(self, axis: str, indices: list[int]) -> Request:
        """Compute embeddings of these slices in the background; ``done`` carries how many were computed."""

    @abstractmethod
    def propagate(self, axis: str, prompts: dict[int, SlicePrompt], direction: str = "both",
                  frange: tuple[int, int] | None = None) -> Request:
        """Segment the prompted slices and propagate ('none', 'both', 'forward', 'backward'; ``frange`` inclusive).

        'result' events stream each slice's ``SliceOutcome`` outward from the prompted slices, 'progress' events
        (done, total); ``done`` carries a PropagationSummary.
        """

    @abstractmethod
    def new_object(self) -> Request:
        """The next prompts are another object: it gets a window of its own (window_mode "fit")."""

    @abstractmethod
    def close(self) -> None:
        """Free the session in the engine (idempotent, never blocks)."""


class Engine(ABC):
    """An engine: opens sessions and moves their I/O along in ``poll``."""

    @abstractmethod
    def open_session(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, spec: SessionSpec,
                     volume_key: Any = None) -> EngineSession:
        """A session on this volume; returns at once (the volume travels and the model loads in the background;
        requests made meanwhile wait their turn). ``volume_key`` identifies this volume version: sessions opened
        with the same key share one upload."""

    def poll(self, budget_s: float = 0.015) -> None:  # noqa: B027 - optional hook: in-process engines have no I/O
        """Move pending I/O along for at most about ``budget_s`` seconds (non-blocking beyond that)."""

    @abstractmethod
    def close(self) -> None:
        """Close every session and release the engine's resources."""

    @property
    def description(self) -> str:
        return type(self).__name__
