"""MRML bridge: numpy masks on the source volume's voxel grid <-> segments. Slicer layer, but no Qt.

Writes go through the Segment Editor's modify-by-labelmap path (vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap,
which the effect's ``modifySelectedSegmentByLabelmap`` calls in Slicer 5.10+), starting from the editor's default
modifier labelmap, so that the editable area, the intensity mask, the overwrite mode and undo behave as in the
built-in effects. Only the changed voxels are written, each call limited to the bounding box of its change:

- "replace" (the default): inside the written slices the segment becomes the new mask. Voxels that leave the
  segment are removed (ModificationModeRemove), voxels that join it are added (ModificationModeAdd). A single
  ModificationModeSet call cannot do this region-limited: Set clears the segment outside the modification extent.
- "add" / "remove": union with / removal of the mask.

Geometry: masks are indexed ``[k, j, i]`` on the source volume's grid. The segmentation's labelmaps may use another
grid (the segmentation's reference geometry: oversampled, cropped, another volume's); then masks are resampled
(nearest neighbour) to that grid and the change is computed there, against the segment's own voxels.
Linear parent transforms between the volume and the segmentation are supported; non-linear ones are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import slicer
import slicer.util
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import VTK_UNSIGNED_CHAR
from vtkmodules.vtkCommonMath import vtkMatrix4x4

from SAMSegmentLib.volume import axis_index, in_plane_axes

__all__ = [
    "BridgeError",
    "EffectEditor",
    "LogicEditor",
    "PreviewLayer",
    "VolumeGeometry",
    "WriteResult",
    "image_array",
    "read_segment",
    "read_segment_slice",
    "slice_region",
    "write_slices",
]

BINARY_LABELMAP = "Binary labelmap"  # vtkSegmentationConverter::GetBinaryLabelmapRepresentationName()
EMPTY_EXTENT = (0, -1, 0, -1, 0, -1)


class BridgeError(RuntimeError):
    """A segmentation or volume that cannot be edited this way; the message says why."""


# --------------------------------------------------------------------------------------------------- helpers


def image_to_world(image) -> np.ndarray:
    """The 4x4 IJK-to-world matrix of a vtkOrientedImageData."""
    m = vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    return slicer.util.arrayFromVTKMatrix(m)


def image_array(image) -> np.ndarray:
    """Writable numpy view ``[k, j, i]`` of a single-component image; index 0 is the extent's first voxel."""
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise BridgeError("the image has no voxel data")
    dims = image.GetDimensions()
    return numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])


def _extent_is_empty(extent) -> bool:
    return extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]


def _intersect(a, b) -> tuple[int, ...]:
    return (max(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), min(a[3], b[3]), max(a[4], b[4]), min(a[5], b[5]))


def _extent_slices(extent, within) -> tuple[slice, slice, slice]:
    """numpy [k, j, i] slices of ``extent`` inside an array covering ``within``."""
    return (
        slice(extent[4] - within[4], extent[5] - within[4] + 1),
        slice(extent[2] - within[2], extent[3] - within[2] + 1),
        slice(extent[0] - within[0], extent[1] - within[0] + 1),
    )


def _bbox_extent(mask: np.ndarray, offset) -> tuple[int, ...] | None:
    """Extent (i0, i1, j0, j1, k0, k1) of the non-zero voxels of ``mask`` [k, j, i] whose first voxel is ``offset``
    (i, j, k); None when empty."""
    if not mask.any():
        return None
    out = []
    for axis_kji, off in ((2, offset[0]), (1, offset[1]), (0, offset[2])):
        other = tuple(a for a in range(3) if a != axis_kji)
        nz = np.flatnonzero(mask.any(axis=other))
        out += [int(nz[0]) + off, int(nz[-1]) + off]
    return tuple(out)


def _new_image(ijk_to_world: np.ndarray, extent, fill: int = 0):
    image = slicer.vtkOrientedImageData()
    image.SetExtent(*extent)
    image.AllocateScalars(VTK_UNSIGNED_CHAR, 1)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijk_to_world, dtype=float)))
    if not _extent_is_empty(extent):
        image_array(image)[:] = fill
    return image


