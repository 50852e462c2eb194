"""View geometry and prompt editing for the Segment Anything effect. numpy only: no slicer, qt or vtk.

What a slice view shows, in the source volume's voxel space:

- ``XYToRAS`` (from the slice node) maps view pixels ``(x, y, 0, 1)`` to RAS; the volume's ``RASToIJK`` maps RAS to
  continuous voxel indices ``(i, j, k)``. Their product maps a mouse position to a voxel.
- A view is usable when its plane is a plane of the voxel grid: the plane's normal, expressed in voxel indices, lies
  along one of I, J, K. That axis is the slice axis and the plane's index along it the slice index. A plane that
  drifts by more than ``max_drift`` voxels along that axis across the volume is *oblique* and refused with a message
  (Segment Anything works on voxel slices; resampling a reformat would change the voxels the user sees).
- In-plane coordinates follow SAMSegmentLib.slices: axis K -> (x, y) = (i, j); axis J -> (i, k); axis I -> (j, k).

Prompts: a click adds an include point, Shift+click an exclude point, a drag of more than a few pixels draws a
box (one per slice; a new box replaces the previous one, and removing it brings the previous one back). Prompts are
kept per (axis, slice index); "remove last" undoes the last prompt of a slice, "clear" forgets a slice or all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from SAMSegmentLib.prompts import SlicePrompt
from SAMSegmentLib.volume import AXES, axis_index, in_plane_axes

__all__ = [
    "DRAG_THRESHOLD_PX",
    "Gesture",
    "GestureTracker",
    "ObliqueViewError",
    "OutsideVolumeError",
    "PromptItem",
    "PromptStore",
    "SliceView",
    "ViewGeometryError",
    "glyph_segments",
    "ijk_to_slice_xy",
    "resolve_slice_view",
    "slice_xy_to_ijk",
]

DRAG_THRESHOLD_PX = 5.0  # a press-release that moved less than this (view pixels) is a click


class ViewGeometryError(ValueError):
    """A view that cannot take prompts; the message says why and what to do."""


class ObliqueViewError(ViewGeometryError):
    """The view's plane is not a plane of the volume's voxel grid."""


class OutsideVolumeError(ViewGeometryError):
    """The view's plane does not cut the volume."""


def _matrix(m) -> np.ndarray:
    a = np.asarray(m, dtype=float)
    if a.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {a.shape}")
    return a


def ijk_to_slice_xy(ijk, axis: str) -> np.ndarray:
    """Voxel index (i, j, k) (or [N, 3]) -> in-plane (x, y) of a slice along ``axis`` (see SAMSegmentLib.slices)."""
    ijk = np.asarray(ijk, dtype=float)
    ax, ay = in_plane_axes(axis)
    return np.stack([ijk[..., axis_index(ax)], ijk[..., axis_index(ay)]], axis=-1)


def slice_xy_to_ijk(xy, axis: str, index: float) -> np.ndarray:
    """In-plane (x, y) (or [N, 2]) of slice ``index`` along ``axis`` -> voxel index (i, j, k)."""
    xy = np.asarray(xy, dtype=float)
    ax, ay = in_plane_axes(axis)
    out = np.empty(xy.shape[:-1] + (3,), dtype=float)
    out[..., axis_index(axis)] = index
    out[..., axis_index(ax)] = xy[..., 0]
    out[..., axis_index(ay)] = xy[..., 1]
    return out


