"""``samsegment serve``: the engine core behind HTTP (Starlette on uvicorn).

Endpoints (all but ``GET /health`` need ``Authorization: Bearer <token>`` when the server has a token, and the
client's ``X-SAMSegment-Protocol`` header must equal PROTOCOL_VERSION):

- ``GET  /health``                          liveness: version and protocol (no token)
- ``POST /v1/hello``                        version handshake (JSON {client_version, protocol})
- ``POST /v1/volumes``                      a volume: envelope header (shape, dtype, ijk_to_ras, encoding), then
                                            the raw or zlib bytes; or ``source: "file"`` naming a memory-mapped file
                                            in the folder the server was told to trust (the local engine child)
- ``DELETE /v1/volumes/{vid}``
- ``POST /v1/sessions``                     JSON {volume, spec} -> {session, window, device} once the model is ready
- ``POST /v1/sessions/{sid}/preview``       envelope {axis, index, prompt} -> envelope {score, window, mask} + mask
- ``POST /v1/sessions/{sid}/prefetch``      JSON {axis, indices, job} -> 202
- ``POST /v1/sessions/{sid}/new-object``    the next prompts are another object (its own fitted window)
- ``POST /v1/sessions/{sid}/propagate``     envelope {axis, prompts, direction, range, job} -> a record stream
                                            (progress, outcome + mask, done | cancelled | error)
- ``POST /v1/sessions/{sid}/cancel``        JSON {job}
- ``DELETE /v1/sessions/{sid}``

Errors are JSON ``{"error": <one sentence>, "code": <short name>}`` with 400 (malformed input), 401 (token),
409 (protocol mismatch, busy), 410 (session expired: reopen and replay), 413 (too large), 503 (model unavailable).
Model work never runs on the event loop: the core's jobs run on its threads and report back thread-safely.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..jobs import JobEvent
from ..prompts import PromptError
from ..volume import VolumeError
from . import wire
from .api import PROTOCOL_VERSION, EngineError, SessionSpec
from .core import Busy, EngineCore, UnknownSession

log = logging.getLogger(__name__)

PROTOCOL_HEADER = "x-samsegment-protocol"
UPLOAD_OFFLOAD_BYTES = 1 << 20  # decompress uploads on a thread in pieces of about this size


@dataclass
class ServerSettings:
    """``tokens`` empty: no token needed (loopback only); otherwise each client sends one of them, and what a client
    opens belongs to its token. ``shared_dir``: the only folder whose files a client may name as a volume source
    (None: file sources refused). ``max_upload_mb``: the largest volume accepted."""

    tokens: tuple[str, ...] = ()
    shared_dir: Path | None = None
    max_upload_mb: int = 4096


class HTTPError(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def owner_of(token: str | None) -> str:
    """The identity that owns volumes and sessions: a digest of the token (the token itself is never stored)."""
    return "anonymous" if token is None else hashlib.sha256(token.encode()).hexdigest()


def create_app(core: EngineCore, settings: ServerSettings | None = None) -> Starlette:
    """The ASGI application serving ``core``."""
    settings = settings or ServerSettings()
    jobs: dict[tuple[str, str], Any] = {}  # (session id, client job id) -> Job
    jobs_lock = threading.Lock()

    def authorise(request: Request) -> str:
        sent = request.headers.get(PROTOCOL_HEADER)
        if sent is not None and sent != str(PROTOCOL_VERSION):
            raise HTTPError(409, f"this server runs SAMSegment {__version__} (protocol {PROTOCOL_VERSION}) and the "
                                 f"client speaks protocol {sent}: update the server or the extension so they match",
                            "protocol-mismatch")
        if not settings.tokens:
            return owner_of(None)
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise HTTPError(401, "this server needs an access token: set it in the extension's settings "
                                 "(or SAMSEGMENT_TOKEN / --token-file)", "token-missing")
        given = given.strip().encode()
        # compare with every token, in constant time each, so the answer's timing says nothing about which matched
        matched = [hmac.compare_digest(given, t.encode()) for t in settings.tokens]
        if not any(matched):
            raise HTTPError(401, "the access token is wrong: check it in the extension's settings", "token-wrong")
        return owner_of(given.decode())

    def handler(fn):
        async def endpoint(request: Request) -> Response:
            try:
                owner = authorise(request)
                return await fn(request, owner)
            except HTTPError as exc:
                return _error(exc.status, exc.message, exc.code)
            except UnknownSession as exc:
                return _error(410, str(exc), "session-expired")
            except Busy as exc:
                return _error(409, str(exc), "busy")
            except wire.PayloadTooLarge as exc:
                return _error(413, str(exc), "too-large")
            except (wire.WireError, PromptError, VolumeError) as exc:
                return _error(400, _text(exc), "bad-request")
            except (ValueError, KeyError) as exc:  # the client's input as far as we know; logged in case it is ours
                log.warning("request %s %s refused: %s", request.method, request.url.path, _text(exc),
                            exc_info=log.isEnabledFor(logging.DEBUG))
                return _error(400, _text(exc), "bad-request")
            except ClientDisconnect:
                return Response(status_code=400)
            except EngineError as exc:
                return _error(503, str(exc), "engine")
            except Exception as exc:  # never a traceback to the client; the log has it
                log.exception("request %s %s failed", request.method, request.url.path)
                return _error(500, f"the engine failed: {type(exc).__name__}: {exc}", "internal")

        return endpoint

    async def json_body(request: Request) -> dict[str, Any]:
        body = await request.body()
        try:
            data = json.loads(body or b"{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HTTPError(400, "the request body is not valid JSON", "bad-request") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "the request body must be a JSON object", "bad-request")
        return data

    async def envelope(request: Request) -> tuple[dict[str, Any], list[bytes]]:
        return wire.unpack(await request.body())

    # ------------------------------------------------------------------------------------------- endpoints

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "version": __version__, "protocol": PROTOCOL_VERSION})

    async def hello(request: Request, owner: str) -> Response:
        data = await json_body(request)
        protocol = data.get("protocol")
        if protocol != PROTOCOL_VERSION:
            raise HTTPError(409, f"this server runs SAMSegment {__version__} (protocol {PROTOCOL_VERSION}); the "
                                 f"extension runs {data.get('client_version', '?')} (protocol {protocol}): update "
                                 f"the server or the extension so they match", "protocol-mismatch")
        return JSONResponse({"version": __version__, "protocol": PROTOCOL_VERSION,
                             "models": [list(k) for k in core.loaded_models]})

    async def post_volume(request: Request, owner: str) -> Response:
        limit = settings.max_upload_mb << 20
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + wire.MAX_HEADER_BYTES:
            raise HTTPError(413, f"the upload is larger than this server's upload limit of {settings.max_upload_mb} MB",
                            "too-large")
        buffer = bytearray()
        header: dict[str, Any] | None = None
        decoder = None
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + wire.MAX_HEADER_BYTES:
                raise HTTPError(413, f"the upload is larger than this server's upload limit of {settings.max_upload_mb} MB",
                                "too-large")
            buffer += chunk
            if header is None:
                split = wire.split_header(buffer)
                if split is None:
                    if len(buffer) > wire.MAX_HEADER_BYTES + 8:
                        raise wire.WireError("the volume header is too large")
                    continue
                header, offset = split
                del buffer[:offset]
                if header.get("source") == "file":
                    break
                shape, dtype, _ = wire.parse_volume_header(header, limit)
                decoder = wire.VolumeDecoder(shape, dtype, str(header.get("encoding", "raw")))
            if decoder is not None and len(buffer) >= UPLOAD_OFFLOAD_BYTES:
                piece = bytes(buffer)
                buffer.clear()
                await asyncio.to_thread(decoder.feed, piece)
        if header is None:
            raise wire.WireError("the volume upload is truncated (incomplete header)")
        shape, dtype, matrix = wire.parse_volume_header(header, limit)
        if header.get("source") == "file":
            array = _map_shared_file(header, shape, dtype, settings.shared_dir)
        else:
            if buffer:
                await asyncio.to_thread(decoder.feed, bytes(buffer))
            array = decoder.finish()
        if array.dtype.kind == "f":
            finite = await asyncio.to_thread(lambda: bool(np.isfinite(array).all()))
            if not finite:
                raise HTTPError(400, "the volume has NaN or infinite voxels: replace them (e.g. by the minimum) "
                                     "before uploading", "bad-request")
        vid = core.add_volume(array, matrix, owner)
        return JSONResponse({"volume": vid, "shape": list(shape)})

    async def delete_volume(request: Request, owner: str) -> Response:
        core.drop_volume(request.path_params["vid"], owner)
        return JSONResponse({"closed": True})

    async def post_session(request: Request, owner: str) -> Response:
        data = await json_body(request)
        vid = data.get("volume")
        if not isinstance(vid, str):
            raise HTTPError(400, "'volume' must be the id the volume upload returned", "bad-request")
        spec = SessionSpec.from_json(data.get("spec") or {})
        from ..models.registry import get_spec

        get_spec(spec.model)  # unknown model names: 400 before any work
        result = await _run_job(lambda cb: core.open_session(vid, spec, owner, on_event=cb))
        return JSONResponse(result)

    async def delete_session(request: Request, owner: str) -> Response:
        core.close_session(request.path_params["sid"], owner)
        return JSONResponse({"closed": True})

    async def preview(request: Request, owner: str) -> Response:
        sid = request.path_params["sid"]
        header, blobs = await envelope(request)
        axis, index = _axis_index(header)
        prompt = wire.prompt_from_wire(header.get("prompt"), blobs)
        result = await _run_job(lambda cb: core.preview(sid, axis, index, prompt, owner, on_event=cb))
        meta, blob = wire.mask_to_wire(result.mask)
        body = wire.pack({"axis": result.axis, "index": result.index, "score": result.score,
                          "window": list(result.window), "ready_at": result.ready_at, "mask": meta}, [blob])
        return Response(body, media_type=wire.CONTENT_TYPE)

    async def new_object(request: Request, owner: str) -> Response:
        core.new_object(request.path_params["sid"], owner)
        return JSONResponse({"new_object": True})

    async def prefetch(request: Request, owner: str) -> Response:
        sid = request.path_params["sid"]
        data = await json_body(request)
        axis = str(data.get("axis", ""))
        indices = data.get("indices")
        if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices) or len(indices) > 4096:
            raise HTTPError(400, "'indices' must be a list of slice indices", "bad-request")
        job_id = _job_id(data)
        job = core.prefetch(sid, axis, indices, owner, on_event=lambda e: _forget_when_done(e, sid, job_id))
        _remember(sid, job_id, job)
        if job.done:  # it finished before it was remembered: its forget has already run
            _forget(sid, job_id)
        return JSONResponse({"job": job_id}, status_code=202)

    async def propagate(request: Request, owner: str) -> Response:
        sid = request.path_params["sid"]
        header, blobs = await envelope(request)
        axis = str(header.get("axis", ""))
        prompts = wire.prompts_from_wire(header.get("prompts"), blobs)
        direction = str(header.get("direction", "both"))
        frange = header.get("range")
        if frange is not None:
            if not (isinstance(frange, list) and len(frange) == 2 and all(isinstance(v, int) for v in frange)):
                raise HTTPError(400, "'range' must be two slice indices [first, last]", "bad-request")
            frange = (frange[0], frange[1])
        job_id = _job_id(header)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        job = core.propagate(sid, axis, prompts, direction, frange, owner,
                             on_event=lambda e: loop.call_soon_threadsafe(queue.put_nowait, e))
        _remember(sid, job_id, job)

        async def records():
            try:
                while True:
                    event = await queue.get()
                    yield _record(event)
                    if event.kind in ("done", "cancelled", "error"):
                        return
            finally:
                if not job.done:
                    log.info("propagation %s: the client went away; cancelling", job_id[:8])
                    job.cancel()
                _forget(sid, job_id)

        return StreamingResponse(records(), media_type=wire.STREAM_CONTENT_TYPE)

    async def cancel(request: Request, owner: str) -> Response:
        sid = request.path_params["sid"]
        core.session(sid, owner)  # 410 for another owner's session
        data = await json_body(request)
        with jobs_lock:
            job = jobs.get((sid, str(data.get("job", ""))))
        if job is not None:
            job.cancel()
        return JSONResponse({"cancelled": job is not None})

    # ------------------------------------------------------------------------------------------- helpers

    def _remember(sid: str, job_id: str, job) -> None:
        with jobs_lock:
            jobs[(sid, job_id)] = job

    def _forget(sid: str, job_id: str) -> None:
        with jobs_lock:
            jobs.pop((sid, job_id), None)

    def _forget_when_done(event: JobEvent, sid: str, job_id: str) -> None:
        if event.kind in ("done", "cancelled", "error"):
            _forget(sid, job_id)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/hello", handler(hello), methods=["POST"]),
        Route("/v1/volumes", handler(post_volume), methods=["POST"]),
        Route("/v1/volumes/{vid}", handler(delete_volume), methods=["DELETE"]),
        Route("/v1/sessions", handler(post_session), methods=["POST"]),
        Route("/v1/sessions/{sid}", handler(delete_session), methods=["DELETE"]),
        Route("/v1/sessions/{sid}/preview", handler(preview), methods=["POST"]),
        Route("/v1/sessions/{sid}/prefetch", handler(prefetch), methods=["POST"]),
        Route("/v1/sessions/{sid}/new-object", handler(new_object), methods=["POST"]),
        Route("/v1/sessions/{sid}/propagate", handler(propagate), methods=["POST"]),
        Route("/v1/sessions/{sid}/cancel", handler(cancel), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.core = core
    app.state.settings = settings
    return app


async def _run_job(start) -> Any:
    """Start a core job (``start(on_event)``) and await its value without blocking the event loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def on_event(event: JobEvent) -> None:
        if event.kind in ("done", "error", "cancelled"):
            loop.call_soon_threadsafe(_settle, future, event)

    start(on_event)
    event = await future
    if event.kind == "error":
        raise event.value
    if event.kind == "cancelled":
        raise EngineError("the request was cancelled")
    return event.value