def _geometries_match(a: np.ndarray, b: np.ndarray, tol: float = 1e-4) -> bool:
    """Same origin, spacing and directions (as vtkOrientedImageDataResample::DoGeometriesMatch, tolerance in mm)."""
    return bool(np.allclose(a, b, atol=tol, rtol=0))


# --------------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class VolumeGeometry:
    """The source volume's voxel grid in the segmentation's coordinate frame.

    ``ijk_to_world`` maps volume (i, j, k, 1) to the frame the segmentation's labelmaps live in (the segmentation
    node's local frame, i.e. before its own parent transform); ``size_ijk`` is the number of voxels along I, J, K.
    """

    ijk_to_world: np.ndarray
    size_ijk: tuple[int, int, int]

    @property
    def extent(self) -> tuple[int, ...]:
        i, j, k = self.size_ijk
        return (0, i - 1, 0, j - 1, 0, k - 1)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        i, j, k = self.size_ijk
        return (k, j, i)

    @classmethod
    def from_matrix(cls, ijk_to_world, size_ijk) -> VolumeGeometry:
        return cls(np.asarray(ijk_to_world, dtype=float).copy(), tuple(int(s) for s in size_ijk))

    @classmethod
    def from_volume_node(cls, volume_node, segmentation_node=None) -> VolumeGeometry:
        """Geometry of ``volume_node`` expressed in ``segmentation_node``'s frame (world when None)."""
        image = volume_node.GetImageData() if volume_node is not None else None
        if image is None:
            raise BridgeError("the source volume has no image data")
        ijk_to_ras = vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        to_segmentation = vtkMatrix4x4()
        target = segmentation_node.GetParentTransformNode() if segmentation_node is not None else None
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(
            volume_node.GetParentTransformNode(), target, to_segmentation
        ):
            raise BridgeError(
                "the source volume and the segmentation are related by a non-linear transform; harden the "
                "transform (Data module: right-click the volume > Harden transform) and try again"
            )
        matrix = slicer.util.arrayFromVTKMatrix(to_segmentation) @ slicer.util.arrayFromVTKMatrix(ijk_to_ras)
        return cls(matrix, tuple(int(d) for d in image.GetDimensions()))

    def image(self, extent=None, fill: int = 0):
        """A uint8 vtkOrientedImageData on this grid covering ``extent`` (default: the whole volume)."""
        return _new_image(self.ijk_to_world, self.extent if extent is None else extent, fill)


def slice_region(geometry: VolumeGeometry, axis: str, index: int) -> tuple[int, ...]:
    """Extent (i0, i1, j0, j1, k0, k1) of one whole slice."""
    n = axis_index(axis)
    if not 0 <= index < geometry.size_ijk[n]:
        raise BridgeError(f"slice {index} is outside the volume along {axis} (0 to {geometry.size_ijk[n] - 1})")
    extent = list(geometry.extent)
    extent[2 * n] = extent[2 * n + 1] = int(index)
    return tuple(extent)


def _slice_index(axis: str, index: int, within) -> tuple:
    """numpy index of slice ``index`` along ``axis`` in a [k, j, i] array covering extent ``within``."""
    n = axis_index(axis)
    local = int(index) - within[2 * n]
    return {0: (slice(None), slice(None), local), 1: (slice(None), local, slice(None)), 2: (local,)}[n]


def _region_in_grid(region, source_to_world: np.ndarray, grid_to_world: np.ndarray, grid_extent) -> tuple[int, ...]:
    """Extent of ``grid`` voxels that may overlap the voxels ``region`` of another grid (generous by one voxel),
    clipped to ``grid_extent``."""
    corners = np.array(
        [[x, y, z, 1.0] for x in (region[0] - 0.5, region[1] + 0.5)
         for y in (region[2] - 0.5, region[3] + 0.5) for z in (region[4] - 0.5, region[5] + 0.5)]
    )
    ijk = (np.linalg.inv(grid_to_world) @ source_to_world @ corners.T).T[:, :3]
    lo, hi = np.floor(ijk.min(axis=0)) - 1, np.ceil(ijk.max(axis=0)) + 1
    extent = (int(lo[0]), int(hi[0]), int(lo[1]), int(hi[1]), int(lo[2]), int(hi[2]))
    return _intersect(extent, grid_extent)


