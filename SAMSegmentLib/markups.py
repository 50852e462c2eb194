"""Slicer markups files (``.mrk.json``, schema markups-schema-v1.0.x) as a segmentation request.

What becomes a prompt (slices along ``axis``; see slices.py for the in-plane axes x, y):

- An ``ROI`` markup (``center``, ``size``, ``orientation``; ``coordinateSystem`` LPS or RAS) becomes a box on the
  slice containing its centre: the ROI's eight corners are mapped to IJK with the volume's IJK-to-RAS matrix and
  the box is their in-plane extent, reduced to the voxels whose centres it covers (at least the centre voxel) and
  clipped to the slice. ``orientation`` is the row-major 3x3 matrix whose columns are the ROI axes; in LPS files
  its first two rows, like the centre's first two coordinates, are negated (as Slicer writes them). An ROI
  without ``center``/``size`` uses the bounding box of its control points.
- Control points of a ``Fiducial`` (point list) markup become points on the slice nearest to each point, at
  their exact in-plane voxel position. A point is an *exclude* (background) point when its label or description
  starts with ``-``, ``exclude`` or ``negative`` (case-insensitive), or when the markup's name does; all other
  points *include*. Points whose ``positionStatus`` is ``undefined`` are skipped.
- Other markup types (lines, curves, planes, angles) are ignored with a log message.

``coordinateUnits`` ``um`` is converted to mm. A top-level ``"propagate"`` key (not part of Slicer's schema; one of
none, both, forward, backward) sets the propagation; the default is ``both``. Prompts on the same slice merge (the
later ROI's box wins). Transforms a markups node sits under in a Slicer scene are not in the file and not applied.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from .prompts import PromptError, SlicePrompt
from .request import DIRECTIONS, SegmentationRequest
from .volume import AXES, Volume, axis_index, in_plane_axes

log = logging.getLogger(__name__)

EXCLUDE_PREFIXES = ("-", "exclude", "negative")
_FLIP_LPS = np.array([-1.0, -1.0, 1.0])


def is_exclude_text(text: str | None) -> bool:
    """True when a label, description or markup name marks an exclude point (see the module docstring)."""
    return bool(text) and str(text).strip().lower().startswith(EXCLUDE_PREFIXES)


def _vector(value, n: int, what: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be {n} numbers, not {value!r}") from None
    if v.size != n or not np.isfinite(v).all():
        raise PromptError(f"{what} must be {n} finite numbers, not {value!r}")
    return v


def _units_scale(markup: dict, name: str) -> float:
    units = markup.get("coordinateUnits", "mm")
    if isinstance(units, list) and units:
        units = units[0]
    units = str(units).strip().lower()
    if units in ("mm", ""):
        return 1.0
    if units in ("um", "µm"):
        return 1e-3
    raise PromptError(f"markup {name}: coordinate units {units!r} are not supported (use mm)")


def _coordinate_system(markup: dict, name: str) -> str:
    system = str(markup.get("coordinateSystem", "LPS")).strip().upper()
    if system not in ("LPS", "RAS"):
        raise PromptError(f"markup {name}: coordinateSystem must be LPS or RAS, not {system!r}")
    return system


def _to_ras(points: np.ndarray, system: str, scale: float) -> np.ndarray:
    """Points [N, 3] in the file's system and units -> RAS mm."""
    p = np.asarray(points, dtype=float).reshape(-1, 3) * scale
    return p * _FLIP_LPS if system == "LPS" else p


def ras_to_ijk(volume: Volume, ras: np.ndarray) -> np.ndarray:
    """RAS points [N, 3] (mm) -> continuous IJK voxel coordinates [N, 3] (voxel centres at whole numbers)."""
    ras = np.asarray(ras, dtype=float).reshape(-1, 3)
    inverse = np.linalg.inv(volume.ijk_to_ras)
    homogeneous = np.c_[ras, np.ones(len(ras))]
    return (homogeneous @ inverse.T)[:, :3]


def _slice_and_xy(volume: Volume, ijk: np.ndarray, axis: str) -> tuple[int, float, float]:
    ax_x, ax_y = in_plane_axes(axis)
    index = int(np.floor(ijk[axis_index(axis)] + 0.5))
    return index, float(ijk[axis_index(ax_x)]), float(ijk[axis_index(ax_y)])


def _describe_ijk(ijk: np.ndarray, volume: Volume) -> str:
    size = volume.size_ijk
    return (f"voxel (i {ijk[0]:.1f}, j {ijk[1]:.1f}, k {ijk[2]:.1f}); the image has i 0..{size[0] - 1}, "
            f"j 0..{size[1] - 1}, k 0..{size[2] - 1}")


def _inside(ijk: np.ndarray, volume: Volume) -> bool:
    size = np.array(volume.size_ijk, dtype=float)
    return bool(np.all(ijk >= -0.5) and np.all(ijk <= size - 0.5))


