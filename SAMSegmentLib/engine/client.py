"""The engine client: the session API spoken to ``samsegment serve`` (the local engine child or a shared server).

Nothing here blocks and no thread is started: every call queues work and returns a ``Request``; ``poll(budget)``
(the effect's timer, every few tens of milliseconds) connects, sends and reads whatever the sockets allow for about
``budget`` seconds and turns arrived answers into request events. ``Request.wait`` (CLI, tests) polls in a loop
that sleeps in ``select``.

Volumes travel once per ``volume_key``: to the local engine child as a memory-mapped file in the folder both share
(copied in bounded steps, then named in a small request), to a remote server as a zlib-compressed upload streamed
in bounded steps. A session the server no longer holds ("session expired": evicted, or the server restarted) is
reopened and the request replayed once, without the caller noticing.
"""

from __future__ import annotations

import json
import logging
import secrets
import select
import ssl
import tempfile
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..prompts import PromptError, SlicePrompt
from ..propagation.plan import SliceOutcome
from ..volume import VolumeError
from . import wire
from .api import (
    PROTOCOL_VERSION,
    Engine,
    EngineError,
    EngineEvent,
    EngineSession,
    EngineUnavailable,
    PreviewResult,
    PropagationSummary,
    Request,
    SessionExpired,
    SessionSpec,
)
from .http_io import Connection, Exchange, TransportError

log = logging.getLogger(__name__)

__all__ = ["BadRequest", "RemoteEngine", "RemoteSession"]

COPY_STEP_BYTES = 8 << 20  # volume bytes copied into the shared file per step
UPLOAD_STEP_BYTES = 1 << 20  # volume bytes compressed per step for a remote upload


class BadRequest(EngineError, ValueError):
    """The server refused the request's content (HTTP 400): the message says what is wrong."""


