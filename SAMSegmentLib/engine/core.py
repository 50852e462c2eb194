"""The engine core: volumes, models, sessions and the jobs that run on them, in one process.

Used directly by the in-process engine (engine/local.py) and behind HTTP by ``samsegment serve`` (engine/server.py).
It owns every torch call. Models are loaded once per (model, device, backend, precision) and shared by the sessions
that use them; one ``DeviceGate`` per device lets one job at a time run model code, previews first (see gate.py).

Ownership: every volume and session records the ``owner`` that created it (the server passes a digest of the
client's token); a call naming another owner's id fails exactly as an unknown id does, so ids cannot be probed.
Ids are random (``secrets.token_urlsafe``), never sequential.

Jobs are ``worker.Job`` objects (events: progress, result, done, cancelled, error) run on a thread pool; each job
checks its cancel flag before every slice.

Memory: a session's embedding cache is capped at ``session_cache_mb``; when ``memory_mb`` is set, the volumes plus
the sessions' caches stay under it: adding a volume or opening a session first evicts idle sessions (no job
running), least recently used first, then volumes no session uses. Sessions idle for longer than ``idle_timeout_s``
go too. An evicted session answers "session expired" and the client reopens it.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..jobs import Job, JobCancelled, JobContext, JobEvent
from ..prompts import PromptError, SlicePrompt
from ..request import DIRECTIONS, SegmentationRequest
from ..volume import AXES, Volume, VolumeError
from .api import (
    PRIORITY_PREFETCH,
    PRIORITY_PREVIEW,
    PRIORITY_PROPAGATE,
    EngineError,
    PreviewResult,
    PropagationSummary,
    SessionExpired,
    SessionSpec,
)
from .gate import DeviceGate, GateCancelled

log = logging.getLogger(__name__)

ModelLoader = Callable[[SessionSpec], Any]


class UnknownSession(SessionExpired):
    """No such session (or volume) for this owner: it expired, was closed, or never existed."""


class Busy(EngineError):
    """The session already runs a propagation."""


def default_model_loader(spec: SessionSpec):
    """Load ``spec.model`` with the engine's loader (weights verified, backend and precision applied)."""
    from ..models import load_model

    return load_model(spec.model, device=None if spec.device == "auto" else spec.device, backend=spec.backend,
                      precision=spec.precision)


@dataclass
class StoredVolume:
    id: str
    owner: str
    volume: Volume
    nbytes: int
    last_used: float = field(default_factory=time.monotonic)
    sessions: set[str] = field(default_factory=set)


@dataclass
class CoreSession:
    id: str
    owner: str
    spec: SessionSpec
    volume_id: str
    session: Any  # SegmentationSession
    gate: DeviceGate
    last_used: float = field(default_factory=time.monotonic)
    propagation: Job | None = None
    active: int = 0  # jobs submitted and not finished
    reserved: int = 0  # bytes of the memory budget set aside for its caches

    @property
    def nbytes(self) -> int:
        """Memory the session holds now beyond its volume: cached embeddings (and propagation caches)."""
        total = int(self.session.predictor.cache.nbytes)
        chain = getattr(self.session, "_chain", None)
        total += int(getattr(chain, "nbytes", 0) or 0)
        return total

    @property
    def window(self) -> tuple[float, float, str]:
        w = self.session.window
        return float(w.low), float(w.high), str(w.name)


