"""What the Segment Anything effect asks of the engine, without Qt: one engine session per volume and settings.

The effect (Slicer's main thread) calls ``preview``, ``prefetch`` and ``propagate``; each returns at once with a
request to the engine. No model code runs in Slicer's interpreter and no Python thread is started here: Slicer's main
thread holds the GIL while idle, which would starve one (see DESIGN.md). The engine is another process (the local
child that the module starts, or a shared server), reached through SAMSegmentLib's non-blocking client; a short
QTimer in the effect calls ``poll()``, which moves the sockets along for at most ``poll_budget_s`` and turns the
answers into ``ControllerEvent``s to act on (show a preview, add a propagated slice, move the progress bar, report
an error).

Importing this module does not import torch (Slicer loads the extension before PyTorch may be installed).

Model availability (``model_status``) is also here: which Python packages a model family needs, and whether its
weights are on disk, downloadable, or must be fetched by hand.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from SAMSegmentLib.engine.api import Engine, EngineError, EngineSession, EngineUnavailable, Request, SessionSpec
from SAMSegmentLib.models import registry
from SAMSegmentLib.prompts import PromptError, SlicePrompt
from SAMSegmentLib.volume import VolumeError

log = logging.getLogger(__name__)

DEFAULT_MODEL = registry.DEFAULT_MODEL
DEFAULT_CACHE_MB = 512
POLL_BUDGET_S = 0.010  # the most a poll spends moving data (the main thread may block for at most 20 ms)

__all__ = [
    "ControllerEvent",
    "EngineProvider",
    "ModelStatus",
    "SegmentAnythingController",
    "model_status",
    "models",
    "module_available",
    "user_message",
]


def module_available(name: str) -> bool:
    """True when ``import name`` would find the module (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def unmet_requirements(family: str, backend: str = "torch", device: str = "auto"):
    """Requirements of ``family`` (with the engine's own, torch, and the backend's) that this Python does not meet,
    versions compared (SAMSegmentLib.requirements)."""
    from SAMSegmentLib.requirements import unmet_for_family

    return unmet_for_family(family, include_torch=True, backend=backend, device=device)


def models() -> dict[str, Any]:
    """The engine's model registry: name -> ModelSpec (plain Python: available before PyTorch is installed)."""
    return registry.MODELS


@dataclass(frozen=True)
class ModelStatus:
    """Whether a model can run now.

    ``state``: 'ready' (packages and weights present), 'download' (weights will be downloaded, ``size_bytes``),
    'manual' (weights must be placed by hand: ``detail`` says where), 'needs-package' (``packages`` lists the pip
    requirements to install; ``needs_torch`` when PyTorch itself is missing).
    """

    name: str
    state: str
    packages: tuple[str, ...] = ()
    needs_torch: bool = False
    size_bytes: int | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        if self.state == "ready":
            return f"{self.name} (ready)"
        if self.state == "download":
            size = f" {self.size_bytes / 1e6:,.0f} MB" if self.size_bytes else ""
            return f"{self.name} (download{size})"
        if self.state == "manual":
            return f"{self.name} (weights needed)"
        what = ", ".join((("PyTorch",) if self.needs_torch else ()) + tuple(p.split(">")[0] for p in self.packages))
        return f"{self.name} (needs {what})"


def model_status(name: str, cache_dir=None, backend: str = "torch", device: str = "auto") -> ModelStatus:
    """What model ``name`` needs before it can run with ``backend`` on ``device`` (cheap: no torch import, no
    hashing). Slicer passes its settings, so that OpenVINO is offered on CPU machines."""
    spec = registry.get_spec(name)
    unmet = unmet_requirements(spec.family, backend, device)
    needs_torch = any(u.name == "torch" for u in unmet)
    missing = tuple(u.requirement for u in unmet if u.name != "torch")
    if needs_torch:
        torch_unmet = next(u for u in unmet if u.name == "torch")
        return ModelStatus(name, "needs-package", missing, True, spec.size_bytes,
                           detail="PyTorch is not installed" if torch_unmet.installed is None else str(torch_unmet))
    from SAMSegmentLib.models.checkpoints import weights_state

    if missing:
        return ModelStatus(name, "needs-package", missing, False, spec.size_bytes,
                           detail="needs " + "; ".join(str(u) for u in unmet))
    state = weights_state(spec, cache_dir)
    if state.present and state.verified is not False:
        return ModelStatus(name, "ready", size_bytes=spec.size_bytes, detail=str(state.path))
    if spec.url is None:
        return ModelStatus(name, "manual", size_bytes=spec.size_bytes,
                           detail=f"put the weights file at {state.path} (see the model's official page)")
    return ModelStatus(name, "download", size_bytes=spec.size_bytes, detail=f"downloads to {state.path}")


def user_message(exc: BaseException) -> str:
    """A message a user can act on. The engine's exceptions (PromptError, VolumeError, WeightsError,
    EngineError, ...) are written for users; anything else is prefixed with its type."""
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__module__.startswith("SAMSegmentLib") or isinstance(exc, (PromptError, VolumeError, EngineError)):
        return text[:1].upper() + text[1:]
    return f"{type(exc).__name__}: {text}"


class EngineProvider:
    """Hands out one live engine, starting it on first use and again after it crashed.

    ``make()`` builds an engine (the module: a LocalEngine child process, or a RemoteEngine for a server URL).
    ``last_crash`` keeps the one-line reason the previous engine died, for the user.
    """

    def __init__(self, make: Callable[[], Engine]) -> None:
        self._make = make
        self._engine: Engine | None = None
        self.last_crash: str | None = None
        self.generation = 0

    def get(self) -> Engine:
        crash = self.crashed
        if crash is not None:
            self.last_crash = crash
            self.reset()
        if self._engine is None:
            self._engine = self._make()
            self.generation += 1
        return self._engine

    @property
    def current(self) -> Engine | None:
        return self._engine

    @property
    def crashed(self) -> str | None:
        return getattr(self._engine, "crashed", None) if self._engine is not None else None

    def reset(self) -> None:
        """Close the current engine (the next ``get`` starts a new one)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.close()
            except Exception:  # a dead engine may fail to close; it is gone either way
                log.debug("closing the engine failed", exc_info=True)


@dataclass
class ControllerEvent:
    """Something for the effect to show. ``kind``:

    - 'status' (``message``): model loading / ready
    - 'preview' (``axis``, ``index``, ``mask``, ``score``): a slice's predicted mask
    - 'outcome' (``axis``, ``index``, ``mask``, ``score``): one propagated slice, as it arrives
    - 'progress' (``done``, ``total``): propagation progress
    - 'propagated' (``axis``, ``result``: PropagationResult): propagation finished
    - 'cancelled' (``message``): propagation stopped by the user
    - 'error' (``message``, ``job``: 'preview' / 'prefetch' / 'propagate' / 'load' / 'engine')

    ``ready_at`` is the engine's wall-clock time (``time.time()``) when a preview or propagation was ready.
    """

    kind: str
    axis: str | None = None
    index: int | None = None
    mask: np.ndarray | None = None
    score: float | None = None
    done: int = 0
    total: int = 0
    message: str = ""
    job: str = ""
    result: Any = None
    ready_at: float = 0.0


@dataclass(frozen=True)
class _Config:
    model: str
    device: str
    cache_mb: int
    window: tuple[float, float] | None
    backend: str = "auto"
    precision: str = "auto"
    window_mode: str = "fit"


@dataclass
class _Tracked:
    kind: str
    request: Request
    axis: str | None = None
    index: int | None = None
    serial: int = 0
    extra: dict = field(default_factory=dict)


class SegmentAnythingController:
    """The effect's only way to the engine: sessions, requests, and their events.

    ``engine``: an EngineProvider, or a callable returning an Engine (wrapped in a provider), or None for a local
    engine child process on this Python (``sys.executable``; Slicer passes its PythonSlicer).
    """

    def __init__(self, engine: EngineProvider | Callable[[], Engine] | None = None,
                 poll_budget_s: float = POLL_BUDGET_S) -> None:
        if engine is None:
            from SAMSegmentLib.engine.child import LocalEngine

            engine = EngineProvider(LocalEngine)
            self._owns_provider = True
        else:
            self._owns_provider = not isinstance(engine, EngineProvider)
            if not isinstance(engine, EngineProvider):
                engine = EngineProvider(engine)
        self.provider: EngineProvider = engine
        self.poll_budget_s = poll_budget_s
        self._config: _Config | None = None
        self._array: np.ndarray | None = None
        self._ijk_to_ras: np.ndarray | None = None
        self._volume_key: Any = None
        self._session: EngineSession | None = None
        self._session_key: tuple | None = None
        self._session_engine: Engine | None = None
        self._tracked: list[_Tracked] = []
        self._serial = 0
        self._latest_preview: dict[tuple[str, int], int] = {}
        self._pending_events: list[ControllerEvent] = []
        self._reported_crash: str | None = None
        self.poll_seconds: list[float] = []  # how long each poll took (tests and benchmarks read it)

    # ------------------------------------------------------------------------------------------- configuration

    def configure(self, model: str, device: str = "auto", cache_mb: int = DEFAULT_CACHE_MB,
                  window: tuple[float, float] | None = None, backend: str = "auto", precision: str = "auto",
                  window_mode: str = "fit") -> None:
        """Model, device ('auto', 'cpu', 'cuda', 'mps'), embedding cache budget (MiB), intensity window (low, high)
        (e.g. the one displayed) or None for the automatic one of ``window_mode`` ('fit': fitted to each object;
        'volume'), backend and precision. Takes effect with the next request; a change opens a new session (the
        volume is not sent again)."""
        self._config = _Config(model, device, int(cache_mb),
                               None if window is None else (float(window[0]), float(window[1])), backend, precision,
                               window_mode)

    def set_volume(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, key: Any) -> None:
        """The source volume (a [k, j, i] array, not copied here) and a key that changes when its voxels change.
        The engine gets it once per key."""
        if key == self._volume_key and self._array is not None:
            return
        old_key = self._volume_key
        self._array, self._ijk_to_ras, self._volume_key = array_kji, np.asarray(ijk_to_ras, dtype=float), key
        self._latest_preview.clear()
        self._close_session()
        engine = self.provider.current
        if old_key is not None and engine is not None and hasattr(engine, "forget_volume"):
            engine.forget_volume(old_key)

    @property
    def volume_shape(self) -> tuple[int, ...] | None:
        return None if self._array is None else tuple(self._array.shape)

    @property
    def configured(self) -> bool:
        return self._array is not None

    def _spec(self) -> SessionSpec:
        c = self._config or _Config(DEFAULT_MODEL, "auto", DEFAULT_CACHE_MB, None)
        return SessionSpec(model=c.model, device=c.device, backend=c.backend, precision=c.precision,
                           window=c.window, cache_mb=c.cache_mb, window_mode=c.window_mode)

    def _session_for(self, kind: str, axis: str | None = None, index: int | None = None
                     ) -> tuple[EngineSession | None, Request | None]:
        """(the session, None), or (None, a failed request) when the engine cannot start or be reached: its error
        reaches the effect through ``poll`` as one message, like every other engine failure."""
        try:
            return self._ensure_session(), None
        except (EngineError, OSError) as exc:
            error = exc if isinstance(exc, EngineError) else EngineUnavailable(
                f"the Segment Anything engine could not be started: {exc}")
            failed = Request(kind)
            failed._fail(error)
            self._tracked.append(_Tracked(kind, failed, axis, index))
            return None, failed

    def _ensure_session(self) -> EngineSession:
        """The session for the current volume and settings, (re)starting the engine and (re)opening as needed.
        While a propagation runs, its session is kept: a settings change applies once it has ended."""
        if self._array is None:
            raise RuntimeError("no source volume: select a source volume in the Segment Editor")
        if self._session is not None and self.propagating and self.provider.crashed is None:
            return self._session
        crash = self.provider.crashed
        if crash is not None and crash != self._reported_crash:
            # the crash is noticed here, not in poll: the old engine's requests end now, before the provider closes
            # that engine (which would end them as "session expired"); poll reports them as one message
            self._reported_crash = crash
            for tracked in self._tracked:
                tracked.request._fail(EngineUnavailable(crash))
            self._session = None
        engine = self.provider.get()
        if self.provider.last_crash and self.provider.last_crash != self._reported_crash:
            self._reported_crash = self.provider.last_crash
        spec = self._spec()
        key = (spec, self._volume_key)
        if self._session is None or self._session_key != key or self._session_engine is not engine:
            self._close_session()
            self._session = engine.open_session(self._array, self._ijk_to_ras, spec, volume_key=self._volume_key)
            self._session_key, self._session_engine = key, engine
            self._tracked.append(_Tracked("load", self._session.opening, extra={"model": spec.model}))
        return self._session

    def _close_session(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            except Exception:  # the engine may be gone
                log.debug("closing the session failed", exc_info=True)
        self._session = None
        self._session_key = None

    # ------------------------------------------------------------------------------------------- requests

    def load(self) -> Request:
        """Start the engine, send the volume and load the model now (so that the first click is fast)."""
        session, failed = self._session_for("load")
        return failed if session is None else session.opening

    def new_object(self) -> None:
        """The next prompts are another object: with a fitted window, it gets its own."""
        if self._session is not None:
            request = self._session.new_object()
            self._tracked.append(_Tracked("new-object", request))

    def preview(self, axis: str, index: int, prompt: SlicePrompt) -> Request:
        """Predict one slice; supersedes an unfinished preview of the same slice and pending prefetches."""
        session, failed = self._session_for("preview", axis.upper(), int(index))
        if session is None:
            return failed
        axis = axis.upper()
        self._serial += 1
        serial = self._serial
        self._latest_preview[(axis, int(index))] = serial
        for tracked in self._tracked:
            if tracked.kind == "prefetch" or (tracked.kind == "preview" and (tracked.axis, tracked.index) == (axis, index)):
                tracked.request.cancel()
        request = session.preview(axis, int(index), prompt)
        self._tracked.append(_Tracked("preview", request, axis, int(index), serial))
        return request

    def prefetch(self, axis: str, indices) -> Request | None:
        """Compute embeddings of ``indices`` in the background (dropped as soon as a preview is asked for)."""
        if not self.configured:
            return None
        session, failed = self._session_for("prefetch", axis.upper())
        if session is None:
            return failed
        axis = axis.upper()
        for tracked in self._tracked:
            if tracked.kind == "prefetch":
                tracked.request.cancel()
        request = session.prefetch(axis, [int(i) for i in indices])
        self._tracked.append(_Tracked("prefetch", request, axis))
        return request

    def propagate(self, axis: str, prompts: dict[int, SlicePrompt], direction: str = "both",
                  frange: tuple[int, int] | None = None) -> Request:
        """Segment the prompted slices and propagate; outcomes stream as 'outcome' events."""
        if self.propagating:
            raise RuntimeError("a propagation is already running: wait for it or cancel it")
        session, failed = self._session_for("propagate", axis.upper())
        if session is None:
            return failed
        axis = axis.upper()
        for tracked in self._tracked:
            if tracked.kind == "prefetch":
                tracked.request.cancel()
        request = session.propagate(axis, prompts, direction, frange)
        self._tracked.append(_Tracked("propagate", request, axis, extra={"outcomes": {}}))
        return request

    @property
    def propagating(self) -> bool:
        return any(t.kind == "propagate" and not t.request.done for t in self._tracked)

    @property
    def busy(self) -> bool:
        return any(not t.request.done for t in self._tracked if t.kind not in ("prefetch", "new-object"))

    def cancel_propagation(self) -> None:
        for tracked in self._tracked:
            if tracked.kind == "propagate":
                tracked.request.cancel()

    def cancel_all(self, forget: bool = False) -> None:
        """Cancel every request; ``forget`` also drops them, so that nothing they still report reaches ``poll``
        (use it when the effect is left or the prompts are cleared)."""
        for tracked in self._tracked:
            if tracked.kind != "load":
                tracked.request.cancel()
        if forget:
            self._tracked = [t for t in self._tracked if t.kind == "load" and not t.request.done]
            self._latest_preview.clear()

    # ------------------------------------------------------------------------------------------- events

    def poll(self) -> list[ControllerEvent]:
        """Move the engine's I/O along (bounded) and return the events since the last poll, in order."""
        started = time.perf_counter()
        out: list[ControllerEvent] = self._pending_events
        self._pending_events = []
        engine = self.provider.current
        if engine is not None:
            try:
                engine.poll(self.poll_budget_s)
            except Exception as exc:  # the client never raises by design; never let the timer die
                log.exception("polling the engine failed")
                out.append(ControllerEvent("error", message=user_message(exc), job="engine"))
        crash = self.provider.crashed
        engine_failed = False
        still: list[_Tracked] = []
        for tracked in self._tracked:
            for event in tracked.request.drain():
                if event.kind == "error" and isinstance(event.value, EngineUnavailable):
                    if not engine_failed:
                        engine_failed = True
                        out.append(ControllerEvent("error", message=user_message(event.value), job="engine"))
                    continue
                out.extend(self._translate(tracked, event))
            if not tracked.request.done:
                still.append(tracked)
        self._tracked = still
        if crash is not None and crash != self._reported_crash:
            self._reported_crash = crash
            if not engine_failed:
                out.append(ControllerEvent("error", message=user_message(EngineUnavailable(crash)), job="engine"))
            for tracked in self._tracked:
                tracked.request._fail(EngineUnavailable(crash))
            self._tracked = []
            self._session = None
        self.poll_seconds.append(time.perf_counter() - started)
        if len(self.poll_seconds) > 10000:
            del self.poll_seconds[:5000]
        return out

    def _translate(self, tracked: _Tracked, event) -> list[ControllerEvent]:
        kind = event.kind
        if kind == "error":
            exc = event.value
            if not isinstance(exc, (PromptError, VolumeError, EngineError)):
                log.error("Segment Anything %s failed", tracked.kind, exc_info=(type(exc), exc, exc.__traceback__))
            return [ControllerEvent("error", axis=tracked.axis, index=tracked.index, message=user_message(exc),
                                    job=tracked.kind)]
        if tracked.kind == "load":
            if kind != "done":
                return []
            info = event.value if isinstance(event.value, dict) else {}
            where = f" on {info['device']}" if info.get("device") else ""
            text = f"{tracked.extra.get('model', 'model')} ready{where}"
            if info.get("warning"):
                text += f". Note: {info['warning']}"
            return [ControllerEvent("status", message=text)]
        if tracked.kind == "preview":
            if kind != "done":
                return []
            if self._latest_preview.get((tracked.axis, tracked.index)) != tracked.serial:
                return []  # superseded by a newer prompt on that slice
            result = event.value
            return [ControllerEvent("preview", tracked.axis, tracked.index, np.asarray(result.mask, bool),
                                    float(result.score), ready_at=result.ready_at)]
        if tracked.kind == "propagate":
            if kind == "progress":
                done, total = event.value
                return [ControllerEvent("progress", tracked.axis, done=done, total=total)]
            if kind == "result":
                outcome = event.value
                tracked.extra["outcomes"][int(outcome.index)] = outcome
                return [ControllerEvent("outcome", tracked.axis, int(outcome.index), np.asarray(outcome.mask, bool),
                                        float(outcome.score), result=outcome)]
            if kind == "done":
                from SAMSegmentLib.propagation.plan import PropagationResult

                summary = event.value
                result = PropagationResult(tracked.axis, dict(tracked.extra["outcomes"]), list(summary.recomputed))
                return [ControllerEvent("propagated", tracked.axis, result=result, ready_at=summary.ready_at)]
            if kind == "cancelled":
                return [ControllerEvent("cancelled", tracked.axis, message="propagation cancelled")]
        return []

    def shutdown(self) -> None:
        """Cancel everything and close the session; stop the engine if this controller started it."""
        self.cancel_all(forget=True)
        self._close_session()
        engine = self.provider.current
        if engine is not None:
            try:
                engine.poll(0.05)
            except Exception:
                log.debug("final poll failed", exc_info=True)
        if self._owns_provider:
            self.provider.reset()
