"""A browser tab on a `samsegment web` session, as the browser tests see it (Playwright page + the server's test
hooks). View pixels are VTK display coordinates (origin bottom left), page coordinates CSS pixels."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


class WebSession:
    """One browser tab on its own server session, with the test hooks' view of the server."""

    def __init__(self, page, log_dir: Path) -> None:
        self.page = page
        self.log_dir = log_dir

    # server facts (SAMSegmentWeb.effect.SegmentAnythingTool.stats, pushed twice a second and on every change)
    def stats(self) -> dict:
        return json.loads(self.page.evaluate("() => JSON.stringify(window.trame.state.get('sam_stats'))"))

    def wait(self, js_condition: str, timeout_s: float = 120, what: str = "") -> dict:
        """Wait until ``js_condition`` (JS with ``s`` = the stats) holds; returns the stats."""
        self.page.wait_for_function(
            f"() => {{ const st = window.trame && window.trame.state; const s = st && st.get('sam_stats');"
            f" return !!(s && s.status && ({js_condition})); }}", timeout=timeout_s * 1000)
        return self.stats()

    def session_id(self) -> str:
        return self.page.url.rstrip("/").split("/")[-1]

    def session_log(self) -> str:
        path = self.log_dir / f"session-{self.session_id()}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    # geometry
    def view_box(self, name: str = "Red", timeout_s: float = 60) -> dict:
        """Page box of a slice view's image (matched by the view's render size; waits for its first frame, before
        which the image has no size)."""
        deadline = time.monotonic() + timeout_s
        while True:
            w, h = self.stats()["views"][name]["size"]
            boxes = self.page.evaluate(
                "() => Array.from(document.querySelectorAll('img.image-display-area')).map(e => {"
                " const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height}; })")
            for box in boxes:
                if abs(box["width"] - w) < 2 and abs(box["height"] - h) < 2:
                    return box
            if time.monotonic() > deadline:
                raise AssertionError(f"no view image of {w} x {h} px on the page: {boxes}")
            self.page.wait_for_timeout(200)

    def page_xy(self, ijk_to_ras: np.ndarray, ijk, name: str = "Red") -> tuple[float, float]:
        """Page coordinates of voxel ``ijk`` (continuous (i, j, k)) in view ``name``."""
        view = self.stats()["views"][name]
        xy_to_ras = np.array(view["xy_to_ras"])
        ras = ijk_to_ras @ np.array([*ijk, 1.0])
        x, y = (np.linalg.inv(xy_to_ras) @ ras)[:2]
        box = self.view_box(name)
        w, h = view["size"]
        return box["x"] + (x + 0.5) * box["width"] / w, box["y"] + (h - 0.5 - y) * box["height"] / h

    def focus_view(self, name: str = "Red") -> None:
        """Give the view keyboard focus (as a click would, without adding a prompt)."""
        w, h = self.stats()["views"][name]["size"]
        self.page.evaluate(
            "([w, h]) => { for (const e of document.querySelectorAll('img.image-display-area')) {"
            " const r = e.getBoundingClientRect(); if (Math.abs(r.width - w) < 2 && Math.abs(r.height - h) < 2)"
            " { e.closest('.remote-controlled-area').focus(); return; } } }", [w, h])

    def view_pixels(self, name: str = "Red") -> np.ndarray:
        """RGB pixels [rows, cols, 3] of the view as the browser shows it (a screenshot of its image)."""
        from io import BytesIO

        from PIL import Image

        box = self.view_box(name)
        png = self.page.screenshot(clip=box)
        return np.asarray(Image.open(BytesIO(png)).convert("RGB"))
