"""View -> voxel geometry and prompt editing (SAMSegment/SAMSegmentEffectLib/interaction.py).

Slice views are built the way Slicer builds them (SliceToRAS of the Axial / Sagittal / Coronal presets, patient right
on screen left, times the XY-to-slice scaling), for RAS, LPS and oblique volumes with anisotropic voxels; where
slicer-core is installed the same checks run against real vtkMRMLSliceNode / vtkMRMLSliceLogic geometry and Slicer's
own slice-index and XY-to-IJK functions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from SAMSegmentEffectLib.interaction import (
    Gesture,
    GestureTracker,
    ObliqueViewError,
    OutsideVolumeError,
    PromptStore,
    glyph_segments,
    ijk_to_slice_xy,
    resolve_slice_view,
    slice_xy_to_ijk,
)

from SAMSegmentLib.prompts import SlicePrompt

# SliceToRAS rotation columns (view x, view y, normal) of Slicer's presets with patient right on screen left
# (vtkMRMLSliceNode::AddDefaultSliceOrientationPresets); checked against slicer-core in test_matches_slicer_geometry.
PRESETS = {
    "Red": np.array([[-1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float).T,  # Axial
    "Yellow": np.array([[0, -1, 0], [0, 0, 1], [-1, 0, 0]], dtype=float).T,  # Sagittal
    "Green": np.array([[-1, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=float).T,  # Coronal
}
EXPECTED_AXIS = {"Red": "K", "Yellow": "I", "Green": "J"}
DIMS = (420, 300)  # view pixels
FOV_MM = (210.0, 150.0)


def xy_to_ras(rotation: np.ndarray, centre_ras, dims=DIMS, fov=FOV_MM, slice_spacing=1.0) -> np.ndarray:
    """XYToRAS as vtkMRMLSliceNode::UpdateMatrices composes it: SliceToRAS . XYToSlice, view centred on centre_ras."""
    slice_to_ras = np.eye(4)
    slice_to_ras[:3, :3] = rotation
    slice_to_ras[:3, 3] = centre_ras
    xy_to_slice = np.eye(4)
    xy_to_slice[0, 0], xy_to_slice[1, 1], xy_to_slice[2, 2] = fov[0] / dims[0], fov[1] / dims[1], slice_spacing
    xy_to_slice[0, 3], xy_to_slice[1, 3] = -fov[0] / 2.0, -fov[1] / 2.0
    return slice_to_ras @ xy_to_slice


def ijk_to_ras(directions: np.ndarray, spacing, origin) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(directions, dtype=float) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def rotation_about(axis: str, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = {"R": (1, 2), "A": (0, 2), "S": (0, 1)}[axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


SIZE = (48, 40, 24)  # voxels along I, J, K
SPACING = (0.8, 0.95, 3.0)  # anisotropic, thick slices
VOLUMES = {
    "RAS": ijk_to_ras(np.eye(3), SPACING, (-20.0, 12.0, 5.0)),
    "LPS": ijk_to_ras(np.diag([-1.0, -1.0, 1.0]), SPACING, (30.0, 25.0, -40.0)),
    "oblique": ijk_to_ras(rotation_about("S", 30.0) @ rotation_about("R", 10.0), SPACING, (3.0, -7.0, 11.0)),
}


def pixel_of(view_matrix: np.ndarray, ras) -> np.ndarray:
    """The view pixel (x, y) showing ``ras`` (which must lie on the view's plane)."""
    xyz = np.linalg.inv(view_matrix) @ np.append(ras, 1.0)
    assert abs(xyz[2]) < 1e-6, "point is not on the view plane"
    return xyz[:2]


@pytest.mark.parametrize("volume", ["RAS", "LPS"])
@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_standard_views_map_pixels_to_voxels(volume, view):
    m = VOLUMES[volume]
    voxel = np.array([17, 23, 9])
    centre = (m @ np.append(voxel, 1.0))[:3]
    view_matrix = xy_to_ras(PRESETS[view], centre)
    sv = resolve_slice_view(view_matrix, m, SIZE, view_name=f"The {view} view")

    axis = EXPECTED_AXIS[view]
    assert sv.axis == axis
    assert sv.index == voxel["IJK".index(axis)]
    assert sv.drift == pytest.approx(0.0, abs=1e-9)

    # the pixel showing the voxel centre maps back to the voxel, and to its in-plane slice coordinates
    xy = pixel_of(view_matrix, centre)
    np.testing.assert_allclose(sv.ijk(xy), voxel, atol=1e-9)
    np.testing.assert_allclose(sv.slice_xy(xy), ijk_to_slice_xy(voxel, axis), atol=1e-9)
    np.testing.assert_allclose(sv.view_xy(sv.slice_xy(xy)), xy, atol=1e-6)

    # a neighbouring in-plane voxel lands on its own pixel: one voxel step = spacing / pixel size pixels
    step = np.zeros(3)
    x_axis = {"K": 0, "J": 0, "I": 1}[axis]
    step[x_axis] = 1
    ras2 = (m @ np.append(voxel + step, 1.0))[:3]
    np.testing.assert_allclose(sv.ijk(pixel_of(view_matrix, ras2)), voxel + step, atol=1e-9)


@pytest.mark.parametrize("view", ["Red", "Yellow", "Green"])
def test_view_rotated_to_an_oblique_volume_is_accepted(view):
    """A view whose plane follows an oblique volume's voxel planes (what 'Rotate to volume plane' does)."""
    m = VOLUMES["oblique"]
    directions = m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)
    # in-plane axes of the view = the two volume axes other than the normal (any order, any sign)
    normal = {"Red": 2, "Yellow": 0, "Green": 1}[view]
    a, b = [c for c in range(3) if c != normal]
    rotation = np.stack([-directions[:, a], directions[:, b], np.cross(-directions[:, a], directions[:, b])], axis=1)
    voxel = np.array([30, 5, 20])
    centre = (m @ np.append(voxel, 1.0))[:3]
    view_matrix = xy_to_ras(rotation, centre)
    sv = resolve_slice_view(view_matrix, m, SIZE)
    assert sv.axis == "IJK"[normal]
    assert sv.index == voxel[normal]
    np.testing.assert_allclose(sv.ijk(pixel_of(view_matrix, centre)), voxel, atol=1e-9)


