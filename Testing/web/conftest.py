"""Browser end-to-end fixtures: `samsegment web` on the demo CT, driven from headless Chromium with Playwright.

The browser is the system's Chromium (Debian package ``chromium``, installed by .ci/run), never a Playwright browser
download. Tests skip, saying why, only where that binary (or the playwright package) is absent. When a test fails,
a screenshot of its page and the session's server log are saved next to the test report (the folder of
``--junitxml``, else $SAMSEGMENT_TEST_ARTIFACTS, else a pytest temporary folder; the path is printed).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from webpage import WebSession

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "SAMSegment"):  # SAMSegmentWeb, and SAMSegmentEffectLib in the Slicer module folder
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
CHROMIUM = os.environ.get("SAMSEGMENT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
START_TIMEOUT_S = 240  # a session process: Slicer scene, CT, LiteMedSAM on a busy 2-core machine


def _need_browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium; .ci/run does it)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install playwright)")
    pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[web]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def artifacts_dir(request, tmp_path_factory) -> Path:
    xml = getattr(request.config.option, "xmlpath", None)
    base = Path(xml).resolve().parent if xml else (
        Path(os.environ["SAMSEGMENT_TEST_ARTIFACTS"]) if os.environ.get("SAMSEGMENT_TEST_ARTIFACTS")
        else tmp_path_factory.mktemp("web-artifacts"))
    out = base / "web-screenshots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def web_server(tmp_path_factory):
    """`samsegment web --demo --test-hooks` on a free local port; yields (base URL, log folder)."""
    _need_browser()
    port = _free_port()
    log_dir = tmp_path_factory.mktemp("web-logs")
    cmd = [sys.executable, "-m", "SAMSegmentLib.cli", "web", "--demo", "--test-hooks", "--port", str(port),
           "--max-sessions", "3", "--spare", "1", "--log-dir", str(log_dir)]
    out = open(log_dir / "launcher.log", "wb")
    process = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"samsegment web exited with {process.returncode}: {(log_dir / 'launcher.log').read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)
    else:
        process.terminate()
        pytest.fail("samsegment web did not listen within 60 s")
    try:
        yield url, log_dir
    finally:
        process.terminate()  # the launcher stops its session processes on the way out
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()


@pytest.fixture(scope="session")
def browser_context(web_server):
    from playwright.sync_api import sync_playwright

    user_data = tempfile.mkdtemp(prefix="samsegment-chromium-")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(user_data, executable_path=CHROMIUM, headless=True,
                                                       args=CHROMIUM_ARGS, viewport=VIEWPORT)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(user_data, ignore_errors=True)


@pytest.fixture
def web(request, browser_context, web_server, artifacts_dir):
    """A new browser tab: a new session with the demo CT loaded and the model ready."""
    url, log_dir = web_server
    page = browser_context.new_page()
    session = WebSession(page, log_dir)
    try:
        page.goto(url, timeout=START_TIMEOUT_S * 1000)
        session.wait("s.status.active && s.status.model_ready && s.status.message.includes('ready') && s.views"
                     " && s.views.Red && s.views.Red.size[0] > 300", timeout_s=START_TIMEOUT_S)
        session.view_box("Red")  # laid out
        yield session
    finally:
        failed = any(getattr(request.node, f"rep_{when}", None) is not None
                     and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
        if failed:
            stem = request.node.name.replace("/", "_").replace("[", "_").replace("]", "")
            try:
                page.screenshot(path=str(artifacts_dir / f"{stem}.png"), full_page=True)
            except Exception as exc:  # the page may be gone; the log still helps
                print(f"screenshot failed: {exc}")
            (artifacts_dir / f"{stem}.session.log").write_text(session.session_log())
            print(f"browser test failed: screenshot and session log in {artifacts_dir}")
        page.close()
