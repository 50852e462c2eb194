"""Everything that touches trame-slicer, in one place (its API is young: keep the surface small and visible).

trame-slicer 2.0 renders Slicer's own MRML displayable managers offscreen and streams them to the browser; its
segment editor keeps the active segment on its SegmentModifier (not on the vtkMRMLSegmentEditorNode) and undo on a
py-undo-stack UndoStack of whole-segmentation snapshots (the editor logic's own history is switched off). This
module provides:

- SegmentAnythingEffect / SegmentAnythingPipeline: the effect registered in trame-slicer's SegmentationEditor (from
  outside, no fork) and its per-slice-view Layer DM pipeline, which turns interaction events into
  SegmentAnythingTool.handle_event calls and draws the prompt glyphs
- TrameSlicerHost: the EffectHost the tool writes through (selected segment, editor logic writes, undo steps)
- SegmentationAppParts: trame-slicer's segmentation app (views, segment editor, file loading, layouts) to build on
- UI parts reused from trame-slicer (editable area and overwrite selector, tool buttons)
- attach_tool / use_undo_stack / activate_effect: the same effect on a bare SlicerApp (tests, no trame server)
- offscreen_slice_views / window_pixels: trame-slicer's slice views without a browser, for render tests
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

import numpy as np

from .effect import SegmentAnythingTool
from .glyphs import PromptGlyphs
from .runtime import preload_model_runtime

log = logging.getLogger(__name__)

__all__ = [
    "SegmentAnythingEffect",
    "activate_effect",
    "attach_tool",
    "use_undo_stack",
    "SegmentationAppParts",
    "TrameSlicerHost",
    "offscreen_slice_views",
    "window_pixels",
]

# trame-slicer (and through it slicer-core and LayerDM) are imported below this line only.
from SAMSegmentEffectLib.bridge import LogicEditor  # noqa: E402
from slicer import (  # noqa: E402
    vtkMRMLAbstractViewNode,
    vtkMRMLAbstractWidget,
    vtkMRMLInteractionEventData,
    vtkMRMLNode,
    vtkMRMLSliceNode,
)
from trame_slicer.segmentation import SegmentationEffect, SegmentationEffectPipeline  # noqa: E402
from vtkmodules.vtkCommonCore import vtkCommand  # noqa: E402

SHIFT, CONTROL, ALT = 1, 2, 4  # vtkEvent::ShiftModifier, ControlModifier, AltModifier

_EVENT_KINDS = {
    int(vtkCommand.LeftButtonPressEvent): "press",
    int(vtkCommand.MouseMoveEvent): "move",
    int(vtkCommand.LeftButtonReleaseEvent): "release",
    int(vtkCommand.LeftButtonDoubleClickEvent): "double",
    int(vtkCommand.KeyPressEvent): "key_press",
    int(vtkCommand.KeyReleaseEvent): "key_release",
}


# --------------------------------------------------------------------------------------------------- effect


class SegmentAnythingEffect(SegmentationEffect):
    """trame-slicer's side of the effect: activation and one pipeline per slice view; the behaviour is ``tool``."""

    tool: SegmentAnythingTool | None = None  # set by the app after registration (the editor builds effects itself)

    def _create_pipeline(self, view_node: vtkMRMLAbstractViewNode, _parameter: vtkMRMLNode):
        if isinstance(view_node, vtkMRMLSliceNode):
            return SegmentAnythingPipeline()
        return None  # prompts are given on slice views only

    def set_active(self, is_active):
        was = self.is_active
        super().set_active(is_active)
        if self.tool is None or was == self.is_active:
            return
        if self.is_active:
            self.tool.activate()
        else:
            self.tool.deactivate()


