"""Metrics: the area-weighted conventions against reference implementations (DeepMind's surface-distance, MONAI),
the boundary-voxel extra against hand-computed cases, and the SimpleITK distance transform against brute force.

The shifted cube (boundary-voxel convention): a 10 x 10 x 10 cube A and the same cube moved one voxel along one
axis (B). Each has 10³ - 8³ = 488 boundary voxels; |A ∩ B| = 900, so Dice = 0.9. Sorted by distance to the other
surface (both directions are mirror images), A's boundary voxels are:

- the face left behind (100 voxels): one voxel step along the shift axis, ``s_shift``;
- the side walls (8 layers x 36 ring voxels) and the ring of the leading face (36): 0, they are B's surface too;
- the 64 inner voxels of the leading face: ``min(s_shift, depth x in-plane spacing)`` where depth is 1 for the
  28 voxels next to the ring and 2 or more for the other 36 (B's side walls are that far in-plane).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from SAMSegmentLib.metrics import (
    boundary_voxel_nsd,
    compare_masks,
    dice,
    distance_to,
    hd95,
    normalized_surface_dice,
    spacing_kji,
    squared_distance_to,
    surface,
    surface_distances,
)


def cube_pair(axis: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((14, 14, 14), dtype=bool)
    a[2:12, 2:12, 2:12] = True
    return a, np.roll(a, 1, axis=axis)


def blobby_pairs():
    """Irregular anisotropic 3D mask pairs (prediction, reference, spacing [k, j, i]) with 0-3 voxel disagreements;
    one touches the array border."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    out = []
    for n, spacing in enumerate([(5.0, 0.7, 0.9), (6.5, 0.78125, 0.78125), (2.5, 0.6, 1.3), (3.0, 3.0, 1.0)]):
        shape = (12, 30, 28)
        ref = ndimage.binary_closing(ndimage.binary_opening(rng.random(shape) < 0.5))
        ref[:, :2] = False
        ref[:, :, -2:] = False
        pred = np.roll(ref, int(rng.integers(1, 3)), axis=n % 3)
        if n % 2:
            pred = ndimage.binary_dilation(pred)
        if n == 3:
            ref[0] = True  # the reference touches the first slice of the array
        out.append((pred, ref, spacing))
    return out


