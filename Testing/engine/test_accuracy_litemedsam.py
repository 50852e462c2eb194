"""Accuracy with the real LiteMedSAM weights on ../shared/data, through `samsegment segment`.

Box on every labelled slice (propagate none) must beat the trivial answer (the reference box filled) and reach the
issue's Dice floor; one box on the largest slice with propagation both ways must reach its own floor.
Dice values are printed (run pytest with -s to see the table).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from cases import CASES, box_filled_dice, box_per_slice_prompts, dice, one_box_prompts, write_json
from conftest import shared_case

from SAMSegmentLib.cli import main

BOX_PER_SLICE_FLOOR = {"lung2": 0.84, "t2": 0.885, "brain1": 0.85, "liver": 0.90}
# Measured on the default backend, OpenVINO on the CPU: bf16 where the CPU has native bf16 (this machine): lung2
# 0.903, t2 0.965, brain1 0.751, liver 0.945 (0.903, 0.966, 0.758, 0.945 before the box trials); fp32 elsewhere
# (torch fp32 gives the same masks): 0.902, 0.962, 0.751, 0.946. Floors about 0.02-0.04 below.
# brain1 was 0.618 before the chain's intensity fallback: the tumour fades to its bright right part on slice 14
# and the chain drifted onto the neighbouring tissue there (Dice 0.09 on that slice, then the chain ended).
ONE_BOX_FLOOR = {"lung2": 0.86, "t2": 0.94, "brain1": 0.73, "liver": 0.92}
BOX3D_FLOOR = {"brain1": 0.76}  # measured 0.784 on the default backend (OpenVINO bf16 here; fp32: 0.783)
# brain1's tumour has a second component (slices 11-12) that no chain from the largest slice reaches. A second box
# on slice 11 gave 0.715 while each prompt's chain stopped at the middle of the gap (the main component was lost on
# slices 12-13); crossing the gap, 0.803 (fp32: 0.805; benchmarks/bench_two_boxes.py).
TWO_BOX_BRAIN1_FLOOR = 0.78
# box3d-clicks-3 on brain1: the second click lands on slice 11, on the second component, where the chain had ended;
# its part also runs back toward the seed and is added on slice 12 (Dice there 0.667 -> 0.903). Measured final Dice
# 0.852 (fp32: 0.851); 0.825 without the back run (ChainParams.back_runs).
BRAIN1_CLICKS_3_FLOOR = 0.835


def _run(name: str, prompts, tmp_path) -> tuple[float, np.ndarray, np.ndarray]:
    folder, image, label, value, axis = CASES[name]
    image_path = shared_case(folder, image)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(shared_case(folder, label))))
    ref = np.rint(ref).astype(np.int32) == value
    prompts_path = write_json(tmp_path / "prompts.json", prompts(ref, axis))
    out = tmp_path / "pred.nii.gz"
    code = main(["segment", str(image_path), "--prompts", str(prompts_path), "-o", str(out), "--no-progress",
                 "--device", "cpu"])
    assert code == 0
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    return dice(pred, ref), ref, pred


def _slices_past_reference(ref: np.ndarray, pred: np.ndarray, axis: str) -> tuple[int, int]:
    """Predicted slices before the reference's first and after its last labelled slice (along ``axis``)."""
    other = tuple(a for a in (0, 1, 2) if a != {"K": 0, "J": 1, "I": 2}[axis])
    ref_idx = np.flatnonzero(ref.any(axis=other))
    pred_idx = np.flatnonzero(pred.any(axis=other))
    if pred_idx.size == 0:
        return 0, 0
    return int(max(0, ref_idx[0] - pred_idx[0])), int(max(0, pred_idx[-1] - ref_idx[-1]))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_box_per_slice_beats_filled_box(name, tmp_path):
    d, ref, _ = _run(name, box_per_slice_prompts, tmp_path)
    trivial = box_filled_dice(ref, CASES[name][4])
    print(f"\n{name}: box-per-slice Dice {d:.3f} (filled reference box {trivial:.3f})")
    assert d > trivial
    assert d >= BOX_PER_SLICE_FLOOR[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_one_box_propagation(name, tmp_path):
    d, ref, pred = _run(name, one_box_prompts, tmp_path)
    before, after = _slices_past_reference(ref, pred, CASES[name][4])
    print(f"\n{name}: one box + propagation Dice {d:.3f}; slices past the reference: {before} before, {after} after")
    assert d >= ONE_BOX_FLOOR[name]


@pytest.mark.slow
def test_box3d_clicks_never_lower_the_clicked_slice_and_raise_dice():
    """The CVPR 2025 protocol on the brain tumour (7 labelled slices): 3D box, then 3 simulated clicks."""
    from SAMSegmentLib.evaluation import parse_protocol, run_protocol
    from SAMSegmentLib.io import read_volume
    from SAMSegmentLib.models import load_model
    from SAMSegmentLib.session import SegmentationSession

    folder, image, label, value, axis = CASES["brain1"]
    volume = read_volume(shared_case(folder, image))
    ref = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(shared_case(folder, label))))).astype(np.int32) == value
    model = load_model("litemedsam", device="cpu")  # the default backend and precision, as the CLI runs
    run = run_protocol(SegmentationSession(model, volume), ref, axis, parse_protocol("box3d-clicks-3"))
    print(f"\nbrain1 box3d-clicks-3: Dice per click {[round(d, 3) for d in run.dice_per_click]}, "
          f"clicked slices {[(round(b, 3), round(a, 3)) for b, a in run.clicked_slice_dice]}")
    assert len(run.clicks) == 3
    assert all(after >= before - 1e-9 for before, after in run.clicked_slice_dice)
    assert run.dice_per_click[-1] > run.dice_per_click[0]
    assert run.dice_per_click[0] >= BOX3D_FLOOR["brain1"]
    assert run.dice_per_click[-1] >= BRAIN1_CLICKS_3_FLOOR