class SegmentAnythingPipeline(SegmentationEffectPipeline):
    """One slice view: interaction events -> the tool; the tool's prompt glyphs -> an actor in this view.

    It is also the tool's ViewPort for this view (name, XYToRAS, show_glyphs)."""

    def __init__(self) -> None:
        super().__init__()
        self.glyphs = PromptGlyphs()
        self._renderer = None

    # ViewPort
    @property
    def name(self) -> str:
        node = self.GetViewNode()
        return (node.GetLayoutName() or node.GetName() or node.GetID()) if node is not None else "slice"

    def xy_to_ras(self) -> np.ndarray:
        m = self.GetViewNode().GetXYToRAS()
        return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)

    def show_glyphs(self, segments: np.ndarray, colors: np.ndarray) -> None:
        self.glyphs.update(segments, colors)
        self.RequestRender()

    # pipeline
    @property
    def tool(self) -> SegmentAnythingTool | None:
        return self._effect.tool if self._effect is not None else None

    def SetActive(self, isActive: bool) -> None:
        super().SetActive(isActive)
        tool = self.tool
        if tool is None:
            return
        if isActive:
            tool.attach(self)
        else:
            tool.detach(self)
            self.glyphs.update(np.zeros((0, 2, 2)), np.zeros((0, 3)))
            self.RequestRender()

    def OnRendererAdded(self, renderer) -> None:
        self._renderer = renderer
        if renderer is not None:
            renderer.AddViewProp(self.glyphs.actor)

    def OnRendererRemoved(self, renderer) -> None:
        if renderer is not None:
            renderer.RemoveViewProp(self.glyphs.actor)
        self._renderer = None

    def OnUpdate(self, obj, eventId, callData) -> None:
        super().OnUpdate(obj, eventId, callData)
        if obj is not None and obj == self.GetViewNode() and self.IsActive() and self.tool is not None:
            self.tool.view_modified(self)

    def _event(self, event_data: vtkMRMLInteractionEventData):
        kind = _EVENT_KINDS.get(int(event_data.GetType()))
        modifiers = int(event_data.GetModifiers())
        key = event_data.GetKeySym() if kind in ("key_press", "key_release") else None
        return kind, bool(modifiers & SHIFT), bool(modifiers & CONTROL), bool(modifiers & ALT), key

    def CanProcessInteractionEvent(self, eventData: vtkMRMLInteractionEventData) -> tuple[bool, float]:
        tool = self.tool
        if not self.IsActive() or tool is None:
            return False, sys.float_info.max
        kind, _shift, ctrl, alt, key = self._event(eventData)
        if kind is None or not tool.wants(self, kind, key, ctrl, alt):
            return False, sys.float_info.max
        return True, 0.0

    def ProcessInteractionEvent(self, eventData: vtkMRMLInteractionEventData) -> bool:
        tool = self.tool
        if tool is None:
            return False
        kind, shift, ctrl, alt, key = self._event(eventData)
        if kind is None:
            return False
        x, y = eventData.GetDisplayPosition()[:2]
        return tool.handle_event(self, kind, (float(x), float(y)), shift=shift, key=key, ctrl=ctrl, alt=alt)

    def GetWidgetState(self) -> int:
        tool = self.tool
        if tool is not None and tool.gesture_active(self):
            return vtkMRMLAbstractWidget.WidgetStateUser  # keeps the gesture's moves and release ours
        return super().GetWidgetState()

    def LoseFocus(self, eventData) -> None:
        super().LoseFocus(eventData)
        if self.tool is not None:
            self.tool.cancel_gesture(self)


# --------------------------------------------------------------------------------------------------- writes


class _ModifierEditor(LogicEditor):
    """bridge editor on trame-slicer's editor logic, writing into the segment its SegmentModifier has selected."""

    def __init__(self, segmentation_editor, on_save_state: Callable[[], None]) -> None:
        super().__init__(segmentation_editor.editor_logic)
        self._editor = segmentation_editor
        self._on_save_state = on_save_state

    @property
    def segmentation_node(self):
        return self._editor.active_segmentation_node

    @property
    def segment_id(self) -> str:
        return self._editor.active_segment_id or ""

    def save_state_for_undo(self) -> None:
        self._on_save_state()


