"""Slicer markups (.mrk.json) -> prompts, on a volume with a rotated, anisotropic, offset grid, in LPS and RAS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from SAMSegmentLib.markups import is_exclude_text, read_markups_request
from SAMSegmentLib.prompts import PromptError
from SAMSegmentLib.volume import Volume

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"


@pytest.fixture
def volume() -> Volume:
    """40 x 30 x 12 voxels (i, j, k); I along anterior, J along patient left, K oblique in S/R; spacing 0.5, 0.8, 3."""
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    tilt = np.deg2rad(20)
    rot = np.array([[np.cos(tilt), 0.0, np.sin(tilt)], [0.0, 1.0, 0.0], [-np.sin(tilt), 0.0, np.cos(tilt)]])
    m = np.eye(4)
    m[:3, :3] = rot @ direction @ np.diag([0.5, 0.8, 3.0])
    m[:3, 3] = [12.0, -30.0, 55.0]
    return Volume(np.zeros((12, 30, 40), dtype=np.int16), m)


def ijk_to(volume: Volume, ijk, system: str) -> list[float]:
    ras = (volume.ijk_to_ras @ np.r_[np.asarray(ijk, dtype=float), 1.0])[:3]
    return (ras * [-1, -1, 1] if system == "LPS" else ras).tolist()


def direction_in(volume: Volume, column: int, system: str) -> np.ndarray:
    d = volume.ijk_to_ras[:3, column] / np.linalg.norm(volume.ijk_to_ras[:3, column])
    return d * [-1, -1, 1] if system == "LPS" else d


def write(tmp_path: Path, markups: list[dict], **extra) -> Path:
    path = tmp_path / "prompts.mrk.json"
    path.write_text(json.dumps({"@schema": SCHEMA, "markups": markups, **extra}))
    return path


def roi(volume: Volume, center_ijk, half_ijk, system: str) -> dict:
    """An ROI aligned with the volume's axes; ``half_ijk`` half sizes in voxels."""
    spacing = np.array(volume.spacing_ijk)
    axes = np.stack([direction_in(volume, c, system) for c in range(3)], axis=1)  # columns = ROI axes
    return {"type": "ROI", "name": "R", "coordinateSystem": system, "coordinateUnits": "mm", "roiType": "Box",
            "center": ijk_to(volume, center_ijk, system), "orientation": axes.reshape(-1).tolist(),
            "size": (2 * np.asarray(half_ijk) * spacing).tolist(), "controlPoints": []}


def fiducials(volume: Volume, points: list[tuple], system: str, name: str = "F") -> dict:
    return {"type": "Fiducial", "name": name, "coordinateSystem": system,
            "controlPoints": [{"id": str(n + 1), "label": label, "description": desc,
                               "position": ijk_to(volume, ijk, system), "positionStatus": "defined"}
                              for n, (ijk, label, desc) in enumerate(points)]}


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_roi_becomes_a_box_on_the_slice_of_its_centre(tmp_path: Path, volume: Volume, system: str):
    path = write(tmp_path, [roi(volume, (20.0, 15.0, 6.2), (5.5, 4.25, 1.0), system)])
    request = read_markups_request(path, volume, axis="K")
    assert request.axis == "K" and request.propagate == "both"
    assert list(request.prompts) == [6]
    # i from 14.5 to 25.5 -> centres 15..25; j from 10.75 to 19.25 -> 11..19
    np.testing.assert_allclose(request.prompts[6].box, [15, 11, 25, 19])


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_roi_on_other_axes(tmp_path: Path, volume: Volume, system: str):
    path = write(tmp_path, [roi(volume, (20.0, 15.0, 6.0), (5.0, 4.0, 2.0), system)])
    req_j = read_markups_request(path, volume, axis="J")
    np.testing.assert_allclose(req_j.prompts[15].box, [15, 4, 25, 8])  # x = i, y = k
    req_i = read_markups_request(path, volume, axis="I")
    np.testing.assert_allclose(req_i.prompts[20].box, [11, 4, 19, 8])  # x = j, y = k


