"""MRML bridge (SAMSegment/SAMSegmentEffectLib/bridge.py) on slicer-core: real vtkMRMLSegmentationNode, vtkOrientedImageData
and vtkSlicerSegmentEditorLogic (the code the effect's modifySelectedSegmentByLabelmap runs in Slicer 5.10+).

Volumes have non-identity directions and anisotropic spacing; writes must honour the editable area, the intensity
mask, the overwrite mode and undo, touch nothing outside the written slices, and round-trip voxel-exactly, also when
the segmentation's labelmaps use another grid (oversampled x2, cropped).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

import slicer  # noqa: E402
from SAMSegmentEffectLib.bridge import (  # noqa: E402
    BridgeError,
    LogicEditor,
    PreviewLayer,
    VolumeGeometry,
    image_array,
    image_to_world,
    read_segment,
    read_segment_slice,
    write_slices,
)
from vtkmodules.vtkCommonCore import VTK_SHORT  # noqa: E402
from vtkmodules.vtkCommonDataModel import vtkImageData  # noqa: E402
from vtkmodules.vtkCommonMath import vtkMatrix4x4  # noqa: E402

SIZE = (22, 18, 13)  # I, J, K
SPACING = (0.7, 1.1, 2.5)


def direction(degrees_s: float = 25.0, degrees_r: float = -10.0, lps: bool = True) -> np.ndarray:
    def rot(a, b, deg):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        r = np.eye(3)
        r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
        return r

    flip = np.diag([-1.0, -1.0, 1.0]) if lps else np.eye(3)
    return rot(0, 1, degrees_s) @ rot(1, 2, degrees_r) @ flip


def ijk_to_ras_matrix(dirs=None, spacing=SPACING, origin=(12.0, -30.0, 7.5)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = (direction() if dirs is None else dirs) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def vtk_matrix(m: np.ndarray) -> vtkMatrix4x4:
    out = vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, m[r, c])
    return out


class Editor:
    """A scene with a source volume, a segmentation (segments 'target' and 'other') and a segment editor logic."""

    def __init__(self, scene, ijk_to_ras=None, reference=None, seed=0):
        self.scene = scene
        self.rng = np.random.default_rng(seed)
        self.volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        image = vtkImageData()
        image.SetDimensions(*SIZE)
        image.AllocateScalars(VTK_SHORT, 1)
        self.intensity = image_array(image)
        self.intensity[:] = self.rng.integers(0, 200, self.intensity.shape)
        self.volume.SetAndObserveImageData(image)
        self.volume.SetIJKToRASMatrix(vtk_matrix(ijk_to_ras_matrix() if ijk_to_ras is None else ijk_to_ras))

        self.segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        self.segmentation.CreateDefaultDisplayNodes()
        self.segmentation.SetReferenceImageGeometryParameterFromVolumeNode(self.volume)
        if reference is not None:  # another labelmap grid for the segmentation
            self.segmentation.GetSegmentation().SetConversionParameter(
                slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName(),
                slicer.vtkSegmentationConverter.SerializeImageGeometry(reference),
            )
        seg = self.segmentation.GetSegmentation()
        self.target = seg.AddEmptySegment("target")
        self.other = seg.AddEmptySegment("other")

        self.node = scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.logic = slicer.vtkSlicerSegmentEditorLogic()
        self.logic.SetMRMLScene(scene)
        self.logic.SetSegmentEditorNode(self.node)
        self.node.SetAndObserveSegmentationNode(self.segmentation)
        self.node.SetAndObserveSourceVolumeNode(self.volume)
        self.node.SetSelectedSegmentID(self.target)
        self.node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteAllSegments)
        self.node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere)
        self.logic.SetMaximumNumberOfUndoStates(10)
        self.editor = RecordingEditor(self.logic)
        self.geometry = VolumeGeometry.from_volume_node(self.volume, self.segmentation)

    def select(self, segment_id):
        self.node.SetSelectedSegmentID(segment_id)

    def read(self, segment_id=None):
        return read_segment(self.segmentation, segment_id or self.target, self.geometry)

    def fill(self, segment_id, mask_kji):
        """Set a segment to a whole-volume mask (bypassing masking), as setup."""
        selected = self.node.GetSelectedSegmentID()
        self.select(segment_id)
        items = [("K", k, mask_kji[k]) for k in range(SIZE[2])]
        write_slices(LogicEditor(self.logic), self.geometry, items, save_undo=False)
        self.select(selected)
        assert np.array_equal(self.read(segment_id), mask_kji)

    def blob(self, p=0.3):
        return self.rng.random(self.geometry.shape_kji) < p


class RecordingEditor(LogicEditor):
    """LogicEditor that records each ModifySegmentByLabelmap call (mode, extent)."""

    def __init__(self, logic):
        super().__init__(logic)
        self.calls = []

    def modify(self, labelmap, mode, extent):
        self.calls.append((mode, tuple(extent)))
        super().modify(labelmap, mode, extent)


def slice_mask(rng, shape, p=0.4):
    mask = rng.random(shape) < p
    mask[0, :] = False  # leave a margin so that bounding boxes are smaller than the slice
    return mask


# --------------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("axis,index", [("K", 5), ("J", 9), ("I", 0), ("I", 21)])
def test_replace_round_trip_and_nothing_else_changes(scene, axis, index):
    ed = Editor(scene)
    before = ed.blob()
    ed.fill(ed.target, before)
    shape = {"K": (SIZE[1], SIZE[0]), "J": (SIZE[2], SIZE[0]), "I": (SIZE[2], SIZE[1])}[axis]
    mask = slice_mask(ed.rng, shape)

    result = write_slices(ed.editor, ed.geometry, [(axis, index, mask)])

    after = ed.read()
    np.testing.assert_array_equal(read_segment_slice(ed.segmentation, ed.target, ed.geometry, axis, index), mask)
    expected = before.copy()
    n = "IJK".index(axis)
    where = [slice(None)] * 3
    where[2 - n] = index
    expected[tuple(where)] = mask
    np.testing.assert_array_equal(after, expected)  # voxels outside the slice untouched
    old = before[tuple(where)]
    assert result.added == int((mask & ~old).sum()) and result.removed == int((old & ~mask).sum())


def test_writes_are_limited_to_the_bounding_box_of_the_change(scene):
    ed = Editor(scene)
    ed.fill(ed.target, np.zeros(ed.geometry.shape_kji, bool))
    mask = np.zeros((SIZE[1], SIZE[0]), bool)
    mask[3:7, 4:10] = True  # rows j 3..6, cols i 4..9
    result = write_slices(ed.editor, ed.geometry, [("K", 6, mask)])
    assert ed.editor.calls == [("add", (4, 9, 3, 6, 6, 6))]
    assert result.added_extent == (4, 9, 3, 6, 6, 6) and result.removed == 0

    ed.editor.calls.clear()
    smaller = np.zeros_like(mask)
    smaller[4:6, 5:8] = True
    smaller[10, 15] = True
    write_slices(ed.editor, ed.geometry, [("K", 6, smaller)])
    assert ed.editor.calls == [("remove", (4, 9, 3, 6, 6, 6)), ("add", (15, 15, 10, 10, 6, 6))]

    ed.editor.calls.clear()
    result = write_slices(ed.editor, ed.geometry, [("K", 6, smaller)])  # nothing changes: nothing written
    assert ed.editor.calls == [] and not result.changed
    assert not ed.logic.CanRedo()


def test_add_and_remove_modes(scene):
    ed = Editor(scene)
    before = ed.blob()
    ed.fill(ed.target, before)
    mask = slice_mask(ed.rng, (SIZE[1], SIZE[0]))
    write_slices(ed.editor, ed.geometry, [("K", 3, mask)], mode="add")
    np.testing.assert_array_equal(ed.read()[3], before[3] | mask)
    write_slices(ed.editor, ed.geometry, [("K", 3, mask)], mode="remove")
    np.testing.assert_array_equal(ed.read()[3], before[3] & ~mask)
    with pytest.raises(ValueError):
        write_slices(ed.editor, ed.geometry, [("K", 3, mask)], mode="set")


def test_bad_masks_are_refused(scene):
    ed = Editor(scene)
    with pytest.raises(BridgeError, match="shape"):
        write_slices(ed.editor, ed.geometry, [("K", 3, np.zeros((4, 4), bool))])
    with pytest.raises(BridgeError, match="outside the volume"):
        write_slices(ed.editor, ed.geometry, [("K", SIZE[2], np.zeros((SIZE[1], SIZE[0]), bool))])
    ed.select("")
    with pytest.raises(BridgeError, match="select a segment"):
        write_slices(ed.editor, ed.geometry, [("K", 3, np.zeros((SIZE[1], SIZE[0]), bool))])


# --------------------------------------------------------------------------------------------------- masking


def test_editable_area_inside_another_segment(scene):
    ed = Editor(scene)
    region = ed.blob(0.5)
    ed.fill(ed.other, region)
    ed.node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    ed.node.SetMaskSegmentID(ed.other)
    ed.node.SetOverwriteMode(slicer.vtkMRMLSegmentEditorNode.OverwriteNone)
    mask = np.ones((SIZE[1], SIZE[0]), bool)
    write_slices(ed.editor, ed.geometry, [("K", 4, mask)])
    np.testing.assert_array_equal(ed.read()[4], region[4])  # only inside 'other'
    assert not ed.read()[[3, 5]].any()


def test_editable_area_outside_all_segments(scene):
    ed = Editor(scene)
    taken = ed.blob(0.5)
    ed.fill(ed.other, taken)
    ed.node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedOutsideAllSegments)
    mask = np.ones((SIZE[1], SIZE[0]), bool)
    write_slices(ed.editor, ed.geometry, [("K", 4, mask)])
    np.testing.assert_array_equal(ed.read()[4], ~taken[4])
    np.testing.assert_array_equal(ed.read(ed.other), taken)  # the other segment is protected


MASK_MODES = ["EditAllowedEverywhere", "EditAllowedInsideAllSegments", "EditAllowedInsideVisibleSegments",
              "EditAllowedOutsideAllSegments", "EditAllowedOutsideVisibleSegments"]


def _set_reference(ed, before, index, mask):
    """What a whole-volume ModificationModeSet of the same result does (Threshold's Apply, Fill between slices)."""
    modifier = LogicEditor(ed.logic).default_modifier_labelmap()
    full = before.copy()
    full[index] = mask
    image_array(modifier)[:] = full
    modifier.Modified()
    ed.logic.ModifySegmentByLabelmap(ed.segmentation, ed.target, modifier, ed.logic.ModificationModeSet, True, False)


@pytest.mark.parametrize("overwrite", ["OverwriteAllSegments", "OverwriteNone"])
@pytest.mark.parametrize("mask_mode", MASK_MODES)
def test_replace_matches_a_whole_volume_set(scene, mask_mode, overwrite):
    """For every editable area but 'inside a single segment', the region-limited Remove+Add write gives exactly what
    a whole-volume Set gives: same selected segment, same other segments."""
    results = []
    for method in ("ours", "set"):
        scene.Clear(False)
        ed = Editor(scene, seed=3)
        before, other = ed.blob(0.4), ed.blob(0.4)
        ed.fill(ed.other, other)
        ed.fill(ed.target, before)
        ed.node.SetMaskMode(getattr(slicer.vtkMRMLSegmentationNode, mask_mode))
        ed.node.SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, overwrite))
        mask = slice_mask(ed.rng, (SIZE[1], SIZE[0]), 0.5)
        if method == "ours":
            write_slices(ed.editor, ed.geometry, [("K", 7, mask)])
        else:
            _set_reference(ed, before, 7, mask)
        results.append((ed.read(), ed.read(ed.other)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_inside_single_segment_shrinking_never_grows_the_mask_segment(scene):
    """Editable area 'inside segment X': a replace that shrinks the segment must not give the voxels it drops to X
    (Slicer's Remove does, as Erase there); X changes only where the new mask takes voxels from it."""
    ed = Editor(scene)
    x = np.zeros(ed.geometry.shape_kji, bool)
    x[:, 1:16, 1:20] = True
    ed.fill(ed.other, x)
    ed.node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    ed.node.SetMaskSegmentID(ed.other)
    big = np.zeros((SIZE[1], SIZE[0]), bool)
    big[2:12, 2:15] = True
    write_slices(ed.editor, ed.geometry, [("K", 5, big)])
    np.testing.assert_array_equal(ed.read()[5], big)
    x_after_big = ed.read(ed.other)
    assert not (x_after_big[5] & big).any()  # carved out of X (overwrite all)
    small = np.zeros_like(big)
    small[4:8, 4:8] = True
    write_slices(ed.editor, ed.geometry, [("K", 5, small)])
    np.testing.assert_array_equal(ed.read()[5], small)
    np.testing.assert_array_equal(ed.read(ed.other), x_after_big)  # X did not grow back


def test_inside_single_segment_replace_respects_the_intensity_mask(scene):
    ed = Editor(scene)
    x = np.zeros(ed.geometry.shape_kji, bool)
    x[:, :, :] = True
    ed.fill(ed.other, x)
    before = np.zeros(ed.geometry.shape_kji, bool)
    before[5, 2:14, 2:18] = True
    ed.fill(ed.target, before)
    ed.node.SetMaskMode(slicer.vtkMRMLSegmentationNode.EditAllowedInsideSingleSegment)
    ed.node.SetMaskSegmentID(ed.other)
    ed.node.SetSourceVolumeIntensityMask(True)
    ed.node.SetSourceVolumeIntensityMaskRange(50, 120)
    x_before = ed.read(ed.other)
    write_slices(ed.editor, ed.geometry, [("K", 5, np.zeros((SIZE[1], SIZE[0]), bool))])
    inside = (ed.intensity[5] >= 50) & (ed.intensity[5] <= 120)
    np.testing.assert_array_equal(ed.read()[5], before[5] & ~inside)  # only in-range voxels left the segment
    np.testing.assert_array_equal(ed.read(ed.other), x_before)  # and none of them went to X


def test_intensity_mask(scene):
    ed = Editor(scene)
    ed.node.SetSourceVolumeIntensityMask(True)
    ed.node.SetSourceVolumeIntensityMaskRange(50, 120)
    mask = np.ones((SIZE[1], SIZE[0]), bool)
    write_slices(ed.editor, ed.geometry, [("K", 2, mask)])
    inside = (ed.intensity[2] >= 50) & (ed.intensity[2] <= 120)
    np.testing.assert_array_equal(ed.read()[2], inside)


@pytest.mark.parametrize("mode", ["all", "visible", "none"])
def test_overwrite_modes(scene, mode):
    ed = Editor(scene)
    other = ed.blob(0.5)
    ed.fill(ed.other, other)
    hidden = scene.GetNodeByID(ed.segmentation.GetDisplayNodeID())
    constant = {"all": "OverwriteAllSegments", "visible": "OverwriteVisibleSegments", "none": "OverwriteNone"}[mode]
    ed.node.SetOverwriteMode(getattr(slicer.vtkMRMLSegmentEditorNode, constant))
    hidden.SetSegmentVisibility(ed.other, False)
    mask = np.ones((SIZE[1], SIZE[0]), bool)
    write_slices(ed.editor, ed.geometry, [("K", 8, mask)])
    assert ed.read()[8].all()
    remaining = ed.read(ed.other)
    if mode == "all":
        assert not remaining[8].any()
    else:  # 'visible' spares the hidden segment, 'none' spares all
        np.testing.assert_array_equal(remaining[8], other[8])
    np.testing.assert_array_equal(np.delete(remaining, 8, axis=0), np.delete(other, 8, axis=0))


# --------------------------------------------------------------------------------------------------- undo


def test_undo_restores_previous_labelmap_and_a_multi_slice_write_is_one_step(scene):
    ed = Editor(scene)
    before = ed.blob()
    ed.fill(ed.target, before)
    ed.logic.ClearUndoState()
    items = [("K", k, slice_mask(ed.rng, (SIZE[1], SIZE[0]))) for k in range(2, 11)]
    write_slices(ed.editor, ed.geometry, items)
    changed = ed.read()
    assert not np.array_equal(changed, before)
    assert ed.logic.CanUndo()
    ed.logic.Undo()
    np.testing.assert_array_equal(ed.read(), before)
    assert not ed.logic.CanUndo()  # the nine slices were one step
    ed.logic.Redo()
    np.testing.assert_array_equal(ed.read(), changed)


def test_crossing_slices_later_wins(scene):
    ed = Editor(scene)
    ed.fill(ed.target, np.zeros(ed.geometry.shape_kji, bool))
    full_k = np.ones((SIZE[1], SIZE[0]), bool)
    empty_i = np.zeros((SIZE[2], SIZE[1]), bool)
    write_slices(ed.editor, ed.geometry, [("K", 4, full_k), ("I", 10, empty_i)])
    out = ed.read()
    assert out[4].sum() == SIZE[0] * SIZE[1] - SIZE[1]  # the I slice cleared its line through slice K=4
    assert not out[4, :, 10].any()


# --------------------------------------------------------------------------------------------------- geometry


def oversampled(ed, factor=2, crop=None):
    """The volume's grid refined by ``factor`` (voxel centres of the coarse grid kept inside the fine voxels)."""
    m = ed.geometry.ijk_to_world.copy()
    fine = m.copy()
    fine[:3, :3] = m[:3, :3] / factor
    fine[:3, 3] = (m @ np.array([-0.5 + 0.5 / factor] * 3 + [1.0]))[:3]
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(vtk_matrix(fine))
    ext = [0, SIZE[0] * factor - 1, 0, SIZE[1] * factor - 1, 0, SIZE[2] * factor - 1]
    if crop is not None:
        ext = crop
    image.SetExtent(*ext)
    return image


def test_oversampled_segmentation_round_trip(scene):
    probe = Editor(scene)
    reference = oversampled(probe)
    scene.Clear(False)
    ed = Editor(scene, reference=reference)
    before = ed.blob()
    ed.fill(ed.target, before)
    labelmap = ed.segmentation.GetSegmentation().GetSegment(ed.target).GetRepresentation("Binary labelmap")
    np.testing.assert_allclose(image_to_world(labelmap), image_to_world(reference), atol=1e-6)  # really fine grid

    mask = slice_mask(ed.rng, (SIZE[2], SIZE[1]))
    write_slices(ed.editor, ed.geometry, [("I", 7, mask)])
    expected = before.copy()
    expected[:, :, 7] = mask
    np.testing.assert_array_equal(ed.read(), expected)  # identical voxels back on the volume grid
    np.testing.assert_array_equal(read_segment_slice(ed.segmentation, ed.target, ed.geometry, "I", 7), mask)

    # on the fine grid each coarse voxel of the slice is a 2x2x2 block
    fine = image_array(labelmap) == ed.segmentation.GetSegmentation().GetSegment(ed.target).GetLabelValue()
    ext = labelmap.GetExtent()
    block = fine[(0 - ext[4]):, (0 - ext[2]):, (14 - ext[0]):(16 - ext[0])]
    coarse = block.reshape(SIZE[2], 2, SIZE[1], 2, 2).any(axis=(1, 3, 4))
    np.testing.assert_array_equal(coarse, mask)
    assert (block.reshape(SIZE[2], 2, SIZE[1], 2, 2).all(axis=(1, 3, 4)) == coarse).all()

    ed.logic.Undo()
    np.testing.assert_array_equal(ed.read(), before)


def test_cropped_segmentation_writes_what_fits(scene):
    probe = Editor(scene)
    reference = oversampled(probe, factor=1, crop=[3, 15, 2, 12, 0, SIZE[2] - 1])
    scene.Clear(False)
    ed = Editor(scene, reference=reference)
    mask = np.ones((SIZE[1], SIZE[0]), bool)
    write_slices(ed.editor, ed.geometry, [("K", 5, mask)])
    out = ed.read()[5]
    inside = np.zeros_like(mask)
    inside[2:13, 3:16] = True
    np.testing.assert_array_equal(out, inside)


def test_volume_under_a_linear_transform(scene):
    ed = Editor(scene)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = np.eye(4)
    shift[:3, 3] = (5.0, -3.0, 2.0)
    transform.SetMatrixTransformToParent(vtk_matrix(shift))
    ed.volume.SetAndObserveTransformNodeID(transform.GetID())
    geometry = VolumeGeometry.from_volume_node(ed.volume, ed.segmentation)
    np.testing.assert_allclose(geometry.ijk_to_world, shift @ ed.geometry.ijk_to_world)
    ed.segmentation.SetAndObserveTransformNodeID(transform.GetID())
    np.testing.assert_allclose(VolumeGeometry.from_volume_node(ed.volume, ed.segmentation).ijk_to_world,
                               ed.geometry.ijk_to_world)


def test_matrices_cross_to_vtk_and_back_exactly(scene):
    """The bridge's conversions (slicer.util.vtkMatrixFromArray / arrayFromVTKMatrix) agree element by element with
    vtkMatrix4x4.SetElement / GetElement, for an oblique, anisotropic, transposed (non-contiguous) matrix too."""
    oblique = ijk_to_ras_matrix()
    for m in (oblique, np.ascontiguousarray(oblique.T).T, np.eye(4)):
        image = VolumeGeometry.from_matrix(m, (3, 4, 5)).image()
        vtk_m = vtkMatrix4x4()
        image.GetImageToWorldMatrix(vtk_m)
        assert [[vtk_m.GetElement(r, c) for c in range(4)] for r in range(4)] == m.tolist()
        oriented = slicer.vtkOrientedImageData()
        oriented.SetImageToWorldMatrix(vtk_matrix(m))
        assert image_to_world(oriented).tolist() == m.tolist() and image_to_world(oriented).dtype == np.float64
    ed = Editor(scene)
    assert VolumeGeometry.from_volume_node(ed.volume).ijk_to_world.tolist() == ijk_to_ras_matrix().tolist()


# --------------------------------------------------------------------------------------------------- preview


def test_preview_layer(scene):
    ed = Editor(scene)
    preview = PreviewLayer(scene, ed.geometry)
    assert preview.node.GetHideFromEditors() and not preview.node.GetSaveWithScene()
    events = []
    preview.node.GetSegmentation().AddObserver(slicer.vtkSegmentation.SourceRepresentationModified,
                                               lambda *a: events.append("segmentation"))
    preview.node.AddObserver(slicer.vtkSegmentation.SourceRepresentationModified, lambda *a: events.append("node"))
    a = slice_mask(ed.rng, (SIZE[1], SIZE[0]))
    b = slice_mask(ed.rng, (SIZE[2], SIZE[1]))
    preview.set_slice("K", 3, a)
    preview.set_slice("I", 4, b)
    assert "segmentation" in events and "node" in events, "display pipelines are not told about the change"
    assert [(x, i) for x, i, _ in preview.slices()] == [("K", 3), ("I", 4)]
    shown = read_segment(preview.node, PreviewLayer.SEGMENT_ID, ed.geometry)
    np.testing.assert_array_equal(shown[:, :, 4], b)
    np.testing.assert_array_equal(np.delete(shown[3], 4, axis=1), np.delete(a, 4, axis=1))
    preview.clear_slice("I", 4)
    shown = read_segment(preview.node, PreviewLayer.SEGMENT_ID, ed.geometry)
    np.testing.assert_array_equal(shown[3], a)
    assert shown.sum() == a.sum()

    # apply the preview: one write, one undo step
    write_slices(ed.editor, ed.geometry, preview.slices())
    np.testing.assert_array_equal(ed.read()[3], a)
    preview.clear()
    assert len(preview) == 0 and not read_segment(preview.node, PreviewLayer.SEGMENT_ID, ed.geometry).any()
    node = preview.node
    preview.remove()
    assert node.GetScene() is None
