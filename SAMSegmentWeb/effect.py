"""The Segment Anything effect's behaviour in the web app: view events -> prompts -> engine -> preview -> segment.

The same behaviour as the desktop effect (SAMSegment/SegmentEditorSegmentAnythingLib/SegmentEditorEffect.py), built
on the same Qt-free modules: SAMSegmentEffectLib.interaction (which voxel slice a view shows, gestures, prompts per
slice), .controller (the engine: model work on its worker or engine process, never on the caller's thread) and
.bridge (preview layer; writes through the Segment Editor logic with masking, overwrite and one undo step).

This module knows MRML nodes but neither trame nor trame-slicer: the adapter (adapter.py) feeds it view events
through ``ViewPort`` objects and provides an ``EffectHost`` (scene, source volume, segmentation, selected segment,
an editor for writes and undo steps). Everything here runs on the trame event loop and returns at once; ``poll``
is called from a periodic task there.

Keys (as the desktop): click = include point, Shift+click = exclude point, drag = box, Enter = apply,
p = propagate, BackSpace or x = remove the slice's last prompt, Delete = clear the slice's prompts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
from SAMSegmentEffectLib.bridge import (
    BridgeError,
    PreviewLayer,
    VolumeGeometry,
    read_segment,
    read_segment_slice,
    write_slices,
)
from SAMSegmentEffectLib.controller import ControllerEvent, SegmentAnythingController, model_status
from SAMSegmentEffectLib.interaction import (
    Gesture,
    GestureTracker,
    PromptStore,
    SliceView,
    ViewGeometryError,
    glyph_segments,
    resolve_slice_view,
)

from . import keys

log = logging.getLogger(__name__)

__all__ = ["EffectHost", "EffectSettings", "EffectStatus", "SegmentAnythingTool", "ViewPort"]

PREFETCH_OFFSETS = (0, 1, -1, 2, -2)
DIRECTIONS = ("both", "forward", "backward")
WRITE_MODES = ("replace", "add")


class ViewPort(Protocol):
    """One slice view as the adapter exposes it."""

    name: str

    def xy_to_ras(self) -> np.ndarray:
        """The slice node's XYToRAS (4 x 4): view pixels (x, y, 0, 1), origin bottom left, to RAS."""

    def show_glyphs(self, segments: np.ndarray, colors: np.ndarray) -> None:
        """Draw line segments [N, 2, 2] (view pixels) with colours [N, 3] and request a render."""


class EffectHost(Protocol):
    """The scene and Segment Editor state the effect works on (provided by the adapter)."""

    scene: Any

    def volume_node(self):
        """The source volume node, or None."""

    def segmentation_node(self):
        """The edited segmentation node, or None."""

    def segment_id(self) -> str:
        """The selected segment's ID ('' when none)."""

    def editor(self):
        """A SAMSegmentEffectLib.bridge editor (default modifier labelmap, modify) for the selected segment."""

    def undo_step(self, text: str) -> contextlib.AbstractContextManager:
        """Context in which writes form one undo step."""


@dataclass
class EffectSettings:
    """What the options panel edits (the desktop effect's parameters)."""

    model: str = "litemedsam"
    device: str = "auto"
    cache_mb: int = 512
    write_mode: str = "replace"  # or "add"
    refine: bool = False
    direction: str = "both"  # or "forward" (increasing index) / "backward"
    whole_range: bool = True
    range_from: int = 0
    range_to: int = 9999


@dataclass
class EffectStatus:
    """What the panel shows."""

    message: str = ""
    error: bool = False
    active: bool = False
    model_ready: bool = False
    propagating: bool = False
    progress_done: int = 0
    progress_total: int = 0
    preview_slices: int = 0
    can_apply: bool = False


@dataclass
class _Counters:
    """Test and benchmark counters (exposed with the web app's --test-hooks)."""

    previews: int = 0
    outcomes: int = 0
    outcomes_at_cancel: int | None = None
    applied: int = 0
    propagations: int = 0
    key_actions: list[str] = field(default_factory=list)