def roi_box(markup: dict, volume: Volume, axis: str = "K") -> tuple[int, SlicePrompt]:
    """(slice index, box prompt) of an ROI markup; raises PromptError when its centre is outside the image."""
    name = str(markup.get("name") or "ROI")
    system, scale = _coordinate_system(markup, name), _units_scale(markup, name)
    if "center" in markup and "size" in markup:
        center = _vector(markup["center"], 3, f"ROI {name}: center")
        size = np.abs(_vector(markup["size"], 3, f"ROI {name}: size"))
        orient = _vector(markup.get("orientation", np.eye(3).reshape(-1)), 9, f"ROI {name}: orientation").reshape(3, 3)
        if system == "LPS":  # rows 0 and 1 (the L and P components of each ROI axis) -> R and A
            orient = orient * _FLIP_LPS[:, None]
        center_ras = _to_ras(center, system, scale)[0]
        half = size * scale / 2.0
        corners = np.array([center_ras + orient @ (np.array(signs) * half)
                            for signs in itertools.product((-1.0, 1.0), repeat=3)])
    else:
        pts = [_vector(cp.get("position"), 3, f"ROI {name}: control point position")
               for cp in markup.get("controlPoints") or [] if cp.get("positionStatus", "defined") != "undefined"]
        if not pts:
            raise PromptError(f"ROI {name} has neither center and size nor control points")
        ras = _to_ras(np.array(pts), system, scale)
        lo, hi = ras.min(axis=0), ras.max(axis=0)
        center_ras = (lo + hi) / 2.0
        corners = np.array([np.where(np.array(signs) > 0, hi, lo) for signs in itertools.product((-1, 1), repeat=3)])
    center_ijk = ras_to_ijk(volume, center_ras)[0]
    if not _inside(center_ijk, volume):
        raise PromptError(f"ROI {name}: its centre is outside the image ({_describe_ijk(center_ijk, volume)})")
    index, _, _ = _slice_and_xy(volume, center_ijk, axis)
    corners_ijk = ras_to_ijk(volume, corners)
    ax_x, ax_y = in_plane_axes(axis)
    cx, cy = corners_ijk[:, axis_index(ax_x)], corners_ijk[:, axis_index(ax_y)]
    cols, rows = volume.size_ijk[axis_index(ax_x)], volume.size_ijk[axis_index(ax_y)]
    center_x = int(np.clip(np.floor(center_ijk[axis_index(ax_x)] + 0.5), 0, cols - 1))
    center_y = int(np.clip(np.floor(center_ijk[axis_index(ax_y)] + 0.5), 0, rows - 1))
    x0, x1 = _covered(cx.min(), cx.max(), center_x, cols)
    y0, y1 = _covered(cy.min(), cy.max(), center_y, rows)
    return index, SlicePrompt(box=np.array([x0, y0, x1, y1], dtype=float))


def _covered(lo: float, hi: float, center: int, n: int) -> tuple[int, int]:
    """Whole voxel indices whose centres lie in [lo, hi], clipped to 0..n-1, always containing ``center``."""
    first, last = int(np.ceil(lo - 1e-6)), int(np.floor(hi + 1e-6))
    first, last = max(0, min(first, center)), min(n - 1, max(last, center))
    return first, last


def fiducial_points(markup: dict, volume: Volume, axis: str = "K") -> list[tuple[int, SlicePrompt]]:
    """(slice index, one-point prompt) for each defined control point of a point-list markup."""
    name = str(markup.get("name") or "F")
    system, scale = _coordinate_system(markup, name), _units_scale(markup, name)
    exclude_all = is_exclude_text(markup.get("name"))
    out = []
    for n, cp in enumerate(markup.get("controlPoints") or []):
        if cp.get("positionStatus", "defined") == "undefined":
            continue
        label = str(cp.get("label") or f"{name}-{n + 1}")
        position = _vector(cp.get("position"), 3, f"point {label}: position")
        ijk = ras_to_ijk(volume, _to_ras(position, system, scale))[0]
        if not _inside(ijk, volume):
            raise PromptError(f"point {label} of markup {name} is outside the image ({_describe_ijk(ijk, volume)})")
        index, x, y = _slice_and_xy(volume, ijk, axis)
        exclude = exclude_all or is_exclude_text(cp.get("label")) or is_exclude_text(cp.get("description"))
        out.append((index, SlicePrompt(points=[[x, y]], labels=[0 if exclude else 1])))
    return out


def markups_request(data: dict, volume: Volume, axis: str = "K", source: str = "markups file"
                    ) -> SegmentationRequest:
    """Build a request from parsed markups JSON (see the module docstring)."""
    axis = str(axis or "K").upper()
    if axis not in AXES:
        raise PromptError(f"axis must be I, J or K, not {axis!r}")
    if not isinstance(data, dict) or not isinstance(data.get("markups"), list):
        raise PromptError(f"{source} is not a Slicer markups file: it needs a 'markups' list")
    propagate = str(data.get("propagate", "both")).lower()
    if propagate not in DIRECTIONS:
        raise PromptError(f"{source}: propagate must be one of {', '.join(DIRECTIONS)}, not {propagate!r}")
    prompts: dict[int, SlicePrompt] = {}

    def add(index: int, prompt: SlicePrompt) -> None:
        if index in prompts and prompt.box is not None and prompts[index].box is not None:
            log.warning("two ROIs on slice %d: the later box is used", index)
        prompts[index] = prompts[index].merged(prompt) if index in prompts else prompt

    for markup in data["markups"]:
        if not isinstance(markup, dict):
            raise PromptError(f"{source}: each entry of 'markups' must be an object")
        kind = str(markup.get("type", ""))
        if kind == "ROI":
            add(*roi_box(markup, volume, axis))
        elif kind in ("Fiducial", "PointList"):
            for index, prompt in fiducial_points(markup, volume, axis):
                add(index, prompt)
        else:
            log.info("markup %r of type %r ignored: only ROI and point lists become prompts", markup.get("name"), kind)
    if not prompts:
        raise PromptError(f"{source} holds no ROI and no control points to use as prompts")
    request = SegmentationRequest(axis=axis, prompts=prompts, propagate=propagate)
    request.validate(volume)
    return request


def read_markups_request(path: str | Path, volume: Volume, axis: str = "K") -> SegmentationRequest:
    """Read a ``.mrk.json`` file into a request on ``volume`` (slices along ``axis``; propagate default both)."""
    from .request import read_json_file

    data = read_json_file(path, "markups file")
    return markups_request(data, volume, axis, source=Path(path).name)
