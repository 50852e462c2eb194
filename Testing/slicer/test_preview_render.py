"""Render-level tests: the preview and the prompt glyphs as Slicer's own displayable managers draw them.

Slice views are trame-slicer's SliceView (the Segmentations 2D displayable manager and the others the desktop uses)
rendering offscreen through VTK's EGL path (Mesa llvmpipe on machines without a GPU); no browser. Pixels are counted
by colour: the preview is yellow (fill at 45 % opacity, outline opaque) over a grey volume, include points green,
exclude points red. Each test runs on the axial, coronal and sagittal view of an anisotropic LPS volume.

Regression: in-place changes to PreviewLayer's labelmap were not redrawn (0 preview pixels after set_slice) until
PreviewLayer announced them with a segment Modified event (bridge.PreviewLayer._modified).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install trame-slicer)")

from SAMSegmentEffectLib.bridge import PreviewLayer, VolumeGeometry, image_array  # noqa: E402
from SAMSegmentEffectLib.interaction import PromptStore, glyph_segments, resolve_slice_view  # noqa: E402
from vtkmodules.vtkCommonCore import VTK_SHORT  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkImageData  # noqa: E402
from vtkmodules.vtkCommonMath import vtkMatrix4x4  # noqa: E402

from SAMSegmentWeb.adapter import offscreen_slice_views, window_pixels  # noqa: E402
from SAMSegmentWeb.glyphs import PromptGlyphs  # noqa: E402

SIZE = (40, 30, 12)  # I, J, K
SPACING = (0.7, 1.1, 2.5)  # mm: anisotropic, thick slices along K
VIEW_PX = (300, 300)
VIEWS = [("Red", "K"), ("Green", "J"), ("Yellow", "I")]  # axial, coronal, sagittal


def _matrix(m: vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


@pytest.fixture(scope="module")
def rendered():
    """(slicer_app, views by name, volume node): one scene of its own (not the session's shared one)."""
    from trame_slicer.core import SlicerApp

    app = SlicerApp()
    views = offscreen_slice_views(app, VIEW_PX)
    volume = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "anisotropic")
    image = vtkImageData()
    image.SetDimensions(*SIZE)
    image.AllocateScalars(VTK_SHORT, 1)
    k, j, i = np.meshgrid(*(np.arange(n) for n in SIZE[::-1]), indexing="ij")
    image_array(image)[:] = 200 + 10 * ((i + j + k) % 7)  # grey texture: R == G == B on screen
    volume.SetAndObserveImageData(image)
    volume.SetSpacing(*SPACING)
    volume.SetOrigin(12.0, -30.0, 7.5)
    volume.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)  # LPS, as DICOM and NRRD CTs
    volume.CreateDefaultDisplayNodes()
    app.display_manager.show_volume_in_slice_background(volume)
    for view in views.values():
        view.reset_view()
        view.render()
    return app, views, volume  # left to the garbage collector: emptying the views makes their pipelines complain


def slice_view_of(view, volume):
    ijk_to_ras = vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    return resolve_slice_view(_matrix(view.get_view_node().GetXYToRAS()), _matrix(ijk_to_ras), SIZE)


def yellow(px: np.ndarray) -> int:
    r, g, b = (px[..., c].astype(int) for c in range(3))
    return int(((r - b > 60) & (g - b > 50) & (np.abs(r - g) < 70)).sum())


def green(px: np.ndarray) -> int:
    r, g, b = (px[..., c].astype(int) for c in range(3))
    return int(((g - r > 80) & (g - b > 80)).sum())


def red(px: np.ndarray) -> int:
    r, g, b = (px[..., c].astype(int) for c in range(3))
    return int(((r - g > 80) & (r - b > 80)).sum())


def rect_area_px(sv, rows: slice, cols: slice) -> float:
    """Screen area (pixels) of voxel rows x cols of the slice."""
    corners = np.array([[cols.start - 0.5, rows.start - 0.5], [cols.stop - 0.5, rows.stop - 0.5]])
    (x0, y0), (x1, y1) = sv.view_xy(corners)
    return abs(x1 - x0) * abs(y1 - y0)


