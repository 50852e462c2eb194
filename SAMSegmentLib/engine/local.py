"""The in-process engine: the session API on an EngineCore in the calling process (CLI default, tests).

Model work runs on the core's threads, so calls return at once, exactly as with the engine process. Do not use it
inside Slicer: Slicer's main thread holds the GIL while idle, which starves these threads (see DESIGN.md); Slicer
uses the engine process (engine/client.py, engine/child.py).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..jobs import JobEvent
from ..prompts import SlicePrompt
from .api import Engine, EngineError, EngineEvent, EngineSession, Request, SessionSpec
from .core import EngineCore, ModelLoader

__all__ = ["InProcessEngine", "InProcessSession"]


class InProcessSession(EngineSession):
    """A session of an InProcessEngine; requests made before it has opened wait for the opening."""

    def __init__(self, engine: InProcessEngine, spec: SessionSpec, vid: str) -> None:
        self.engine = engine
        self.spec = spec
        self.vid = vid
        self._opened = threading.Event()
        self._sid: str | None = None
        self._error: BaseException | None = None
        self.window: tuple[float, float, str] | None = None
        self.device: str | None = None
        self.opening = Request("open")
        self._open_job = engine.core.open_session(vid, spec, on_event=self._on_open)

    def _on_open(self, event: JobEvent) -> None:
        if event.kind == "done":
            self._sid = event.value["session"]
            self.window = tuple(event.value["window"])
            self.device = event.value["device"]
        elif event.kind in ("error", "cancelled"):
            self._error = event.value if event.kind == "error" else EngineError("opening the session was cancelled")
        else:
            return
        self.opening._push(EngineEvent(event.kind, event.value))
        self._opened.set()

    @property
    def id(self) -> str | None:
        return self._sid

    def _call(self, kind: str, start) -> Request:
        """A Request whose core job starts once the session is open (``start(sid, on_event)`` returns the job)."""
        request = Request(kind)
        holder: dict[str, Any] = {}

        def forward(event: JobEvent) -> None:
            request._push(EngineEvent(event.kind, event.value))

        def cancel(_req: Request) -> None:
            job = holder.get("job")
            if job is not None:
                job.cancel()

        request._on_cancel = cancel

        def begin() -> None:
            self._opened.wait()
            if self._error is not None:
                request._fail(self._error)
                return
            if request.cancel_requested:
                request._push(EngineEvent("cancelled"))
                return
            try:
                holder["job"] = start(self._sid, forward)
            except Exception as exc:  # validation errors and unknown sessions: for the user
                request._fail(exc)
                return
            if request.cancel_requested and holder["job"] is not None:
                holder["job"].cancel()

        if self._opened.is_set():
            begin()
        else:
            threading.Thread(target=begin, name="samsegment-open-wait", daemon=True).start()
        return request

    def preview(self, axis: str, index: int, prompt: SlicePrompt) -> Request:
        core = self.engine.core
        return self._call("preview", lambda sid, cb: core.preview(sid, axis, index, prompt, on_event=cb))

    def prefetch(self, axis: str, indices: list[int]) -> Request:
        core = self.engine.core
        return self._call("prefetch", lambda sid, cb: core.prefetch(sid, axis, list(indices), on_event=cb))

    def propagate(self, axis: str, prompts: dict[int, SlicePrompt], direction: str = "both",
                  frange: tuple[int, int] | None = None) -> Request:
        core = self.engine.core
        return self._call("propagate", lambda sid, cb: core.propagate(sid, axis, prompts, direction, frange,
                                                                       on_event=cb))

    def new_object(self) -> Request:
        core = self.engine.core

        def start(sid, cb):
            core.new_object(sid)
            cb(JobEvent("done", None))
            return None

        return self._call("new-object", start)

    def close(self) -> None:
        def run() -> None:
            self._opened.wait()
            if self._sid is not None:
                try:
                    self.engine.core.close_session(self._sid)
                except EngineError:
                    pass

        if self._opened.is_set():
            run()
        else:
            threading.Thread(target=run, name="samsegment-close-wait", daemon=True).start()


class InProcessEngine(Engine):
    """The engine core in this process."""

    def __init__(self, core: EngineCore | None = None, model_loader: ModelLoader | None = None) -> None:
        self.core = core or EngineCore(model_loader)
        self._volume_ids: dict[Any, str] = {}

    def open_session(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, spec: SessionSpec,
                     volume_key: Any = None) -> InProcessSession:
        vid = self._volume_ids.get(volume_key) if volume_key is not None else None
        if vid is None:
            vid = self.core.add_volume(array_kji, ijk_to_ras)
            if volume_key is not None:
                self._volume_ids[volume_key] = vid
        return InProcessSession(self, spec, vid)

    def forget_volume(self, volume_key: Any) -> None:
        vid = self._volume_ids.pop(volume_key, None)
        if vid is not None:
            try:
                self.core.drop_volume(vid)
            except EngineError:
                pass

    def close(self) -> None:
        self.core.shutdown()

    @property
    def description(self) -> str:
        return "in-process engine"