def _resample(values: np.ndarray, source_to_world: np.ndarray, source_extent, grid_to_world: np.ndarray,
              grid_extent) -> np.ndarray:
    """Nearest-neighbour resampling of a uint8 array [k, j, i] (covering ``source_extent`` of one grid) onto
    ``grid_extent`` of another grid; voxels outside the source read 0."""
    source = _new_image(source_to_world, source_extent)
    image_array(source)[:] = values
    reference = _new_image(grid_to_world, grid_extent)
    output = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        source, reference, output, False, False
    ):
        raise BridgeError("resampling the mask to the segmentation's geometry failed")
    if tuple(output.GetExtent()) != tuple(grid_extent):
        raise BridgeError(f"resampling returned extent {tuple(output.GetExtent())}, expected {tuple(grid_extent)}")
    return image_array(output).copy()


# --------------------------------------------------------------------------------------------------- reading


def _segment_labelmap(segmentation_node, segment_id: str):
    segmentation = segmentation_node.GetSegmentation() if segmentation_node is not None else None
    segment = segmentation.GetSegment(segment_id) if segmentation is not None and segment_id else None
    if segment is None:
        raise BridgeError(f"segment {segment_id!r} is not in the segmentation")
    labelmap = segment.GetRepresentation(BINARY_LABELMAP)
    if labelmap is None:
        raise BridgeError(
            "the segmentation has no binary labelmap representation; select it in the Segment Editor "
            "(which converts it) and try again"
        )
    return segment, labelmap


def _segment_values(segment, labelmap, extent) -> np.ndarray:
    """bool [k, j, i] of the segment over ``extent`` of its labelmap's own grid (False outside the labelmap)."""
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    out = np.zeros(shape, dtype=bool)
    lm_extent = tuple(labelmap.GetExtent())
    common = _intersect(lm_extent, extent)
    if _extent_is_empty(lm_extent) or _extent_is_empty(common):
        return out
    values = image_array(labelmap)[_extent_slices(common, lm_extent)]
    out[_extent_slices(common, extent)] = values == segment.GetLabelValue()
    return out


def read_segment_on_grid(segment, labelmap, grid: np.ndarray, extent) -> np.ndarray:
    """The segment over ``extent`` of the grid ``grid`` (resampled when its labelmap uses another grid)."""
    lm_grid = image_to_world(labelmap)
    if _geometries_match(lm_grid, grid):
        return _segment_values(segment, labelmap, extent)
    lm_extent = tuple(labelmap.GetExtent())
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    if _extent_is_empty(lm_extent):
        return np.zeros(shape, bool)
    source_extent = _region_in_grid(extent, grid, lm_grid, lm_extent)
    if _extent_is_empty(source_extent):
        return np.zeros(shape, bool)
    values = _segment_values(segment, labelmap, source_extent).astype(np.uint8)
    return _resample(values, lm_grid, source_extent, grid, extent).astype(bool)


def read_segment(segmentation_node, segment_id: str, geometry: VolumeGeometry, region=None) -> np.ndarray:
    """The segment as bool [k, j, i] over ``region`` (an extent, default the whole volume) of the volume's grid."""
    segment, labelmap = _segment_labelmap(segmentation_node, segment_id)
    region = tuple(geometry.extent if region is None else region)
    return read_segment_on_grid(segment, labelmap, geometry.ijk_to_world, region)


def read_segment_slice(segmentation_node, segment_id: str, geometry: VolumeGeometry, axis: str,
                       index: int) -> np.ndarray:
    """The segment on one volume slice, bool [rows, cols] as SAMSegmentLib.slices lays slices out."""
    region = slice_region(geometry, axis, index)
    return read_segment(segmentation_node, segment_id, geometry, region)[_slice_index(axis, index, region)]


# --------------------------------------------------------------------------------------------------- editors


