"""The launcher (SAMSegmentWeb/launcher.py): one session process per browser tab behind one port, proxied files
and websocket, a limit, and sessions that end with their tab. The session program is a stand-in
(fake_session.py: the launcher's contract, no VTK or model), so this runs anywhere aiohttp does."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is not installed (pip install -e '.[web]')")

from SAMSegmentWeb.launcher import Launcher, free_port  # noqa: E402

FAKE = [sys.executable, str(Path(__file__).with_name("fake_session.py"))]


async def serve(launcher: Launcher):
    runner = aiohttp.web.AppRunner(launcher.app, handle_signals=False)
    await runner.setup()
    port = free_port()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, f"http://127.0.0.1:{port}"


def run_in_own_loop(scenario) -> None:
    """asyncio.run on a thread of its own (a session-wide Playwright keeps an event loop in this thread)."""
    errors = []

    def target():
        try:
            asyncio.run(scenario())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the launcher scenario did not finish within 120 s"
    if errors:
        raise errors[0]


async def alive_processes(launcher):
    return [s for s in launcher.sessions.values() if s.alive]


def test_each_tab_gets_its_own_session_process_and_the_limit_holds(tmp_path):
    async def scenario():
        launcher = Launcher(["CT.nrrd"], max_sessions=2, spare=0, log_dir=tmp_path, session_command=FAKE)
        runner, base = await serve(launcher)
        try:
            async with aiohttp.ClientSession() as http:
                pages = []
                for _ in range(2):
                    async with http.get(f"{base}/") as r:
                        assert r.status == 200 and r.url.path.startswith("/s/")
                        pages.append((r.url.path, await r.text()))
                (path_a, text_a), (path_b, text_b) = pages
                assert path_a != path_b and "CT.nrrd" in text_a
                assert text_a.split()[1] != text_b.split()[1]  # two processes
                async with http.get(f"{base}/") as r:  # a third tab: over the limit
                    assert r.status == 503
                    assert "All 2 SAMSegment sessions are in use" in await r.text()
                # the websocket goes to that tab's process
                async with http.ws_connect(f"{base}{path_a.rsplit('/', 1)[0]}/ws") as ws:
                    await ws.send_str("hello")
                    reply = await ws.receive_str()
                    assert reply == f"{text_a.split()[1]}:hello"
                    sid = path_a.split("/")[2]
                    assert launcher.sessions[sid].connections == 1
                # its tab closed: that session ends, the other stays; a new tab can start again
                for _ in range(100):
                    if sid not in launcher.sessions:
                        break
                    await asyncio.sleep(0.05)
                assert sid not in launcher.sessions
                assert len(await alive_processes(launcher)) == 1
                async with http.get(f"{base}/s/{sid}/index.html") as r:
                    assert r.status == 410
                async with http.get(f"{base}/") as r:
                    assert r.status == 200
        finally:
            processes = [s.process for s in launcher.sessions.values()]
            await runner.cleanup()
            for process in processes:
                assert process.returncode is not None  # the launcher stopped every session on the way out

    run_in_own_loop(scenario)


def test_a_spare_session_is_started_ahead(tmp_path):
    async def scenario():
        launcher = Launcher([], max_sessions=3, spare=1, log_dir=tmp_path, session_command=FAKE)
        runner, base = await serve(launcher)
        try:
            for _ in range(200):
                if any(t.done() for t in launcher._spares):
                    break
                await asyncio.sleep(0.05)
            assert len(await alive_processes(launcher)) == 1  # before any tab
            async with aiohttp.ClientSession() as http, http.get(f"{base}/") as r:
                assert r.status == 200
            for _ in range(200):  # handed out; the next spare starts
                if len(await alive_processes(launcher)) == 2:
                    break
                await asyncio.sleep(0.05)
            assert len(await alive_processes(launcher)) == 2
        finally:
            await runner.cleanup()

    run_in_own_loop(scenario)