@dataclass(frozen=True)
class SliceView:
    """A view resolved against a volume: which voxel slice it shows and how its pixels map to voxels.

    ``xy_to_ijk`` maps homogeneous view pixels (x, y, 0, 1) to continuous voxel indices; ``drift`` is how far (in
    voxels along ``axis``) the view's plane wanders across the volume (0 for an exactly aligned view).
    """

    axis: str
    index: int
    xy_to_ijk: np.ndarray
    size_ijk: tuple[int, int, int]
    drift: float = 0.0

    @property
    def slice_shape(self) -> tuple[int, int]:
        """(rows, cols) of the slice array, as SAMSegmentLib.slices.extract_slice returns it."""
        ax, ay = in_plane_axes(self.axis)
        return self.size_ijk[axis_index(ay)], self.size_ijk[axis_index(ax)]

    def ijk(self, xy) -> np.ndarray:
        """Continuous voxel index (i, j, k) of view pixel(s) ``xy`` ([2] or [N, 2])."""
        xy = np.asarray(xy, dtype=float)
        h = np.concatenate([xy, np.zeros(xy.shape[:-1] + (1,)), np.ones(xy.shape[:-1] + (1,))], axis=-1)
        return (h @ self.xy_to_ijk.T)[..., :3]

    def slice_xy(self, xy) -> np.ndarray:
        """In-plane slice coordinates (x, y) of view pixel(s) ``xy`` (continuous voxel indices)."""
        return ijk_to_slice_xy(self.ijk(xy), self.axis)

    def view_xy(self, slice_xy) -> np.ndarray:
        """View pixel(s) of in-plane slice coordinates (for drawing prompts)."""
        ijk = slice_xy_to_ijk(slice_xy, self.axis, self.index)
        h = np.concatenate([ijk, np.ones(ijk.shape[:-1] + (1,))], axis=-1)
        xyz = h @ np.linalg.inv(self.xy_to_ijk).T
        return xyz[..., :2]

    def contains(self, slice_xy) -> bool:
        """True when the in-plane point lies on the slice (pixel centres -0.5 .. n - 0.5)."""
        x, y = np.asarray(slice_xy, dtype=float)[:2]
        rows, cols = self.slice_shape
        return -0.5 <= x <= cols - 0.5 and -0.5 <= y <= rows - 0.5


def resolve_slice_view(
    xy_to_ras,
    ijk_to_ras,
    size_ijk,
    view_name: str = "This view",
    max_drift: float = 0.5,
) -> SliceView:
    """Which voxel slice a slice view shows.

    ``xy_to_ras``: the slice node's XYToRAS matrix; ``ijk_to_ras``: the volume's IJK-to-RAS matrix, already including
    any linear parent transform between the volume and the view's world; ``size_ijk``: voxels along I, J, K.
    Raises ObliqueViewError when the plane is not a voxel plane within ``max_drift`` voxels across the volume,
    OutsideVolumeError when it misses the volume.
    """
    xy_to_ras = _matrix(xy_to_ras)
    ras_to_ijk = np.linalg.inv(_matrix(ijk_to_ras))
    xy_to_ijk = ras_to_ijk @ xy_to_ras
    size = tuple(int(s) for s in size_ijk)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"size_ijk must be three positive voxel counts, got {size_ijk}")

    u, v = xy_to_ijk[:3, 0], xy_to_ijk[:3, 1]  # view x and y directions in voxel indices
    normal = np.cross(u, v)
    if not np.all(np.isfinite(normal)) or np.linalg.norm(normal) == 0:
        raise ViewGeometryError(f"{view_name} has a degenerate slice geometry (zero-sized field of view)")
    n = int(np.argmax(np.abs(normal)))
    a, b = [c for c in range(3) if c != n]
    # Along the plane, index_n = c - (N_a / N_n) index_a - (N_b / N_n) index_b: its range over the volume is the drift.
    ga, gb = normal[a] / normal[n], normal[b] / normal[n]
    drift = abs(ga) * (size[a] - 1) + abs(gb) * (size[b] - 1)
    if drift > max_drift:
        angle = math.degrees(math.atan(math.hypot(ga, gb)))
        raise ObliqueViewError(
            f"{view_name} is rotated relative to the volume's voxel grid (by about {angle:.1f} degrees in voxel "
            f"space; the slice plane crosses {drift:.1f} voxels across the image). Segment Anything works on voxel "
            f"slices: rotate the view back to the volume (slice view menu: 'Rotate to volume plane', or the Segment "
            f"Editor's slice-rotation warning button) and try again."
        )
    origin = xy_to_ijk[:3, 3]
    centre_a, centre_b = (size[a] - 1) / 2.0, (size[b] - 1) / 2.0
    # index_n of the plane at the volume's in-plane centre
    coord = origin[n] - ga * (centre_a - origin[a]) - gb * (centre_b - origin[b])
    index = int(math.floor(coord + 0.5))
    axis = AXES[n]
    if not 0 <= index < size[n]:
        raise OutsideVolumeError(
            f"{view_name} shows slice {index} along {axis}, outside the volume (0 to {size[n] - 1}): "
            f"move to a slice inside the volume"
        )
    return SliceView(axis=axis, index=index, xy_to_ijk=xy_to_ijk, size_ijk=size, drift=float(drift))