# --- reference implementations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", range(4))
def test_nsd_and_hd95_match_deepmind_surface_distance_on_anisotropic_masks(case):
    sd = pytest.importorskip("surface_distance")
    pred, ref, spacing = blobby_pairs()[case]
    r = sd.compute_surface_distances(ref, pred, spacing)
    m = compare_masks(pred, ref, spacing)
    assert m.nsd_1mm == pytest.approx(sd.compute_surface_dice_at_tolerance(r, 1.0), abs=1e-6)
    assert m.nsd_2mm == pytest.approx(sd.compute_surface_dice_at_tolerance(r, 2.0), abs=1e-6)
    assert m.hd95_mm == pytest.approx(sd.compute_robust_hausdorff(r, 95), rel=1e-5)
    assert m.dice == pytest.approx(sd.compute_dice_coefficient(ref, pred))
    assert 0.0 < m.nsd_2mm < 1.0 or case == 2  # a real test: the masks disagree
    # the directed distances and areas themselves agree (as sorted multisets)
    ours = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(np.sort(ours.b_to_a), r["distances_gt_to_pred"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.sort(ours.areas_b), np.sort(r["surfel_areas_gt"]), rtol=1e-9)


def test_2d_contours_match_surface_distance():
    sd = pytest.importorskip("surface_distance")
    pred, ref, _ = blobby_pairs()[0]
    a, b = pred[5], ref[5]
    r = sd.compute_surface_distances(b, a, (0.7, 0.9))
    assert normalized_surface_dice(a, b, 1.0, (0.7, 0.9)) == pytest.approx(
        sd.compute_surface_dice_at_tolerance(r, 1.0), abs=1e-6)
    assert hd95(a, b, (0.7, 0.9)) == pytest.approx(sd.compute_robust_hausdorff(r, 95), rel=1e-5)


@pytest.mark.parametrize("case", range(4))
def test_nsd_matches_monai_subvoxel_surface_dice_and_voxel_nsd_matches_monai_default(case):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    pred, ref, spacing = blobby_pairs()[case]

    def t(x):
        return torch.as_tensor(x[None, None].astype(np.float32))

    for tol in (1.0, 2.0):
        sub = monai_metrics.compute_surface_dice(t(pred), t(ref), class_thresholds=[tol], include_background=True,
                                                 spacing=spacing, use_subvoxels=True)
        assert normalized_surface_dice(pred, ref, tol, spacing) == pytest.approx(float(sub), abs=1e-5)
    vox = monai_metrics.compute_surface_dice(t(pred), t(ref), class_thresholds=[2.0], include_background=True,
                                             spacing=spacing, use_subvoxels=False)
    assert compare_masks(pred, ref, spacing).nsd_2mm_voxels == pytest.approx(float(vox), abs=1e-5)


def test_area_weighting_differs_from_boundary_voxels_on_thick_slices():
    # one-voxel shift along a 5 mm axis: the left-behind face is 5 mm away (beyond 2 mm) in both conventions, but it
    # holds 100 of 488 boundary voxels and only 100 of 1000 mm² x ... of surfel area; the conventions must differ
    a, b = cube_pair(0)
    m = compare_masks(b, a, (5.0, 1.0, 1.0))
    assert abs(m.nsd_2mm - m.nsd_2mm_voxels) > 0.05


# --- hand-computed cases ----------------------------------------------------------------------------------------


def test_surface_of_a_cube_has_488_voxels():
    a, _ = cube_pair(0)
    assert surface(a).sum() == 10**3 - 8**3


def test_surface_counts_the_array_border_as_outside():
    full = np.ones((3, 4, 5), dtype=bool)
    s = surface(full)
    assert s.sum() == full.size - 1 * 2 * 3  # only the 1 x 2 x 3 core is interior


def test_empty_masks():
    e = np.zeros((5, 5, 5), dtype=bool)
    one = e.copy()
    one[2, 2, 2] = True
    m = compare_masks(e, e)
    assert (m.dice, m.nsd_1mm, m.nsd_2mm, m.hd95_mm, m.nsd_2mm_voxels) == (1.0, 1.0, 1.0, 0.0, 1.0)
    for pred, ref in ((e, one), (one, e)):
        m = compare_masks(pred, ref)
        assert (m.dice, m.nsd_1mm, m.nsd_2mm, m.nsd_2mm_voxels) == (0.0, 0.0, 0.0, 0.0)
        assert math.isinf(m.hd95_mm)
        assert math.isinf(hd95(pred, ref)) and normalized_surface_dice(pred, ref, 1.0) == 0.0


def test_disjoint_single_voxels():
    a = np.zeros((8, 3, 3), dtype=bool)
    b = a.copy()
    a[1, 1, 1] = True
    b[6, 1, 1] = True  # 5 voxels apart along axis 0, 2 mm each: the facing corners 8 mm apart, the far ones 10 mm
    m = compare_masks(a, b, (2.0, 1.0, 1.0))
    assert (m.dice, m.nsd_1mm, m.nsd_2mm) == (0.0, 0.0, 0.0)
    assert m.hd95_mm == pytest.approx(10.0)


def test_adjacent_disjoint_voxels_have_zero_dice_but_full_surface_dice():
    a = np.zeros((3, 3, 4), dtype=bool)
    b = a.copy()
    a[1, 1, 1] = True
    b[1, 1, 2] = True  # neighbours along i, 1 mm apart
    m = compare_masks(a, b)
    assert m.dice == 0.0
    assert (m.nsd_1mm, m.nsd_2mm, m.hd95_mm, m.nsd_2mm_voxels) == (1.0, 1.0, pytest.approx(1.0), 1.0)


def test_shifted_cube_isotropic():
    for axis in range(3):
        a, b = cube_pair(axis)
        m = compare_masks(b, a, (1.0, 1.0, 1.0))
        assert m.dice == pytest.approx(0.9)
        assert m.nsd_1mm == 1.0 and m.nsd_2mm == 1.0  # every distance is 0 or 1 mm
        assert m.hd95_mm == pytest.approx(1.0)  # the left-behind face (1/6 of the area) is 1 mm away


def test_boundary_voxel_nsd_of_a_cube_shifted_along_a_thick_axis():
    # spacing (k, j, i) = (2, 1, 1) mm, shift along k: boundary-voxel distances 0 (324), 1 mm (28), 2 mm (136)
    a, b = cube_pair(0)
    sp = (2.0, 1.0, 1.0)
    assert boundary_voxel_nsd(b, a, 1.0, sp) == pytest.approx(352 / 488)
    assert boundary_voxel_nsd(b, a, 2.0, sp) == pytest.approx(1.0)
    # area-weighted: every surfel of the corner grid is within 2 mm; the left-behind face (100 of 1000 mm²) at 2 mm
    m = compare_masks(b, a, sp)
    assert m.nsd_2mm == pytest.approx(1.0) and m.hd95_mm == pytest.approx(2.0)


def test_boundary_voxel_nsd_with_fine_in_plane_spacing():
    # spacing (1.5, 0.8, 0.8), shift along k: the 28 depth-1 voxels are 0.8 mm from B, the rest of the inner face
    # min(1.5, 1.6) = 1.5 mm; so 352 / 488 within 1 mm, all within 2 mm
    a, b = cube_pair(0)
    assert boundary_voxel_nsd(b, a, 1.0, (1.5, 0.8, 0.8)) == pytest.approx(352 / 488)
    assert boundary_voxel_nsd(b, a, 2.0, (1.5, 0.8, 0.8)) == 1.0


def test_dice_and_symmetry():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 7, 8)) < 0.3, rng.random((6, 7, 8)) < 0.3
    expected = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice(a, b) == pytest.approx(expected)
    sp = (2.5, 0.7, 0.9)
    ab, ba = compare_masks(a, b, sp), compare_masks(b, a, sp)
    for field in ("dice", "nsd_1mm", "nsd_2mm", "hd95_mm", "nsd_2mm_voxels"):
        assert getattr(ab, field) == pytest.approx(getattr(ba, field))
    assert normalized_surface_dice(a, b, 1.0, sp) == pytest.approx(ab.nsd_1mm)
    assert hd95(a, b, sp) == pytest.approx(ab.hd95_mm)


