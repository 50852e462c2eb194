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
    CASE_KEYS,
    CLICK_KEYS,
    Case,
    Click,
    EvaluationError,
    ProtocolRun,
    add_click,
    box3d_prompt,
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
    assert parse_protocol("clicks-3").clicks == 3 and parse_protocol("clicks-3").kind == "one-box"
    p = parse_protocol("box3d-clicks-5")
    assert (p.kind, p.clicks, p.name) == ("box3d", 5, "box3d-clicks-5")
    assert parse_protocol("box3d").name == "box3d" and parse_protocol("clicks-3").name == "clicks-3"
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


def challenge_click(pred: np.ndarray, ref: np.ndarray):
    """The CVPR 2025 challenge's click, written the way CVPR25_iter_eval.py computes it (scipy, a padded crop)."""
    from scipy import ndimage

    error = pred != ref
    labels, _ = ndimage.label(error, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    component = labels == np.argmax(sizes)
    coords = np.argwhere(component)
    lo, hi = coords.min(axis=0), coords.max(axis=0) + 1
    pad = np.maximum(((hi - lo) * 0.25).astype(int), 1)
    crop = np.zeros(hi - lo + 2 * pad, dtype=np.uint8)
    crop[pad[0]:pad[0] + hi[0] - lo[0], pad[1]:pad[1] + hi[1] - lo[1], pad[2]:pad[2] + hi[2] - lo[2]] = \
        component[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    edt = ndimage.distance_transform_edt(crop)[pad[0]:pad[0] + hi[0] - lo[0], pad[1]:pad[1] + hi[1] - lo[1],
                                               pad[2]:pad[2] + hi[2] - lo[2]]
    full = np.zeros(error.shape)
    full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = edt
    np.random.seed(42)
    best = np.argwhere(full == full.max())
    voxel = tuple(int(v) for v in best[np.random.choice(len(best))])
    return voxel, int(ref[voxel])


def test_next_click_goes_to_the_centre_of_the_largest_error_component():
    ref = np.zeros((11, 40, 40), dtype=bool)
    ref[1:10, 5:25, 5:25] = True
    pred = ref.copy()
    pred[1:10, 10:19, 10:19] = False  # a 9 x 9 x 9 hole (729 voxels): false negative
    pred[2:9, 28:35, 28:35] = True  # a 7 x 7 x 7 cube (343 voxels) of false positive
    click = next_click(pred, ref, "K")
    assert (click.index, click.x, click.y, click.label, click.region_voxels) == (5, 14, 14, 1, 729)
    assert click.voxel_kji == (5, 14, 14) and click.depth == pytest.approx(5.0)  # voxel units, not mm
    # along J the same voxel is slice j = 14 with (x, y) = (i, k)
    c = next_click(pred, ref, "J")
    assert (c.index, c.x, c.y) == (14, 14, 5)
    pred[1:10, 10:19, 10:19] = True  # hole filled: the false positive is next, an exclude click at its centre
    click = next_click(pred, ref, "K")
    assert (click.index, click.x, click.y, click.label, click.region_voxels) == (5, 31, 31, 0, 343)
    assert next_click(ref, ref, "K") is None


def test_next_click_joins_false_negatives_and_positives_26_connected_and_the_border_is_outside():
    ref = np.zeros((6, 20, 20), dtype=bool)
    ref[:, 2:8, 2:8] = True  # touches the first and last slice: the volume border
    pred = np.zeros_like(ref)
    pred[:, 8:12, 8:12] = True  # diagonal neighbour of the false negative: one 26-connected error component
    click = next_click(pred, ref, "K")
    assert click.region_voxels == int((pred != ref).sum())
    assert click.label == 1 and 1 <= click.index <= 4  # not on a border slice: the border counts as outside


def test_next_click_matches_the_challenge_recipe_on_random_masks():
    from scipy import ndimage

    rng = np.random.default_rng(5)
    for _ in range(8):
        ref = ndimage.binary_closing(rng.random((7, 24, 26)) < 0.45)
        pred = ndimage.binary_opening(rng.random((7, 24, 26)) < 0.5) if rng.random() < 0.5 else np.roll(ref, 2, 2)
        voxel, label = challenge_click(pred, ref)
        click = next_click(pred, ref, "K")
        assert click.voxel_kji == voxel and click.label == label


def test_add_click_joins_prompts_with_the_prediction_as_context():
    pred = np.zeros((6, 20, 20), dtype=bool)
    pred[2:4, 5:10, 6:12] = True
    prompts = {2: SlicePrompt(box=[6, 5, 11, 9], extent=(1, 4))}
    on_seed = add_click(prompts, Click(2, 8, 7, 0, 10, 1.0), pred, "K")
    np.testing.assert_array_equal(on_seed[2].box, [6, 5, 11, 9])
    assert on_seed[2].labels.tolist() == [0] and on_seed[2].extent == (1, 4)
    np.testing.assert_array_equal(on_seed[2].mask, pred[2])  # the current prediction there is the context
    assert len(prompts[2].labels) == 0 and prompts[2].mask is None  # the input is not changed
    new = add_click(prompts, Click(3, 15, 7, 1, 10, 1.0), pred, "K")
    assert new[3].points_only and new[3].points.tolist() == [[15, 7]] and new[3].labels.tolist() == [1]
    again = add_click(new, Click(3, 9, 6, 0, 10, 1.0), pred, "K")
    assert again[3].points_only and again[3].labels.tolist() == [1, 0]


def test_auc_is_the_challenges_trapezoid_over_the_click_steps():
    from scipy import integrate

    dscs = [0.5, 0.6, 0.7, 0.72, 0.8, 0.81]
    run = ProtocolRun(np.zeros((1, 1, 1), bool), 0.0, {}, dice_per_click=dscs, nsd_per_click=dscs[::-1])
    assert run.dsc_auc == pytest.approx(integrate.cumulative_trapezoid(np.array(dscs[-5:]), np.arange(5))[-1])
    assert run.nsd_auc == pytest.approx(integrate.cumulative_trapezoid(np.array(dscs[::-1][-5:]), np.arange(5))[-1])


def test_box3d_prompt_is_the_middle_slice_box_with_the_object_extent():
    _, labels = phantom()
    ref = labels == 1
    (mid, prompt), = box3d_prompt(ref, "K").items()
    ks = np.sort(np.nonzero(ref)[0])
    assert mid == ks[ks.size // 2] and prompt.extent == (int(ks[0]), int(ks[-1]))
    js, is_ = np.nonzero(ref[mid])
    np.testing.assert_array_equal(prompt.box, [is_.min(), js.min(), is_.max(), js.max()])
    (mid_j, prompt_j), = box3d_prompt(ref, "J").items()
    jj = np.sort(np.nonzero(ref)[1])
    assert mid_j == jj[jj.size // 2] and prompt_j.extent == (int(jj[0]), int(jj[-1]))


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


def test_box3d_bounds_propagation_to_the_reference_slices(stub_session):
    session, labels = stub_session
    reference = labels > 0
    reference[1] = False  # the reference says the object starts on slice 2; the image goes on below
    run = run_protocol(session, reference, "K", parse_protocol("box3d"))
    (mid, prompt), = run.prompts.items()
    assert prompt.extent == (2, 7)
    assert not run.mask[:2].any() and not run.mask[8:].any() and run.mask[2:8].any(axis=(1, 2)).all()


def test_clicks_correct_what_the_box_includes_wrongly(stub_session):
    session, labels = stub_session
    reference = labels == 1  # the bright blob inside the box is not part of it: exclude clicks must remove it
    run = run_protocol(session, reference, "K", parse_protocol("box3d-clicks-3"))
    assert len(run.dice_per_click) == 4 and len(run.clicks) == 3 and len(run.nsd_per_click) == 4
    assert all(b >= a for a, b in zip(run.dice_per_click, run.dice_per_click[1:], strict=False))
    assert run.dice_per_click[-1] > run.dice_per_click[0]
    assert run.dice_per_click[-1] == pytest.approx(dice(run.mask, reference))
    assert run.clicks[0].label == 0 and run.clicks[0].index == 4  # the blob, at its centre: an exclude click
    assert run.dsc_auc == pytest.approx(sum((a + b) / 2 for a, b in zip(run.dice_per_click[1:],
                                                                       run.dice_per_click[2:], strict=False)))
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
        assert list(row) == [*CASE_KEYS, *CLICK_KEYS]
        assert len(row["dice_per_click"]) == 3 and row["dice"] == row["dice_per_click"][-1]
        assert row["nsd_2mm"] == pytest.approx(row["nsd_per_click"][-1], abs=1e-6)
    assert data["protocol"] == "clicks-2" and data["model"] == "threshold-double"
    assert "surface-distance" in data["metrics"]["nsd_2mm"] and "larger" in data["metrics"]["hd95_mm"]
    assert "DSC_AUC" in data["metrics"]["dsc_auc"]
    for case, row in zip(cases, data["cases"], strict=True):
        assert (out / case.name / "prediction.nii.gz").exists() and (out / case.name / "overlay.png").exists()
        expected = independent_dice(out / case.name / "prediction.nii.gz", case.label, case.label_values)
        assert row["dice"] == pytest.approx(expected, abs=1e-6)
    md = (out / "report.md").read_text()
    assert "| a |" in md and "**mean**" in md and "Dice per click" in md and "DSC_AUC" in md
    assert "area-weighted" in md and "larger of the two directed 95th percentiles" in md
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
    assert list(row) == [*CASE_KEYS, *CLICK_KEYS] and len(row["dice_per_click"]) == 2
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