class LogicEditor:
    """Writes through a vtkSlicerSegmentEditorLogic (headless use and tests; the same code the effect reaches)."""

    def __init__(self, logic) -> None:
        self.logic = logic

    @property
    def segmentation_node(self):
        node = self.logic.GetSegmentEditorNode()
        return node.GetSegmentationNode() if node is not None else None

    @property
    def segment_id(self) -> str:
        node = self.logic.GetSegmentEditorNode()
        return (node.GetSelectedSegmentID() or "") if node is not None else ""

    def default_modifier_labelmap(self):
        if not self.logic.ResetModifierLabelmapToDefault():
            return None
        return self.logic.GetModifierLabelmap()

    def modify(self, labelmap, mode: str, extent) -> None:
        constant = {"add": self.logic.ModificationModeAdd, "remove": self.logic.ModificationModeRemove}[mode]
        self.logic.ModifySegmentByLabelmap(
            self.segmentation_node, self.segment_id, labelmap, constant, list(extent), True, False
        )

    def save_state_for_undo(self) -> None:
        self.logic.SaveStateForUndo()

    @property
    def single_mask_segment_id(self) -> str | None:
        """The segment X when the editable area is "inside a single segment X", else None."""
        node = self.logic.GetSegmentEditorNode()
        return _single_mask_segment(node)

    def remove_unmasked(self, segment_id: str, labelmap) -> None:
        """Remove ``labelmap``'s voxels from ``segment_id`` with the editable area bypassed (intensity masking, when
        on, still applies: the editor applies it to every modification)."""
        self.logic.ModifySegmentByLabelmap(self.segmentation_node, segment_id, labelmap,
                                           self.logic.ModificationModeRemove, False, True)

    def intensity_range(self) -> tuple[float, float] | None:
        node = self.logic.GetSegmentEditorNode()
        return _intensity_range(node)

    def source_on_modifier_grid(self):
        """The source volume resampled to the modifier labelmap's grid (what intensity masking thresholds)."""
        if not self.logic.UpdateAlignedSourceVolume():
            return None
        return self.logic.GetAlignedSourceVolume()


class EffectEditor:
    """Writes through a Segment Editor effect (``scriptedEffect`` of a qSlicerSegmentEditorScriptedEffect)."""

    def __init__(self, scripted_effect) -> None:
        self.effect = scripted_effect

    @property
    def segmentation_node(self):
        return self.effect.parameterSetNode().GetSegmentationNode()

    @property
    def segment_id(self) -> str:
        return self.effect.parameterSetNode().GetSelectedSegmentID() or ""

    def default_modifier_labelmap(self):
        return self.effect.defaultModifierLabelmap()

    def modify(self, labelmap, mode: str, extent) -> None:
        base = slicer.qSlicerSegmentEditorAbstractEffect
        constant = {"add": base.ModificationModeAdd, "remove": base.ModificationModeRemove}[mode]
        self.effect.modifySelectedSegmentByLabelmap(labelmap, constant, [int(e) for e in extent])

    def save_state_for_undo(self) -> None:
        self.effect.saveStateForUndo()

    @property
    def single_mask_segment_id(self) -> str | None:
        return _single_mask_segment(self.effect.parameterSetNode())

    def intensity_range(self) -> tuple[float, float] | None:
        return _intensity_range(self.effect.parameterSetNode())

    def source_on_modifier_grid(self):
        return self.effect.sourceVolumeImageData()

    def remove_unmasked(self, segment_id: str, labelmap) -> None:
        base = slicer.qSlicerSegmentEditorAbstractEffect
        # (segmentationNode, segmentID, labelmap, mode, bypassMasking): the overload without an extent
        self.effect.modifySegmentByLabelmap(self.segmentation_node, segment_id, labelmap,
                                            base.ModificationModeRemove, True)


def _intensity_range(editor_node) -> tuple[float, float] | None:
    """(low, high) of the intensity mask when it is on, else None."""
    if editor_node is None or not editor_node.GetSourceVolumeIntensityMask():
        return None
    low, high = editor_node.GetSourceVolumeIntensityMaskRange()
    return float(low), float(high)


def _single_mask_segment(editor_node) -> str | None:
    if editor_node is None:
        return None
    if editor_node.GetMaskMode() != slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment:
        return None
    return editor_node.GetMaskSegmentID() or None


# --------------------------------------------------------------------------------------------------- writing


@dataclass
class WriteResult:
    """What a write changed (before masking by the editor): voxel counts on the segmentation's grid and extents."""

    added: int = 0
    removed: int = 0
    added_extent: tuple[int, ...] | None = None
    removed_extent: tuple[int, ...] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


def _slice_shape(geometry: VolumeGeometry, axis: str) -> tuple[int, int]:
    """(rows, cols) of a slice along ``axis`` (see SAMSegmentLib.slices)."""
    ax, ay = in_plane_axes(axis)
    return geometry.size_ijk[axis_index(ay)], geometry.size_ijk[axis_index(ax)]