# --- distance transform -----------------------------------------------------------------------------------------


def test_distance_transform_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(6):
        shape = tuple(int(s) for s in rng.integers(2, 11, size=3))
        spacing = tuple(float(s) for s in rng.uniform(0.3, 4.0, size=3))
        features = rng.random(shape) < 0.07
        features.flat[int(rng.integers(features.size))] = True
        points = np.argwhere(features) * np.array(spacing)
        grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1) * np.array(spacing)
        brute = np.sqrt(((grid[..., None, :] - points) ** 2).sum(-1)).min(-1)
        np.testing.assert_allclose(distance_to(features, spacing), brute, rtol=1e-5, atol=1e-5)


def test_squared_distance_in_voxel_units_is_exact_and_2d_works():
    f = np.zeros((1, 5), dtype=bool)
    f[0, 0] = True
    np.testing.assert_allclose(distance_to(f, (1.0, 2.0))[0], [0, 2, 4, 6, 8])
    g = np.zeros((6, 7, 8), dtype=bool)
    g[1, 2, 3] = True
    d2 = squared_distance_to(g)
    k, j, i = np.mgrid[0:6, 0:7, 0:8]
    np.testing.assert_array_equal(d2, (k - 1) ** 2 + (j - 2) ** 2 + (i - 3) ** 2)
    assert np.isinf(distance_to(np.zeros((3, 4), dtype=bool))).all()


def test_spacing_order_and_bad_input():
    assert spacing_kji((0.7, 0.8, 5.0)) == (5.0, 0.8, 0.7)
    with pytest.raises(ValueError, match="shapes differ"):
        compare_masks(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        compare_masks(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1.0, 1.0))
