"""Chaining propagation: plan, stop rule, ordered streaming, corrections (what is recomputed), cancel."""

from __future__ import annotations

import numpy as np
import pytest
from doubles import ThresholdModel

from SAMSegmentLib.prompts import SlicePrompt, box_from_mask
from SAMSegmentLib.propagation import PropagationCancelled, plan_chains
from SAMSegmentLib.session import SegmentationSession
from SAMSegmentLib.volume import Volume


def blob_volume(n: int = 30, first: int = 8, last: int = 20) -> tuple[Volume, np.ndarray]:
    """A bright ellipsoid-ish object on slices first..last (axis K), radius changing slowly."""
    array = np.zeros((n, 64, 64), dtype=np.int16)
    obj = np.zeros_like(array, dtype=bool)
    yy, xx = np.mgrid[0:64, 0:64]
    mid = (first + last) / 2
    for k in range(first, last + 1):
        r = 14 - 6 * abs(k - mid) / (last - first)
        obj[k] = (xx - 30 - 0.3 * k) ** 2 + (yy - 32) ** 2 <= r * r
    array[obj] = 1000
    return Volume(array, np.diag([1.0, 1.0, 3.0, 1.0])), obj


def test_plan_chains_both_splits_gaps_between_seeds():
    assert plan_chains([10], "both", 0, 20) == [(10, 1, 20), (10, -1, 0)]
    chains = plan_chains([4, 10], "both", 0, 15)
    assert (4, 1, 7) in chains and (10, -1, 8) in chains and (4, -1, 0) in chains and (10, 1, 15) in chains
    assert plan_chains([4, 10], "forward", 0, 15) == [(4, 1, 9), (10, 1, 15)]
    assert plan_chains([4, 10], "backward", 0, 15) == [(4, -1, 0), (10, -1, 5)]
    assert plan_chains([4, 5], "both", 0, 9) == [(4, -1, 0), (5, 1, 9)]
    assert plan_chains([3], "none", 0, 9) == []


def test_propagation_covers_object_and_stops_at_its_end():
    volume, obj = blob_volume()
    model = ThresholdModel()
    session = SegmentationSession(model, volume, window=None)
    seed = 14
    streamed = []
    result = session.propagate("K", {seed: SlicePrompt(box=box_from_mask(obj[seed]))}, "both",
                               on_slice=lambda o: streamed.append(o.index))
    mask = result.to_volume(volume.array.shape)
    np.testing.assert_array_equal(mask, obj)
    # stop rule: each chain computes exactly one slice past the object (where it finds nothing), then stops
    assert model.encode_calls == (20 - 8 + 1) + 2
    stopped = {o.index: o.stopped for o in result.outcomes.values() if o.stopped}
    assert set(stopped) == {7, 21}
    # streamed outward from the seed: distance never decreases
    distances = [abs(i - seed) for i in streamed]
    assert distances == sorted(distances) and streamed[0] == seed
    assert len(streamed) == volume.axis_length("K")


def test_range_and_direction_bound_propagation():
    volume, obj = blob_volume()
    session = SegmentationSession(ThresholdModel(), volume)
    result = session.propagate("K", {14: SlicePrompt(box=box_from_mask(obj[14]))}, "forward", frange=(10, 17))
    assert sorted(result.outcomes) == list(range(14, 18))
    mask = result.to_volume(volume.array.shape)
    assert mask[14:18].any(axis=(1, 2)).all() and not mask[:14].any() and not mask[18:].any()


