"""A drawn box is also tried grown by a few model pixels; the result the model is surest of is kept
(``predictor.BOX_TRIALS``). Propagation's own boxes are used as they are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from doubles import BoxModel
from test_chaining import blob_volume

from SAMSegmentLib.models.base import Decoded
from SAMSegmentLib.predictor import BOX_TRIALS, SlicePredictor, box_footprint, trial_boxes
from SAMSegmentLib.prompts import SlicePrompt, box_from_mask
from SAMSegmentLib.session import SegmentationSession
from SAMSegmentLib.slices import SliceGeometry
from SAMSegmentLib.volume import Volume
from SAMSegmentLib.windowing import Window


class WidthLovingModel(BoxModel):
    """Like the real models with a too tight box: a box narrower than ``best_width`` model pixels gets a mask
    shrunk by half the shortfall on every side, and a lower predicted IoU the further its width is from
    ``best_width``. Records every box it decodes."""

    def __init__(self, best_width: float) -> None:
        super().__init__()
        self.best_width = best_width
        self.boxes: list[np.ndarray] = []

    def decode(self, embedding, points=None, labels=None, box=None, mask_input=None, multimask=False) -> Decoded:
        if box is None:
            return super().decode(embedding, points, labels, box, mask_input, multimask)
        box = np.asarray(box, dtype=float).reshape(-1)
        self.boxes.append(box)
        width = box[2] - box[0] + 1
        shrink = max(0.0, self.best_width - width) / 2
        inner = box + np.array([shrink, shrink, -shrink, -shrink])
        out = super().decode(embedding, points, labels, inner, mask_input, multimask)
        score = 0.95 - 0.01 * abs(width - self.best_width)
        return Decoded(out.low_res_logits, torch.tensor([score]))


def test_trial_boxes_grow_by_model_pixels_along_each_axis_and_stay_on_the_slice():
    # rows of 2 mm, columns of 1 mm: the square-pixel grid has 100 x 100 pixels of 1 mm for 50 x 100 voxels
    geo = SliceGeometry(axis="K", shape=(50, 100), spacing=(2.0, 1.0), model_shape=(100, 100))
    unit = 100 / 256  # one pixel of the 256-pixel input, in model-grid pixels
    boxes = trial_boxes(np.array([10.0, 10.0, 40.0, 20.0]), geo, (0.0, 2.0, 4.0))
    assert np.array_equal(boxes[0], [10, 10, 40, 20])  # the box as drawn comes first
    np.testing.assert_allclose(boxes[1], [10 - 2 * unit, 10 - unit, 40 + 2 * unit, 20 + unit])  # rows are 2 pixels
    np.testing.assert_allclose(boxes[2], [10 - 4 * unit, 10 - 2 * unit, 40 + 4 * unit, 20 + 2 * unit])

    whole = trial_boxes(np.array([0.0, 0.0, 99.0, 49.0]), geo)
    assert len(whole) == 1 and np.array_equal(whole[0], [0, 0, 99, 49])  # clipped to the slice: one distinct box
    edge = trial_boxes(np.array([0.0, 5.0, 30.0, 49.0]), geo)
    assert all(b[0] == 0 and b[3] == 49 and b[2] <= 99 for b in edge) and len(edge) == len(BOX_TRIALS)


def test_a_drawn_box_keeps_the_trial_the_model_is_surest_of_inside_the_drawn_box():
    volume = Volume(np.zeros((3, 64, 64), dtype=np.int16))
    model = WidthLovingModel(best_width=24.0)  # identity geometry: model pixels are voxels, unit = 0.25 voxel
    predictor = SlicePredictor(model, volume, window=Window(0, 100))
    drawn = np.array([20.0, 20.0, 41.0, 41.0])  # 22 voxels wide: 4 pixels at 256 on each side make it 24
    result = predictor.predict("K", 1, SlicePrompt(box=drawn))
    assert len(model.boxes) == len(BOX_TRIALS)
    assert result.score == pytest.approx(0.95)  # the 24-wide trial, whose mask is not shrunk ...
    assert np.array_equal(result.mask, box_footprint(drawn, (64, 64)))  # ... cut to the drawn box
    assert not (result.logits[~result.mask] > 0).any()

    predictor.box_trials = (0.0,)  # trials off: the box as drawn, and the model shrinks its mask by a voxel
    as_drawn = predictor.predict("K", 1, SlicePrompt(box=drawn))
    assert as_drawn.mask.sum() == 20 * 20 and as_drawn.score == pytest.approx(0.93)
    model.boxes.clear()
    predictor.box_trials = BOX_TRIALS
    assert predictor.predict("K", 1, SlicePrompt(box=drawn), box_trials=False).mask.sum() == 20 * 20
    assert len(model.boxes) == 1


def test_the_box_footprint_holds_the_voxels_whose_centres_are_inside_the_box():
    inside = box_footprint(np.array([2.6, 1.0, 5.4, 3.5]), (6, 8))
    rows, cols = np.nonzero(inside)
    # columns: 2 lies left of 2.6 - 0.5, 6 right of 5.4 + 0.5; rows: 4 lies on the edge 3.5 + 0.5
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (3, 5, 1, 4)
    assert box_footprint(np.array([0.0, 0.0, 7.0, 5.0]), (6, 8)).all()


@pytest.mark.parametrize("prompt", [
    SlicePrompt(box=[20, 20, 41, 41], points=[[30, 30]], labels=[1]),
    SlicePrompt(box=[20, 20, 41, 41], mask=np.pad(np.ones((22, 22), bool), 21)[:64, :64]),
])
def test_a_box_with_points_or_a_contour_is_decoded_once(prompt):
    volume = Volume(np.zeros((3, 64, 64), dtype=np.int16))
    model = WidthLovingModel(best_width=40.0)
    SlicePredictor(model, volume, window=Window(0, 100)).predict("K", 1, prompt)
    assert len(model.boxes) == 1


def test_propagation_tries_the_drawn_box_only_on_its_own_slice():
    """With the drawn box the surest trial, propagation gives the same masks with trials on and off, and decodes
    exactly the extra trial boxes more: the chain's own boxes are never varied."""
    volume, obj = blob_volume()
    seed = 14
    drawn = box_from_mask(obj[seed])
    runs = []
    for trials in (BOX_TRIALS, (0.0,)):
        model = WidthLovingModel(best_width=drawn[2] - drawn[0] + 1)  # the box as drawn scores best
        session = SegmentationSession(model, volume, window=Window(0, 1000))
        session.predictor.box_trials = trials
        result = session.propagate("K", {seed: SlicePrompt(box=drawn)}, "both")
        runs.append((len(model.boxes), result.to_volume(obj.shape)))
    extra = len(trial_boxes(drawn, session.predictor.geometry("K"))) - 1
    assert extra == len(BOX_TRIALS) - 1
    assert runs[0][0] - runs[1][0] == extra
    assert np.array_equal(runs[0][1], runs[1][1]) and runs[0][1][seed].any() and runs[0][1][seed + 3].any()
