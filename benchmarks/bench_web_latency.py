"""Prompt-to-visible-preview latency of `samsegment web` in headless Chromium, on the demo CT (CTChest4).

One session (no spare sessions running), LiteMedSAM, the default layout. For each trial: Delete clears the axial
slice's prompts (the preview disappears from the streamed image), then a box is dragged around the right lung
(the reference's box, each corner moved by up to 3 voxels; LiteMedSAM is a box model: a single click gives it a few
voxels only); the clock runs from the mouse release to

- "state": the session's state reports the new preview (test hooks: the model has decoded it and the preview layer
  holds it), and
- "visible": the first frame streamed to the browser that shows it (yellow preview pixels in the view's image,
  counted in the page on every new frame).

The slice's embedding is computed once before the trials (the first click on a slice also pays the image encoder:
reported separately). The baseline is the engine alone in this process (SegmentationSession.preview, same CT, same
box, cached embedding): the web path's overhead is the ratio.

Run under the CPU lock: ``flock /tmp/samsegment-heavy.lock .venv/bin/python benchmarks/bench_web_latency.py``
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing" / "web")]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

YELLOW_JS = """
(img) => {
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let p = 0; p < d.length; p += 4) {
    const r = d[p], gr = d[p + 1], b = d[p + 2];
    if (r - b > 50 && gr - b > 40 && Math.abs(r - gr) < 80) n++;
  }
  return n;
}"""


MIN_VISIBLE_VOXELS = 50  # a preview this small may show fewer than 20 yellow pixels at the view's zoom


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values, q):
    return float(np.percentile(np.asarray(values, float), q)) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--layout", default=None, help="view layout (default: the app's, Axial Primary)")
    args = ap.parse_args()
    if not Path(CHROMIUM).is_file():
        print(f"chromium not found at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright
    from webpage import WebSession

    from SAMSegmentLib.demo import load_demo_data

    demo = load_demo_data("right lung")
    port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="bench-web-"))
    cmd = [sys.executable, "-m", "SAMSegmentLib.cli", "web", "--demo", "--test-hooks", "--port", str(port),
           "--spare", "0", "--max-sessions", "1", "--log-dir", str(logs)]
    if args.layout:
        cmd += ["--layout", args.layout]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    user_data = tempfile.mkdtemp(prefix="bench-chromium-")
    rows = {}
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        with sync_playwright() as p:
            context = p.chromium.launch_persistent_context(user_data, executable_path=CHROMIUM, headless=True,
                                                           args=ARGS, viewport={"width": 1280, "height": 800})
            page = context.new_page()
            web = WebSession(page, logs)
            t_open = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/", timeout=300000)
            web.wait("s.status.model_ready && s.status.message.includes('ready') && s.views && s.views.Red"
                     " && s.views.Red.size[0] > 300", timeout_s=300)
            t_ready = time.perf_counter() - t_open
            k = int(web.stats()["view_slices"]["Red"][1:])
            ref = demo.reference[k]
            js, is_ = np.nonzero(ref)
            rng = np.random.default_rng(0)
            reference_box = np.array([is_.min(), js.min(), is_.max(), js.max()], float)
            boxes = [reference_box + rng.integers(-3, 4, size=4) for _ in range(args.trials + 1)]
            img_handle = None
            missed: list[int] = []

            def red_image():
                w, h = web.stats()["views"]["Red"]["size"]
                return page.evaluate_handle(
                    "([w, h]) => Array.from(document.querySelectorAll('img.image-display-area')).find(e => {"
                    " const r = e.getBoundingClientRect(); return Math.abs(r.width - w) < 2"
                    " && Math.abs(r.height - h) < 2; })", [w, h])

            def yellow_now():
                return page.evaluate(YELLOW_JS, img_handle)

            def box_and_time(box):
                before = web.stats()["counters"]["previews"]
                x0, y0 = web.page_xy(demo.volume.ijk_to_ras, (float(box[0]), float(box[1]), k))
                x1, y1 = web.page_xy(demo.volume.ijk_to_ras, (float(box[2]), float(box[3]), k))
                page.mouse.move(x0, y0)
                page.mouse.down()
                page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
                page.mouse.move(x1, y1, steps=4)
                t0 = time.perf_counter()
                page.mouse.up()
                page.wait_for_function(
                    f"() => window.trame.state.get('sam_stats').counters.previews > {before}", polling=5,
                    timeout=120000)
                t_state = time.perf_counter() - t0
                if web.stats()["preview"]["voxels"] < MIN_VISIBLE_VOXELS:
                    return t_state, None  # an empty or tiny prediction: too little becomes visible to time
                try:
                    page.wait_for_function(f"(img) => ({YELLOW_JS})(img) > 20", arg=img_handle, polling="raf",
                                           timeout=30000)
                except Exception:  # noqa: BLE001 - Playwright's TimeoutError: reported, not fatal
                    missed.append(web.stats()["preview"]["voxels"])
                    return t_state, None
                return t_state, time.perf_counter() - t0

            def clear_slice():
                web.focus_view("Red")
                page.keyboard.press("Delete")
                web.wait("Object.keys(s.prompts).length === 0 && s.preview.voxels === 0", timeout_s=60)
                page.wait_for_function(f"(img) => ({YELLOW_JS})(img) === 0", arg=img_handle, polling="raf",
                                       timeout=60000)

            img_handle = red_image()
            # first box on the slice (its embedding may or may not be prefetched by now)
            first_state, first_visible = box_and_time(boxes[0])
            clear_slice()
            states, visibles = [], []
            for box in boxes[1:]:
                s, v = box_and_time(box)
                states.append(s)
                if v is not None:
                    visibles.append(v)
                clear_slice()
            stats = web.stats()
            context.close()
        # baseline: the engine alone, same CT, same clicks, embedding cached
        from SAMSegmentLib.models import load_model
        from SAMSegmentLib.prompts import SlicePrompt
        from SAMSegmentLib.session import SegmentationSession

        session = SegmentationSession(load_model("litemedsam"), demo.volume)
        session.preview("K", k, SlicePrompt(box=boxes[0]))
        engine = []
        for box in boxes[1:]:
            t0 = time.perf_counter()
            session.preview("K", k, SlicePrompt(box=box))
            engine.append(time.perf_counter() - t0)
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(user_data, ignore_errors=True)

    rows = [("engine alone (baseline)", engine), ("web: box -> preview in state", states),
            ("web: box -> preview visible", visibles)]
    if not visibles or not states:
        print(f"no preview became visible ({len(states)} answered, missed: {missed}): nothing to time", file=sys.stderr)
        return 1
    base = statistics.median(engine)
    print(f"box-to-preview latency, LiteMedSAM on CTChest4 slice K{k}, {len(visibles)} boxes "
          f"(embedding cached), session ready after {t_ready:.1f} s")
    print(f"{'path':34} {'p50 s':>7} {'p95 s':>7} {'mean s':>7} {'p50 / engine':>13}")
    for name, values in rows:
        print(f"{name:34} {percentile(values, 50):7.3f} {percentile(values, 95):7.3f} "
              f"{statistics.fmean(values):7.3f} {percentile(values, 50) / base:13.1f}")
    first = f"{first_visible:.3f} s" if first_visible is not None else "n/a (empty prediction)"
    print(f"first box on the slice: state {first_state:.3f} s, visible {first}")
    if len(visibles) < len(states):
        print(f"{len(states) - len(visibles) - len(missed)} box(es) predicted fewer than {MIN_VISIBLE_VOXELS} voxels "
              f"(no visible preview to time)")
    if missed:
        print(f"{len(missed)} preview(s) never showed 20 yellow pixels within 30 s (voxels: {missed})")
    print(json.dumps({"previews": stats["counters"]["previews"], "layout": args.layout or "Axial Primary"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