def _normalise_slices(geometry: VolumeGeometry, slices) -> list[tuple[str, int, np.ndarray]]:
    out = []
    for axis, index, mask in slices:
        axis = str(axis).upper()
        slice_region(geometry, axis, int(index))  # validates the index
        mask = np.asarray(mask, dtype=bool)
        expected = _slice_shape(geometry, axis)
        if mask.shape != expected:
            raise BridgeError(f"the mask for slice {index} ({axis}) has shape {mask.shape}, the slice is {expected}")
        out.append((axis, int(index), mask))
    return out


def write_slices(editor, geometry: VolumeGeometry, slices: Iterable, mode: str = "replace",
                 save_undo: bool = True) -> WriteResult:
    """Write masks of whole volume slices into the editor's selected segment.

    ``slices``: (axis, index, bool mask [rows, cols]) triples; where slices cross, the later one wins.
    ``mode``: 'replace' (the slices become the masks), 'add' or 'remove'. One undo state is saved before the first
    change when ``save_undo`` (none when nothing changes). Returns what changed.
    """
    if mode not in ("replace", "add", "remove"):
        raise ValueError(f"mode must be 'replace', 'add' or 'remove', not {mode!r}")
    items = _normalise_slices(geometry, slices)
    result = WriteResult()
    if not items:
        return result
    segmentation_node, segment_id = editor.segmentation_node, editor.segment_id
    if segmentation_node is None or not segment_id:
        raise BridgeError("select a segment to write into")
    segment, labelmap = _segment_labelmap(segmentation_node, segment_id)

    modifier = editor.default_modifier_labelmap()
    if modifier is None:
        raise BridgeError("the Segment Editor could not create a modifier labelmap (no reference geometry)")
    grid = image_to_world(modifier)
    grid_extent = tuple(modifier.GetExtent())

    # union of the written slices on the volume grid
    regions = [slice_region(geometry, a, i) for a, i, _ in items]
    union = tuple(f(r[c] for r in regions) for c, f in enumerate((min, max) * 3))

    if _geometries_match(grid, geometry.ijk_to_world):
        # same grid: work on the volume's indices (clipped to the segmentation's extent)
        extent = _intersect(union, grid_extent)
        if _extent_is_empty(extent):
            raise BridgeError("the slices lie outside the segmentation's extent")
        shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
        added = np.zeros(shape, bool)
        removed = np.zeros(shape, bool)
        for axis, index, mask in items:
            region = slice_region(geometry, axis, index)
            clipped = _intersect(region, extent)
            if _extent_is_empty(clipped):
                continue
            target = _expand_slice(mask, axis)[_extent_slices(clipped, region)]
            old = read_segment_on_grid(segment, labelmap, grid, clipped)
            where = _extent_slices(clipped, extent)
            added[where], removed[where] = _change(mode, target, old)
        origin = (extent[0], extent[2], extent[4])
    else:
        # another grid: resample the new values and the written region onto it, compare with the segment there
        target_vol = np.zeros((union[5] - union[4] + 1, union[3] - union[2] + 1, union[1] - union[0] + 1), np.uint8)
        written_vol = np.zeros_like(target_vol)
        for axis, index, mask in items:
            region = slice_region(geometry, axis, index)
            where = _extent_slices(region, union)
            target_vol[where] = _expand_slice(mask, axis)
            written_vol[where] = 1
        extent = _region_in_grid(union, geometry.ijk_to_world, grid, grid_extent)
        if _extent_is_empty(extent):
            raise BridgeError("the slices lie outside the segmentation's extent")
        target = _resample(target_vol, geometry.ijk_to_world, union, grid, extent).astype(bool)
        written = _resample(written_vol, geometry.ijk_to_world, union, grid, extent).astype(bool)
        old = read_segment_on_grid(segment, labelmap, grid, extent)
        added, removed = _change(mode, target, old)
        added &= written
        removed &= written
        origin = (extent[0], extent[2], extent[4])

    result.added, result.removed = int(added.sum()), int(removed.sum())
    result.added_extent = _bbox_extent(added, origin)
    result.removed_extent = _bbox_extent(removed, origin)
    if not result.changed:
        return result
    if save_undo:
        editor.save_state_for_undo()
    # With the editable area "inside a single segment X", Slicer's Remove gives the removed voxels to X (Erase's
    # behaviour there, end of vtkSlicerSegmentEditorLogic::ModifySegmentByLabelmap). A replace must never grow
    # another segment: note X before the removal and take back what it gained.
    mask_segment = getattr(editor, "single_mask_segment_id", None)
    if mask_segment == segment_id:
        mask_segment = None
    if mask_segment is not None and result.removed_extent is not None:
        # In that mode Slicer's Remove also makes the segment's own voxels editable, intensity mask included, so a
        # removal would ignore the intensity mask: keep only the voxels inside the intensity range.
        removed = _within_intensity_range(editor, removed, extent)
        result.removed = int(removed.sum())
        result.removed_extent = _bbox_extent(removed, origin)
        if not result.changed:
            return result
    x_before = None
    if mask_segment is not None and result.removed_extent is not None:
        x_segment, x_labelmap = _segment_labelmap(segmentation_node, mask_segment)
        x_before = read_segment_on_grid(x_segment, x_labelmap, grid, result.removed_extent)
    for values, change_extent, op in ((removed, result.removed_extent, "remove"), (added, result.added_extent, "add")):
        if change_extent is None:
            continue
        modifier = editor.default_modifier_labelmap()  # cleared, on the reference grid: intensity masking works
        if modifier is None:
            raise BridgeError("the Segment Editor could not create a modifier labelmap")
        array = image_array(modifier)
        array[_extent_slices(change_extent, tuple(modifier.GetExtent()))] = \
            values[_extent_slices(change_extent, extent)]
        modifier.Modified()
        editor.modify(modifier, op, change_extent)
        if op == "remove" and x_before is not None:
            _take_back(editor, segmentation_node, mask_segment, grid, change_extent, x_before)
    return result