@pytest.mark.parametrize("name, axis", VIEWS)
def test_preview_is_drawn_after_set_slice_and_gone_after_clear_slice(rendered, name, axis):
    app, views, volume = rendered
    view = views[name]
    sv = slice_view_of(view, volume)
    assert sv.axis == axis
    layer = PreviewLayer(app.scene, VolumeGeometry.from_volume_node(volume))
    try:
        assert yellow(window_pixels(view)) == 0
        rows, cols = sv.slice_shape
        r, c = slice(rows // 4, rows // 4 + max(2, rows // 2)), slice(cols // 5, cols // 5 + cols // 2)
        mask = np.zeros((rows, cols), bool)
        mask[r, c] = True
        layer.set_slice(sv.axis, sv.index, mask)
        shown = yellow(window_pixels(view))
        expected = rect_area_px(sv, r, c)
        print(f"{name} ({axis}{sv.index}): preview pixels after set_slice {shown}, mask area {expected:.0f} px")
        assert abs(shown - expected) < 0.25 * expected

        layer.set_slice(sv.axis, sv.index, np.zeros_like(mask))  # an in-place change to an empty mask
        assert yellow(window_pixels(view)) == 0

        layer.set_slice(sv.axis, sv.index, mask)
        assert yellow(window_pixels(view)) == shown
        layer.clear_slice(sv.axis, sv.index)
        cleared = yellow(window_pixels(view))
        print(f"{name} ({axis}{sv.index}): preview pixels after clear_slice {cleared}")
        assert cleared == 0
    finally:
        layer.remove()


@pytest.mark.parametrize("name, axis", VIEWS)
def test_preview_of_another_slice_is_not_drawn(rendered, name, axis):
    app, views, volume = rendered
    view = views[name]
    sv = slice_view_of(view, volume)
    layer = PreviewLayer(app.scene, VolumeGeometry.from_volume_node(volume))
    try:
        other = sv.index - 1 if sv.index > 0 else sv.index + 1
        layer.set_slice(sv.axis, other, np.ones(sv.slice_shape, bool))
        assert yellow(window_pixels(view)) == 0
    finally:
        layer.remove()


@pytest.mark.parametrize("name, axis", VIEWS)
def test_prompt_glyphs_are_drawn_and_cleared(rendered, name, axis):
    app, views, volume = rendered
    view = views[name]
    sv = slice_view_of(view, volume)
    glyphs = PromptGlyphs()
    view.first_renderer().AddViewProp(glyphs.actor)
    try:
        before = window_pixels(view)
        assert green(before) == red(before) == yellow(before) == 0
        rows, cols = sv.slice_shape
        store = PromptStore()
        store.add_point(sv.axis, sv.index, (cols * 0.3, rows * 0.5), include=True)
        store.add_point(sv.axis, sv.index, (cols * 0.7, rows * 0.5), include=False)
        store.set_box(sv.axis, sv.index, (1, 1), (cols - 2, rows - 2))
        glyphs.update(*glyph_segments(store, sv.axis, sv.index, sv.view_xy))
        px = window_pixels(view)
        counts = green(px), red(px), yellow(px)
        print(f"{name} ({axis}{sv.index}): glyph pixels include {counts[0]}, exclude {counts[1]}, box {counts[2]}")
        assert min(counts) > 20
        include_xy = sv.view_xy(np.array([cols * 0.3, rows * 0.5]))
        ys, xs = np.nonzero((px[..., 1].astype(int) - px[..., 0] > 80) & (px[..., 1].astype(int) - px[..., 2] > 80))
        centre = np.array([xs.mean(), VIEW_PX[1] - 1 - ys.mean()])  # back to view pixels (origin bottom left)
        assert np.linalg.norm(centre - include_xy) < 3

        store.clear_slice(sv.axis, sv.index)
        glyphs.update(*glyph_segments(store, sv.axis, sv.index, sv.view_xy))
        px = window_pixels(view)
        assert green(px) == red(px) == yellow(px) == 0
    finally:
        view.first_renderer().RemoveViewProp(glyphs.actor)