def test_roi_orientation_in_lps_file_matches_ras_file(tmp_path: Path, volume: Volume):
    # a rotated ROI: the box is the in-plane extent of its corners, the same whichever system the file uses
    boxes = []
    for system in ("LPS", "RAS"):
        r = roi(volume, (20.0, 15.0, 6.0), (4.0, 4.0, 0.5), system)
        angle = np.deg2rad(30)
        k_axis = direction_in(volume, 2, system)
        # rotate the ROI axes about the slice normal by 30 degrees (Rodrigues)
        kx = np.array([[0, -k_axis[2], k_axis[1]], [k_axis[2], 0, -k_axis[0]], [-k_axis[1], k_axis[0], 0]])
        rot = np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx
        r["orientation"] = (rot @ np.array(r["orientation"]).reshape(3, 3)).reshape(-1).tolist()
        r["size"] = [4.0, 4.0, 3.0]  # mm
        boxes.append(read_markups_request(write(tmp_path, [r]), volume).prompts[6].box)
    np.testing.assert_allclose(boxes[0], boxes[1])
    # a 4 mm square turned by 30 degrees spans 4 (cos 30 + sin 30) = 5.46 mm: +-2.73 mm around the centre
    np.testing.assert_allclose(boxes[0], [20 - 5, 15 - 3, 20 + 5, 15 + 3])  # 0.5 mm and 0.8 mm voxels


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_points_include_and_exclude_on_their_own_slices(tmp_path: Path, volume: Volume, system: str):
    points = [((10.0, 12.0, 3.2), "F-1", ""), ((11.4, 13.0, 2.9), "-bg", ""), ((30.0, 5.0, 8.0), "F-3", ""),
              ((31.0, 6.0, 8.0), "P", "exclude: vessel")]
    path = write(tmp_path, [fiducials(volume, points, system)], propagate="forward")
    request = read_markups_request(path, volume, axis="K")
    assert request.propagate == "forward"
    assert sorted(request.prompts) == [3, 8]
    np.testing.assert_allclose(request.prompts[3].points, [[10, 12], [11.4, 13]], atol=1e-9)
    assert request.prompts[3].labels.tolist() == [1, 0]
    assert request.prompts[8].labels.tolist() == [1, 0]
    assert request.prompts[3].box is None


def test_markup_named_exclude_makes_all_its_points_exclude(tmp_path: Path, volume: Volume):
    markups = [roi(volume, (20.0, 15.0, 6.0), (5.0, 4.0, 1.0), "LPS"),
               fiducials(volume, [((21.0, 16.0, 6.0), "E-1", "")], "LPS", name="exclude")]
    request = read_markups_request(write(tmp_path, markups), volume)
    prompt = request.prompts[6]
    assert prompt.box is not None and prompt.labels.tolist() == [0]
    assert is_exclude_text("Exclude-2") and is_exclude_text(" -x") and not is_exclude_text("F-1")


def test_point_outside_the_image_is_a_clear_error(tmp_path: Path, volume: Volume):
    path = write(tmp_path, [fiducials(volume, [((45.0, 10.0, 3.0), "F-1", "")], "LPS")])
    with pytest.raises(PromptError, match=r"point F-1 .* outside the image .*i 45\.0"):
        read_markups_request(path, volume)
    path = write(tmp_path, [roi(volume, (20.0, 15.0, 14.0), (2.0, 2.0, 1.0), "RAS")])
    with pytest.raises(PromptError, match="ROI R: its centre is outside the image"):
        read_markups_request(path, volume)


def test_only_exclude_points_or_nothing_usable_is_an_error(tmp_path: Path, volume: Volume):
    with pytest.raises(PromptError, match="only exclude points"):
        read_markups_request(write(tmp_path, [fiducials(volume, [((5.0, 5.0, 5.0), "-a", "")], "RAS")]), volume)
    with pytest.raises(PromptError, match="no ROI and no control points"):
        read_markups_request(write(tmp_path, [{"type": "Line", "controlPoints": []}]), volume)
    bad = tmp_path / "bad.mrk.json"
    bad.write_text("{not json")
    with pytest.raises(PromptError, match="not valid JSON"):
        read_markups_request(bad, volume)