class TrameSlicerHost:
    """EffectHost on a trame-slicer SlicerApp: its scene, the segment editor's volume, segmentation and segment."""

    def __init__(self, slicer_app) -> None:
        self._app = slicer_app
        self.scene = slicer_app.scene
        self._pending_state = None  # snapshot taken by the first change inside an undo step

    @property
    def segmentation_editor(self):
        return self._app.segmentation_editor

    def volume_node(self):
        return self.segmentation_editor.active_volume_node

    def segmentation_node(self):
        return self.segmentation_editor.active_segmentation_node

    def segment_id(self) -> str:
        return self.segmentation_editor.active_segment_id or ""

    def editor(self) -> _ModifierEditor:
        return _ModifierEditor(self.segmentation_editor, self._save_state)

    def _save_state(self) -> None:
        from trame_slicer.segmentation.segmentation_state_stack import SegmentationStateStack

        segmentation = self.segmentation_editor.active_segmentation
        if self._pending_state is not None or segmentation is None or segmentation.undo_stack is None:
            return
        stack = SegmentationStateStack(segmentation.segmentation, max_size=2)
        stack.save_state()
        self._pending_state = (segmentation, stack)

    @contextlib.contextmanager
    def undo_step(self, _text: str = "") -> Iterator[None]:
        """Writes inside form one entry of trame-slicer's undo stack (none when nothing changed)."""
        from trame_slicer.segmentation.segmentation_undo_command import SegmentationLabelMapUndoCommand

        self._pending_state = None
        try:
            yield
        finally:
            pending, self._pending_state = self._pending_state, None
            if pending is not None:
                segmentation, stack = pending
                stack.save_state()
                segmentation.undo_stack.push(SegmentationLabelMapUndoCommand(stack, segmentation))
                segmentation.trigger_modified()

    # segments (for the panel)
    def segments(self) -> list[dict]:
        editor = self.segmentation_editor
        return [{"title": props.name, "value": sid, "color": props.color_hex}
                for sid, props in editor.get_all_segment_properties().items()]

    def select_segment(self, segment_id: str) -> None:
        self.segmentation_editor.set_active_segment_id(segment_id)

    def add_segment(self) -> str:
        return self.segmentation_editor.add_empty_segment()

    def undo(self) -> None:
        if self.segmentation_editor.undo_stack is not None:
            self.segmentation_editor.undo_stack.undo()

    def redo(self) -> None:
        if self.segmentation_editor.undo_stack is not None:
            self.segmentation_editor.undo_stack.redo()

    def can_undo(self) -> tuple[bool, bool]:
        stack = self.segmentation_editor.undo_stack
        return (bool(stack.can_undo()), bool(stack.can_redo())) if stack is not None else (False, False)


# --------------------------------------------------------------------------------------------------- set-up


def attach_tool(slicer_app, tool_factory: Callable[[TrameSlicerHost], SegmentAnythingTool]
                ) -> tuple[TrameSlicerHost, SegmentAnythingTool]:
    """Register the effect in ``slicer_app``'s segmentation editor, driven by the tool ``tool_factory`` builds."""
    host = TrameSlicerHost(slicer_app)
    tool = tool_factory(host)
    slicer_app.segmentation_editor.get_effect(SegmentAnythingEffect).tool = tool
    return host, tool


def use_undo_stack(slicer_app, undo_limit: int = 5) -> None:
    """Give the segmentation editor an undo stack (trame-slicer's segment editor logic does this in the app)."""
    from undo_stack import UndoStack

    slicer_app.segmentation_editor.set_undo_stack(UndoStack(undo_limit=undo_limit))


def activate_effect(slicer_app) -> bool:
    """Select the Segment Anything effect (adding a segment first when there is none); False without a
    segmentation."""
    editor = slicer_app.segmentation_editor
    if editor.active_segmentation is None:
        return False
    if not editor.active_segment_id:
        editor.add_empty_segment()
    editor.set_active_effect_type(SegmentAnythingEffect)
    return True


