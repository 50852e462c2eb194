"""The local engine process: ``samsegment serve`` started as a child, on 127.0.0.1, a free port and a fresh token.

Slicer's module starts it on first use with Slicer's own Python (the interpreter that has torch from the PyTorch
extension) and speaks to it through ``LocalEngine`` (a RemoteEngine that waits until the child says it listens).
Nothing here blocks: the child is started with ``Popen`` and its readiness read from a small file it writes.

- The token is random per start and reaches the child in a file readable only by this user, never on its command
  line; the volume travels as a memory-mapped file in a private folder that only this child may read volumes from.
- The child exits when this process goes away (it watches its stdin pipe), and ``stop()`` ends it at exit.
- If it dies, requests in flight fail with EngineUnavailable and ``LocalEngine.crashed`` says why in one line
  (with the log's path); the owner starts a new one on the next action.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SAMSegmentLib

from .api import EngineUnavailable
from .client import RemoteEngine

log = logging.getLogger(__name__)

__all__ = ["EngineProcess", "LocalEngine", "private_folder"]


def private_folder(prefix: str = "samsegment-engine-") -> Path:
    """A new folder only this user can read: in RAM (/dev/shm) where the system has it, else the temp folder."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


class EngineProcess:
    """One child ``samsegment serve`` process."""

    def __init__(self, python: str | None = None, device: str = "auto", backend: str = "auto",
                 precision: str = "auto", log_path: str | Path | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.python = python or sys.executable
        self.folder = private_folder()
        self.token = secrets.token_urlsafe(32)
        self.token_file = self.folder / "token"
        self.ready_file = self.folder / "ready.json"
        self.log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / "samsegment-engine.log"
        self.port = 0  # the child binds a free port itself and reports it in the ready file (no race for it)
        self.args = ["--device", device, "--backend", backend, "--precision", precision] + list(extra_args or [])
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0
        self._ready = False

    def start(self) -> None:
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.token + "\n")
        env = dict(os.environ if self.env is None else self.env)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("SAMSEGMENT_TOKEN", None)
        # The engine package's folder goes on sys.path by hand: Slicer's PythonSlicer launcher sets PYTHONPATH
        # itself, and an installed extension's folder is not on it.
        package_root = str(Path(SAMSegmentLib.__file__).resolve().parent.parent)
        argv = ["serve", "--host", "127.0.0.1", "--port", "0", "--token-file", str(self.token_file),
                "--shared-dir", str(self.folder), "--ready-file", str(self.ready_file), "--exit-with-parent",
                *self.args]
        bootstrap = (f"import sys; sys.path.insert(0, {package_root!r}); from SAMSegmentLib.cli import main; "
                     f"sys.exit(main({argv!r}))")
        command = [self.python, "-c", bootstrap]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        log_file.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n".encode())
        log_file.flush()
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log_file, stderr=subprocess.STDOUT,
                                     env=env, creationflags=flags)
        log_file.close()
        self.started_at = time.monotonic()
        log.info("engine process %d starting (log %s)", self.proc.pid, self.log_path)

    @property
    def url(self) -> str:
        """The child's URL; its port is known once :meth:`ready` is True."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        """True once the child listens; raises EngineUnavailable when it exited first."""
        if self._ready:
            return True
        if self.proc is not None and self.proc.poll() is not None:
            raise EngineUnavailable(self.crash_message())
        if self.ready_file.exists():
            try:
                info = json.loads(self.ready_file.read_text())
            except (OSError, json.JSONDecodeError):
                return False
            port = int(info.get("port", 0))
            if port > 0:
                self.port, self._ready = port, True
        return self._ready

    def crash_message(self) -> str:
        code = self.proc.poll() if self.proc is not None else None
        tail = self.log_tail()
        detail = f": {tail}" if tail else ""
        return (f"the Segment Anything engine process stopped (exit code {code}){detail}. It restarts with your next "
                f"action; its log is {self.log_path}")

    def log_tail(self, max_chars: int = 300) -> str:
        """The last meaningful line of the log (a child's fatal error says what went wrong)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - 4096))
                lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        lines = [ln for ln in lines if not ln.startswith("---")]
        errors = [ln for ln in lines if "error" in ln.lower() or ln.startswith(("Traceback", "Fatal", "Killed"))]
        return errors[-1][:max_chars] if errors else ""

    def stop(self, timeout: float = 3.0) -> None:
        """End the child (politely, then for sure) and remove its private folder."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # the child's parent watch stops it
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


class LocalEngine(RemoteEngine):
    """A RemoteEngine on a child process of its own; requests wait until the child listens."""

    def __init__(self, python: str | None = None, device: str = "auto", backend: str = "auto",
                 precision: str = "auto", log_path: str | Path | None = None, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.process = EngineProcess(python, device, backend, precision, log_path, env, extra_args)
        self.process.start()
        super().__init__(self.process.url, token=self.process.token, shared_dir=self.process.folder)  # port: later

    def _assign(self) -> None:
        try:
            ready = self.process.ready()
        except EngineUnavailable as exc:
            self.broken = exc
            while self._queue:
                self._queue.popleft()._fail(exc)
            return
        if ready:
            if self.port != self.process.port:  # the port the child picked, from its ready file
                self.port, self.url = self.process.port, self.process.url
            super()._assign()

    def _unreachable(self, exc: BaseException) -> str:
        # A reset connection usually means the child is exiting (its sockets close as it exits, so it is reaped at
        # once); its crash message says why. Bounded to 50 ms, and only on a connection error: this runs inside
        # poll() on Slicer's main thread.
        if self.process.proc is not None:
            try:
                self.process.proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        return self.crashed or super()._unreachable(exc)

    @property
    def crashed(self) -> str | None:
        """One line saying why the child is gone, or None while it runs."""
        if self.process.proc is not None and self.process.proc.poll() is not None:
            return self.process.crash_message()
        return None

    def close(self) -> None:
        if self.process.running:
            try:
                super().close()
            except Exception:  # closing politely is best effort; the process ends below anyway
                log.debug("closing the engine's sessions failed", exc_info=True)
        self.process.stop()

    @property
    def description(self) -> str:
        return f"local engine process (pid {self.process.proc.pid if self.process.proc else '?'})"