# --------------------------------------------------------------------------------------------------- gestures


@dataclass(frozen=True)
class Gesture:
    """A finished mouse gesture in view pixels: ``kind`` is 'click' or 'drag'."""

    kind: str
    start: tuple[float, float]
    end: tuple[float, float]
    shift: bool = False


class GestureTracker:
    """Left-button press / move / release -> click or drag, in view pixels.

    A plain press is owned by the effect (``press`` returns True: abort the event so window/level does not start).
    A Shift press is not: Slicer pans on Shift+drag, so the effect lets it through and only a Shift *click*
    (release within the drag threshold) becomes an exclude point.
    """

    def __init__(self, drag_threshold_px: float = DRAG_THRESHOLD_PX) -> None:
        self.drag_threshold_px = float(drag_threshold_px)
        self._start: tuple[float, float] | None = None
        self._last: tuple[float, float] | None = None
        self._shift = False

    @property
    def active(self) -> bool:
        return self._start is not None

    @property
    def dragging(self) -> bool:
        """A plain (non-Shift) press that has moved beyond the threshold: a box is being drawn."""
        return self.active and not self._shift and self._moved(self._last)

    def _moved(self, xy) -> bool:
        if self._start is None or xy is None:
            return False
        return math.hypot(xy[0] - self._start[0], xy[1] - self._start[1]) > self.drag_threshold_px

    def press(self, xy, shift: bool = False) -> bool:
        """Start a gesture; returns True when the effect should consume the event."""
        self._start = (float(xy[0]), float(xy[1]))
        self._last = self._start
        self._shift = bool(shift)
        return not self._shift

    def move(self, xy) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """Update; returns (start, current) while a box is being dragged, for a rubber-band display."""
        if not self.active:
            return None
        self._last = (float(xy[0]), float(xy[1]))
        return (self._start, self._last) if self.dragging else None

    def release(self, xy) -> Gesture | None:
        """Finish; returns the gesture, or None (no gesture started, or a Shift drag that panned the view)."""
        if not self.active:
            return None
        end = (float(xy[0]), float(xy[1]))
        start, shift = self._start, self._shift
        self.cancel()
        moved = math.hypot(end[0] - start[0], end[1] - start[1]) > self.drag_threshold_px
        if shift:
            return None if moved else Gesture("click", start, start, shift=True)
        if moved:
            return Gesture("drag", start, end)
        return Gesture("click", start, start)

    def cancel(self) -> None:
        self._start = self._last = None
        self._shift = False


# --------------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class PromptItem:
    """One user prompt on a slice: a point (x, y) with label 1/0, or a box (x0, y0, x1, y1), in slice coordinates."""

    kind: str  # 'point' or 'box'
    values: tuple[float, ...]
    label: int = 1
    serial: int = 0  # order of creation across all slices


@dataclass
class _SliceItems:
    items: list[PromptItem] = field(default_factory=list)


