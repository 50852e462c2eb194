"""Engine servers for tests: the real Starlette app on a real uvicorn server, on 127.0.0.1, in a thread of the test
process (fast to start, models are doubles) or as a ``samsegment serve`` child process (real models).

Each server stops when its context ends; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import uvicorn

from SAMSegmentLib.engine.core import EngineCore
from SAMSegmentLib.engine.server import ServerSettings, bind_socket, create_app


@dataclass
class RunningServer:
    url: str
    port: int
    core: EngineCore
    server: uvicorn.Server
    thread: threading.Thread


@contextlib.contextmanager
def threaded_server(core: EngineCore, tokens: tuple[str, ...] = (), max_upload_mb: int = 4096,
                    shared_dir=None, port: int = 0, tls: tuple[str, str] | None = None) -> Iterator[RunningServer]:
    """The engine app for ``core`` served by uvicorn in a daemon thread; yields once it accepts connections.
    ``tls``: (certificate, key) PEM files to serve https."""
    settings = ServerSettings(tokens=tuple(tokens), max_upload_mb=max_upload_mb, shared_dir=shared_dir)
    sock = bind_socket("127.0.0.1", port)
    actual = sock.getsockname()[1]
    ssl_options = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
    server = uvicorn.Server(uvicorn.Config(create_app(core, settings), log_level="warning", lifespan="off",
                                           **ssl_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="test-engine-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    if not server.started:
        raise RuntimeError("the test engine server did not start")
    try:
        yield RunningServer(f"{'https' if tls else 'http'}://127.0.0.1:{actual}", actual, core, server, thread)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def self_signed_certificate(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and localhost, made with the openssl command (skips when it is missing)."""
    import shutil
    import subprocess

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def blob_volume(n: int = 20, first: int = 4, last: int = 15, shape=(48, 40)) -> tuple[np.ndarray, np.ndarray]:
    """int16 volume [k, j, i] with a bright disc (radius 10) on slices first..last, and that disc as a bool mask."""
    rows, cols = shape
    array = np.zeros((n, rows, cols), dtype=np.int16)
    yy, xx = np.mgrid[0:rows, 0:cols]
    obj = np.zeros(array.shape, bool)
    for k in range(first, last + 1):
        obj[k] = (xx - cols // 2) ** 2 + (yy - rows // 2) ** 2 <= 10**2
    array[obj] = 1000
    return array, obj