def test_in_plane_rotation_is_fine_for_aligned_normal():
    """Oblique volume rotated about S: the axial (Red) view still cuts voxel planes along K."""
    m = ijk_to_ras(rotation_about("S", 30.0), SPACING, (0.0, 0.0, 0.0))
    voxel = np.array([10, 11, 12])
    sv = resolve_slice_view(xy_to_ras(PRESETS["Red"], (m @ np.append(voxel, 1.0))[:3]), m, SIZE)
    assert (sv.axis, sv.index) == ("K", 12)


@pytest.mark.parametrize("view", ["Yellow", "Green", "Red"])
def test_oblique_views_are_refused_with_a_message(view):
    m = VOLUMES["oblique"]
    centre = (m @ np.array([20, 20, 12, 1.0]))[:3]
    with pytest.raises(ObliqueViewError) as err:
        resolve_slice_view(xy_to_ras(PRESETS[view], centre), m, SIZE, view_name=f"The {view} view")
    message = str(err.value)
    assert message.startswith(f"The {view} view is rotated")
    assert "Rotate to volume plane" in message


def test_drift_tolerance():
    """A rotation that moves the plane by less than half a voxel across the volume is accepted; more is refused."""
    m = VOLUMES["RAS"]
    centre = (m @ np.array([24, 20, 12, 1.0]))[:3]
    # tilt about the A axis: across the I extent (47 voxels * 0.8 mm) the plane rises by tan(t) * 37.6 mm
    small = math.degrees(math.atan(0.3 * 3.0 / 37.6))  # 0.3 voxel (of 3 mm) across the volume
    sv = resolve_slice_view(xy_to_ras(rotation_about("A", small) @ PRESETS["Red"], centre), m, SIZE)
    assert sv.axis == "K" and sv.index == 12 and sv.drift == pytest.approx(0.3, rel=1e-6)
    large = math.degrees(math.atan(2.0 * 3.0 / 37.6))
    with pytest.raises(ObliqueViewError, match="crosses 2.0 voxels"):
        resolve_slice_view(xy_to_ras(rotation_about("A", large) @ PRESETS["Red"], centre), m, SIZE)
    # a looser tolerance lets it through
    assert resolve_slice_view(xy_to_ras(rotation_about("A", large) @ PRESETS["Red"], centre), m, SIZE, max_drift=3).axis == "K"