class PromptStore:
    """Prompts per (axis, slice index), in the order the user gave them."""

    def __init__(self) -> None:
        self._slices: dict[tuple[str, int], _SliceItems] = {}
        self._serial = 0

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    @staticmethod
    def _key(axis: str, index: int) -> tuple[str, int]:
        axis = str(axis).upper()
        axis_index(axis)
        return axis, int(index)

    def _items(self, axis: str, index: int, create: bool = False) -> list[PromptItem]:
        key = self._key(axis, index)
        if key not in self._slices:
            if not create:
                return []
            self._slices[key] = _SliceItems()
        return self._slices[key].items

    def add_point(self, axis: str, index: int, xy, include: bool = True) -> PromptItem:
        x, y = (float(v) for v in np.asarray(xy, dtype=float)[:2])
        item = PromptItem("point", (x, y), 1 if include else 0, self._next_serial())
        self._items(axis, index, create=True).append(item)
        return item

    def set_box(self, axis: str, index: int, corner_a, corner_b) -> PromptItem:
        """Box from two opposite corners (slice coordinates); replaces the slice's current box."""
        (xa, ya), (xb, yb) = np.asarray(corner_a, dtype=float)[:2], np.asarray(corner_b, dtype=float)[:2]
        item = PromptItem("box", (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)), serial=self._next_serial())
        self._items(axis, index, create=True).append(item)
        return item

    def apply_gesture(self, axis: str, index: int, gesture: Gesture, to_slice_xy) -> PromptItem:
        """Turn a finished gesture into a prompt; ``to_slice_xy`` maps view pixels to slice coordinates."""
        if gesture.kind == "drag":
            return self.set_box(axis, index, to_slice_xy(gesture.start), to_slice_xy(gesture.end))
        return self.add_point(axis, index, to_slice_xy(gesture.start), include=not gesture.shift)

    def remove_last(self, axis: str, index: int) -> PromptItem | None:
        items = self._items(axis, index)
        if not items:
            return None
        item = items.pop()
        if not items:
            del self._slices[self._key(axis, index)]
        return item

    def clear_slice(self, axis: str, index: int) -> bool:
        return self._slices.pop(self._key(axis, index), None) is not None

    def clear(self, axis: str | None = None) -> None:
        if axis is None:
            self._slices.clear()
            return
        axis = axis.upper()
        for key in [k for k in self._slices if k[0] == axis]:
            del self._slices[key]

    def items(self, axis: str, index: int) -> list[PromptItem]:
        return list(self._items(axis, index))

    def has_prompts(self, axis: str, index: int) -> bool:
        return bool(self._items(axis, index))

    def indices(self, axis: str) -> list[int]:
        """Slices along ``axis`` that have prompts, sorted."""
        axis = axis.upper()
        return sorted(i for a, i in self._slices if a == axis)

    def axes(self) -> list[str]:
        return sorted({a for a, _ in self._slices})

    def points(self, axis: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Points [N, 2] and labels [N] of a slice."""
        pts = [it for it in self._items(axis, index) if it.kind == "point"]
        return (np.array([p.values for p in pts], dtype=float).reshape(-1, 2),
                np.array([p.label for p in pts], dtype=int))

    def box(self, axis: str, index: int) -> np.ndarray | None:
        """The slice's current box (the last one drawn), or None."""
        boxes = [it for it in self._items(axis, index) if it.kind == "box"]
        return np.array(boxes[-1].values, dtype=float) if boxes else None

    def slice_prompt(self, axis: str, index: int, mask: np.ndarray | None = None,
                     extent: tuple[int, int] | None = None) -> SlicePrompt | None:
        """The engine prompt of a slice (None when it has neither prompts nor a mask). ``extent`` (first, last)
        makes its box a 3D box (ignored without a box)."""
        points, labels = self.points(axis, index)
        box = self.box(axis, index)
        if not len(points) and box is None and mask is None:
            return None
        return SlicePrompt(points=points, labels=labels, box=box, mask=mask,
                           extent=extent if box is not None else None)

    def slice_prompts(self, axis: str, masks: dict[int, np.ndarray] | None = None,
                      extent: tuple[int, int] | None = None) -> dict[int, SlicePrompt]:
        """Engine prompts of every slice along ``axis`` that has prompts or a seed mask in ``masks``. ``extent``:
        the object's first and last slice along ``axis`` (a 3D box for every box whose slice lies inside it)."""
        masks = masks or {}
        out = {}
        for index in sorted(set(self.indices(axis)) | set(masks)):
            inside = extent if extent is not None and extent[0] <= index <= extent[1] else None
            prompt = self.slice_prompt(axis, index, masks.get(index), inside)
            if prompt is not None:
                out[index] = prompt
        return out

    def box_extent(self, axis: str) -> tuple[int, int] | None:
        """The object's first and last slice along ``axis`` from a box drawn on a view of another axis (the latest
        one): a box on an axial view (K) spans I and J, on a coronal view (J) I and K, on a sagittal view (I) J and K,
        so a coronal or sagittal box gives the axial extent, and so on. None when no such box exists."""
        axis = axis.upper()
        best = None
        for (other, _index), items in self._slices.items():
            if other == axis:
                continue
            x_axis, y_axis = in_plane_axes(other)
            for item in items.items:
                if item.kind != "box" or axis not in (x_axis, y_axis):
                    continue
                x0, y0, x1, y1 = item.values
                low, high = (x0, x1) if axis == x_axis else (y0, y1)
                if best is None or item.serial > best[0]:
                    best = (item.serial, (int(np.floor(low + 0.5)), int(np.floor(high + 0.5))))
        return None if best is None else best[1]


# --------------------------------------------------------------------------------------------------- drawing

INCLUDE_COLOR = (0.2, 1.0, 0.2)
EXCLUDE_COLOR = (1.0, 0.25, 0.25)
BOX_COLOR = (1.0, 0.85, 0.0)


def glyph_segments(store: PromptStore, axis: str, index: int, to_view_xy, size_px: float = 6.0,
                   rubber_band=None) -> tuple[np.ndarray, np.ndarray]:
    """Line segments [N, 2, 2] in view pixels and their colours [N, 3] (0..1) that draw a slice's prompts.

    Include points: green '+' in a circle; exclude points: red 'x' in a circle; the slice's current box: yellow
    rectangle. ``to_view_xy`` maps slice coordinates [M, 2] to view pixels; ``rubber_band`` ((x0, y0), (x1, y1)) in
    view pixels adds the box being dragged.
    """
    segments: list[np.ndarray] = []
    colors: list[tuple[float, float, float]] = []
    circle = np.array([[math.cos(a), math.sin(a)] for a in np.linspace(0, 2 * math.pi, 13)]) * size_px

    def polyline(points, color):
        points = np.asarray(points, dtype=float)
        for a, b in zip(points[:-1], points[1:], strict=True):
            segments.append(np.stack([a, b]))
            colors.append(color)

    def rectangle(a, b, color):
        (x0, y0), (x1, y1) = a, b
        polyline([(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)], color)

    points, labels = store.points(axis, index)
    if len(points):
        centres = np.asarray(to_view_xy(points), dtype=float).reshape(-1, 2)
        for (cx, cy), label in zip(centres, labels, strict=True):
            color = INCLUDE_COLOR if label == 1 else EXCLUDE_COLOR
            polyline(circle + (cx, cy), color)
            d = size_px * 0.6
            if label == 1:
                polyline([(cx - d, cy), (cx + d, cy)], color)
                polyline([(cx, cy - d), (cx, cy + d)], color)
            else:
                polyline([(cx - d, cy - d), (cx + d, cy + d)], color)
                polyline([(cx - d, cy + d), (cx + d, cy - d)], color)
    box = store.box(axis, index)
    if box is not None:
        # the box's corners are voxel centres; draw its outer edge (half a voxel out)
        corners = np.array([[box[0] - 0.5, box[1] - 0.5], [box[2] + 0.5, box[1] - 0.5],
                            [box[2] + 0.5, box[3] + 0.5], [box[0] - 0.5, box[3] + 0.5]])
        view = np.asarray(to_view_xy(corners), dtype=float).reshape(-1, 2)
        polyline(np.vstack([view, view[:1]]), BOX_COLOR)
    if rubber_band is not None:
        rectangle(rubber_band[0], rubber_band[1], BOX_COLOR)
    if not segments:
        return np.zeros((0, 2, 2)), np.zeros((0, 3))
    return np.stack(segments), np.asarray(colors, dtype=float)