def _within_intensity_range(editor, values: np.ndarray, extent) -> np.ndarray:
    """``values`` (over ``extent`` of the modifier grid) limited to voxels whose source intensity lies in the intensity
    mask's range; unchanged when intensity masking is off."""
    window = editor.intensity_range() if hasattr(editor, "intensity_range") else None
    if window is None:
        return values
    source = editor.source_on_modifier_grid()
    if source is None:
        raise BridgeError("intensity masking is on but the source volume cannot be read")
    intensities = image_array(source)[_extent_slices(extent, tuple(source.GetExtent()))]
    return values & (intensities >= window[0]) & (intensities <= window[1])


def _take_back(editor, segmentation_node, segment_id: str, grid: np.ndarray, extent, before: np.ndarray) -> None:
    """Remove from ``segment_id`` the voxels it gained inside ``extent`` since ``before`` was read."""
    segment, labelmap = _segment_labelmap(segmentation_node, segment_id)
    gained = read_segment_on_grid(segment, labelmap, grid, extent) & ~before
    if not gained.any():
        return
    modifier = editor.default_modifier_labelmap()
    if modifier is None:
        raise BridgeError("the Segment Editor could not create a modifier labelmap")
    image_array(modifier)[_extent_slices(extent, tuple(modifier.GetExtent()))] = gained
    modifier.Modified()
    editor.remove_unmasked(segment_id, modifier)


def _expand_slice(mask: np.ndarray, axis: str) -> np.ndarray:
    """A slice mask [rows, cols] as a [k, j, i] block one voxel thick along ``axis``."""
    n = axis_index(axis)
    if n == 2:
        return mask[np.newaxis, :, :]
    if n == 1:
        return mask[:, np.newaxis, :]
    return mask[:, :, np.newaxis]