def test_correction_recomputes_only_what_can_change_and_keeps_prompted_slices():
    volume, obj = blob_volume()
    model = ThresholdModel()
    session = SegmentationSession(model, volume)
    first = {14: SlicePrompt(box=box_from_mask(obj[14]))}
    r1 = session.propagate("K", first, "both")
    assert sorted(r1.recomputed) == list(range(7, 22))  # the model ran on the object and one slice past each end
    # the user adds a prompt on slice 18 that deliberately segments only part of the object there
    partial = obj[18].copy()
    partial[:, :30] = False
    second = dict(first)
    second[18] = SlicePrompt(box=box_from_mask(partial))
    r2 = session.propagate("K", second, "both")
    # slices nearer to 14 than to 18 (and everything below 14) keep the unchanged chains' results
    for k in range(0, 17):
        np.testing.assert_array_equal(r2.outcomes[k].mask, r1.outcomes[k].mask)
        assert r2.outcomes[k].seed == 14
    # recomputed: the new seed, the slices it now owns (17, and 19 upwards until the object ends), and 15-16,
    # where its chain runs on through 14's half of the gap (the same object there: nothing is added)
    assert set(r2.recomputed) == {15, 16, 17, 18, 19, 20, 21}
    # the prompted slice keeps its prompted result, not what propagation from 14 would have given
    np.testing.assert_array_equal(r2.outcomes[18].mask, obj[18] & (np.arange(64)[None, :] >= 30))
    assert r2.outcomes[18].source == "prompt"
    # removing the correction gives back the first result without recomputing anything
    r3 = session.propagate("K", first, "both")
    assert r3.recomputed == []
    np.testing.assert_array_equal(r3.to_volume(obj.shape), r1.to_volume(obj.shape))


def test_cancel_stops_before_next_slice():
    volume, obj = blob_volume()
    session = SegmentationSession(ThresholdModel(), volume)
    seen = []

    def stop() -> bool:
        return len(seen) >= 3

    with pytest.raises(PropagationCancelled):
        session.propagate("K", {14: SlicePrompt(box=box_from_mask(obj[14]))}, "both",
                          on_slice=lambda o: seen.append(o.index), should_stop=stop)
    assert len(seen) == 3


def test_chain_stops_where_the_box_slides_onto_another_tissue():
    from SAMSegmentLib.windowing import Window

    volume, obj = blob_volume()
    # beyond the object's last slice, a neighbouring structure of another intensity sits in the same place
    other = np.zeros_like(obj)
    other[21:26] = obj[20]
    volume.array[other] = 600
    model = ThresholdModel()  # segments anything brighter than mid-grey: it would follow the other structure
    session = SegmentationSession(model, volume, window=Window(0, 1000))
    result = session.propagate("K", {14: SlicePrompt(box=box_from_mask(obj[14]))}, "both")
    np.testing.assert_array_equal(result.to_volume(obj.shape), obj)
    assert "intensities" in (result.outcomes[21].stopped or "")


def test_parts_get_their_own_boxes_when_one_box_would_take_in_another_tissue():
    import dataclasses

    from SAMSegmentLib.propagation.chaining import ChainParams
    from SAMSegmentLib.windowing import Window

    n = 24
    array = np.zeros((n, 64, 64), dtype=np.int16)
    obj = np.zeros_like(array, dtype=bool)
    yy, xx = np.mgrid[0:64, 0:64]
    for k in range(6, 19):
        obj[k] = ((xx - 14) ** 2 + (yy - 32) ** 2 <= 36) | ((xx - 48) ** 2 + (yy - 32) ** 2 <= 36)
    array[obj] = 1000
    other = np.zeros_like(obj)
    other[12:19, 28:36, 24:40] = True  # between the two parts, dimmer: bright for the model, not the seed's tissue
    array[other] = 600
    volume = Volume(array, np.diag([1.0, 1.0, 3.0, 1.0]))
    seed = {8: SlicePrompt(box=box_from_mask(obj[8]))}
    window = Window(0, 1000)
    with_parts = SegmentationSession(ThresholdModel(), volume, window=window).propagate("K", seed, "both")
    np.testing.assert_array_equal(with_parts.to_volume(obj.shape), obj)
    one_box = SegmentationSession(ThresholdModel(), volume, window=window,
                                  chain_params=dataclasses.replace(ChainParams(), per_part_boxes=False))
    mask = one_box.propagate("K", seed, "both").to_volume(obj.shape)
    assert (mask & other).any()  # one box over both parts takes in what lies between them


