"""Evaluation: simulated prompts, corrective clicks, reports, and the command line end to end.

Most tests drive the real session and propagation with the ThresholdModel double (bright pixels inside the box and
the include discs, minus the exclude discs), so they run in milliseconds and their outcome is known. One test runs the real LiteMedSAM through ``samsegment evaluate`` on a three-slice crop of the lung tumour
case and checks report.json against prediction.nii.gz read back with SimpleITK.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_case
from doubles import ThresholdModel

from SAMSegmentLib.evaluation import (
    AVOID_RADIUS,
    CASE_KEYS,
    Case,
    Click,
    EvaluationError,
    add_click,
    box_per_slice_prompts,
    evaluate_cases,
    jitter_box,
    next_click,
    one_box_prompt,
    parse_label_values,
    parse_protocol,
    read_cases_csv,
    run_protocol,
)
from SAMSegmentLib.metrics import dice
from SAMSegmentLib.prompts import SlicePrompt
from SAMSegmentLib.session import SegmentationSession
from SAMSegmentLib.volume import Volume
from SAMSegmentLib.windowing import Window


def phantom(shape=(9, 40, 48)) -> tuple[np.ndarray, np.ndarray]:
    """uint8 image [k, j, i]: a bright ellipsoid (label 1) and, inside its box, a bright blob (label 2)."""
    k, j, i = np.mgrid[: shape[0], : shape[1], : shape[2]]
    ellipsoid = ((k - 4) / 3.6) ** 2 + ((j - 20) / 10.0) ** 2 + ((i - 22) / 12.0) ** 2 <= 1.0
    labels = ellipsoid.astype(np.uint8)
    labels[3:6, 11:16, 30:35] = 2  # bright too: the double segments it along with the ellipsoid
    image = np.where(labels > 0, 200, 30).astype(np.uint8)
    return image, labels


def write_case(folder: Path, name: str, image: np.ndarray, labels: np.ndarray, spacing=(0.8, 0.8, 2.5)) -> Case:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix, arr in (("image.nii.gz", image.astype(np.int16)), ("label.nii.gz", labels)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing(spacing)
        img.SetOrigin((10.0, -5.0, 3.0))
        path = folder / f"{name}_{suffix}"
        sitk.WriteImage(img, str(path))
        paths.append(path)
    return Case(name, paths[0], paths[1])


def independent_dice(prediction_path: Path, label_path: Path, values) -> float:
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_path))) > 0
    ref = np.isin(np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(label_path)))).astype(int), list(values))
    return 2.0 * np.logical_and(pred, ref).sum() / (pred.sum() + ref.sum())


# --- parsing ------------------------------------------------------------------------------------------------------


def test_parse_protocol_and_label_values():
    assert parse_protocol("one-box").name == "one-box"
    assert parse_protocol("Box-Per-Slice").kind == "box-per-slice"
    assert parse_protocol("clicks-3").clicks == 3
    with pytest.raises(EvaluationError, match="clicks-N"):
        parse_protocol("clicks")
    assert parse_label_values("1") == (1,)
    assert parse_label_values("2, 3") == (2, 3) and parse_label_values("2;3") == (2, 3)
    with pytest.raises(EvaluationError, match="background"):
        parse_label_values("0")


def test_cases_csv_relative_paths_and_defaults(tmp_path: Path):
    sub = tmp_path / "lists"
    sub.mkdir()
    (sub / "cases.csv").write_text("case,image,label,label_values,axis\n"
                                   "a,../img_a.nii.gz,../lab_a.nii.gz,,\n"
                                   'b,/abs/img.nrrd,lab_b.nrrd,"2,3",j\n')
    a, b = read_cases_csv(sub / "cases.csv", (5,), "K")
    assert a.image == sub / "../img_a.nii.gz" and a.label_values == (5,) and a.axis == "K"
    assert b.image == Path("/abs/img.nrrd") and b.label == sub / "lab_b.nrrd"
    assert b.label_values == (2, 3) and b.axis == "J"
    (sub / "bad.csv").write_text("name,image\nx,y\n")
    with pytest.raises(EvaluationError, match="missing case, label"):
        read_cases_csv(sub / "bad.csv")


# --- simulated prompts --------------------------------------------------------------------------------------------


def test_box_per_slice_and_one_box():
    _, labels = phantom()
    ref = labels == 1
    prompts = box_per_slice_prompts(ref, "K")
    assert sorted(prompts) == [k for k in range(ref.shape[0]) if ref[k].any()]
    for k, p in prompts.items():
        js, is_ = np.nonzero(ref[k])
        np.testing.assert_array_equal(p.box, [is_.min(), js.min(), is_.max(), js.max()])
    (seed, prompt), = one_box_prompt(ref, "K").items()
    assert seed == 4
    (seed_j, _), = one_box_prompt(ref, "J").items()
    assert seed_j == 20


def test_jitter_is_seeded_bounded_and_valid():
    box = np.array([10.0, 20.0, 29.0, 29.0])  # 20 x 10 voxels
    a = jitter_box(box, (40, 48), 0.1, np.random.default_rng(3))
    b = jitter_box(box, (40, 48), 0.1, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, box)
    assert np.all(np.abs(a - box) <= [2.0, 1.0, 2.0, 1.0])
    wild = jitter_box(np.array([0.0, 0.0, 3.0, 3.0]), (5, 5), 1.0, np.random.default_rng(0))
    assert wild[0] <= wild[2] and wild[1] <= wild[3] and wild.min() >= 0 and wild[2] <= 4 and wild[3] <= 4
    np.testing.assert_array_equal(jitter_box(box, (40, 48), 0.0, None), box)


def test_next_click_targets_the_middle_of_the_largest_error():
    ref = np.zeros((5, 40, 40), dtype=bool)
    ref[1:4, 5:25, 5:25] = True
    pred = ref.copy()
    pred[1:4, 10:19, 10:19] = False  # a 3 x 9 x 9 hole (243 voxels): false negative
    pred[2, 27:36, 27:36] = True  # 81 voxels of false positive
    click = next_click(pred, ref, "K", (1.0, 1.0, 1.0))
    assert (click.index, click.x, click.y, click.label, click.region_voxels) == (1, 14, 14, 1, 243)
    assert click.depth_mm == pytest.approx(5.0)  # the hole's 9 x 9 middle pixel is 5 pixels from outside it
    # with the hole filled, the false positive is next: an exclude click at its centre
    pred[1:4, 10:19, 10:19] = True
    click = next_click(pred, ref, "K", (1.0, 1.0, 1.0))
    assert (click.index, click.x, click.y, click.label, click.region_voxels) == (2, 31, 31, 0, 81)
    # no second click within AVOID_RADIUS voxels of an earlier one on that slice
    again = next_click(pred, ref, "K", (1.0, 1.0, 1.0), avoid={(2, 31, 31)})
    assert again.label == 0 and np.hypot(again.x - 31, again.y - 31) > AVOID_RADIUS
    assert next_click(ref, ref, "K", (1.0, 1.0, 1.0)) is None


def test_next_click_depth_uses_physical_spacing():
    ref = np.ones((1, 11, 30), dtype=bool)
    pred = ref.copy()
    pred[0, 2:9, 5:11] = False  # hole: rows (j) 2..8, cols (i) 5..10
    # in voxels the deepest pixels would be 3 voxels in (rows 4..6, cols 7..8); with 0.5 mm rows and 2 mm columns
    # the rows limit the depth: only the middle row is 4 x 0.5 = 2 mm from the hole's edge
    click = next_click(pred, ref, "K", (2.0, 0.5, 1.0))
    assert click.y == 5 and click.depth_mm == pytest.approx(2.0)
    assert next_click(pred, ref, "K", (1.0, 1.0, 1.0)).y == 4


def test_add_click_to_seed_slice_and_to_a_new_slice():
    pred = np.zeros((6, 20, 20), dtype=bool)
    pred[2:4, 5:10, 6:12] = True
    prompts = {2: SlicePrompt(box=[6, 5, 11, 9])}
    merged = add_click(prompts, Click(2, 8, 7, 0, 10, 1.0), pred, "K")
    np.testing.assert_array_equal(merged[2].box, [6, 5, 11, 9])
    assert merged[2].labels.tolist() == [0] and 2 in prompts and len(prompts[2].labels) == 0
    new = add_click(prompts, Click(3, 15, 7, 1, 10, 1.0), pred, "K")
    # the prediction's box on slice 3, [6, 5, 11, 9], grown by the 2-voxel margin and to the click
    np.testing.assert_array_equal(new[3].box, [4, 3, 15, 11])
    assert new[3].points.tolist() == [[15, 7]] and new[3].labels.tolist() == [1]
    far = add_click(prompts, Click(5, 7, 6, 1, 10, 1.0), pred, "K")  # nothing predicted on 5: nearest slice is 3
    np.testing.assert_array_equal(far[5].box, [4, 3, 13, 11])


# --- protocols with the stub model --------------------------------------------------------------------------------


@pytest.fixture
def stub_session() -> tuple[SegmentationSession, np.ndarray]:
    image, labels = phantom()
    m = np.diag([-0.8, -0.8, 2.5, 1.0])
    session = SegmentationSession(ThresholdModel(), Volume(image.astype(np.float32), m), window=Window(0, 255))
    return session, labels


def test_protocols_on_the_stub(stub_session):
    session, labels = stub_session
    bright = labels > 0
    run = run_protocol(session, bright, "K", parse_protocol("box-per-slice"))
    assert dice(run.mask, bright) == 1.0 and run.dice_per_click is None and run.seconds > 0
    run = run_protocol(session, bright, "K", parse_protocol("one-box"))
    assert dice(run.mask, bright) > 0.95 and list(run.prompts) == [4]


def test_clicks_correct_what_the_box_includes_wrongly(stub_session):
    session, labels = stub_session
    reference = labels == 1  # the bright blob inside the box is not part of it: exclude clicks must remove it
    run = run_protocol(session, reference, "K", parse_protocol("clicks-3"))
    assert len(run.dice_per_click) == 4 and len(run.clicks) == 3
    assert run.dice_per_click[-1] > run.dice_per_click[0]
    assert run.dice_per_click[-1] == pytest.approx(dice(run.mask, reference))
    assert all(c.label == 0 for c in run.clicks)  # every error is a false positive
    # nothing left to correct: the list still has N + 1 entries, repeating the last value
    run = run_protocol(session, labels > 0, "K", parse_protocol("clicks-2"))
    assert run.dice_per_click == [1.0, 1.0, 1.0] and run.clicks == []


def test_evaluate_cases_layout_reports_and_independent_dice(tmp_path: Path):
    image, labels = phantom()
    a = write_case(tmp_path / "data", "a", image, labels)
    b = write_case(tmp_path / "data", "b", image[:, ::-1].copy(), labels[:, ::-1].copy(), spacing=(1.0, 0.7, 3.0))
    cases = [a, Case("b", b.image, b.label, (1, 2), "K")]
    out = tmp_path / "out"
    report = evaluate_cases(ThresholdModel(), cases, parse_protocol("clicks-2"), out, window=Window(0, 255),
                            jitter=0.05, seed=7)
    data = json.loads((out / "report.json").read_text())
    assert list(data)[0] == "cases"
    for row in data["cases"]:
        assert list(row) == [*CASE_KEYS, "dice_per_click"]
        assert len(row["dice_per_click"]) == 3 and row["dice"] == row["dice_per_click"][-1]
    assert data["protocol"] == "clicks-2" and data["model"] == "threshold-double"
    for case, row in zip(cases, data["cases"], strict=True):
        assert (out / case.name / "prediction.nii.gz").exists() and (out / case.name / "overlay.png").exists()
        expected = independent_dice(out / case.name / "prediction.nii.gz", case.label, case.label_values)
        assert row["dice"] == pytest.approx(expected, abs=1e-6)
    md = (out / "report.md").read_text()
    assert "| a |" in md and "**mean**" in md and "Dice per click" in md
    assert report["cases"][0]["case"] == "a"
    # the jitter is reproducible per case
    again = evaluate_cases(ThresholdModel(), cases[:1], parse_protocol("one-box"), tmp_path / "o2",
                           window=Window(0, 255), jitter=0.05, seed=7)
    same = evaluate_cases(ThresholdModel(), cases[:1], parse_protocol("one-box"), tmp_path / "o3",
                          window=Window(0, 255), jitter=0.05, seed=7)
    assert again["cases"][0]["dice"] == same["cases"][0]["dice"]
    assert (tmp_path / "o2" / "prediction.nii.gz").exists()  # one case: files in the folder itself


def test_missing_label_value_is_a_clear_error(tmp_path: Path):
    image, labels = phantom()
    case = write_case(tmp_path, "c", image, labels)
    with pytest.raises(EvaluationError, match=r"no voxel has label value\(s\) 7 .*values present: \[1, 2\]"):
        evaluate_cases(ThresholdModel(), [Case("c", case.image, case.label, (7,))], parse_protocol("one-box"),
                       tmp_path / "o", window=Window(0, 255))


# --- the command line with the real model -------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_evaluate_litemedsam_report_matches_prediction(tmp_path: Path, capsys):
    """Real LiteMedSAM on three slices of the lung tumour (about 3 encoder runs), one-box and one click."""
    from SAMSegmentLib.cli import main

    image = sitk.ReadImage(str(shared_case("ct_lung_tumor_pyradiomics", "lung2_crop_ct.nrrd")))
    label = sitk.ReadImage(str(shared_case("ct_lung_tumor_pyradiomics", "lung2_crop_label.nrrd")))
    areas = (sitk.GetArrayFromImage(label) > 0).sum(axis=(1, 2))
    k = int(np.argmax(areas))
    crop = [sitk.RegionOfInterest(im, [im.GetSize()[0], im.GetSize()[1], 3], [0, 0, k - 1]) for im in (image, label)]
    sitk.WriteImage(crop[0], str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(sitk.Cast(crop[1], sitk.sitkUInt8), str(tmp_path / "label.nii.gz"))
    (tmp_path / "cases.csv").write_text("case,image,label\nlung2,ct.nrrd,label.nii.gz\n")
    out = tmp_path / "out"
    rc = main(["evaluate", str(tmp_path / "ct.nrrd"), str(tmp_path / "label.nii.gz"), "--protocol", "clicks-1",
               "--device", "cpu", "--no-progress", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    data = json.loads((out / "report.json").read_text())
    (row,) = data["cases"]
    assert list(row) == [*CASE_KEYS, "dice_per_click"] and len(row["dice_per_click"]) == 2
    expected = independent_dice(out / "prediction.nii.gz", tmp_path / "label.nii.gz", (1,))
    assert row["dice"] == pytest.approx(expected, abs=1e-6)
    assert row["dice"] > 0.6, row
    assert row["seconds"] > 0 and (out / "overlay.png").exists() and (out / "report.md").exists()
    assert "| ct |" in printed and "**mean**" in printed
    with open(tmp_path / "cases.csv", newline="") as f:
        assert next(csv.DictReader(f))["case"] == "lung2"


# --- the demo's data ----------------------------------------------------------------------------------------------


def test_demo_data_ships_with_slicerio_and_is_aligned():
    pytest.importorskip("slicerio")
    from SAMSegmentLib.demo import DemoDataError, load_demo_data

    data = load_demo_data("Right Lung")
    assert data.volume.size_ijk == (128, 128, 34)
    assert int(data.reference.sum()) == 34450
    assert float(np.median(data.volume.array[data.reference])) < -700  # lung voxels are air-like: grids agree
    assert {"ribs", "left lung", "tissue"} <= set(data.segment_names)
    with pytest.raises(DemoDataError, match="no segment named 'liver'.*'right lung'"):
        load_demo_data("liver")