@pytest.mark.slow
def test_a_second_box_on_brain1s_second_component_adds_it_without_losing_the_first(tmp_path):
    from SAMSegmentLib.prompts import box_from_mask
    from SAMSegmentLib.slices import extract_slice

    def two_boxes(ref, axis):
        prompts = one_box_prompts(ref, axis)
        box = box_from_mask(extract_slice(ref, axis, 11))
        prompts["prompts"].append({"slice": 11, "box": [int(v) for v in box]})
        return prompts

    one, _, _ = _run("brain1", one_box_prompts, tmp_path)
    two, _, _ = _run("brain1", two_boxes, tmp_path)
    print(f"\nbrain1: one box {one:.3f}, with a second box on slice 11 {two:.3f}")
    assert two >= TWO_BOX_BRAIN1_FLOOR and two > one


@pytest.mark.slow
def test_a_box_drawn_half_a_voxel_inside_the_cord_still_gives_the_cord(tmp_path):
    """t2's cord is 7 voxels wide on slice 21 (4.3 model pixels per voxel). A random +-5 % box of the box-jitter
    benchmark had its right and bottom edges about half a voxel inside it, and the model segmented half the cord
    (Dice 0.55 on that slice). The box trials (predictor.BOX_TRIALS) keep the surest of the box grown by up to 6
    model pixels, cut to the drawn box: 0.92 (the tight box: 0.87 as drawn, 0.93 with the trials)."""
    from SAMSegmentLib.slices import extract_slice

    def inside_box(ref, axis):
        return {"axis": axis, "propagate": "none",
                "prompts": [{"slice": 21, "box": [27.1, 18.7, 33.6, 30.4]}]}

    _, ref, pred = _run("t2", inside_box, tmp_path)
    axis = CASES["t2"][4]
    d = dice(extract_slice(pred, axis, 21), extract_slice(ref, axis, 21))
    print(f"\nt2 slice 21, box half a voxel inside the cord: Dice {d:.3f}")
    assert d >= 0.85
