"""The Segment Anything effect in the browser, end to end: headless Chromium -> trame -> trame-slicer's views and
segment editor -> SAMSegmentEffectLib -> LiteMedSAM, on the demo chest CT (CTChest4, 128 x 128 x 34, shipped with
slicerio), each test in a session of its own (a new tab).

What the server did is read from its test hooks (``samsegment web --test-hooks``: prompts, preview and segment voxel
counts and digests, counters); what the user sees is read from screenshots. Written segments are compared with the
engine's own result for the same prompts (SAMSegmentLib.session in this process), voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

RIGHT_LUNG = "right lung"


@pytest.fixture(scope="module")
def demo():
    from SAMSegmentLib.demo import load_demo_data

    return load_demo_data(RIGHT_LUNG)


@pytest.fixture(scope="module")
def engine(demo):
    """The engine alone on the same CT (what the web session's controller runs, in this process)."""
    from SAMSegmentLib.models import load_model
    from SAMSegmentLib.session import SegmentationSession

    return SegmentationSession(load_model("litemedsam"), demo.volume)


def mask_digest(mask) -> str:
    from SAMSegmentWeb.effect import mask_digest as digest

    return digest(mask)


def prompt_of(items):
    """SlicePrompt from the server's recorded prompt items of one slice."""
    from SAMSegmentLib.prompts import SlicePrompt

    points = [it["values"] for it in items if it["kind"] == "point"]
    labels = [it["label"] for it in items if it["kind"] == "point"]
    boxes = [it["values"] for it in items if it["kind"] == "box"]
    return SlicePrompt(points=np.array(points, float).reshape(-1, 2), labels=np.array(labels, int),
                       box=np.array(boxes[-1]) if boxes else None)


def axial_index(web) -> int:
    shown = web.stats()["view_slices"]["Red"]
    assert shown.startswith("K"), shown
    return int(shown[1:])


def lung_box(demo, k: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """(i, j) corners of the right lung's bounding box on axial slice k, a voxel of margin around it."""
    js, is_ = np.nonzero(demo.reference[k])
    return (is_.min() - 1.0, js.min() - 1.0), (is_.max() + 1.0, js.max() + 1.0)


def lung_centre(demo, k: int) -> tuple[float, float]:
    """(i, j) of a right-lung voxel far from its border on slice k (the last survivor of repeated erosion)."""
    inside = demo.reference[k].copy()
    while True:
        eroded = inside.copy()
        eroded[1:, :] &= inside[:-1, :]
        eroded[:-1, :] &= inside[1:, :]
        eroded[:, 1:] &= inside[:, :-1]
        eroded[:, :-1] &= inside[:, 1:]
        eroded[0, :] = eroded[-1, :] = eroded[:, 0] = eroded[:, -1] = False
        if not eroded.any():
            break
        inside = eroded
    js, is_ = np.nonzero(inside)
    c = np.argmin((js - js.mean()) ** 2 + (is_ - is_.mean()) ** 2)
    return float(is_[c]), float(js[c])


def drag_box(web, demo, k: int) -> None:
    (i0, j0), (i1, j1) = lung_box(demo, k)
    page = web.page
    x0, y0 = web.page_xy(demo.volume.ijk_to_ras, (i0, j0, k))
    x1, y1 = web.page_xy(demo.volume.ijk_to_ras, (i1, j1, k))
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()


def yellow_pixels(px: np.ndarray) -> int:
    """Preview-coloured pixels (the preview is yellow over a grey CT; JPEG-streamed, hence the margins)."""
    r, g, b = (px[..., c].astype(int) for c in range(3))
    return int(((r - b > 50) & (g - b > 40) & (np.abs(r - g) < 80)).sum())


def box_preview(web, demo) -> tuple[int, dict]:
    k = axial_index(web)
    drag_box(web, demo, k)
    stats = web.wait("s.counters.previews >= 1 && s.preview.voxels > 0", what="a preview")
    return k, stats


def test_click_shows_the_preview(web, demo):
    k = axial_index(web)
    before = yellow_pixels(web.view_pixels())
    i, j = lung_centre(demo, k)
    web.page.mouse.click(*web.page_xy(demo.volume.ijk_to_ras, (i, j, k)))
    stats = web.wait("s.counters.previews >= 1", what="the preview of a click")
    assert stats["prompts"] == {f"K{k}": [{"kind": "point", "values": pytest.approx([i, j], abs=1.0), "label": 1}]}
    assert stats["preview"]["slices"] == [f"K{k}"]
    assert stats["preview"]["voxels"] > 0
    web.page.wait_for_timeout(1000)  # the next streamed frame
    shown = yellow_pixels(web.view_pixels())
    print(f"click preview: {stats['preview']['voxels']} voxels, {shown} yellow pixels on screen ({before} before)")
    assert before == 0
    assert shown > 0


def save_screenshot(web, artifacts_dir) -> None:
    """The README's picture: the panel and the axial view with a box and its preview. Always saved with the test
    artifacts; written to Resources/Screenshots/ only when SAMSEGMENT_UPDATE_SCREENSHOTS=1."""
    import os
    from io import BytesIO

    from PIL import Image

    web.page.wait_for_timeout(1500)  # the still (full quality) frame
    box = web.view_box("Red")
    png = web.page.screenshot(clip={"x": 0, "y": 0, "width": box["x"] + box["width"], "height": 800})
    image = Image.open(BytesIO(png)).convert("RGB")
    image.save(artifacts_dir / "web-preview.png")
    if os.environ.get("SAMSEGMENT_UPDATE_SCREENSHOTS") == "1":
        small = image.resize((round(image.width * 0.75), round(image.height * 0.75)), Image.LANCZOS)
        small.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(
            Path(__file__).resolve().parents[2] / "Resources" / "Screenshots" / "web-preview.png", optimize=True)


def test_box_and_enter_write_the_engines_result(web, demo, engine, artifacts_dir):
    k, stats = box_preview(web, demo)
    save_screenshot(web, artifacts_dir)
    web.page.keyboard.press("Enter")
    stats = web.wait("s.counters.applied >= 1 && s.segment.voxels > 0", what="the applied segment")
    prompt = prompt_of(stats["prompts"][f"K{k}"])
    assert prompt.box is not None and not len(prompt.points)
    expected = np.zeros(demo.volume.shape_kji, bool)
    expected[k] = engine.preview("K", k, prompt).mask
    assert stats["segment"]["slices"] == [k]
    assert stats["segment"]["voxels"] == int(expected.sum())
    assert stats["segment"]["digest"] == mask_digest(expected)
    assert stats["preview"]["voxels"] == 0  # applied slices leave the preview
    reference = demo.reference[k]
    dice = 2 * (expected[k] & reference).sum() / (expected[k].sum() + reference.sum())
    print(f"box + Enter: {int(expected.sum())} voxels, identical to the engine; Dice {dice:.3f} vs the shipped lung")
    assert dice > 0.8


def test_shift_click_removes(web, demo, engine):
    k, stats = box_preview(web, demo)
    with_box = stats["preview"]["voxels"]
    i, j = lung_centre(demo, k)
    web.page.keyboard.down("Shift")
    web.page.mouse.click(*web.page_xy(demo.volume.ijk_to_ras, (i, j, k)))
    web.page.keyboard.up("Shift")
    stats = web.wait("s.counters.previews >= 2", what="the preview after Shift+click")
    items = stats["prompts"][f"K{k}"]
    assert [it["kind"] for it in items] == ["box", "point"] and items[1]["label"] == 0
    expected = np.zeros(demo.volume.shape_kji, bool)
    expected[k] = engine.preview("K", k, prompt_of(items)).mask
    assert stats["preview"]["digest"] == mask_digest(expected)
    print(f"Shift+click: preview {with_box} -> {stats['preview']['voxels']} voxels")
    assert stats["preview"]["voxels"] < with_box


def test_undo_restores_and_redo_reapplies(web, demo):
    box_preview(web, demo)
    web.page.keyboard.press("Enter")
    applied = web.wait("s.counters.applied >= 1 && s.segment.voxels > 0", what="the applied segment")["segment"]
    web.page.click("#sam-undo")
    undone = web.wait("s.segment.voxels === 0", what="the undone segment")["segment"]
    assert undone["slices"] == []
    web.page.click("#sam-redo")
    redone = web.wait("s.segment.voxels > 0", what="the redone segment")["segment"]
    assert redone["digest"] == applied["digest"]


def test_propagate_shows_progress_and_applies(web, demo, engine):
    k, _ = box_preview(web, demo)
    lo, hi = k - 3, k + 3
    page = web.page
    page.click("#sam-whole-range")
    page.fill("#sam-range-from", str(lo))
    page.fill("#sam-range-to", str(hi))
    page.keyboard.press("Tab")
    page.wait_for_timeout(500)  # the range reaches the server
    web.focus_view("Red")  # keys go to the view that has the focus
    page.keyboard.press("p")
    page.wait_for_selector("#sam-progress", state="visible", timeout=60000)
    text = page.wait_for_selector("#sam-progress-text:has-text('slices')", timeout=120000).inner_text()
    print(f"propagation progress on the page: {text!r}")
    stats = web.wait("s.counters.propagations === 1 && !s.status.propagating && s.segment.voxels > 0",
                     timeout_s=300, what="the propagated segment")
    assert "Propagated along K" in stats["status"]["message"]
    prompts = {k: prompt_of(stats["prompts"][f"K{k}"])}
    result = engine.propagate("K", prompts, "both", (lo, hi))
    expected = result.to_volume(demo.volume.shape_kji)
    assert set(stats["segment"]["slices"]) == {int(i) for i in np.flatnonzero(expected.any(axis=(1, 2)))}
    assert set(stats["segment"]["slices"]) <= set(range(lo, hi + 1))
    assert stats["segment"]["digest"] == mask_digest(expected)
    assert not web.page.is_visible("#sam-progress")


def test_cancel_stops_within_one_slice(web, demo):
    box_preview(web, demo)
    page = web.page
    page.keyboard.press("p")
    web.wait("s.counters.outcomes >= 2", timeout_s=300, what="two propagated slices")
    page.click("#sam-cancel")
    stats = web.wait("!s.status.propagating && s.status.message.includes('cancelled')", timeout_s=120,
                     what="the cancelled propagation")
    at_cancel, final = stats["counters"]["outcomes_at_cancel"], stats["counters"]["outcomes"]
    total = stats["status"]["progress_total"]
    print(f"cancel: {at_cancel} slices when Cancel was clicked, {final} in the end, of {total}")
    assert at_cancel is not None and final - at_cancel <= 1
    assert final < total
    assert stats["segment"]["voxels"] == 0  # nothing written: the propagated slices stay in the preview
    assert stats["preview"]["voxels"] > 0


def test_each_key_stroke_acts_once(web, demo):
    k, _ = box_preview(web, demo)
    page = web.page
    i, j = lung_centre(demo, k)
    page.mouse.click(*web.page_xy(demo.volume.ijk_to_ras, (i, j, k)))
    stats = web.wait("s.counters.previews >= 2", what="the preview of box + point")
    assert len(stats["prompts"][f"K{k}"]) == 2
    page.keyboard.press("Backspace")  # DOM name: one stroke removes one prompt, not two
    stats = web.wait("s.counters.key_actions.length >= 1 && s.counters.previews >= 3", what="the remove")
    page.wait_for_timeout(1000)
    stats = web.stats()
    assert stats["counters"]["key_actions"] == ["remove_last"]
    assert [it["kind"] for it in stats["prompts"][f"K{k}"]] == ["box"]
    page.keyboard.press("Enter")  # vtk.js sends a KeyDown and a KeyPress for it: one apply
    stats = web.wait("s.counters.applied >= 1", what="the apply")
    page.wait_for_timeout(1500)
    stats = web.stats()
    assert stats["counters"]["key_actions"] == ["remove_last", "apply"]
    assert stats["counters"]["applied"] == 1
    assert stats["status"]["message"].startswith("Applied")


def test_tabs_get_separate_sessions(web, browser_context, web_server, demo):
    box_preview(web, demo)
    from webpage import WebSession

    other = WebSession(browser_context.new_page(), web_server[1])
    try:
        other.page.goto(web_server[0], timeout=240000)
        stats = other.wait("s.status.active && s.views", timeout_s=240)
        assert other.session_id() != web.session_id()
        assert stats["prompts"] == {} and stats["preview"]["voxels"] == 0
        assert web.stats()["preview"]["voxels"] > 0
    finally:
        other.page.close()
