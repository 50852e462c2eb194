"""Defined behaviour for bad input: NaN / infinite voxels become the volume's minimum (one warning), a volume with
no finite voxel is refused, an inverted box is normalised (one warning), non-finite prompt coordinates are refused."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from SAMSegmentLib.cli import main
from SAMSegmentLib.io import read_volume
from SAMSegmentLib.prompts import PromptError, SlicePrompt
from SAMSegmentLib.request import request_from_dict
from SAMSegmentLib.volume import Volume, VolumeError


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_nan_and_infinite_voxels_become_the_minimum_with_one_warning(caplog):
    array = np.linspace(-50, 200, 2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    array[0, 0, 1] = np.nan
    array[1, 2, 3] = np.inf
    array[1, 0, 0] = -np.inf
    original = array.copy()
    with caplog.at_level(logging.WARNING):
        volume = Volume(array)
    assert np.isfinite(volume.array).all() and volume.array.dtype == np.float32
    bad = ~np.isfinite(original)
    low = original[~bad].min()
    assert (volume.array[bad] == low).all()
    np.testing.assert_array_equal(volume.array[~bad], original[~bad])
    np.testing.assert_array_equal(array, original, strict=True)  # the caller's array is not modified
    (message,) = warnings_of(caplog)
    assert message == f"3 voxel(s) are NaN or infinite; they are treated as the volume's minimum ({low:g})"


def test_clean_volumes_are_not_copied(caplog):
    for array in (np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.ones((2, 3, 4), np.float64) * 1e308):
        with caplog.at_level(logging.WARNING):
            assert Volume(array).array is array  # also when the float sum overflows
    assert warnings_of(caplog) == []


def test_a_volume_without_a_finite_voxel_is_refused(tmp_path):
    with pytest.raises(VolumeError, match="every voxel is NaN or infinite"):
        Volume(np.full((2, 2, 2), np.nan))
    path = tmp_path / "nan.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.full((3, 4, 5), np.nan, np.float32)), str(path))
    with pytest.raises(VolumeError, match="every voxel"):
        read_volume(path)


def test_inverted_box_is_normalised_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING):
        prompt = SlicePrompt(box=[17, 14, 6, 5])
    np.testing.assert_array_equal(prompt.box, [6, 5, 17, 14])
    assert warnings_of(caplog) == ["box (17, 14, 6, 5) has its corners the other way round; using (6, 5, 17, 14)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        SlicePrompt(box=[6, 5, 17, 14])
        SlicePrompt(box=[6, 5, 6, 5])  # a one-voxel box is not inverted
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("entry", [{"box": [1, float("nan"), 3, 4]}, {"box": [1, 2, float("inf"), 4]},
                                   {"points": [[float("nan"), 2, 1]]}])
def test_non_finite_prompt_coordinates_are_refused(entry):
    with pytest.raises(PromptError, match="NaN or infinity"):
        request_from_dict({"axis": "K", "prompts": [{"slice": 0, **entry}]})


def test_cli_segments_a_nan_volume_with_an_inverted_box_as_the_clean_one(tmp_path, caplog, capsys):
    """End to end (real LiteMedSAM): NaN voxels and an inverted box give the clean input's mask, with two warnings."""
    clean = np.zeros((4, 20, 24), dtype=np.float32)
    clean[1:3, 5:15, 6:18] = 500.0
    dirty = clean.copy()
    dirty[:, 0, :3] = np.nan  # background corner: the minimum (0) is what it becomes
    outputs = {}
    for name, array, box in (("clean", clean, [6, 5, 17, 14]), ("dirty", dirty, [17, 14, 6, 5])):
        image = tmp_path / f"{name}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(array), str(image))
        prompts = tmp_path / f"{name}.json"
        prompts.write_text(json.dumps({"axis": "K", "propagate": "none", "prompts": [{"slice": 1, "box": box}]}))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            code = main(["segment", str(image), "--prompts", str(prompts), "-o", str(tmp_path / f"{name}.nii.gz"),
                         "--no-progress", "--device", "cpu"])
        assert code == 0, capsys.readouterr().err
        outputs[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nii.gz")))
        messages = warnings_of(caplog)
        if name == "clean":
            assert messages == []
        else:
            assert len(messages) == 2, messages
            assert "12 voxel(s) are NaN or infinite" in messages[0] and "other way round" in messages[1]
    assert outputs["clean"].any()
    np.testing.assert_array_equal(outputs["dirty"], outputs["clean"])