def _settle(future: asyncio.Future, event: JobEvent) -> None:
    if not future.done():
        future.set_result(event)


def _record(event: JobEvent) -> bytes:
    """One streamed propagation record."""
    if event.kind == "progress":
        return wire.pack_record({"event": "progress", "done": event.value[0], "total": event.value[1]})
    if event.kind == "result":
        o = event.value
        meta, blob = wire.mask_to_wire(o.mask)
        return wire.pack_record({"event": "outcome", "index": int(o.index), "score": float(o.score),
                                 "source": o.source, "seed": int(o.seed), "stopped": o.stopped, "mask": meta}, [blob])
    if event.kind == "done":
        s = event.value
        return wire.pack_record({"event": "done", "axis": s.axis, "recomputed": [int(i) for i in s.recomputed],
                                 "window": list(s.window), "ready_at": s.ready_at})
    if event.kind == "cancelled":
        return wire.pack_record({"event": "cancelled"})
    exc = event.value
    if not isinstance(exc, (PromptError, VolumeError, EngineError)):
        log.error("propagation failed", exc_info=(type(exc), exc, exc.__traceback__))
    return wire.pack_record({"event": "error", "message": _text(exc), "code": type(exc).__name__})


def _text(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _axis_index(header: dict[str, Any]) -> tuple[str, int]:
    axis, index = header.get("axis"), header.get("index")
    if not isinstance(axis, str) or not isinstance(index, int):
        raise wire.WireError("a preview needs 'axis' (I, J or K) and an integer 'index'")
    return axis, index


def _job_id(data: dict[str, Any]) -> str:
    job = data.get("job")
    if not isinstance(job, str) or not 8 <= len(job) <= 64:
        raise wire.WireError("'job' must be a client-chosen id of 8 to 64 characters")
    return job


def _map_shared_file(header: dict[str, Any], shape, dtype, shared_dir: Path | None) -> np.ndarray:
    """The volume as a read-only memory map of a file the client wrote into the server's trusted folder."""
    if shared_dir is None:
        raise HTTPError(400, "this server does not accept file volumes: upload the voxels", "bad-request")
    path = Path(str(header.get("path", ""))).resolve()
    root = shared_dir.resolve()
    if root not in path.parents or not path.is_file():
        raise HTTPError(400, "the volume file is not in the folder this server shares with its client", "bad-request")
    offset = header.get("offset", 0)
    if not isinstance(offset, int) or offset < 0:
        raise wire.WireError("'offset' must be a byte offset")
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < needed:
        raise wire.WireError("the volume file is shorter than its shape and dtype say")
    return np.memmap(path, dtype=dtype, mode="r", shape=tuple(shape), offset=offset)


# ---------------------------------------------------------------------------------------------------- serving


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_tokens(token_file: str | None) -> list[str]:
    """Access tokens: one per line of ``token_file`` (blank lines and lines starting with # ignored), else
    SAMSEGMENT_TOKEN, else none. A server accepts any of them; a client uses the first."""
    if token_file:
        try:
            lines = Path(token_file).read_text().splitlines()
        except OSError as exc:
            raise EngineError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        tokens = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        if not tokens:
            raise EngineError(f"the token file {token_file} holds no token")
        short = [t for t in tokens if len(t) < 16]
        if short:
            raise EngineError(f"the token file {token_file} has a token shorter than 16 characters: use long random "
                              f"tokens (e.g. python -c \"import secrets; print(secrets.token_urlsafe(32))\")")
        return tokens
    token = os.environ.get("SAMSEGMENT_TOKEN", "").strip()
    return [token] if token else []


def read_token(token_file: str | None) -> str | None:
    """The client's access token: the first of ``read_tokens``, or None."""
    tokens = read_tokens(token_file)
    return tokens[0] if tokens else None


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given explicitly: asyncio enables TCP_NODELAY on accepted sockets only when proto is IPPROTO_TCP;
    # without it, a response's header and body writes meet Nagle + delayed ACK (40 ms per preview, measured)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EngineError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def serve(host: str = "127.0.0.1", port: int = 0, tokens: list[str] | tuple[str, ...] = (),
          core: EngineCore | None = None,
          shared_dir: str | None = None, ready_file: str | None = None, exit_with_parent: bool = False,
          tls_cert: str | None = None, tls_key: str | None = None, max_upload_mb: int = 4096,
          log_level: str = "warning") -> int:
    """Run the engine server until interrupted. Prints ``SAMSegment engine listening on URL`` once ready and writes
    {url, port, pid, version} to ``ready_file`` (written to a temporary name, then renamed) for a parent process."""
    import uvicorn

    if not is_loopback(host) and not tokens:
        raise EngineError(f"refusing to listen on {host} without an access token: pass --token-file FILE or set "
                          f"SAMSEGMENT_TOKEN (clients on other machines must authenticate)")
    if bool(tls_cert) != bool(tls_key):
        raise EngineError("TLS needs both --tls-cert and --tls-key")
    core = core or EngineCore()
    settings = ServerSettings(tokens=tuple(tokens), shared_dir=Path(shared_dir) if shared_dir else None,
                              max_upload_mb=max_upload_mb)
    app = create_app(core, settings)
    sock = bind_socket(host, port)
    actual = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off",
                            ssl_certfile=tls_cert, ssl_keyfile=tls_key, timeout_keep_alive=30)
    server = uvicorn.Server(config)
    scheme = "https" if tls_cert else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{actual}"

    def announce() -> None:
        print(f"SAMSegment engine listening on {url} (version {__version__}, protocol {PROTOCOL_VERSION})",
              flush=True)
        if ready_file:
            tmp = Path(ready_file).with_suffix(".tmp")
            tmp.write_text(json.dumps({"url": url, "port": actual, "pid": os.getpid(), "version": __version__,
                                       "protocol": PROTOCOL_VERSION}))
            tmp.replace(ready_file)

    if exit_with_parent:
        _watch_parent(server)

    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        announce()

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run(sockets=[sock])
    finally:
        core.shutdown()
        sock.close()
    return 0


def _watch_parent(server) -> None:
    """Stop the server when the parent process goes away (its end of our stdin closes)."""

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        log.info("parent process went away; stopping")
        server.should_exit = True

    threading.Thread(target=watch, name="samsegment-parent-watch", daemon=True).start()
