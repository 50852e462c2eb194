"""``samsegment web``: one session process per browser tab, all behind one HTTP port.

Why processes: a trame server has one state shared by every browser connected to it (a second user would see and
move the first user's views and prompts), so separate users need separate trame servers. trame's own
``trame.tools.serve`` runs one app per websocket inside one process, but a SAMSegment session is a Slicer scene
with process-wide VTK singletons (the displayable manager factories keep one application logic; trame-slicer
registers its pipeline creators in LayerDM's global factory), a GL context and a model with its worker; in one
process those would be shared or fight over one GIL and event loop, and one crash would end every session. So each
session is a child process (``python -m SAMSegmentWeb.app``) listening on 127.0.0.1 only, and this launcher proxies
``/s/<id>/...`` (static files and the websocket) to it: the trame client derives its websocket URL from the page's
path, so no client configuration is needed, and only the launcher's port is exposed.

- ``GET /`` starts (or hands out the warm spare) session and redirects to ``/s/<id>/``; a reload is a new session.
- A session ends when its browser disconnects (tab closed), when the launcher stops, or if the launcher dies (the
  child watches its stdin). At most ``max_sessions`` run at once; beyond that ``/`` answers 503 with a message.
- ``spare`` sessions are started ahead, so that a new tab does not wait for the session's start (Slicer scene,
  volume loading and model loading take seconds).

Nothing here imports VTK, Slicer or torch: the launcher stays small and never renders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientError, ClientSession, WSMsgType, web

from . import ROOT

log = logging.getLogger(__name__)

READY_LINE = "SAMSEGMENT_SESSION_READY"  # printed by SAMSegmentWeb.app when its server listens
STATIC_HEADERS = ("Content-Type", "Cache-Control", "ETag", "Last-Modified", "Content-Encoding")

__all__ = ["Launcher", "run"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Session:
    sid: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    handed_out: bool = False
    connections: int = 0
    ever_connected: bool = False

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class Launcher:
    """The HTTP front: session processes, the proxy, and their life cycle."""

    def __init__(self, session_args: list[str], max_sessions: int = 4, spare: int = 1, start_timeout_s: float = 180,
                 log_dir: str | Path | None = None, session_command: list[str] | None = None,
                 claim_timeout_s: float = 120, session_env: dict[str, str] | None = None) -> None:
        self.session_args = list(session_args)
        self.session_env = dict(session_env or {})  # e.g. the shared engine's token for every session
        # the session program; it gets --host, --port, --timeout 0 and --watch-stdin, prints READY_LINE when it listens
        self.session_command = list(session_command or [sys.executable, "-m", "SAMSegmentWeb.app"])
        self.max_sessions = max(1, int(max_sessions))
        self.spare = max(0, int(spare))
        self.start_timeout_s = float(start_timeout_s)
        self.claim_timeout_s = float(claim_timeout_s)  # a handed-out session whose browser never connects ends
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="samsegment-web-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.sessions: dict[str, Session] = {}
        self._starting = 0  # spawns not yet registered in self.sessions
        self._spares: list[asyncio.Task] = []
        self._http: ClientSession | None = None
        self._lock = asyncio.Lock()
        self.app = web.Application(client_max_size=1024 ** 3)
        self.app.router.add_get("/", self._index)
        self.app.router.add_route("*", "/s/{sid}/{tail:.*}", self._proxy)
        self.app.router.add_get("/s/{sid}", self._slash)
        self.app.on_startup.append(self._on_startup)
        self.app.on_cleanup.append(self._on_cleanup)

    # ------------------------------------------------------------------------------------------- sessions

    async def _spawn(self) -> Session:
        self._starting += 1
        try:
            session = await self._start_process()
        finally:
            self._starting -= 1
        try:
            await asyncio.wait_for(self._await_ready(session), self.start_timeout_s)
        except (TimeoutError, RuntimeError) as exc:
            await self._stop(session)
            raise RuntimeError(f"a session did not start ({exc}); see {session.log_path}") from exc
        asyncio.get_running_loop().create_task(self._drain(session))
        log.info("session %s ready on port %d (%.1f s)", session.sid, session.port,
                 time.monotonic() - session.started)
        return session

    async def _start_process(self) -> Session:
        sid = secrets.token_hex(8)
        port = free_port()
        log_path = self.log_dir / f"session-{sid}.log"
        cmd = [*self.session_command, "--host", "127.0.0.1", "--port", str(port), "--timeout", "0", "--watch-stdin",
               *self.session_args]
        env = dict(os.environ, **self.session_env)
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")  # no X server: skip VTK's X attempt
        with open(log_path, "ab") as err:
            process = await asyncio.create_subprocess_exec(
                *cmd, cwd=str(ROOT), env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err)
        session = Session(sid, port, process, log_path)
        self.sessions[sid] = session
        return session

    async def _await_ready(self, session: Session) -> None:
        while True:
            line = await session.process.stdout.readline()
            if not line:
                raise RuntimeError(f"it exited with code {await session.process.wait()}")
            if line.decode(errors="replace").startswith(READY_LINE):
                return

    async def _drain(self, session: Session) -> None:
        with contextlib.suppress(Exception):
            while await session.process.stdout.readline():
                pass

    async def _stop(self, session: Session) -> None:
        self.sessions.pop(session.sid, None)
        if session.alive:
            with contextlib.suppress(ProcessLookupError):
                session.process.terminate()
            try:
                await asyncio.wait_for(session.process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    session.process.kill()
                await session.process.wait()
        log.info("session %s ended", session.sid)

    def _live(self) -> int:
        return sum(1 for s in self.sessions.values() if s.alive) + self._starting

    def _fill_spares(self) -> None:
        self._spares = [t for t in self._spares if not (t.done() and (t.cancelled() or t.exception() is not None))]
        ready = [t for t in self._spares if t.done()]
        starting = [t for t in self._spares if not t.done()]
        while len(ready) + len(starting) < self.spare and self._live() < self.max_sessions:
            task = asyncio.get_running_loop().create_task(self._spawn())
            starting.append(task)
            self._spares.append(task)

    async def _claim(self) -> Session:
        """A session for a new browser tab: a ready spare, one starting, or a new one."""
        async with self._lock:
            for task in list(self._spares):
                if task.done() and not task.cancelled() and task.exception() is None and task.result().alive:
                    self._spares.remove(task)
                    session = task.result()
                    break
            else:
                pending = [t for t in self._spares if not t.done()]
                if pending:
                    task = pending[0]
                    self._spares.remove(task)
                    session = await task
                elif self._live() >= self.max_sessions:
                    raise web.HTTPServiceUnavailable(
                        text=f"All {self.max_sessions} SAMSegment sessions are in use: close another tab or try again "
                        f"later (the administrator can raise --max-sessions).")
                else:
                    session = await self._spawn()
            session.handed_out = True
            session.started = time.monotonic()
            self._fill_spares()
        asyncio.get_running_loop().create_task(self._reap_unclaimed(session))
        return session

    async def _reap_unclaimed(self, session: Session) -> None:
        await asyncio.sleep(self.claim_timeout_s)
        if session.sid in self.sessions and not session.ever_connected:
            await self._stop(session)

    # ------------------------------------------------------------------------------------------- HTTP

    async def _index(self, request: web.Request) -> web.StreamResponse:
        try:
            session = await self._claim()
        except RuntimeError as exc:
            raise web.HTTPServiceUnavailable(text=f"SAMSegment could not start a session: {exc}") from exc
        raise web.HTTPFound(f"/s/{session.sid}/")

    async def _slash(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/s/{request.match_info['sid']}/")

    async def _proxy(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["sid"])
        if session is None or not session.alive:
            raise web.HTTPGone(text="This SAMSegment session has ended: open the start page again for a new one.")
        tail = request.match_info["tail"]
        if tail == "ws" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._relay(request, session)
        url = f"http://127.0.0.1:{session.port}/{tail or 'index.html'}"
        try:
            async with self._http.request(request.method, url, params=request.query, data=await request.read(),
                                          allow_redirects=False) as upstream:
                body = await upstream.read()
                headers = {k: v for k, v in upstream.headers.items() if k in STATIC_HEADERS}
                location = upstream.headers.get("Location")
                if location:  # keep redirects inside the session's prefix
                    headers["Location"] = f"/s/{session.sid}/{location.lstrip('/')}" if location.startswith("/") \
                        else location
                return web.Response(status=upstream.status, body=body, headers=headers)
        except ClientError as exc:  # the session is ending (its tab closed) or has died
            log.info("session %s: %s %s failed: %s", session.sid, request.method, tail, exc)
            raise web.HTTPBadGateway(text="This SAMSegment session is not answering (it may have ended): open the "
                                     "start page again for a new one.") from exc

    async def _relay(self, request: web.Request, session: Session) -> web.WebSocketResponse:
        browser = web.WebSocketResponse(max_msg_size=0, heartbeat=30)
        await browser.prepare(request)
        session.connections += 1
        session.ever_connected = True
        try:
            async with self._http.ws_connect(f"ws://127.0.0.1:{session.port}/ws", max_msg_size=0) as upstream:
                async def pump(src, dst):
                    async for msg in src:
                        if msg.type == WSMsgType.TEXT:
                            await dst.send_str(msg.data)
                        elif msg.type == WSMsgType.BINARY:
                            await dst.send_bytes(msg.data)
                        else:
                            break

                tasks = [asyncio.ensure_future(pump(browser, upstream)), asyncio.ensure_future(pump(upstream, browser))]
                _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
        except Exception as exc:  # the session died or refused: the browser sees its socket close
            log.warning("session %s: websocket relay ended: %s", session.sid, exc)
        finally:
            session.connections -= 1
            await browser.close()
            if session.connections <= 0:
                await self._stop(session)  # the tab went away: its session ends
        return browser

    # ------------------------------------------------------------------------------------------- life cycle

    async def _on_startup(self, _app) -> None:
        self._http = ClientSession()
        self._fill_spares()

    async def _on_cleanup(self, _app) -> None:
        for task in self._spares:
            if not task.done():
                task.cancel()
        for task in self._spares:
            with contextlib.suppress(BaseException):
                session = await task
                self.sessions.setdefault(session.sid, session)
        await asyncio.gather(*(self._stop(s) for s in list(self.sessions.values())), return_exceptions=True)
        if self._http is not None:
            await self._http.close()


def start_shared_engine(model: str, device: str, log_dir: Path):
    """One engine process (``samsegment serve`` on 127.0.0.1, a fresh token) for every session: one model copy,
    one device gate, previews of all tabs before any propagation. Returns (process, session args, session env)."""
    from SAMSegmentLib.engine.child import EngineProcess

    engine = EngineProcess(device=device, log_path=log_dir / "engine.log", extra_args=["--preload", model])
    engine.start()
    deadline = time.monotonic() + 300
    try:
        while not engine.ready():  # raises EngineUnavailable (with the log's last error) when the engine exits
            if time.monotonic() > deadline:
                raise RuntimeError(f"the engine did not start within 300 s; see {engine.log_path}")
            time.sleep(0.2)
    except BaseException:  # Ctrl+C, a crash or the timeout: no engine (or its token folder) left behind
        engine.stop()
        raise
    env = {"SAMSEGMENT_TOKEN": engine.token, "SAMSEGMENT_ENGINE_SHARED_DIR": str(engine.folder)}
    return engine, ["--engine", engine.url], env


def run(session_args: list[str], host: str = "127.0.0.1", port: int = 8080, max_sessions: int = 4, spare: int = 1,
        log_dir: str | None = None, model: str = "litemedsam", device: str = "auto") -> int:
    """Serve until interrupted (Ctrl+C or SIGTERM); every session process and the shared engine are stopped on the
    way out."""
    folder = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="samsegment-web-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"SAMSegment web: starting the engine ({model}, log {folder / 'engine.log'}; the first start may "
          "download or export the model)...", flush=True)
    engine, engine_args, engine_env = start_shared_engine(model, device, folder)
    launcher = Launcher(session_args + engine_args, max_sessions=max_sessions, spare=spare, log_dir=folder,
                        session_env=engine_env)

    async def main() -> None:
        runner = web.AppRunner(launcher.app, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()  # inside the try: a port taken meanwhile still stops the sessions on the way out
            bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port
            print(f"SAMSegment web: http://{host}:{bound}/ (one session per browser tab, at most {max_sessions}; "
                  f"session logs in {launcher.log_dir})", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        engine.stop()
    return 0