class EngineCore:
    """Volumes, models, sessions and jobs of one engine process."""

    def __init__(self, model_loader: ModelLoader | None = None, max_workers: int = 16,
                 defaults: SessionSpec | None = None, memory_mb: int | None = None, session_cache_mb: int = 2048,
                 idle_timeout_s: float | None = None) -> None:
        """``defaults``: the device, backend and precision that a client's 'auto' means on this engine;
        ``memory_mb``: the budget for volumes and caches together (None: unbounded); ``session_cache_mb``: the
        largest embedding cache a session may ask for; ``idle_timeout_s``: idle sessions older than this go."""
        self._loader = model_loader or default_model_loader
        self.defaults = defaults or SessionSpec()
        self.memory_bytes = None if memory_mb is None else int(memory_mb) << 20
        self.session_cache_mb = int(session_cache_mb)
        self.idle_timeout_s = idle_timeout_s
        self.evictions = 0
        self._lock = threading.RLock()
        self._volumes: dict[str, StoredVolume] = {}
        self._sessions: dict[str, CoreSession] = {}
        self._models: dict[tuple, Any] = {}
        self._model_locks: dict[tuple, threading.Lock] = {}
        self._gates: dict[str, DeviceGate] = {}
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="samsegment-engine")
        self._closed = False

    # ----------------------------------------------------------------------------------------------- volumes

    def add_volume(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, owner: str = "local") -> str:
        """Keep a volume (the array is used as is, not copied); returns its id."""
        volume = Volume(array_kji, ijk_to_ras)
        if not np.issubdtype(volume.array.dtype, np.number) or np.issubdtype(volume.array.dtype, np.complexfloating):
            raise VolumeError(f"voxel type {volume.array.dtype} is not a real number type")
        vid = secrets.token_urlsafe(18)
        with self._lock:
            self._make_room(int(volume.array.nbytes))
            self._volumes[vid] = StoredVolume(vid, owner, volume, int(volume.array.nbytes))
        log.info("volume %s… %s %s (%.1f MB)", vid[:6], volume.array.shape, volume.array.dtype,
                 volume.array.nbytes / 1e6)
        return vid

    def drop_volume(self, vid: str, owner: str = "local") -> None:
        with self._lock:
            stored = self._volume(vid, owner)
            for sid in list(stored.sessions):
                self._drop_session(sid)
            self._volumes.pop(vid, None)

    def _volume(self, vid: str, owner: str) -> StoredVolume:
        stored = self._volumes.get(vid)
        if stored is None or not secrets.compare_digest(stored.owner, owner):
            raise UnknownSession("session expired: the engine no longer holds this volume")
        stored.last_used = time.monotonic()
        return stored

    # ----------------------------------------------------------------------------------------------- models

    def resolve(self, spec: SessionSpec) -> SessionSpec:
        """``spec`` with 'auto' device, backend and precision replaced by this engine's defaults."""
        from dataclasses import replace

        d = self.defaults
        return replace(spec, device=d.device if spec.device == "auto" else spec.device,
                       backend=d.backend if spec.backend == "auto" else spec.backend,
                       precision=d.precision if spec.precision == "auto" else spec.precision)

    def model(self, spec: SessionSpec):
        """The shared model for ``spec`` (loaded on first use; concurrent callers wait for one load)."""
        spec = self.resolve(spec)
        key = (spec.model, spec.device, spec.backend, spec.precision)
        with self._lock:
            if key in self._models:
                return self._models[key]
            lock = self._model_locks.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            started = time.monotonic()
            model = self._loader(spec)
            log.info("loaded %s on %s in %.1f s", spec.model, getattr(model, "device", "?"), time.monotonic() - started)
            with self._lock:
                self._models[key] = model
            return model

    def gate_for(self, model) -> DeviceGate:
        device = str(getattr(model, "device", "cpu"))
        with self._lock:
            return self._gates.setdefault(device, DeviceGate(device))

    @property
    def loaded_models(self) -> list[tuple]:
        with self._lock:
            return list(self._models)

    # ----------------------------------------------------------------------------------------------- sessions

    def open_session(self, vid: str, spec: SessionSpec, owner: str = "local",
                     on_event: Callable[[JobEvent], None] | None = None) -> Job:
        """Load the model if needed and create a session on volume ``vid``; the job's value is
        ``{"session": id, "window": [low, high, name], "device": str}``."""
        with self._lock:
            stored = self._volume(vid, owner)

        def run(ctx: JobContext):
            from ..session import SegmentationSession
            from ..windowing import Window

            ctx.check_cancel()
            model = self.model(spec)
            ctx.check_cancel()
            window = Window(spec.window[0], spec.window[1], "explicit") if spec.window is not None else None
            cache_bytes = min(spec.cache_mb, self.session_cache_mb) << 20
            with self._lock:
                self._make_room(cache_bytes, keep_volume=vid)  # the cache may fill up to its budget: reserve it
            session = SegmentationSession(model, stored.volume, window=window, cache_bytes=cache_bytes,
                                          window_mode=spec.window_mode)
            sid = secrets.token_urlsafe(18)
            core_session = CoreSession(sid, owner, spec, vid, session, self.gate_for(model), reserved=cache_bytes)
            with self._lock:
                if vid not in self._volumes:
                    raise UnknownSession("session expired: the volume was released while the session opened")
                self._sessions[sid] = core_session
                stored.sessions.add(sid)
            return {"session": sid, "window": list(core_session.window), "device": str(model.device)}

        return self._submit("open", run, on_event)

    def session(self, sid: str, owner: str = "local") -> CoreSession:
        with self._lock:
            s = self._sessions.get(sid)
            if s is None or not secrets.compare_digest(s.owner, owner):
                raise UnknownSession("session expired: the engine no longer holds this session")
            s.last_used = time.monotonic()
            if s.volume_id in self._volumes:
                self._volumes[s.volume_id].last_used = s.last_used
            return s

    def close_session(self, sid: str, owner: str = "local") -> None:
        with self._lock:
            self.session(sid, owner)
            self._drop_session(sid)

    # ----------------------------------------------------------------------------------------------- memory

    @property
    def memory_used(self) -> int:
        """Bytes of the budget in use: volumes plus the cache budgets reserved by sessions."""
        with self._lock:
            return sum(v.nbytes for v in self._volumes.values()) + sum(s.reserved for s in self._sessions.values())

    def _make_room(self, needed: int, keep_volume: str | None = None) -> None:
        """Evict idle sessions (LRU), then unused volumes, until ``needed`` more bytes fit; expire old idle
        sessions. Raises EngineError when the budget cannot hold it. Call with the lock held."""
        now = time.monotonic()
        if self.idle_timeout_s is not None:
            for s in sorted(self._sessions.values(), key=lambda s: s.last_used):
                if s.active == 0 and now - s.last_used > self.idle_timeout_s:
                    log.info("session %s… idle for %.0f s: released", s.id[:6], now - s.last_used)
                    self._drop_session(s.id)
                    self.evictions += 1
        if self.memory_bytes is None:
            return
        if needed > self.memory_bytes:
            raise EngineError(f"the volume needs {needed / 2**20:,.0f} MB, more than this server's memory budget of "
                              f"{self.memory_bytes / 2**20:,.0f} MB")
        used = sum(v.nbytes for v in self._volumes.values()) + sum(s.reserved for s in self._sessions.values())
        for s in sorted(self._sessions.values(), key=lambda s: s.last_used):
            if used + needed <= self.memory_bytes:
                return
            if s.active == 0:
                used -= s.reserved
                log.info("session %s… evicted to make room (%.0f MB needed)", s.id[:6], needed / 2**20)
                self._drop_session(s.id)
                self.evictions += 1
        for v in sorted(self._volumes.values(), key=lambda v: v.last_used):
            if used + needed <= self.memory_bytes:
                return
            if not v.sessions and v.id != keep_volume:
                used -= v.nbytes
                self._volumes.pop(v.id, None)
                self.evictions += 1
        if used + needed > self.memory_bytes:
            raise EngineError("the server is busy: its memory is held by sessions that are working right now; "
                              "try again in a minute")

    def _drop_session(self, sid: str) -> None:
        s = self._sessions.pop(sid, None)
        if s is None:
            return
        if s.propagation is not None:
            s.propagation.cancel()
        stored = self._volumes.get(s.volume_id)
        if stored is not None:
            stored.sessions.discard(sid)

    @property
    def session_ids(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    # ----------------------------------------------------------------------------------------------- jobs

    def preview(self, sid: str, axis: str, index: int, prompt: SlicePrompt, owner: str = "local",
                on_event: Callable[[JobEvent], None] | None = None) -> Job:
        s = self.session(sid, owner)
        axis = _check_axis(axis)

        def run(ctx: JobContext) -> PreviewResult:
            with _gated(s.gate, PRIORITY_PREVIEW, ctx):
                result = s.session.preview(axis, int(index), prompt)
            used = getattr(result, "window", None)
            window = s.window if used is None else (float(used.low), float(used.high), str(used.name))
            return PreviewResult(axis, int(index), np.asarray(result.mask, bool), float(result.score), window,
                                 time.time())

        return self._submit(f"preview {axis}{index}", run, on_event, s)

    def new_object(self, sid: str, owner: str = "local") -> None:
        """The session's next prompts are another object (its own fitted window)."""
        s = self.session(sid, owner)
        with self._lock:
            s.session.new_object()

    def prefetch(self, sid: str, axis: str, indices: list[int], owner: str = "local",
                 on_event: Callable[[JobEvent], None] | None = None) -> Job:
        s = self.session(sid, owner)
        axis = _check_axis(axis)
        n = s.session.volume.axis_length(axis)
        indices = [int(i) for i in indices if 0 <= int(i) < n]

        def run(ctx: JobContext) -> int:
            done = 0
            for index in indices:
                with _gated(s.gate, PRIORITY_PREFETCH, ctx):
                    done += s.session.prefetch(axis, [index])
            return done

        return self._submit(f"prefetch {axis}", run, on_event, s)

    def propagate(self, sid: str, axis: str, prompts: dict[int, SlicePrompt], direction: str = "both",
                  frange: tuple[int, int] | None = None, owner: str = "local",
                  on_event: Callable[[JobEvent], None] | None = None) -> Job:
        """Validate (PromptError on bad prompts, before anything runs) and start a propagation job."""
        s = self.session(sid, owner)
        axis = _check_axis(axis)
        if direction not in DIRECTIONS:
            raise PromptError(f"propagate must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
        request = SegmentationRequest(axis, dict(prompts), direction, None if frange is None else tuple(frange))
        request.validate(s.session.volume)
        with self._lock:
            if s.propagation is not None and not s.propagation.done:
                raise Busy("a propagation is already running in this session: wait for it or cancel it")

            def run(ctx: JobContext) -> PropagationSummary:
                from ..propagation import PropagationCancelled

                def should_stop() -> bool:
                    if ctx.cancelled:
                        return True
                    try:
                        s.gate.yield_turn(PRIORITY_PROPAGATE, lambda: ctx.cancelled)
                    except GateCancelled:
                        return True
                    return ctx.cancelled

                try:
                    s.gate.acquire(PRIORITY_PROPAGATE, lambda: ctx.cancelled)
                except GateCancelled as exc:
                    raise JobCancelled(str(exc)) from None
                try:
                    result = s.session.propagate(axis, request.prompts, direction, request.range, on_slice=ctx.emit,
                                                 should_stop=should_stop, progress=ctx.progress)
                except PropagationCancelled as exc:
                    raise JobCancelled(str(exc)) from None
                finally:
                    s.gate.release()
                return PropagationSummary(axis, list(result.recomputed), s.window, time.time())

            job = self._submit(f"propagate {axis}", run, on_event, s)
            s.propagation = job
        return job

    def _submit(self, name: str, fn, on_event, session: CoreSession | None = None) -> Job:
        if self._closed:
            raise EngineError("the engine is shutting down")
        if session is not None:
            with self._lock:
                session.active += 1

            def counted(event: JobEvent) -> None:
                if event.kind in ("done", "cancelled", "error"):
                    with self._lock:
                        session.active -= 1
                        session.last_used = time.monotonic()
                if on_event is not None:
                    on_event(event)

            job = Job(name, fn, (), {}, counted)
        else:
            job = Job(name, fn, (), {}, on_event)
        self._pool.submit(job._run)
        return job

    def shutdown(self) -> None:
        self._closed = True
        with self._lock:
            for sid in list(self._sessions):
                self._drop_session(sid)
            self._volumes.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _gated:
    """Context manager: hold the device gate for one step of a job; a cancel while waiting ends the job."""

    def __init__(self, gate: DeviceGate, priority: int, ctx: JobContext) -> None:
        self.gate, self.priority, self.ctx = gate, priority, ctx

    def __enter__(self) -> None:
        self.ctx.check_cancel()
        try:
            self.gate.acquire(self.priority, lambda: self.ctx.cancelled)
        except GateCancelled as exc:
            raise JobCancelled(str(exc)) from None

    def __exit__(self, *exc) -> None:
        self.gate.release()


def _check_axis(axis: str) -> str:
    axis = str(axis).upper()
    if axis not in AXES:
        raise PromptError(f"axis must be I, J or K, not {axis!r}")
    return axis