# --------------------------------------------------------------------------------------------------- app


class SegmentationAppParts:
    """trame-slicer's segmentation app (SlicerApp, its logic and UI) with the Segment Anything effect registered.

    ``ui.layout`` is the page; ``ui.layout.drawer`` / ``ui.layout.toolbar`` take more panels and buttons."""

    def __init__(self, server, tool_factory: Callable[[TrameSlicerHost], SegmentAnythingTool]) -> None:
        # no preload_model_runtime() here: a web session runs no model (the engine is another process)
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import SegmentationAppLogic
        from trame_slicer.app.ui import SegmentationAppUI
        from trame_slicer.core import SlicerApp

        self.server = server
        server.enable_module(trame_slicer_module)
        self.slicer_app = SlicerApp()
        self.logic = SegmentationAppLogic(server, self.slicer_app)
        self.ui = SegmentationAppUI(server, self.logic.layout_manager)
        self.logic.set_ui(self.ui)
        self.host, self.tool = attach_tool(self.slicer_app, tool_factory)
        self.layout_state = self.ui.layout.typed_state
        self._fitted_sizes: dict[str, tuple[int, int]] = {}

    @property
    def segmentation_editor(self):
        return self.slicer_app.segmentation_editor

    # effect activation
    def activate_effect(self) -> None:
        activate_effect(self.slicer_app)

    def deactivate_effect(self) -> None:
        if isinstance(self.segmentation_editor.active_effect, SegmentAnythingEffect):
            self.segmentation_editor.deactivate_effect()

    def effect_is_active(self) -> bool:
        return isinstance(self.segmentation_editor.active_effect, SegmentAnythingEffect)

    # signals
    def on_volume_loaded(self, callback: Callable) -> None:
        self.logic._load_files_logic.volume_loaded.connect(callback)

    def on_segmentation_changed(self, callback: Callable) -> None:
        editor = self.segmentation_editor
        editor.segmentation_modified.connect(lambda *_: callback())
        editor.active_segment_id_changed.connect(lambda *_: callback())
        if editor.undo_stack is not None:
            editor.undo_stack.index_changed.connect(lambda *_: callback())

    def on_effect_changed(self, callback: Callable[[bool], None]) -> None:
        self.segmentation_editor.active_effect_name_changed.connect(lambda *_: callback(self.effect_is_active()))

    # volumes
    def load_volume_files(self, paths: list[str]):
        """Load volumes from files on the server; shows the largest, as trame-slicer's Open Files does."""
        self.slicer_app.scene.Clear()
        self.logic._load_files_logic._on_load_volume_files([str(p) for p in paths])
        nodes = list(self.slicer_app.scene.GetNodesByClass("vtkMRMLScalarVolumeNode"))
        return nodes

    def set_volume_rendering(self, volume_node, visible: bool) -> None:
        """Volume rendering of ``volume_node`` in the 3D view on or off (trame-slicer turns it on when loading)."""
        vr = self.slicer_app.volume_rendering
        if volume_node is not None and vr.has_vr_display_node(volume_node):
            vr.get_vr_display_node(volume_node).SetVisibility(bool(visible))

    def set_layout(self, layout_id: str) -> None:
        self.logic._layout_button_logic.data.current_layout_id = layout_id

    def slice_views(self):
        return self.slicer_app.view_manager.get_slice_views()

    def fit_resized_views(self) -> None:
        """Fit the volume into every slice view whose size changed (the browser sizes views after they are
        created: without this the first image is fitted to a 300 x 300 placeholder and cut at the sides)."""
        sizes = self._fitted_sizes
        for view in self.slice_views():
            size = tuple(view.render_window().GetSize())
            key = view.get_singleton_tag()
            if sizes.get(key) != size:
                sizes[key] = size
                if view.get_background_volume_id():
                    view.fit_view_to_content()
                    view.schedule_render()

    def view_facts(self) -> dict:
        """Per slice view (by layout name): XYToRAS, render size (pixels) and its id on the page (test hooks)."""
        out = {}
        for view in self.slice_views():
            node = view.get_view_node()
            m = node.GetXYToRAS()
            out[node.GetLayoutName() or node.GetName()] = {
                "xy_to_ras": [[m.GetElement(r, c) for c in range(4)] for r in range(4)],
                "size": list(view.render_window().GetSize()),
                "trame_id": self.server.translator.translate_key(view.get_singleton_tag()),
            }
        return out

    # UI parts
    def tool_button(self, name: str, icon: str, tool_id: str):
        """A toolbar button that shows / hides the drawer panel ``tool_id`` (as trame-slicer's own panels)."""
        from trame_slicer.app.ui.control_button import ControlButton

        data, names = self.layout_state.data, self.layout_state.name

        def toggle():
            visible = not data.is_drawer_visible or data.active_tool != tool_id
            data.is_drawer_visible = visible
            data.active_tool = tool_id if visible else None

        return ControlButton(name=name, icon=icon, click=toggle, active=(f"{names.active_tool} === '{tool_id}'",),
                             disabled=(f"!{names.is_volume_loaded}",), classes="mt-1")

    def tool_visible_expression(self, tool_id: str) -> str:
        names = self.layout_state.name
        return f"{names.active_tool} === '{tool_id}'"

    def show_tool(self, tool_id: str) -> None:
        self.layout_state.data.is_drawer_visible = True
        self.layout_state.data.active_tool = tool_id

    def active_tool(self) -> str | None:
        return self.layout_state.data.active_tool

    def active_tool_state_name(self) -> str:
        return self.layout_state.name.active_tool

    def edit_area_ui(self):
        """trame-slicer's editable area and overwrite selectors, bound to the same segment editor state."""
        from trame_server.utils.typed_state import TypedState
        from trame_slicer.app.ui import SegmentEditorState
        from trame_slicer.app.ui.segmentation.segment_edit_area_ui import SegmentEditAreaUI

        typed = TypedState(self.server.state, SegmentEditorState)
        return SegmentEditAreaUI(segment_edit_area_typed_state=typed.get_sub_state(typed.name.segment_edit_area),
                                 variant="flat")