class _Reply:
    """Collects one response: status, headers, body (or streamed records)."""

    def __init__(self, stream: bool = False, on_record: Callable[[dict, list[bytes]], None] | None = None) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.stream = stream
        self.on_record = on_record
        self.reader = wire.RecordReader() if stream else None

    def response(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers

    def data(self, chunk: bytes) -> None:
        if self.reader is not None and self.status == 200:
            for header, blobs in self.reader.feed(chunk):
                self.on_record(header, blobs)
        else:
            self.body += chunk

    def json(self) -> dict[str, Any]:
        try:
            data = json.loads(bytes(self.body) or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def error(self) -> EngineError:
        """The exception for an error status."""
        data = self.json()
        message = str(data.get("error") or f"the engine answered HTTP {self.status}")
        code = data.get("code", "")
        if self.status == 410 or code == "session-expired":
            return SessionExpired(message)
        if self.status == 400:
            return BadRequest(message)
        if self.status == 401:
            return EngineError(message)
        return EngineError(message)


class _Volume:
    """A volume on its way to the server: copy into the shared file (local child) or a streamed upload."""

    def __init__(self, engine: RemoteEngine, array: np.ndarray, ijk_to_ras: np.ndarray) -> None:
        self.engine = engine
        self.array = np.asarray(array)
        self.ijk_to_ras = np.asarray(ijk_to_ras, dtype=float)
        self.vid: str | None = None
        self.error: BaseException | None = None
        self.waiters: list[Callable[[], None]] = []
        self._task: Iterator[None] | None = None
        self.path: Path | None = None
        self.state = "new"
        self.fill: float | None = None  # what NaN / infinite voxels travel as
        self.warning: str | None = None

    def start(self) -> None:
        self.state = "sending"
        self.vid = None
        self.error = None
        self._task = self._send_steps()
        self.engine._tasks.append(self._step)

    def _send_steps(self) -> Iterator[None]:
        """The whole sending, in bounded steps: check the voxels, then copy into the shared file (local child)
        or start the compressed upload (remote)."""
        yield from self._scan_steps()
        if self.engine.shared_dir is not None:
            yield from self._copy_steps()
            header = wire.volume_header(self.array, self.ijk_to_ras, "raw")
            header.update(source="file", path=str(self.path), offset=0)
            self.engine._send("POST", "/v1/volumes", wire.pack(header), self._sent)
            return
        head = wire.pack(wire.volume_header(self.array, self.ijk_to_ras, "zlib"))
        fill = self.fill

        def body() -> Iterator[bytes]:
            yield head
            yield from wire.volume_chunks(self.array, "zlib", UPLOAD_STEP_BYTES, fill=fill)

        self.engine._send("POST", "/v1/volumes", body, self._sent)

    def _scan_steps(self) -> Iterator[None]:
        """Float volumes: find NaN and infinite voxels (they travel as the smallest finite value, with a warning,
        as Volume treats them in process). COPY_STEP_BYTES per step."""
        self.fill, self.warning = None, None
        if not np.issubdtype(self.array.dtype, np.floating):
            return
        flat = np.ascontiguousarray(self.array).reshape(-1)
        step = max(1, COPY_STEP_BYTES // flat.itemsize)
        low, bad = np.inf, 0
        for start in range(0, flat.size, step):
            piece = flat[start : start + step]
            finite = np.isfinite(piece)
            n_finite = int(np.count_nonzero(finite))
            bad += piece.size - n_finite
            if n_finite:
                low = min(low, float(piece[finite].min()))
            yield
        if bad == flat.size:
            raise VolumeError("the volume holds no usable voxel values: every voxel is NaN or infinite")
        if bad:
            self.fill = low
            self.warning = f"{bad} voxel(s) are NaN or infinite; they are treated as the volume's minimum ({low:g})"

    def _copy_steps(self) -> Iterator[None]:
        """Copy the array into a file of the shared folder, COPY_STEP_BYTES per step."""
        folder = self.engine.shared_dir
        self._remove_file()  # a resend (the engine restarted) writes a new file: the old copy goes
        handle = tempfile.NamedTemporaryFile(dir=folder, prefix="volume-", suffix=".raw", delete=False)
        handle.close()
        self.path = Path(handle.name)
        flat_src = np.ascontiguousarray(self.array).reshape(-1)
        target = np.memmap(self.path, dtype=flat_src.dtype, mode="w+", shape=(flat_src.size,))
        step = max(1, COPY_STEP_BYTES // flat_src.itemsize)
        for start in range(0, flat_src.size, step):
            piece = flat_src[start : start + step]
            if self.fill is not None:
                piece = np.where(np.isfinite(piece), piece, piece.dtype.type(self.fill))
            target[start : start + step] = piece
            yield
        del target

    def _step(self) -> bool:
        """One bounded step of the sending; False when the task is over."""
        try:
            next(self._task)
            return True
        except StopIteration:
            return False
        except VolumeError as exc:
            self._finish(exc)
            return False
        except OSError as exc:
            self._finish(EngineError(f"cannot write the volume for the engine into {self.engine.shared_dir}: "
                                     f"{exc.strerror or exc}"))
            return False

    def _sent(self, reply: _Reply | None, exc: BaseException | None) -> None:
        if exc is None and reply is not None and reply.status == 200:
            self.vid = str(reply.json().get("volume"))
            self._finish(None)
        else:
            self._finish(exc or reply.error())

    def _finish(self, exc: BaseException | None) -> None:
        self.state = "error" if exc is not None else "ready"
        self.error = exc
        waiters, self.waiters = self.waiters, []
        for fn in waiters:
            fn()

    def when_ready(self, fn: Callable[[], None]) -> None:
        if self.state in ("ready", "error"):
            fn()
        else:
            self.waiters.append(fn)
            if self.state == "new":
                self.start()

    def restart(self) -> None:
        """Send again (the server lost it)."""
        if self.state != "sending":
            self.state = "new"

    def discard(self) -> None:
        if self.vid is not None and self.state == "ready":
            self.engine._send("DELETE", f"/v1/volumes/{self.vid}", None, lambda r, e: None)
        self._remove_file()

    def _remove_file(self) -> None:
        if self.path is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            self.path = None


class RemoteSession(EngineSession):
    """A session in a remote engine. Requests made while it opens wait; an expired session reopens once."""

    def __init__(self, engine: RemoteEngine, volume: _Volume, spec: SessionSpec, owns_volume: bool = False) -> None:
        self.engine = engine
        self.volume = volume
        self.owns_volume = owns_volume  # opened without a volume key: no other session shares it
        self.spec = spec
        self.sid: str | None = None
        self.window: tuple[float, float, str] | None = None
        self.device: str | None = None
        self.state = "opening"
        self.error: BaseException | None = None
        self.opening = Request("open", pump=engine._pump_blocking)
        self._waiting: list[Callable[[], None]] = []
        self._closed = False
        self._open()

    # ------------------------------------------------------------------------------------------------ opening

    def _open(self) -> None:
        self.state = "opening"
        self.volume.when_ready(self._volume_ready)

    def _volume_ready(self) -> None:
        if self.volume.error is not None:
            self._opened(None, self.volume.error)
            return
        body = json.dumps({"volume": self.volume.vid, "spec": self.spec.to_json()}).encode()
        self.engine._send("POST", "/v1/sessions", body, self._opened, content_type="application/json")

    def _opened(self, reply: _Reply | None, exc: BaseException | None) -> None:
        if exc is None and reply is not None and reply.status != 200:
            exc = reply.error()
            if isinstance(exc, SessionExpired) and self.volume.state == "ready":
                self.volume.restart()  # the server lost the volume: send it again, then open
                self._open()
                return
        if exc is not None:
            self.state, self.error = "error", exc
            self.opening._fail(exc)
        else:
            data = reply.json()
            if self.volume.warning:
                data["warning"] = self.volume.warning
            self.sid = str(data["session"])
            self.window = tuple(data.get("window") or ()) or None
            self.device = data.get("device")
            self.state = "ready"
            self.opening._push(EngineEvent("done", data))
        waiting, self._waiting = self._waiting, []
        for fn in waiting:
            fn()
        if self._closed:
            self.close()

    def _when_open(self, fn: Callable[[], None]) -> None:
        if self.state == "opening":
            self._waiting.append(fn)
        else:
            fn()

    def _expired(self, replay: Callable[[], None]) -> None:
        """The server no longer has this session: reopen (resending the volume if needed), then ``replay``."""
        if self.state != "opening":
            log.info("session expired on the server; reopening and replaying")
            self.sid = None
            self.opening = Request("open", pump=self.engine._pump_blocking)
            self._open()
        self._waiting.append(replay)

    @property
    def id(self) -> str | None:
        return self.sid

    # ------------------------------------------------------------------------------------------------ calls

    def _call(self, kind: str, send: Callable[[Request, Callable[[], None]], None]) -> Request:
        """A request sent once the session is open; ``send(request, on_expired)`` issues it."""
        request = Request(kind, pump=self.engine._pump_blocking)
        replayed = {"n": 0}

        def on_expired() -> None:
            if replayed["n"] >= 1:
                request._fail(SessionExpired("the engine lost the session twice in a row; try again"))
                return
            replayed["n"] += 1
            self._expired(go)

        def go() -> None:
            if request.done:
                return
            if self.state == "error":
                request._fail(self.error)
                return
            if request.cancel_requested:
                request._push(EngineEvent("cancelled"))
                return
            send(request, on_expired)

        self._when_open(go)
        return request

    def preview(self, axis: str, index: int, prompt: SlicePrompt) -> Request:
        def send(request: Request, on_expired) -> None:
            blobs: list[bytes] = []
            header = {"axis": str(axis).upper(), "index": int(index), "prompt": wire.prompt_to_wire(prompt, blobs)}

            def done(reply: _Reply | None, exc: BaseException | None) -> None:
                if request.cancel_requested and exc is None:
                    request._push(EngineEvent("cancelled"))
                    return
                if exc is not None:
                    request._fail(exc)
                elif reply.status == 200:
                    try:
                        h, b = wire.unpack(bytes(reply.body))
                        mask = wire.mask_from_wire(h.get("mask"), b[0] if b else b"")
                        window = tuple(h["window"]) if h.get("window") else None
                        request._push(EngineEvent("done", PreviewResult(h["axis"], int(h["index"]), mask,
                                                                        float(h["score"]), window,
                                                                        float(h.get("ready_at", 0.0)))))
                    except (wire.WireError, KeyError, IndexError, TypeError) as err:
                        request._fail(EngineError(f"the engine's preview could not be read: {err}"))
                else:
                    err = reply.error()
                    if isinstance(err, SessionExpired):
                        on_expired()
                    else:
                        request._fail(err)

            self.engine._send("POST", f"/v1/sessions/{self.sid}/preview", wire.pack(header, blobs), done,
                              skip=lambda: request.cancel_requested)

        return self._call("preview", send)

    def prefetch(self, axis: str, indices: list[int]) -> Request:
        def send(request: Request, on_expired) -> None:
            job = secrets.token_hex(8)
            body = json.dumps({"axis": str(axis).upper(), "indices": [int(i) for i in indices], "job": job}).encode()
            request._on_cancel = lambda _r: self._cancel_job(job, request)

            def done(reply: _Reply | None, exc: BaseException | None) -> None:
                if exc is not None:
                    request._fail(exc)
                elif reply.status == 202:
                    request._push(EngineEvent("done", None))
                elif isinstance(reply.error(), SessionExpired):
                    on_expired()
                else:
                    request._fail(reply.error())

            self.engine._send("POST", f"/v1/sessions/{self.sid}/prefetch", body, done,
                              content_type="application/json")

        return self._call("prefetch", send)

    def propagate(self, axis: str, prompts: dict[int, SlicePrompt], direction: str = "both",
                  frange: tuple[int, int] | None = None) -> Request:
        axis = str(axis).upper()

        def send(request: Request, on_expired) -> None:
            job = secrets.token_hex(8)
            blobs: list[bytes] = []
            header = {"axis": axis, "prompts": wire.prompts_to_wire(prompts, blobs), "direction": direction,
                      "range": None if frange is None else [int(frange[0]), int(frange[1])], "job": job}
            request._on_cancel = lambda _r: self._cancel_job(job, request)

            def on_record(h: dict, b: list[bytes]) -> None:
                kind = h.get("event")
                if kind == "progress":
                    request._push(EngineEvent("progress", (int(h["done"]), int(h["total"]))))
                elif kind == "outcome":
                    mask = wire.mask_from_wire(h.get("mask"), b[0] if b else b"")
                    request._push(EngineEvent("result", SliceOutcome(int(h["index"]), mask, float(h["score"]),
                                                                     str(h["source"]), int(h["seed"]),
                                                                     h.get("stopped"))))
                elif kind == "done":
                    window = tuple(h["window"]) if h.get("window") else None
                    request._push(EngineEvent("done", PropagationSummary(h["axis"], list(h["recomputed"]), window,
                                                                         float(h.get("ready_at", 0.0)))))
                elif kind == "cancelled":
                    request._push(EngineEvent("cancelled"))
                elif kind == "error":
                    cls = PromptError if h.get("code") == "PromptError" else EngineError
                    request._fail(cls(str(h.get("message"))))

            def done(reply: _Reply | None, exc: BaseException | None) -> None:
                if exc is not None:
                    request._fail(exc if not isinstance(exc, EngineUnavailable) else EngineUnavailable(
                        f"{exc} (during the propagation; nothing was written)"))
                elif reply.status != 200:
                    err = reply.error()
                    if isinstance(err, SessionExpired):
                        on_expired()
                    else:
                        request._fail(err)
                elif not request.done:
                    request._fail(EngineUnavailable("the engine ended the propagation without a result"))

            self.engine._send("POST", f"/v1/sessions/{self.sid}/propagate", wire.pack(header, blobs), done,
                              stream=True, on_record=on_record)

        return self._call("propagate", send)

    def new_object(self) -> Request:
        def send(request: Request, on_expired) -> None:
            def done(reply: _Reply | None, exc: BaseException | None) -> None:
                if exc is not None:
                    request._fail(exc)
                elif reply.status == 200:
                    request._push(EngineEvent("done", None))
                elif isinstance(reply.error(), SessionExpired):
                    on_expired()  # a reopened session starts with no object anyway
                else:
                    request._fail(reply.error())

            self.engine._send("POST", f"/v1/sessions/{self.sid}/new-object", b"{}", done,
                              content_type="application/json")

        return self._call("new-object", send)

    def _cancel_job(self, job: str, request: Request) -> None:
        if self.sid is None:
            return
        body = json.dumps({"job": job}).encode()
        self.engine._send("POST", f"/v1/sessions/{self.sid}/cancel", body, lambda r, e: None,
                          content_type="application/json")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.state == "ready" and self.sid is not None:
            sid, self.sid = self.sid, None
            self.state = "closed"
            self.engine._send("DELETE", f"/v1/sessions/{sid}", None, lambda r, e: None)
        if self.owns_volume:
            self.volume.discard()


class RemoteEngine(Engine):
    """Client of an engine server at ``url`` (http:// or https://).

    ``token`` goes as ``Authorization: Bearer``; ``shared_dir`` (local engine child only) is a folder the server
    maps volume files from; ``ssl_context`` for https (default: the system's trusted certificates).
    """

    def __init__(self, url: str, token: str | None = None, shared_dir: str | Path | None = None,
                 ssl_context: ssl.SSLContext | None = None, max_connections: int = 4) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise EngineError(f"the engine URL must look like http://host:port or https://host:port, not {url!r}")
        self.url = url.rstrip("/")
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.base = parsed.path.rstrip("/")
        self.token = token
        self.shared_dir = Path(shared_dir) if shared_dir else None
        self.ssl_context = ssl_context or (ssl.create_default_context() if parsed.scheme == "https" else None)
        self.max_connections = max_connections
        self._connections: list[Connection] = []
        self._queue: deque[Exchange] = deque()
        self._tasks: list[Callable[[], bool]] = []
        self._volumes: dict[Any, _Volume] = {}
        self._sessions: list[RemoteSession] = []
        self.server_version: str | None = None
        self.broken: BaseException | None = None
        # Sent with every request, so that a load balancer in front of several servers can keep all of this client's
        # volumes and sessions on one of them (nginx: hash $http_x_samsegment_affinity; HAProxy: balance hdr(...)).
        self.affinity = secrets.token_urlsafe(12)
        self._hello: Request | None = None
        self.hello()

    # ------------------------------------------------------------------------------------------------ API

    def hello(self) -> Request:
        """Version handshake (sent automatically first); its error explains a mismatch."""
        request = Request("hello", pump=self._pump_blocking)
        body = json.dumps({"client_version": __version__, "protocol": PROTOCOL_VERSION}).encode()

        def done(reply: _Reply | None, exc: BaseException | None) -> None:
            if exc is not None:
                request._fail(exc)
            elif reply.status == 200:
                self.server_version = str(reply.json().get("version"))
                request._push(EngineEvent("done", reply.json()))
            else:
                request._fail(reply.error())

        self._send("POST", "/v1/hello", body, done, content_type="application/json")
        self._hello = request
        return request

    def open_session(self, array_kji: np.ndarray, ijk_to_ras: np.ndarray, spec: SessionSpec,
                     volume_key: Any = None) -> RemoteSession:
        self._sessions = [s for s in self._sessions if not s._closed]
        if volume_key is None:  # the session's own volume: discarded when the session closes
            session = RemoteSession(self, _Volume(self, array_kji, ijk_to_ras), spec, owns_volume=True)
        else:
            volume = self._volumes.get(volume_key)
            if volume is None or volume.state == "error":
                volume = self._volumes[volume_key] = _Volume(self, array_kji, ijk_to_ras)
            session = RemoteSession(self, volume, spec)
        self._sessions.append(session)
        return session

    def forget_volume(self, volume_key: Any) -> None:
        volume = self._volumes.pop(volume_key, None)
        if volume is not None:
            volume.discard()

    def poll(self, budget_s: float = 0.015) -> None:
        deadline = time.monotonic() + budget_s
        self._run_tasks(deadline)
        self._assign()
        self._pump(0.0, deadline)

    def close(self) -> None:
        for session in self._sessions:
            session.close()
        for volume in list(self._volumes.values()):
            volume.discard()
        self._volumes.clear()
        self.poll(0.05)
        for conn in self._connections:
            conn.close()
        self._connections.clear()

    @property
    def description(self) -> str:
        return f"engine at {self.url}"

    @property
    def pending(self) -> int:
        """Exchanges queued or in flight (0 when idle)."""
        return len(self._queue) + sum(1 for c in self._connections if c.exchange is not None) + len(self._tasks)

    # ------------------------------------------------------------------------------------------------ plumbing

    def _send(self, method: str, path: str, body: bytes | Callable[[], Iterator[bytes]] | None,
              on_done: Callable[[_Reply | None, BaseException | None], None], content_type: str | None = None,
              stream: bool = False, on_record: Callable[[dict, list[bytes]], None] | None = None,
              skip: Callable[[], bool] | None = None) -> None:
        """Queue one exchange; ``on_done(reply, exc)`` runs once. ``skip`` is asked before it is sent: True drops it
        unsent and calls ``on_done(None, None)`` (a cancelled preview must not cost the server a decode)."""
        headers = [("X-SAMSegment-Protocol", str(PROTOCOL_VERSION)), ("User-Agent", f"samsegment/{__version__}"),
                   ("X-SAMSegment-Affinity", self.affinity)]
        if self.token:
            headers.append(("Authorization", f"Bearer {self.token}"))
        if body is not None:
            headers.append(("Content-Type", content_type or wire.CONTENT_TYPE))
        reply = _Reply(stream, on_record)
        finished = {"done": False, "retried": False}
        holder: dict[str, Exchange] = {}

        def end() -> None:
            if not finished["done"]:
                finished["done"] = True
                on_done(reply, None)

        def error(exc: BaseException) -> None:
            if finished["done"]:
                return
            exchange = holder["exchange"]
            if (exchange.reused_connection and exchange.status is None and not finished["retried"]
                    and not isinstance(exc, EngineError)):
                # A kept-alive connection the server had closed (idle timeout, restart): send once more on a new one.
                finished["retried"] = True
                holder["exchange"] = make()
                self._queue.appendleft(holder["exchange"])
                return
            finished["done"] = True
            on_done(None, exc if isinstance(exc, EngineError) else EngineUnavailable(self._unreachable(exc)))

        def data(chunk: bytes) -> None:
            try:
                reply.data(chunk)  # streamed records are decoded here (on_record): a malformed one ends the request
            except (wire.WireError, KeyError, IndexError, TypeError, ValueError) as exc:
                if not finished["done"]:
                    finished["done"] = True
                    on_done(None, EngineError(f"the engine's answer could not be read: {exc}"))

        def make() -> Exchange:
            payload = body() if callable(body) else body
            exchange = Exchange(method, self.base + path, headers, payload, on_response=reply.response,
                                on_data=data, on_end=end, on_error=error)
            if skip is not None:
                exchange.skip = skip
                exchange.on_skip = lambda: (finished.__setitem__("done", True), on_done(None, None))
            return exchange

        holder["exchange"] = make()
        self._queue.append(holder["exchange"])

    def _unreachable(self, exc: BaseException) -> str:
        return f"the Segment Anything engine at {self.url} cannot be reached ({exc})"

    def _assign(self) -> None:
        for conn in self._connections:
            if conn.idle and conn.stale():
                conn.close()
        self._connections = [c for c in self._connections if not c.closed]
        if any(e.skip is not None for e in self._queue):
            unsent = [e for e in self._queue if e.skip is not None and e.skip()]
            for exchange in unsent:
                self._queue.remove(exchange)
                exchange.finished = True
                exchange.on_skip()
        while self._queue:
            idle = next((c for c in self._connections if c.idle), None)
            if idle is None and len(self._connections) < self.max_connections:
                try:
                    idle = Connection(self.host, self.port, self.ssl_context)
                except TransportError as exc:
                    exchange = self._queue.popleft()
                    exchange._fail(exc)
                    continue
                self._connections.append(idle)
            if idle is None:
                return
            idle.start(self._queue.popleft())

    def _pump(self, timeout: float, deadline: float) -> None:
        active = [c for c in self._connections if not c.closed and (c.exchange is not None or c.wants_write)]
        if not active:
            if timeout > 0:
                time.sleep(min(timeout, 0.01))
            return
        writers = [c for c in active if c.wants_write]
        try:
            readable, writable, _ = select.select(active, writers, [], timeout)
        except (OSError, ValueError):
            readable, writable = active, writers
        for conn in set(readable) | set(writable):
            conn.pump(deadline)
        self._assign()

    def _run_tasks(self, deadline: float) -> None:
        """Run bounded steps of the pending tasks (volume copies) until ``deadline``."""
        current, self._tasks = self._tasks, []
        kept = []
        for task in current:
            alive = True
            while alive and time.monotonic() < deadline:
                alive = task()
            if alive:
                kept.append(task)
        self._tasks = kept + self._tasks  # plus tasks added meanwhile

    def _pump_blocking(self, timeout: float) -> None:
        """For Request.wait: run tasks, then wait in select up to ``timeout`` seconds for the sockets."""
        deadline = time.monotonic() + max(timeout, 0.05)
        self._run_tasks(deadline)
        self._assign()
        self._pump(timeout, deadline)
