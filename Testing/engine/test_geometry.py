"""Geometry: prompts around a known object come back on exactly the right voxels, for every axis, with
non-identity direction cosines and anisotropic spacing. Uses BoxModel (a double that returns its box), so the
test checks slicing, square-pixel resampling and the way back, not a network."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from doubles import BoxModel

from SAMSegmentLib.io import read_volume, write_labelmap
from SAMSegmentLib.prompts import SlicePrompt, box_from_mask
from SAMSegmentLib.request import SegmentationRequest
from SAMSegmentLib.session import SegmentationSession
from SAMSegmentLib.slices import extract_slice, slice_geometry
from SAMSegmentLib.volume import Volume


def rotation(ax: float, ay: float) -> np.ndarray:
    ca, sa, cb, sb = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    return rx @ ry


def make_volume(spacing=(0.7, 1.1, 4.5), shape_kji=(14, 40, 52)) -> tuple[Volume, np.ndarray]:
    m = np.eye(4)
    m[:3, :3] = rotation(0.4, -0.7) @ np.diag(spacing)
    m[:3, 3] = (-12.0, 30.5, 7.0)
    rng = np.random.default_rng(0)
    array = rng.normal(0, 5, size=shape_kji).astype(np.int16)
    obj = np.zeros(shape_kji, dtype=bool)
    obj[4:10, 11:29, 17:41] = True  # a cuboid: every slice through it is a rectangle
    array[obj] += 300
    return Volume(array, m), obj


@pytest.mark.parametrize("axis", ["I", "J", "K"])
def test_box_prompt_returns_exact_voxels(axis):
    volume, obj = make_volume()
    session = SegmentationSession(BoxModel(), volume)
    geo = slice_geometry(volume, axis)
    assert geo.model_shape != geo.shape or axis == "K"  # thick slices make reformats non-square
    n = volume.axis_length(axis)
    checked = 0
    for index in range(n):
        ref = extract_slice(obj, axis, index)
        box = box_from_mask(ref)
        if box is None:
            continue
        result = session.preview(axis, index, SlicePrompt(box=box))
        assert result.mask.shape == ref.shape
        np.testing.assert_array_equal(result.mask, ref, err_msg=f"axis {axis} slice {index}")
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("axis", ["I", "J", "K"])
def test_point_prompt_lands_on_its_voxel(axis):
    volume, _ = make_volume()
    session = SegmentationSession(BoxModel(), volume)
    rows, cols = slice_geometry(volume, axis).shape
    x, y = cols // 3, rows // 2
    result = session.preview(axis, 5, SlicePrompt(points=[[x, y]], labels=[1]))
    assert result.mask[y, x]
    ys, xs = np.nonzero(result.mask)
    # the disc is centred on the clicked voxel (physically round, so centred in voxel units too)
    assert abs(xs.mean() - x) < 0.6 and abs(ys.mean() - y) < 0.6


def test_written_labelmap_keeps_physical_positions(tmp_path):
    volume, obj = make_volume()
    session = SegmentationSession(BoxModel(), volume)
    prompts = {k: SlicePrompt(box=box_from_mask(obj[k])) for k in range(4, 10)}
    mask = session.segment(SegmentationRequest("K", prompts, "none"))
    np.testing.assert_array_equal(mask, obj)
    image_path = tmp_path / "image.nii.gz"
    image = sitk.GetImageFromArray(volume.array)
    from SAMSegmentLib.io import apply_geometry_to_sitk

    apply_geometry_to_sitk(image, volume.ijk_to_ras)
    sitk.WriteImage(image, str(image_path))
    reread = read_volume(image_path)
    np.testing.assert_allclose(reread.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)
    for name in ("out.nii.gz", "out.nrrd", "out.seg.nrrd"):
        out = write_labelmap(mask, reread, tmp_path / name)
        back = sitk.ReadImage(str(out))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back) > 0, obj, err_msg=name)
        # the first object voxel sits at the same physical point (LPS) as in the image
        ijk = (17, 11, 4)
        np.testing.assert_allclose(back.TransformIndexToPhysicalPoint(ijk), image.TransformIndexToPhysicalPoint(ijk),
                                   atol=1e-4, err_msg=name)
    assert not list(tmp_path.glob(".*partial*")), "temporary files left behind"