def _matrix(m) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def _volume_array(volume_node) -> np.ndarray:
    """The volume's voxels as a [k, j, i] numpy view (first component of multi-component volumes)."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    image = volume_node.GetImageData()
    scalars = image.GetPointData().GetScalars()
    dims = image.GetDimensions()
    array = vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0], -1)
    return array[..., 0]


def mask_digest(mask: np.ndarray) -> str:
    """Short SHA-256 of a bool mask's packed bits and shape (to compare masks across processes)."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    h = hashlib.sha256(str(mask.shape).encode())
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:16]


class SegmentAnythingTool:
    """The effect for one browser session: prompts on any slice view, previews, apply, propagate."""

    def __init__(self, host: EffectHost, controller: SegmentAnythingController | None = None,
                 settings: EffectSettings | None = None, on_change: Callable[[], None] | None = None) -> None:
        self.host = host
        self.controller = controller or SegmentAnythingController()
        self.settings = settings or EffectSettings()
        self.status = EffectStatus()
        self.counters = _Counters()
        self.prompts = PromptStore()
        self._strokes: dict[str, keys.KeyStrokes] = {}  # per view: each view gets every key release
        self.preview: PreviewLayer | None = None
        self.geometry: VolumeGeometry | None = None
        self._volume_key = None
        self._configured: tuple | None = None
        self._ports: dict[str, ViewPort] = {}
        self._gestures: dict[str, GestureTracker] = {}
        self._last_slice: dict[str, tuple[str, int]] = {}
        self._active_axis: str | None = None
        self._on_change = on_change or (lambda: None)

    # ------------------------------------------------------------------------------------------- life cycle

    def attach(self, port: ViewPort) -> None:
        """A slice view joined (its pipeline was created or activated)."""
        self._ports[port.name] = port
        self.redraw(port)

    def detach(self, port: ViewPort) -> None:
        self._ports.pop(port.name, None)
        self._gestures.pop(port.name, None)

    def activate(self) -> None:
        self.status.active = True
        self.status.error = False
        self._strokes.clear()
        if self.ensure_volume(quiet=True):
            self.ensure_model()
        if not self.status.error:
            self.set_status("Click on a slice to add an include point, drag to draw a box.")
        self.redraw_all()
        self._prefetch_shown()

    def _prefetch_shown(self) -> None:
        """Embed the slices around the one shown, so that the first click is quick (one prefetch job runs at a
        time: the axial view's, the usual first view)."""
        self._last_slice.clear()
        ports = sorted(self._ports.values(), key=lambda p: p.name != "Red")
        if ports:
            self.view_modified(ports[0])

    def deactivate(self) -> None:
        """Leave the effect: jobs cancelled and forgotten, unapplied preview discarded (as the desktop)."""
        self.status.active = False
        self.controller.cancel_all(forget=True)
        self._gestures.clear()
        self.remove_preview()
        for port in self._ports.values():
            port.show_glyphs(np.zeros((0, 2, 2)), np.zeros((0, 3)))
        self._update_flags()
        self._changed()

    def volume_changed(self) -> None:
        """A new source volume (or a new scene): prompts are in the old volume's voxels."""
        self.controller.cancel_all(forget=True)
        self.prompts.clear()
        self.geometry = None
        self._volume_key = None
        self._last_slice.clear()
        self.remove_preview()
        if self.status.active and self.ensure_volume(quiet=True):
            self.ensure_model()
        self.redraw_all()
        self._update_flags()
        self._changed()

    def shutdown(self) -> None:
        self.controller.shutdown()

    def remove_preview(self) -> None:
        if self.preview is not None:
            self.preview.remove()
            self.preview = None

    # ------------------------------------------------------------------------------------------- status

    def set_status(self, text: str, error: bool = False) -> None:
        self.status.message = text
        self.status.error = bool(error)
        if error:
            log.info("Segment Anything: %s", text)
        self._changed()

    def _changed(self) -> None:
        self._on_change()

    def _update_flags(self) -> None:
        self.status.propagating = self.controller.propagating
        self.status.preview_slices = len(self.preview) if self.preview is not None else 0
        self.status.can_apply = self.status.preview_slices > 0 and not self.status.propagating

    # ------------------------------------------------------------------------------------------- volume and model

    def ensure_volume(self, quiet: bool = False) -> bool:
        """Source volume -> controller (array view, no copy) and bridge geometry; False with a message if absent."""
        volume = self.host.volume_node()
        segmentation = self.host.segmentation_node()
        if volume is None or volume.GetImageData() is None or segmentation is None:
            if not quiet:
                self.set_status("Load a volume first (Open Files in the top bar).", error=True)
            return False
        try:
            geometry = VolumeGeometry.from_volume_node(volume, segmentation)
        except BridgeError as exc:
            self.set_status(str(exc), error=True)
            return False
        ijk_to_ras = self._ijk_to_world(volume)
        key = (volume.GetID(), volume.GetImageData().GetMTime(), tuple(np.round(ijk_to_ras, 6).ravel()))
        if key != self._volume_key:
            if self._volume_key is not None and key[0] != self._volume_key[0]:
                self.prompts.clear()
            self.controller.set_volume(_volume_array(volume), ijk_to_ras, key)
            self._volume_key = key
            self.geometry = None
        if (self.geometry is None or self.geometry.size_ijk != geometry.size_ijk
                or not np.allclose(self.geometry.ijk_to_world, geometry.ijk_to_world, atol=1e-6)):
            self.geometry = geometry
            self.remove_preview()
        return True

    @staticmethod
    def _ijk_to_world(volume) -> np.ndarray:
        from slicer import vtkMRMLTransformNode
        from vtkmodules.vtkCommonMath import vtkMatrix4x4

        ijk_to_ras = vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijk_to_ras)
        to_world = vtkMatrix4x4()
        vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(volume.GetParentTransformNode(), None, to_world)
        return _matrix(to_world) @ _matrix(ijk_to_ras)

    def ensure_model(self) -> bool:
        """Configure the controller for the chosen model and start loading it (on the engine's side)."""
        name = self.settings.model
        status = model_status(name)
        if status.state != "ready":
            self.set_status(f"{name} is not provisioned on this server ({status.detail}); choose a ready model or ask "
                            f"the administrator to run: samsegment models --download {name}", error=True)
            self.status.model_ready = False
            return False
        config = (name, self.settings.device, int(self.settings.cache_mb))
        if self._configured == config and self.status.model_ready:
            return True
        if not self.ensure_volume():
            return False
        self.controller.configure(name, self.settings.device, int(self.settings.cache_mb))
        self.controller.load()
        self._configured = config
        self.status.model_ready = True
        self.set_status(f"Loading {name}...")
        return True

    def settings_changed(self, **values) -> None:
        """Options panel edits (unknown keys are ignored); a new model or device reloads on the next prompt."""
        for name, value in values.items():
            if hasattr(self.settings, name):
                setattr(self.settings, name, value)
        if self._configured is not None and self._configured[:2] != (self.settings.model, self.settings.device):
            self.status.model_ready = False
            if self.status.active and self.ensure_volume(quiet=True):
                self.ensure_model()

    def ensure_preview(self) -> PreviewLayer:
        if self.preview is None or self.preview.node is None or self.preview.node.GetScene() is None:
            segmentation = self.host.segmentation_node()
            transform = segmentation.GetTransformNodeID() if segmentation is not None else None
            self.preview = PreviewLayer(self.host.scene, self.geometry, parent_transform_id=transform)
        return self.preview

    # ------------------------------------------------------------------------------------------- views

    def slice_view(self, port: ViewPort, quiet: bool = False) -> SliceView | None:
        """Which voxel slice ``port`` shows (None with a message for rotated views or without a volume)."""
        if self.geometry is None and not self.ensure_volume(quiet=quiet):
            return None
        try:
            return resolve_slice_view(port.xy_to_ras(), self._ijk_to_world(self.host.volume_node()),
                                      self.geometry.size_ijk, f"The {port.name} view")
        except ViewGeometryError as exc:
            if not quiet:
                self.set_status(str(exc), error=True)
            return None

    def redraw(self, port: ViewPort, rubber_band=None) -> None:
        view = self.slice_view(port, quiet=True) if self.status.active else None
        if view is None:
            port.show_glyphs(np.zeros((0, 2, 2)), np.zeros((0, 3)))
            return
        port.show_glyphs(*glyph_segments(self.prompts, view.axis, view.index, view.view_xy, rubber_band=rubber_band))

    def redraw_all(self) -> None:
        for port in list(self._ports.values()):
            self.redraw(port)

    def view_modified(self, port: ViewPort) -> None:
        """The slice moved, or the view was panned or zoomed: redraw its prompts, prefetch around the slice."""
        if not self.status.active:
            return
        self.redraw(port)
        if not self.status.model_ready:
            return
        view = self.slice_view(port, quiet=True)
        if view is None:
            return
        where = (view.axis, view.index)
        if self._last_slice.get(port.name) != where:
            self._last_slice[port.name] = where
            n = self.geometry.size_ijk["IJK".index(view.axis)]
            self.controller.prefetch(view.axis, [view.index + d for d in PREFETCH_OFFSETS if 0 <= view.index + d < n])

    # ------------------------------------------------------------------------------------------- events

    def gesture_active(self, port: ViewPort) -> bool:
        tracker = self._gestures.get(port.name)
        return tracker is not None and tracker.active

    def wants(self, port: ViewPort, kind: str, key: str | None = None, ctrl: bool = False, alt: bool = False) -> bool:
        """Whether the effect takes this event (others go to Slicer's own interactions: pan, zoom, W/L...)."""
        if not self.status.active:
            return False
        if kind == "press":
            return not (ctrl or alt)
        if kind in ("move", "release"):
            return self.gesture_active(port)
        if kind == "double":
            return True
        if kind in ("key_press", "key_release"):
            return keys.action_for_key(key) is not None
        return False

    def handle_event(self, port: ViewPort, kind: str, xy=(0.0, 0.0), shift: bool = False, key: str | None = None,
                     ctrl: bool = False, alt: bool = False) -> bool:
        """One view event: ``kind`` is press / move / release / double / key_press / key_release; ``xy`` in view
        pixels. Returns True when the effect consumed it."""
        if not self.wants(port, kind, key, ctrl, alt):
            return False
        tracker = self._gestures.setdefault(port.name, GestureTracker())
        if kind == "press":
            tracker.press(xy, shift=shift)
            return True  # Shift+press too: in the browser, Shift+click is an exclude point and nothing else
        if kind == "move":
            band = tracker.move(xy)
            if band is not None:
                self.redraw(port, rubber_band=band)
            return True
        if kind == "release":
            gesture = tracker.release(xy)
            if gesture is None:
                self.redraw(port)
            else:
                self.on_gesture(port, gesture)
            return True
        if kind == "double":
            return True
        strokes = self._strokes.setdefault(port.name, keys.KeyStrokes())
        if kind == "key_release":
            strokes.release(key)
            return True
        action = strokes.press(key)
        log.debug("key %s %r in %s -> %s", kind, key, port.name, action)
        if action is not None:
            self.counters.key_actions.append(action)
            self.on_action(port, action)
        return True

    def cancel_gesture(self, port: ViewPort) -> None:
        tracker = self._gestures.get(port.name)
        if tracker is not None and tracker.active:
            tracker.cancel()
            self.redraw(port)

    def on_gesture(self, port: ViewPort, gesture: Gesture) -> None:
        if not self.ensure_volume():
            return
        view = self.slice_view(port)
        if view is None:
            self.redraw(port)
            return
        start = view.slice_xy(gesture.start)
        if not view.contains(start) or (gesture.kind == "drag" and not view.contains(view.slice_xy(gesture.end))):
            self.set_status("The prompt is outside the volume: click inside the image.", error=True)
            self.redraw(port)
            return
        if self.host.segment_id() == "":
            self.set_status("Add a segment first (Add segment in the panel).", error=True)
            self.redraw(port)
            return
        if not self.ensure_model():
            return
        self.prompts.apply_gesture(view.axis, view.index, gesture, view.slice_xy)
        self._active_axis = view.axis
        self.redraw_all()
        self.request_preview(view.axis, view.index)

    def on_action(self, port: ViewPort | None, action: str) -> None:
        if action == keys.APPLY:
            self.apply()
        elif action == keys.PROPAGATE:
            self.propagate(port)
        elif action in (keys.REMOVE_LAST, keys.CLEAR_SLICE):
            view = self.slice_view(port) if port is not None else None
            if view is None:
                return
            if action == keys.CLEAR_SLICE:
                self.prompts.clear_slice(view.axis, view.index)
            else:
                self.prompts.remove_last(view.axis, view.index)
            self.redraw_all()
            self.request_preview(view.axis, view.index)

    # ------------------------------------------------------------------------------------------- prompts -> jobs

    def refine_mask(self, axis: str, index: int) -> np.ndarray | None:
        """The selected segment on a slice when Refine is on and it covers the slice, else None."""
        if not self.settings.refine or not self.host.segment_id():
            return None
        try:
            mask = read_segment_slice(self.host.segmentation_node(), self.host.segment_id(), self.geometry, axis,
                                      index)
        except BridgeError:
            return None
        return mask if mask.any() else None

    def request_preview(self, axis: str, index: int) -> None:
        prompt = self.prompts.slice_prompt(axis, index, self.refine_mask(axis, index))
        if prompt is None or not prompt.has_include:
            if self.preview is not None:
                self.preview.clear_slice(axis, index)
            if prompt is not None:
                self.set_status("Add an include point or a box: exclude points alone do not select anything.")
            self._update_flags()
            self._changed()
            return
        self.controller.preview(axis, index, prompt)

    def propagate(self, port: ViewPort | None = None) -> None:
        if self.controller.propagating:
            return
        if not self.ensure_volume() or not self.ensure_model():
            return
        if not self.host.segment_id():
            self.set_status("Add a segment first (Add segment in the panel).", error=True)
            return
        axis = self._active_axis
        current = self.slice_view(port, quiet=True) if port is not None else None
        if current is not None:
            axis = current.axis
        if axis is None:
            axes = self.prompts.axes()
            axis = axes[0] if axes else None
        if axis is None:
            self.set_status("Add prompts on a slice first (click or draw a box), then propagate.", error=True)
            return
        masks = {}
        for index in self.prompts.indices(axis):
            mask = self.refine_mask(axis, index)
            if mask is not None:
                masks[index] = mask
        if current is not None and current.axis == axis and current.index not in masks:
            seed = self.refine_mask(axis, current.index)
            if seed is not None:
                masks[current.index] = seed
        prompts = {i: p for i, p in self.prompts.slice_prompts(axis, masks).items() if p.has_include}
        if not prompts:
            self.set_status(f"No slice along {axis} has an include prompt to propagate from.", error=True)
            return
        n = self.geometry.size_ijk["IJK".index(axis)]
        frange = None
        if not self.settings.whole_range:
            lo = max(0, min(int(self.settings.range_from), n - 1))
            hi = max(0, min(int(self.settings.range_to), n - 1))
            frange = (min(lo, hi), max(lo, hi))
        direction = self.settings.direction if self.settings.direction in DIRECTIONS else "both"
        self.controller.propagate(axis, prompts, direction, frange)
        self.counters.propagations += 1
        self.counters.outcomes = 0
        self.counters.outcomes_at_cancel = None
        self.status.progress_done, self.status.progress_total = 0, 0
        self._update_flags()
        self.set_status(f"Propagating along {axis} from {len(prompts)} slice(s)...")

    def cancel(self) -> None:
        if self.controller.propagating:
            self.poll()  # slices finished before this click count as before the cancel
            self.counters.outcomes_at_cancel = self.counters.outcomes
            self.controller.cancel_propagation()
            self.set_status("Cancelling...")

    def clear_all(self) -> None:
        self.controller.cancel_all(forget=True)
        self.controller.new_object()  # the next prompts are another object: its own fitted window (as the desktop)
        self.prompts.clear()
        if self.preview is not None:
            self.preview.clear()
        self.redraw_all()
        self._update_flags()
        self.set_status("Cleared.")

    # ------------------------------------------------------------------------------------------- results

    def poll(self) -> int:
        """Handle the controller's events (call often from the event loop; never blocks). Returns how many."""
        events = self.controller.poll()
        for event in events:
            try:
                self.handle_controller_event(event)
            except Exception as exc:  # a failed event must not stop the poll task
                log.exception("Segment Anything: handling %s failed", event.kind)
                self.set_status(f"{type(exc).__name__}: {exc}", error=True)
        if events:
            self._update_flags()
            self._changed()
        return len(events)

    def handle_controller_event(self, event: ControllerEvent) -> None:
        if event.kind == "status":
            self.set_status(event.message)
        elif event.kind in ("preview", "outcome"):
            if self.geometry is None:
                return
            self.ensure_preview().set_slice(event.axis, event.index, event.mask)
            if event.kind == "preview":
                self.counters.previews += 1
                self.set_status(f"Slice {event.index} ({event.axis}): {int(event.mask.sum()):,} voxels, predicted IoU "
                                f"{event.score:.2f}. Enter applies, p propagates.")
            else:
                self.counters.outcomes += 1
        elif event.kind == "progress":
            self.status.progress_done, self.status.progress_total = int(event.done), int(event.total)
        elif event.kind == "propagated":
            result = event.result
            slices = [(result.axis, i, o.mask) for i, o in sorted(result.outcomes.items())]
            self.write(slices, f"Propagated along {result.axis} over {len(slices)} slices")
        elif event.kind == "cancelled":
            kept = len(self.preview) if self.preview is not None else 0
            self.set_status(f"Propagation cancelled; {kept} slice(s) are in the preview: Apply (Enter) keeps them, "
                            f"Clear all discards them.")
        elif event.kind == "error":
            self.set_status(event.message, error=True)
            if event.job == "load":
                self.status.model_ready = False
                self._configured = None

    def apply(self) -> None:
        if self.preview is None or len(self.preview) == 0:
            self.set_status("Nothing to apply: add prompts on a slice first.")
            return
        if self.controller.propagating:
            self.set_status("Wait for the propagation to finish, or cancel it.", error=True)
            return
        if not self.ensure_volume() or self.preview is None:
            return
        self.write(self.preview.slices(), "Applied")
        self.counters.applied += 1

    def write(self, slices, what: str) -> None:
        """Write (axis, index, mask) slices into the selected segment as one undo step; clear them from the preview."""
        mode = self.settings.write_mode if self.settings.write_mode in WRITE_MODES else "replace"
        if not self.host.segment_id():
            self.set_status("Select a segment to write into.", error=True)
            return
        try:
            with self.host.undo_step(what):
                result = write_slices(self.host.editor(), self.geometry, slices, mode=mode)
        except Exception as exc:
            log.exception("Segment Anything: writing the segment failed")
            message = str(exc) if isinstance(exc, BridgeError) else f"{type(exc).__name__}: {exc}"
            self.set_status(f"Writing the segment failed: {message}", error=True)
            return
        if self.preview is not None:
            for axis, index, _ in slices:
                self.preview.clear_slice(axis, index)
        self._update_flags()
        self.set_status(f"{what}: {result.added:,} voxels added, {result.removed:,} removed (before masking)."
                        if result.changed else f"{what}: the segment already matched.")

    # ------------------------------------------------------------------------------------------- introspection

    def reset_counters(self) -> None:
        self.counters = _Counters()

    def stats(self) -> dict:
        """Small, JSON-able facts for tests and benchmarks: prompts, preview and segment voxel counts and digests."""
        out: dict[str, Any] = {"status": asdict(self.status), "counters": asdict(self.counters)}
        out["prompts"] = {
            f"{axis}{index}": [{"kind": it.kind, "values": list(it.values), "label": it.label}
                               for it in self.prompts.items(axis, index)]
            for axis in self.prompts.axes() for index in self.prompts.indices(axis)
        }
        if self.preview is not None and self.preview.node is not None:
            array = self.preview.array.astype(bool)
            out["preview"] = {"voxels": int(array.sum()), "digest": mask_digest(array),
                              "slices": [f"{a}{i}" for a, i, _ in self.preview.slices()]}
        else:
            out["preview"] = {"voxels": 0, "digest": "", "slices": []}
        segment = {"id": self.host.segment_id(), "voxels": 0, "digest": ""}
        if segment["id"] and self.geometry is not None:
            with contextlib.suppress(BridgeError):
                mask = read_segment(self.host.segmentation_node(), segment["id"], self.geometry)
                segment.update(voxels=int(mask.sum()), digest=mask_digest(mask),
                               slices=[int(k) for k in np.flatnonzero(mask.any(axis=(1, 2)))])
        out["segment"] = segment
        out["view_slices"] = {}
        for name, port in self._ports.items():
            view = self.slice_view(port, quiet=True)
            out["view_slices"][name] = f"{view.axis}{view.index}" if view is not None else ""
        return out


@contextlib.contextmanager
def no_undo(_text: str = "") -> Iterator[None]:
    """An undo_step that records nothing (hosts without undo)."""
    yield