def test_slice_outside_the_volume():
    m = VOLUMES["RAS"]
    centre = (m @ np.array([10, 10, 30, 1.0]))[:3]  # k = 30 > 23
    with pytest.raises(OutsideVolumeError, match="slice 30 along K, outside the volume"):
        resolve_slice_view(xy_to_ras(PRESETS["Red"], centre), m, SIZE)


def test_slice_index_rounds_half_up_between_voxels():
    m = VOLUMES["RAS"]
    for k, expected in [(11.4, 11), (11.6, 12)]:
        centre = (m @ np.array([10, 10, k, 1.0]))[:3]
        assert resolve_slice_view(xy_to_ras(PRESETS["Red"], centre), m, SIZE).index == expected


def test_slice_coordinate_conventions_match_the_engine():
    """ijk_to_slice_xy agrees with SAMSegmentLib.slices.extract_slice: slice[y, x] is the voxel at (i, j, k)."""
    slices = pytest.importorskip("SAMSegmentLib.slices")
    rng = np.random.default_rng(0)
    array = rng.integers(0, 1000, size=(SIZE[2], SIZE[1], SIZE[0]))  # [k, j, i]
    i, j, k = 7, 31, 19
    for axis, index in [("I", i), ("J", j), ("K", k)]:
        x, y = ijk_to_slice_xy([i, j, k], axis).astype(int)
        assert slices.extract_slice(array, axis, index)[y, x] == array[k, j, i]
        np.testing.assert_array_equal(slice_xy_to_ijk([x, y], axis, index), [i, j, k])


def test_contains_and_slice_shape():
    m = VOLUMES["RAS"]
    sv = resolve_slice_view(xy_to_ras(PRESETS["Yellow"], (m @ np.array([5, 5, 5, 1.0]))[:3]), m, SIZE)
    assert sv.axis == "I" and sv.slice_shape == (SIZE[2], SIZE[1])  # rows k, cols j
    assert sv.contains((0, 0)) and sv.contains((SIZE[1] - 0.5, SIZE[2] - 0.5))
    assert not sv.contains((-0.6, 3)) and not sv.contains((3, SIZE[2] - 0.4))


# --------------------------------------------------------------------------------------------------- slicer-core