# --------------------------------------------------------------------------------------------------- tests


VIEW_ORIENTATIONS = {"Red": "Axial", "Green": "Coronal", "Yellow": "Sagittal"}


def offscreen_slice_views(slicer_app, size: tuple[int, int] = (300, 300), names=("Red", "Green", "Yellow")) -> dict:
    """Axial (Red), coronal (Green) and sagittal (Yellow) slice views of ``slicer_app`` rendering offscreen, created
    by trame-slicer's DirectViewFactory (the same SliceView class and displayable managers its web views use)."""
    preload_model_runtime()
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    factory = DirectViewFactory(do_render_offscreen=True)
    slicer_app.view_manager.register_factory(factory)
    definitions = {"Red": ViewLayoutDefinition.axial_view, "Green": ViewLayoutDefinition.coronal_view,
                   "Yellow": ViewLayoutDefinition.sagittal_view}
    views = {}
    for name in names:
        view = slicer_app.view_manager.create_view(definitions[name]())
        view.render_window().SetSize(*size)
        view.interactor().UpdateSize(*size)
        views[name] = view
    return views


def window_pixels(view) -> np.ndarray:
    """RGB uint8 [rows, cols, 3] of the view after a render, top row first (as the browser shows it)."""
    from slicer import vtkMRMLLayerDisplayableManager
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkImageData

    window = view.render_window()
    window.Render()
    image = vtkImageData()
    vtkMRMLLayerDisplayableManager.RenderWindowBufferToImage(window, image)
    cols, rows, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, cols, -1)
    return pixels[::-1, :, :3].copy()