def test_inside_a_3d_box_a_collapse_does_not_end_the_chain():
    volume, obj = blob_volume()
    small = np.zeros_like(obj)
    small[18:21, 30:34, 34:38] = True  # the object narrows to a small part on its last slices
    obj[18:21] = small[18:21]
    volume.array[:] = 0
    volume.array[obj] = 1000
    box = box_from_mask(obj[14])
    session = SegmentationSession(ThresholdModel(), volume)
    free = session.propagate("K", {14: SlicePrompt(box=box)}, "both").to_volume(obj.shape)
    assert not free[18:].any()  # the area collapse stops an unbounded chain
    bounded = session.propagate("K", {14: SlicePrompt(box=box, extent=(8, 20))}, "both").to_volume(obj.shape)
    np.testing.assert_array_equal(bounded, obj)


class _SureOfTightBoxes(ThresholdModel):
    """ThresholdModel whose predicted IoU grows with the share of bright pixels in the prompt box (0.5 .. 1.0):
    a box hugging the object scores higher than one that also holds background."""

    def decode(self, embedding, points=None, labels=None, box=None, mask_input=None, multimask=False):
        import torch

        out = super().decode(embedding, points, labels, box, mask_input, multimask)
        bright = embedding.tensors["image"][0] > 127
        x0, y0, x1, y1 = (int(round(v)) for v in np.asarray(box, dtype=float))
        share = float(bright[y0:y1 + 1, x0:x1 + 1].float().mean())
        return type(out)(out.low_res_logits, torch.tensor([0.5 + 0.5 * share]))


def _shrinking_object_beside_other_tissue() -> tuple[Volume, np.ndarray, np.ndarray]:
    """A disc (radius 10, grey 1000) on slices 6-14 that shrinks to a small disc on its right edge on slices
    15-18 (a quarter of its area), where a dimmer tissue (600: bright for the model, not the seed's grey level)
    takes its left part."""
    array = np.zeros((24, 64, 64), dtype=np.int16)
    yy, xx = np.mgrid[0:64, 0:64]
    obj = np.zeros(array.shape, dtype=bool)
    other = np.zeros(array.shape, dtype=bool)
    obj[6:15] = (xx - 32) ** 2 + (yy - 32) ** 2 <= 100
    obj[15:19] = (xx - 40) ** 2 + (yy - 32) ** 2 <= 25
    other[15:19] = (xx - 23) ** 2 + (yy - 32) ** 2 <= 36
    array[obj] = 1000
    array[other] = 600
    return Volume(array, np.diag([1.0, 1.0, 3.0, 1.0])), obj, other


def test_a_shrinking_object_is_followed_by_its_intensity_box_not_the_tissue_beside_it():
    import dataclasses

    from SAMSegmentLib.propagation.chaining import ChainParams
    from SAMSegmentLib.windowing import Window

    volume, obj, other = _shrinking_object_beside_other_tissue()
    seed = {10: SlicePrompt(box=box_from_mask(obj[10]))}
    window = Window(0, 1000)

    def propagate(**params):
        session = SegmentationSession(_SureOfTightBoxes(), volume, window=window,
                                      chain_params=dataclasses.replace(ChainParams(), **params))
        return session.propagate("K", seed, "both")

    result = propagate()
    np.testing.assert_array_equal(result.to_volume(obj.shape), obj)
    # without the fallback the previous slice's box takes in the other tissue ...
    without = propagate(intensity_fallback=0.0).to_volume(obj.shape)
    assert (without & other).any()
    # ... and without the near-overlap rule the small part ends the chain (Dice 0.28 with the slice before)
    strict = propagate(min_near_share=1.01)
    assert not strict.to_volume(obj.shape)[15:].any()
    assert "overlap" in (strict.outcomes[15].stopped or "")