@pytest.mark.parametrize("volume", ["RAS", "LPS", "oblique"])
def test_matches_slicer_geometry(slicer_app, scene, volume):
    """Real slice nodes and logic (slicer-core): our slice index is vtkMRMLSliceLogic's 1-based index minus one
    and our pixel -> voxel mapping agrees with vtkSlicerSegmentEditorLogic.XyToIjk."""
    import slicer
    import vtk

    m = VOLUMES[volume]
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    image = vtk.vtkImageData()
    image.SetDimensions(*SIZE)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    vol.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, m[r, c])
    vol.SetIJKToRASMatrix(matrix)
    oriented = slicer.vtkOrientedImageData()
    oriented.ShallowCopy(image)
    oriented.SetImageToWorldMatrix(matrix)

    for layout, orientation in [("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")]:
        logic = slicer.vtkMRMLSliceLogic()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(slicer_app.app_logic)
        node = logic.AddSliceNode(f"{layout}{volume}")
        node.SetOrientation(orientation)
        node.SetDimensions(*DIMS, 1)
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(vol.GetID())
        logic.FitSliceToAll()
        if volume == "oblique":
            logic.RotateSliceToLowestVolumeAxes()
            logic.FitSliceToAll()
        logic.SetSliceOffset(logic.GetSliceOffset() + 4.3)
        logic.SnapSliceOffsetToIJK()
        xy_to_ras_matrix = np.array([[node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])

        sv = resolve_slice_view(xy_to_ras_matrix, m, SIZE, view_name=layout)
        if volume != "oblique":
            assert sv.axis == EXPECTED_AXIS[layout]
        assert sv.index == logic.GetSliceIndexFromOffset(logic.GetSliceOffset(), vol) - 1
        rows, cols = sv.slice_shape
        for fx, fy in [(0.1, 0.2), (0.5, 0.5), (0.93, 0.71), (0.3, 0.98)]:
            xy = sv.view_xy((fx * (cols - 1) + 0.3, fy * (rows - 1) - 0.2))  # pixel showing that in-slice point
            ours = np.floor(sv.ijk(xy) + 0.5).astype(int)
            theirs = [0, 0, 0]
            slicer.vtkSlicerSegmentEditorLogic.XyToIjk([float(v) for v in xy], theirs, node, oriented)
            assert tuple(ours) == tuple(theirs), (layout, xy)
            assert ours["IJK".index(sv.axis)] == sv.index


# --------------------------------------------------------------------------------------------------- gestures


def test_gesture_click_drag_and_shift():
    g = GestureTracker(drag_threshold_px=5)
    assert g.press((100, 100)) is True  # owned: no window/level
    assert g.move((102, 103)) is None  # within threshold: not a drag yet
    assert g.release((102, 103)) == Gesture("click", (100.0, 100.0), (100.0, 100.0))
    assert not g.active

    g.press((10, 10))
    assert g.move((30, 40)) == ((10.0, 10.0), (30.0, 40.0))
    assert g.dragging
    assert g.release((31, 41)) == Gesture("drag", (10.0, 10.0), (31.0, 41.0))

    assert g.press((50, 50), shift=True) is False  # Shift+drag pans the view: let Slicer have it
    assert g.move((80, 80)) is None
    assert g.release((80, 80)) is None  # a pan, not a prompt
    g.press((50, 50), shift=True)
    assert g.release((51, 50)) == Gesture("click", (50.0, 50.0), (50.0, 50.0), shift=True)

    assert g.release((1, 1)) is None  # release without press
    g.press((0, 0))
    g.cancel()
    assert not g.active and g.release((100, 100)) is None


# --------------------------------------------------------------------------------------------------- prompts


def test_prompt_store_state_machine():
    store = PromptStore()
    store.add_point("K", 5, (10.2, 20.7))
    store.add_point("k", 5, (11, 21), include=False)
    store.set_box("K", 5, (30, 40), (10, 12))
    store.set_box("K", 5, (0, 0), (5, 6))
    store.add_point("I", 3, (1, 2))

    prompt = store.slice_prompt("K", 5)
    assert isinstance(prompt, SlicePrompt)
    np.testing.assert_allclose(prompt.points, [[10.2, 20.7], [11, 21]])
    np.testing.assert_array_equal(prompt.labels, [1, 0])
    np.testing.assert_allclose(prompt.box, [0, 0, 5, 6])  # the last box wins
    assert store.indices("K") == [5] and store.axes() == ["I", "K"]

    removed = store.remove_last("K", 5)
    assert removed.kind == "box"
    np.testing.assert_allclose(store.box("K", 5), [10, 12, 30, 40])  # the previous box is back
    store.remove_last("K", 5)
    assert store.box("K", 5) is None
    assert store.remove_last("K", 5).label == 0
    assert store.remove_last("K", 5).label == 1
    assert store.remove_last("K", 5) is None
    assert not store.has_prompts("K", 5) and store.indices("K") == []
    assert store.slice_prompt("K", 5) is None

    store.add_point("K", 1, (1, 1))
    assert store.clear_slice("K", 1) and not store.clear_slice("K", 1)
    store.add_point("K", 2, (1, 1))
    store.clear("K")
    assert store.axes() == ["I"]
    store.clear()
    assert store.axes() == []


def test_prompt_store_with_seed_masks_and_gestures():
    store = PromptStore()
    to_slice = lambda xy: np.asarray(xy, dtype=float) / 2  # noqa: E731 - view pixels -> slice coordinates
    store.apply_gesture("J", 4, Gesture("click", (10, 10), (10, 10)), to_slice)
    store.apply_gesture("J", 4, Gesture("click", (20, 10), (20, 10), shift=True), to_slice)
    store.apply_gesture("J", 4, Gesture("drag", (40, 30), (8, 2)), to_slice)
    np.testing.assert_allclose(store.box("J", 4), [4, 1, 20, 15])
    points, labels = store.points("J", 4)
    np.testing.assert_allclose(points, [[5, 5], [10, 5]])
    np.testing.assert_array_equal(labels, [1, 0])

    seed = np.zeros((6, 7), dtype=bool)
    seed[2:4, 3:5] = True
    prompts = store.slice_prompts("J", masks={9: seed})
    assert sorted(prompts) == [4, 9]
    assert prompts[9].mask is seed and len(prompts[9].points) == 0 and prompts[9].box is None
    assert prompts[4].mask is None


def test_glyph_segments():
    store = PromptStore()
    to_view = lambda xy: np.asarray(xy, dtype=float) * 10  # noqa: E731
    segments, colors = glyph_segments(store, "K", 1, to_view)
    assert segments.shape == (0, 2, 2) and colors.shape == (0, 3)
    store.add_point("K", 1, (2, 3))
    store.add_point("K", 1, (5, 5), include=False)
    store.set_box("K", 1, (1, 1), (4, 6))
    segments, colors = glyph_segments(store, "K", 1, to_view, size_px=6, rubber_band=((0, 0), (30, 40)))
    assert segments.shape[1:] == (2, 2) and len(colors) == len(segments)
    green = segments[(colors == (0.2, 1.0, 0.2)).all(axis=1)]
    red = segments[(colors == (1.0, 0.25, 0.25)).all(axis=1)]
    yellow = segments[(colors == (1.0, 0.85, 0.0)).all(axis=1)]
    assert len(green) == len(red) == 12 + 2 and len(yellow) == 8
    np.testing.assert_allclose(green.reshape(-1, 2).mean(axis=0), (20, 30), atol=1e-6)  # centred on the point
    assert np.abs(green.reshape(-1, 2) - (20, 30)).max() == pytest.approx(6)
    box = yellow[:4].reshape(-1, 2)  # the box's outer edge, half a voxel outside its corner voxels
    np.testing.assert_allclose([box[:, 0].min(), box[:, 0].max(), box[:, 1].min(), box[:, 1].max()], [5, 45, 5, 65])
    assert glyph_segments(store, "K", 2, to_view)[0].shape[0] == 0  # other slices show nothing


def test_a_box_on_an_orthogonal_view_gives_the_3d_extent():
    store = PromptStore()
    store.set_box("K", 12, (10, 20), (40, 50))  # axial: spans i and j
    assert store.box_extent("K") is None  # no box on another view yet
    store.set_box("J", 30, (12, 8.4), (38, 16.6))  # coronal: spans i and k -> slices 8..17 along K
    assert store.box_extent("K") == (8, 17)
    assert store.box_extent("I") == (12, 38)  # the coronal box also spans I
    store.set_box("I", 25, (22, 5), (48, 9))  # sagittal, drawn later: spans j and k -> K extent 5..9
    assert store.box_extent("K") == (5, 9)
    prompts = store.slice_prompts("K", extent=(5, 14))
    assert prompts[12].extent == (5, 14) and prompts[12].box is not None


def test_slice_prompts_give_the_extent_only_to_boxes_inside_it():
    store = PromptStore()
    store.set_box("K", 3, (1, 1), (5, 5))
    store.set_box("K", 9, (1, 1), (5, 5))
    store.add_point("K", 6, (3, 3), include=False)  # a correction: no box, no extent
    prompts = store.slice_prompts("K", extent=(2, 7))
    assert prompts[3].extent == (2, 7)
    assert prompts[9].extent is None
    assert prompts[6].extent is None and prompts[6].points_only
