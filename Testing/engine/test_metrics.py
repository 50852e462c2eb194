"""Metrics against hand-computed cases and an independent distance transform (brute force and SimpleITK).

The shifted cube: a 10 x 10 x 10 cube A and the same cube moved one voxel along one axis (B). Each has
10³ - 8³ = 488 surface voxels; |A ∩ B| = 900, so Dice = 0.9. Sorted by distance to the other surface (both
directions are mirror images), A's surface voxels are:

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
    compare_masks,
    dice,
    distance_transform,
    hd95,
    normalized_surface_dice,
    spacing_kji,
    surface,
    surface_distances,
)


def cube_pair(axis: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((14, 14, 14), dtype=bool)
    a[2:12, 2:12, 2:12] = True
    return a, np.roll(a, 1, axis=axis)


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
    assert (m.dice, m.nsd_1mm, m.nsd_2mm, m.hd95_mm) == (1.0, 1.0, 1.0, 0.0)
    for pred, ref in ((e, one), (one, e)):
        m = compare_masks(pred, ref)
        assert (m.dice, m.nsd_1mm, m.nsd_2mm) == (0.0, 0.0, 0.0)
        assert math.isinf(m.hd95_mm)
        assert math.isinf(hd95(pred, ref)) and normalized_surface_dice(pred, ref, 1.0) == 0.0


def test_disjoint_single_voxels():
    a = np.zeros((8, 3, 3), dtype=bool)
    b = a.copy()
    a[1, 1, 1] = True
    b[6, 1, 1] = True  # 5 voxels apart along axis 0, 2 mm each -> 10 mm
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
    assert (m.nsd_1mm, m.nsd_2mm, m.hd95_mm) == (1.0, 1.0, 1.0)


def test_shifted_cube_isotropic():
    for axis in range(3):
        a, b = cube_pair(axis)
        m = compare_masks(b, a, (1.0, 1.0, 1.0))
        assert m.dice == pytest.approx(0.9)
        assert m.nsd_1mm == 1.0 and m.nsd_2mm == 1.0  # every distance is 0 or 1 mm
        assert m.hd95_mm == pytest.approx(1.0)  # 164 of 488 distances are 1 mm: the 95th percentile is 1


def test_shifted_cube_along_a_thick_axis():
    # spacing (k, j, i) = (2, 1, 1) mm, shift along k: distances 0 (324), 1 mm (28), 2 mm (136) per direction
    a, b = cube_pair(0)
    m = compare_masks(b, a, (2.0, 1.0, 1.0))
    assert m.dice == pytest.approx(0.9)
    assert m.nsd_1mm == pytest.approx(352 / 488)
    assert m.nsd_2mm == pytest.approx(1.0)
    assert m.hd95_mm == pytest.approx(2.0)
    dab, dba = surface_distances(b, a, (2.0, 1.0, 1.0))
    for d in (dab, dba):
        assert sorted(np.unique(np.round(d, 9)).tolist()) == [0.0, 1.0, 2.0]
        assert [(np.round(d, 9) == v).sum() for v in (0.0, 1.0, 2.0)] == [324, 28, 136]


def test_shifted_cube_along_a_fine_axis_of_an_anisotropic_grid():
    # spacing (3, 1, 1) mm, shift along i (1 mm): all distances 0 or 1 mm again
    a, b = cube_pair(2)
    m = compare_masks(b, a, (3.0, 1.0, 1.0))
    assert (m.dice, m.nsd_1mm, m.nsd_2mm) == (pytest.approx(0.9), 1.0, 1.0)
    assert m.hd95_mm == pytest.approx(1.0)


def test_shift_of_one_and_a_half_mm_with_fine_in_plane_spacing():
    # spacing (1.5, 0.8, 0.8), shift along k: the 28 depth-1 voxels are 0.8 mm from B, the rest of the inner face
    # min(1.5, 1.6) = 1.5 mm; so 352 / 488 within 1 mm, all within 2 mm, HD95 = 1.5 mm
    a, b = cube_pair(0)
    m = compare_masks(b, a, (1.5, 0.8, 0.8))
    assert m.nsd_1mm == pytest.approx(352 / 488)
    assert m.nsd_2mm == 1.0
    assert m.hd95_mm == pytest.approx(1.5)


def test_dice_and_symmetry():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 7, 8)) < 0.3, rng.random((6, 7, 8)) < 0.3
    expected = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice(a, b) == pytest.approx(expected)
    sp = (2.5, 0.7, 0.9)
    assert compare_masks(a, b, sp) == compare_masks(b, a, sp)
    assert normalized_surface_dice(a, b, 1.0, sp) == pytest.approx(compare_masks(a, b, sp).nsd_1mm)
    assert hd95(a, b, sp) == pytest.approx(compare_masks(a, b, sp).hd95_mm)


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
        np.testing.assert_allclose(distance_transform(features, spacing), brute, atol=1e-9)


def test_distance_transform_matches_simpleitk_maurer():
    sitk = pytest.importorskip("SimpleITK")
    features = np.zeros((12, 40, 50), dtype=bool)
    features[3:8, 10:30, 12:20] = True
    features[10, 35, 45] = True
    spacing_ijk = (0.7, 0.9, 3.0)
    image = sitk.GetImageFromArray(features.astype(np.uint8))
    image.SetSpacing(spacing_ijk)
    maurer = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    expected = np.maximum(sitk.GetArrayFromImage(maurer), 0.0)
    ours = distance_transform(features, spacing_kji(spacing_ijk))
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_distance_transform_without_features_is_infinite_and_2d_works():
    assert np.isinf(distance_transform(np.zeros((3, 4), dtype=bool))).all()
    f = np.zeros((1, 5), dtype=bool)
    f[0, 0] = True
    np.testing.assert_allclose(distance_transform(f, (1.0, 2.0))[0], [0, 2, 4, 6, 8])


def test_bad_input():
    with pytest.raises(ValueError, match="shapes differ"):
        compare_masks(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="spacing"):
        compare_masks(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), (1.0, 1.0))