class _ScriptedPredictor:
    """Stands in for SlicePredictor in ``ChainPropagator._candidates``: a box smaller than 100 voxels (the
    intensity box) gives ``found`` with predicted IoU 0.9, any other box ``tissue`` with 0.6."""

    def __init__(self, found: np.ndarray, tissue: np.ndarray) -> None:
        self.found, self.tissue = found, tissue

    def predict(self, axis, index, prompt, mask_logits=None, multimask=None, box_trials=True):
        import torch

        from SAMSegmentLib.predictor import SliceResult

        x0, y0, x1, y1 = prompt.box
        small = (x1 - x0 + 1) * (y1 - y0 + 1) < 100
        mask, score = (self.found, 0.9) if small else (self.tissue, 0.6)
        return SliceResult(axis, index, mask, np.where(mask, 1.0, -1.0), score, torch.zeros(1, 256, 256))


def test_the_intensity_fallback_is_kept_only_when_it_looks_like_the_object():
    """The fallback's result must itself reach the quality that triggered it (predicted IoU x share of voxels in
    the seed's grey-level range >= ``intensity_fallback``), not merely beat the other candidates' predicted IoU:
    on lung2 a model surer of a part of the tumour (0.797 vs 0.778) that held 37 % of seed grey levels had
    replaced a slice of Dice 0.83 by one of 0.58."""
    from SAMSegmentLib.propagation.chaining import ChainPropagator

    grey = np.full((32, 32), 100.0)
    prev = np.zeros((32, 32), dtype=bool)
    prev[10:20, 10:20] = True
    seed_grey = np.zeros_like(prev)
    seed_grey[18:22, 12:16] = True  # 16 voxels of the seed's grey levels, touching the previous mask
    grey[seed_grey] = 200.0
    tissue = np.roll(prev, 3, axis=1)  # the previous box's result: none of the seed's grey levels
    around = np.zeros_like(prev)
    around[17:23, 11:17] = True  # the seed-grey voxels and a rim of other tissue: 16 of 36 in range
    seed_range = (180.0, 220.0)

    def names(found):
        chain = ChainPropagator(_ScriptedPredictor(found, tissue))
        return [c[0] for c in chain._candidates("K", 5, prev, None, grey, seed_range)]

    assert names(seed_grey) == ["box", "intensity-box"]  # quality 0.9: kept
    assert names(around) == ["box"]  # quality 0.9 x 16 / 36 = 0.40 < 0.45: not kept, though the model is surer


def _two_lesions(drift: bool = False) -> tuple[Volume, np.ndarray]:
    """Two separate bright discs (grey 1000): A on slices 10-20 around (x, y) = (20, 20), B on slices 4-12
    around (44, 44). With ``drift``, B has a dimmer rim (700) and a 700 disc continues it on slices 13-16: a
    chain from B follows it (B's grey-level range holds 700), A's range does not."""
    array = np.zeros((24, 64, 64), dtype=np.int16)
    yy, xx = np.mgrid[0:64, 0:64]
    obj = np.zeros(array.shape, dtype=bool)
    obj[10:21] = (xx - 20) ** 2 + (yy - 20) ** 2 <= 36
    obj[4:13] |= (xx - 44) ** 2 + (yy - 44) ** 2 <= 36
    array[obj] = 1000
    if drift:
        rim = ((xx - 44) ** 2 + (yy - 44) ** 2 <= 36) & ((xx - 44) ** 2 + (yy - 44) ** 2 > 9)
        array[4:13][:, rim] = 700
        array[13:17][:, (xx - 44) ** 2 + (yy - 44) ** 2 <= 36] = 700
    return Volume(array, np.diag([1.0, 1.0, 3.0, 1.0])), obj