def _change(mode: str, target: np.ndarray, old: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(added, removed) voxels for a write ``mode`` with new values ``target`` over current values ``old``."""
    if mode == "replace":
        return target & ~old, old & ~target
    if mode == "add":
        return target & ~old, np.zeros_like(target)
    return np.zeros_like(target), target & old


# --------------------------------------------------------------------------------------------------- preview


class PreviewLayer:
    """A helper segmentation node showing predicted masks (in every view, 3D included) until they are applied.

    Its one segment's labelmap lies on the source volume's grid; slices are written in place. The node is not saved
    with the scene and is hidden from node selectors.
    """

    SEGMENT_ID = "SegmentAnythingPreview"

    def __init__(self, scene, geometry: VolumeGeometry, name: str = "Segment Anything preview",
                 color=(1.0, 0.85, 0.0), parent_transform_id: str | None = None) -> None:
        self.scene = scene
        self.geometry = geometry
        self._slices: dict[tuple[str, int], np.ndarray] = {}
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        node.SetHideFromEditors(True)
        node.SetSaveWithScene(False)
        node.CreateDefaultDisplayNodes()
        if parent_transform_id:
            node.SetAndObserveTransformNodeID(parent_transform_id)
        display = node.GetDisplayNode()
        if display is not None:
            display.SetOpacity2DFill(0.45)
            display.SetOpacity2DOutline(1.0)
        self._image = geometry.image()
        segment = slicer.vtkSegment()
        segment.SetName("Segment Anything preview")
        segment.SetColor(*color)
        segment.AddRepresentation(BINARY_LABELMAP, self._image)
        node.GetSegmentation().SetSourceRepresentationName(BINARY_LABELMAP)
        segmentation = node.GetSegmentation()
        segmentation.AddSegment(segment, self.SEGMENT_ID)
        # AddSegment does not start observing the added labelmap; a segment Modified event makes the segmentation
        # update its observers (vtkSegmentation::OnSegmentModified), so that an in-place change (image.Modified())
        # reaches the segmentation node and the views as SourceRepresentationModified.
        segment.Modified()
        self._segment = segment
        self.node = node

    @property
    def array(self) -> np.ndarray:
        return image_array(self._image)

    def set_slice(self, axis: str, index: int, mask: np.ndarray) -> None:
        axis = str(axis).upper()
        slice_region(self.geometry, axis, index)  # validates the index
        mask = np.asarray(mask, dtype=bool)
        view = self.array[_slice_index(axis, index, self.geometry.extent)]
        if view.shape != mask.shape:
            raise BridgeError(f"the mask for slice {index} ({axis}) has shape {mask.shape}, the slice is {view.shape}")
        view[...] = mask
        self._slices.pop((axis, int(index)), None)  # re-inserted last: slices() keeps the order of updates
        self._slices[(axis, int(index))] = mask.copy()
        self._modified()

    def clear_slice(self, axis: str, index: int) -> None:
        axis = str(axis).upper()
        if self._slices.pop((axis, int(index)), None) is None:
            return
        self.array[_slice_index(axis, index, self.geometry.extent)] = 0
        for (a, i), m in self._slices.items():  # slices of other axes crossing this one stay visible
            if a != axis:
                self.array[_slice_index(a, i, self.geometry.extent)] |= m
        self._modified()

    def clear(self) -> None:
        if self._slices:
            self._slices.clear()
            self.array[:] = 0
            self._modified()

    def slices(self) -> list[tuple[str, int, np.ndarray]]:
        """Previewed (axis, index, mask) in the order they were last set."""
        return [(a, i, m) for (a, i), m in self._slices.items()]

    def has_slice(self, axis: str, index: int) -> bool:
        return (str(axis).upper(), int(index)) in self._slices

    def __len__(self) -> int:
        return len(self._slices)

    def set_visible(self, visible: bool) -> None:
        display = self.node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(bool(visible))

    def _modified(self) -> None:
        """Announce an in-place change of the labelmap's voxels.

        ``image.Modified()`` invalidates the segmentation's derived representations (SourceRepresentationModified:
        the 3D surface is rebuilt), but the 2D segmentation displayable manager does not observe that event and
        reslices a shallow copy taken at its last update, so slice views kept showing the old voxels (measured: 0
        preview pixels after set_slice). A segment Modified event (SegmentModified, observed by the 2D and 3D
        displayable managers) refreshes their pipelines and requests a render: the idiom slicer.util documents for
        in-place edits of a segment's labelmap (arrayFromSegmentInternalBinaryLabelmap), narrower than
        ``node.Modified()``, which notifies every observer of the node.
        """
        self._image.Modified()
        self._segment.Modified()

    def remove(self) -> None:
        if self.node is not None and self.node.GetScene() is not None:
            self.scene.RemoveNode(self.node)
        self.node = None
        self._slices.clear()