def test_two_prompts_on_two_parts_both_reach_the_slices_between_them():
    """A box on each lesion: between the two prompted slices each chain runs on through the other's half, so
    both lesions appear on every slice they occupy (each chain alone would have owned half of the gap)."""
    from SAMSegmentLib.windowing import Window

    volume, obj = _two_lesions()
    prompts = {16: SlicePrompt(box=box_from_mask(obj[16])), 6: SlicePrompt(box=box_from_mask(obj[6] & (
        np.arange(64)[:, None] > 32)))}
    session = SegmentationSession(ThresholdModel(), volume, window=Window(0, 1000))
    steps = []
    result = session.propagate("K", prompts, "both", progress=lambda done, total: steps.append((done, total)))
    np.testing.assert_array_equal(result.to_volume(obj.shape), obj)
    assert steps[-1][0] == steps[-1][1]  # progress ends at its total
    assert result.outcomes[11].seed == 6 and result.outcomes[12].seed == 16  # the nearer prompt still owns a slice
    # what each chain alone gives there: the other lesion is missing on the slices the other chain owns
    only_a = session.propagate("K", {16: prompts[16]}, "both").to_volume(obj.shape)
    assert not only_a[4:10].any() and only_a[10:21].sum() == obj[10:21, :32, :32].sum()


def test_a_part_the_other_prompt_would_not_call_the_object_is_not_added_between_them():
    """B's chain follows a dimmer structure beyond B (its own grey-level range holds it); on the slices A's
    chain owns (13-17: slice 12 is the middle of 6 and 18), that structure is not added: none of its voxels has
    A's grey levels."""
    import dataclasses

    from SAMSegmentLib.propagation.chaining import ChainParams
    from SAMSegmentLib.windowing import Window

    volume, obj = _two_lesions(drift=True)
    prompts = {18: SlicePrompt(box=box_from_mask(obj[18])), 6: SlicePrompt(box=box_from_mask(obj[6] & (
        np.arange(64)[:, None] > 32)))}
    b_region = np.zeros_like(obj)
    b_region[:, 32:, 32:] = True

    def propagate(prompts, **params):
        session = SegmentationSession(ThresholdModel(), volume, window=Window(0, 1000),
                                      chain_params=dataclasses.replace(ChainParams(), **params))
        return session.propagate("K", prompts, "both").to_volume(obj.shape)

    alone = propagate({6: prompts[6]})
    assert alone[13:17, 32:, 32:].any(axis=(1, 2)).all()  # B's chain alone follows the dim structure
    mask = propagate(prompts)
    assert not (mask[13:18] & b_region[13:18]).any()  # not added on A's half
    np.testing.assert_array_equal(mask & ~b_region, obj & ~b_region)  # lesion A complete
    np.testing.assert_array_equal(mask[:13] & b_region[:13], obj[:13] & b_region[:13])  # lesion B complete
    without_the_rule = propagate(prompts, min_intensity_fraction=0.0)
    assert (without_the_rule[13:17] & b_region[13:17]).any()


def test_crossing_a_gap_never_removes_what_a_prompt_found():
    """Two lesions of different grey levels (1000 and 600), a box on each: neither looks like the other's
    object, so nothing is added between them, and nothing either chain found is removed."""
    import dataclasses

    from SAMSegmentLib.propagation.chaining import ChainParams
    from SAMSegmentLib.windowing import Window

    volume, obj = _two_lesions()
    b = np.zeros_like(obj)
    b[:, 32:, 32:] = obj[:, 32:, 32:]
    volume.array[b] = 600
    prompts = {16: SlicePrompt(box=box_from_mask(obj[16] & ~b[16])), 6: SlicePrompt(box=box_from_mask(b[6]))}

    def propagate(cross: bool) -> np.ndarray:
        session = SegmentationSession(ThresholdModel(), volume, window=Window(0, 1000),
                                      chain_params=dataclasses.replace(ChainParams(), cross_gaps=cross))
        return session.propagate("K", prompts, "both").to_volume(obj.shape)

    crossed = propagate(True)
    np.testing.assert_array_equal(crossed, propagate(False))
    a = obj & ~b
    np.testing.assert_array_equal(crossed & a, a & (np.arange(24) >= 12)[:, None, None])  # A where 16's chain owns
    np.testing.assert_array_equal(crossed & b, b & (np.arange(24) <= 11)[:, None, None])  # B where 6's chain owns
