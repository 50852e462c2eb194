"""Corrections on propagated slices (points-only prompts), 3D boxes, PROMPTS.json semantics and the bounded chain
caches, with the ThresholdModel double (bright pixels inside the box and the include discs, minus exclude discs)."""

from __future__ import annotations

import numpy as np
import pytest
from doubles import ThresholdModel
from test_chaining import blob_volume

from SAMSegmentLib.predictor import BOX_TRIALS
from SAMSegmentLib.prompts import PromptError, SlicePrompt, box_from_mask
from SAMSegmentLib.propagation.chaining import ChainPropagator
from SAMSegmentLib.propagation.plan import PropagationCancelled
from SAMSegmentLib.request import SegmentationRequest, request_from_dict
from SAMSegmentLib.session import SegmentationSession
from SAMSegmentLib.volume import Volume
from SAMSegmentLib.windowing import Window

SEED = 14


def session_for(volume) -> SegmentationSession:
    return SegmentationSession(ThresholdModel(), volume, window=Window(0, 1000))


def test_exclude_only_click_on_a_propagated_slice_removes_a_leak_there_and_propagation_goes_on_from_it():
    volume, obj = blob_volume()
    leak = np.zeros_like(obj)
    leak[15:21, 30:34, 40:60] = True  # a bright bar along the blob's right side: chaining follows it
    leak &= ~obj
    volume.array[leak] = 1000
    session = session_for(volume)
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    first = session.propagate("K", seed, "both")
    before = first.outcomes[18].mask
    assert (before & leak[18]).sum() > 10  # the propagated result leaks into the bar
    x, y = 55, 31
    assert before[y, x] and leak[18, y, x]
    second = session.propagate("K", {**seed, 18: SlicePrompt(points=[[x, y]], labels=[0])}, "both")
    corrected = second.outcomes[18]
    assert corrected.source == "prompt" and not corrected.mask[y, x]
    assert (corrected.mask & leak[18]).sum() < (before & leak[18]).sum()  # less leak ...
    assert (corrected.mask >= obj[18]).all()  # ... and nothing of the object removed
    # between the seed and the correction the seed's chain stays; beyond it, propagation starts from slice 18
    for k in (15, 16, 17):
        np.testing.assert_array_equal(second.outcomes[k].mask, first.outcomes[k].mask)
        assert second.outcomes[k].seed == SEED
    assert all(second.outcomes[k].seed == 18 for k in range(19, 30))
    assert 19 in second.recomputed and 17 not in second.recomputed


def test_a_correction_whose_effect_dies_out_leaves_the_slices_beyond_as_they_were():
    """A part found on one slice only: the corrected slice's chain gives the earlier result on the next slice, so
    it rejoins the chain it corrected there; the slices beyond keep the earlier result and the model does not run
    for them (without the rejoin rule they are all redrawn from the corrected slice)."""
    import dataclasses

    from SAMSegmentLib.propagation.chaining import ChainParams

    volume, obj = blob_volume()
    obj[17, 50:55, 52:57] = True  # a small part of the object on slice 17 alone, outside the chained boxes
    volume.array[obj] = 1000
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    click = {17: SlicePrompt(points=[[54, 52]], labels=[1])}

    def propagate(**params):
        session = SegmentationSession(ThresholdModel(), volume, window=Window(0, 1000),
                                      chain_params=dataclasses.replace(ChainParams(), **params))
        first = session.propagate("K", seed, "both")
        return first, session.propagate("K", {**seed, **click}, "both")

    first, second = propagate()
    np.testing.assert_array_equal(second.outcomes[17].mask, obj[17])  # the part added, nothing else
    # 18 agrees with the earlier result: the chains rejoin there; 16: the added part's back run toward the seed
    # finds nothing there (the part is on slice 17 alone) and ends
    assert sorted(second.recomputed) == [16, 17, 18]
    for k in range(18, 30):
        np.testing.assert_array_equal(second.outcomes[k].mask, first.outcomes[k].mask)
        assert second.outcomes[k].seed == SEED
    np.testing.assert_array_equal(second.to_volume(obj.shape), obj)
    # the rule off: the same masks here (the double has no memory), but every slice beyond is recomputed
    _, redrawn = propagate(join_fraction=None)
    assert sorted(redrawn.recomputed) == [16, 17, 18, 19, 20, 21]
    assert all(redrawn.outcomes[k].seed == 17 for k in range(18, 30))


def test_include_only_click_adds_a_part_the_propagation_missed():
    volume, obj = blob_volume()
    lobe = np.zeros_like(obj)
    lobe[16:20, 50:57, 52:59] = True  # a separate part of the object, outside the chained boxes
    obj |= lobe
    volume.array[lobe] = 1000
    session = session_for(volume)
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    first = session.propagate("K", seed, "both")
    assert not (first.outcomes[17].mask & lobe[17]).any()
    second = session.propagate("K", {**seed, 17: SlicePrompt(points=[[55, 53]], labels=[1])}, "both")
    after = second.outcomes[17].mask
    np.testing.assert_array_equal(after & lobe[17], lobe[17])  # the whole missed part, in one click
    assert not (after & ~obj[17]).any()  # and nothing else
    np.testing.assert_array_equal(after & ~lobe[17], first.outcomes[17].mask)  # the rest keeps the context
    assert (second.outcomes[18].mask & lobe[18]).any()  # propagated outward from the corrected slice
    # and back toward the seed: slice 16 gets the part too, and keeps what the seed's chain showed there
    np.testing.assert_array_equal(second.outcomes[16].mask, first.outcomes[16].mask | lobe[16])
    np.testing.assert_array_equal(second.outcomes[15].mask, first.outcomes[15].mask)


def _lesion_b_clicked_beyond_the_chain_of_a(**params):
    """Lesion A (slices 10-20) boxed on slice 16, whose chain ends at slice 9; an include click on lesion B
    (slices 4-12) on slice 8, where nothing was shown: (volume, obj, session, prompts, result)."""
    import dataclasses

    from test_chaining import _two_lesions

    from SAMSegmentLib.propagation.chaining import ChainParams

    volume, obj = _two_lesions()
    session = SegmentationSession(ThresholdModel(), volume, window=Window(0, 1000),
                                  chain_params=dataclasses.replace(ChainParams(), **params))
    a_only = obj & (np.arange(64)[None, :, None] < 32)
    prompts = {16: SlicePrompt(box=box_from_mask(a_only[16]))}
    first = session.propagate("K", prompts, "both").to_volume(obj.shape)
    np.testing.assert_array_equal(first, a_only)  # A's chain alone never reaches B
    prompts[8] = SlicePrompt(points=[[44, 44]], labels=[1])
    steps = []
    result = session.propagate("K", prompts, "both", progress=lambda done, total: steps.append((done, total)))
    assert steps[-1][0] == steps[-1][1]  # progress ends at its total
    return volume, obj, session, prompts, result


def test_a_part_clicked_where_the_chain_had_ended_also_runs_back_toward_the_seed():
    """The click's part propagates outward (slices 7-4) and back toward the seed: on slices 9-12 (beside A on
    10-12) B's part is added to what A's chain shows; without the back run B is missing there."""
    _, obj, _, _, result = _lesion_b_clicked_beyond_the_chain_of_a()
    _, _, _, _, without = _lesion_b_clicked_beyond_the_chain_of_a(back_runs=False)
    b = obj & (np.arange(64)[None, :, None] > 32)
    mask, before = result.to_volume(obj.shape), without.to_volume(obj.shape)
    assert not (mask & ~obj).any()
    np.testing.assert_array_equal(mask & ~b, obj & ~b)  # A whole
    np.testing.assert_array_equal(mask[:9], before[:9])  # the corrected slice and beyond: as without
    assert not (before[9:13] & b[9:13]).any()
    assert all((mask[k] & b[k]).sum() >= 0.8 * b[k].sum() for k in range(9, 13))
    assert result.outcomes[11].seed == 16  # A's chain still owns the slice; B's part was added to it


def test_a_later_click_between_keeps_the_part_a_back_run_added_there():
    """A click on slice 11 (between the seed and the correction on 8) takes what slice 11 shows, B's part
    included, as its context: a click that changes nothing there changes nothing anywhere."""
    _, obj, session, prompts, before = _lesion_b_clicked_beyond_the_chain_of_a()
    prompts[11] = SlicePrompt(points=[[20, 20]], labels=[1])  # inside A: already on the right side
    result = session.propagate("K", prompts, "both")
    assert result.outcomes[11].source == "prompt"
    np.testing.assert_array_equal(result.to_volume(obj.shape), before.to_volume(obj.shape))


def test_correction_of_an_existing_mask_and_later_clicks_never_change_what_earlier_ones_did():
    volume, obj = blob_volume()
    session = session_for(volume)
    existing = obj[SEED].copy()
    existing[:, 36:] = False  # an imported contour that misses the right part
    one = session.preview("K", SEED, SlicePrompt(points=[[40, 32]], labels=[1], mask=existing))
    assert one.mask[32, 40] and (one.mask >= existing).all() and not (one.mask & ~obj[SEED]).any()
    two = session.preview("K", SEED, SlicePrompt(points=[[40, 32], [20, 32]], labels=[1, 0], mask=existing))
    assert not two.mask[32, 20]
    np.testing.assert_array_equal(two.mask | (one.mask & ~two.mask), one.mask)  # only removals after click 1


def test_points_only_corrections_need_something_to_correct():
    volume, obj = blob_volume()
    session = session_for(volume)
    with pytest.raises(PromptError, match="only exclude points and nothing to correct"):
        session.propagate("K", {SEED: SlicePrompt(points=[[30, 32]], labels=[0])}, "both")
    with pytest.raises(PromptError, match="nothing to correct"):
        session.preview("K", SEED, SlicePrompt(points=[[30, 32]], labels=[0]))
    # outside the propagation (propagate none) an exclude-only slice is refused by the request check
    request = SegmentationRequest("K", {SEED: SlicePrompt(box=box_from_mask(obj[SEED])),
                                        18: SlicePrompt(points=[[30, 32]], labels=[0])}, "none")
    with pytest.raises(PromptError, match="propagation is off"):
        request.validate(volume)
    request.propagate = "both"
    request.validate(volume)  # a correction there is fine
    # an exclude click where the propagation left nothing is ignored, not an error
    result = session.propagate("K", {SEED: SlicePrompt(box=box_from_mask(obj[SEED])),
                                     25: SlicePrompt(points=[[30, 32]], labels=[0])}, "both")
    assert not result.outcomes[25].mask.any()


def test_include_click_where_propagation_ended_segments_around_it_with_the_last_box_size():
    volume, obj = blob_volume()
    extra = np.zeros_like(obj)
    extra[21:23] = obj[20]  # the object goes on two more slices, but dimmer: the chain stops at 21
    volume.array[extra] = 700
    obj |= extra
    session = SegmentationSession(ThresholdModel(), volume, window=Window(0, 1000))
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    first = session.propagate("K", seed, "both")
    assert not first.outcomes[21].mask.any()
    cy, cx = np.argwhere(obj[21]).mean(axis=0).round().astype(int)
    second = session.propagate("K", {**seed, 21: SlicePrompt(points=[[cx, cy]], labels=[1])}, "both")
    got = second.outcomes[21].mask
    assert got[cy, cx] and (got & obj[21]).sum() > 0.8 * obj[21].sum() and not (got & ~obj[21]).any()


def test_box3d_from_prompts_json_bounds_propagation():
    volume, obj = blob_volume()
    request = request_from_dict({"axis": "K", "propagate": "both", "prompts": [
        {"slice": SEED, "box3d": [*map(int, box_from_mask(obj[SEED])), 11, 17]}]})
    request.validate(volume)
    prompt = request.prompts[SEED]
    assert prompt.extent == (11, 17) and prompt.box is not None
    mask = session_for(volume).segment(request)
    assert mask[11:18].any(axis=(1, 2)).all()
    assert not mask[:11].any() and not mask[18:].any()  # the object goes on, the 3D box says where it ends
    with pytest.raises(PromptError, match="box3d"):
        request_from_dict({"prompts": [{"slice": 3, "box3d": [1, 2, 3, 4]}]})
    bad = request_from_dict({"prompts": [{"slice": 3, "box3d": [1, 2, 3, 4, 5, 9]}]})
    with pytest.raises(PromptError, match="do not include its own slice"):
        bad.validate(volume)


def test_prompts_json_points_only_slice_is_a_correction():
    volume, obj = blob_volume()
    request = request_from_dict({"axis": "K", "propagate": "both", "prompts": [
        {"slice": SEED, "box": [*map(int, box_from_mask(obj[SEED]))]},
        {"slice": 18, "points": [[20, 32, 0]]}]})
    request.validate(volume)
    assert request.prompts[18].points_only
    mask = session_for(volume).segment(request)
    assert not mask[18, 32, 20] and mask[17, 32, 20] == obj[17, 32, 20]


def test_chain_caches_stay_within_their_byte_budget():
    volume, obj = blob_volume()
    session = session_for(volume)
    propagator = session._chain
    one_run = None
    for seed in range(9, 20):
        session.propagate("K", {seed: SlicePrompt(box=box_from_mask(obj[seed]))}, "both")
        if one_run is None:
            one_run = propagator.nbytes
    assert propagator.nbytes > 5 * one_run  # without a budget everything is kept
    small = ChainPropagator(session.predictor, cache_bytes=3 * one_run)
    for seed in range(9, 20):
        small.run("K", {seed: SlicePrompt(box=box_from_mask(obj[seed]))}, "both")
        assert small.nbytes <= 3 * one_run
    last = small.run("K", {19: SlicePrompt(box=box_from_mask(obj[19]))}, "both")
    assert last.recomputed == []  # the latest chains are kept ...
    first = small.run("K", {9: SlicePrompt(box=box_from_mask(obj[9]))}, "both")
    assert first.recomputed  # ... the oldest were evicted


def test_a_correction_on_a_fresh_session_counts_and_cancels_the_chain_it_needs():
    """A points-only correction beyond the cache extends the seed's chain before the outward propagation: that work
    is reported as recomputed and stops at Cancel like any other slice."""
    volume, obj = blob_volume()
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    ys, xs = np.nonzero(obj[19])
    prompts = {**seed, 19: SlicePrompt(points=[[xs[0], ys[0]]], labels=[0])}
    result = session_for(volume).propagate("K", prompts, "both")
    assert {15, 16, 17, 18} <= set(result.recomputed)  # computed to find slice 19's context

    session = session_for(volume)
    model = session.model
    calls = []

    def stop_after_two_slices() -> bool:
        calls.append(model.decode_calls)
        return len(calls) > 3  # the entry check, then the seed's chain: two slices, then Cancel

    with pytest.raises(PropagationCancelled):
        session.propagate("K", prompts, "both", should_stop=stop_after_two_slices)
    # the seed's box trials, then two slices: stopped inside the correction's chain, not after the whole propagation
    assert model.decode_calls < 10 + len(BOX_TRIALS) - 1


def test_a_click_in_a_one_voxel_band_adds_the_band_voxel_not_the_tissue_beyond(monkeypatch):
    """An include click one voxel from the contour corrects that voxel; the model's region there (here: the
    band and a bright voxel of another tissue just outside it) is not taken."""
    import SAMSegmentLib.predictor as predictor

    array = np.zeros((30, 64, 64), dtype=np.int16)
    obj = np.zeros(array.shape, dtype=bool)
    obj[SEED, 22:42, 20:40] = True
    array[obj] = 1000
    array[SEED, 32, 40] = 1000  # another bright voxel, touching the object's right edge
    volume = Volume(array, np.diag([1.0, 1.0, 3.0, 1.0]))
    existing = obj[SEED].copy()
    existing[32:34, 39] = False  # the contour misses two voxels of the object's right column
    click = SlicePrompt(points=[[39, 32]], labels=[1], mask=existing)
    after = session_for(volume).preview("K", SEED, click).mask
    np.testing.assert_array_equal(after, existing | (np.arange(64)[:, None] == 32) & (np.arange(64) == 39))
    monkeypatch.setattr(predictor, "SMALL_DISC_VOXELS", 0)  # without the rule the model's region is taken
    spilled = session_for(volume).preview("K", SEED, click).mask
    assert spilled[32, 40] and not obj[SEED, 32, 40]


def test_a_part_an_include_click_adds_is_followed_while_it_tapers():
    """The rejoin rule never cuts a part the correction found alone: a separate part that shrinks below a quarter
    of its clicked-slice area is still followed to its end."""
    volume, obj = blob_volume()
    yy, xx = np.mgrid[0:64, 0:64]
    part = np.zeros_like(obj)
    for k, r in zip(range(15, 21), (7, 6, 4, 3, 2, 2), strict=True):
        part[k] = (xx - 54) ** 2 + (yy - 8) ** 2 <= r * r
    volume.array[part] = 1000
    session = session_for(volume)
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    session.propagate("K", seed, "both")
    mask = session.propagate("K", {**seed, 15: SlicePrompt(points=[[54, 8]], labels=[1])}, "both").to_volume(
        obj.shape)
    assert [int((mask[k] & part[k]).sum()) for k in range(15, 21)] == [int(part[k].sum()) for k in range(15, 21)]


def test_a_click_that_picks_the_object_up_after_the_chain_ended_follows_it_to_its_end():
    """Slice 21 is dim, so the seed's chain ends there; an include click on slice 22 finds the object again and
    its chain follows it as it tapers (it does not rejoin the ended chain's empty slices)."""
    array = np.zeros((30, 64, 64), dtype=np.int16)
    yy, xx = np.mgrid[0:64, 0:64]
    obj = np.zeros(array.shape, dtype=bool)
    for k in range(8, 27):
        r = {23: 7, 24: 4, 25: 3, 26: 2}.get(k, 10)
        obj[k] = (xx - 32) ** 2 + (yy - 32) ** 2 <= r * r
    array[obj] = 1000
    array[21][obj[21]] = 100
    session = session_for(Volume(array, np.diag([1.0, 1.0, 3.0, 1.0])))
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    assert not session.propagate("K", seed, "both").to_volume(obj.shape)[21:].any()
    mask = session.propagate("K", {**seed, 22: SlicePrompt(points=[[32, 32]], labels=[1])}, "both").to_volume(
        obj.shape)
    np.testing.assert_array_equal(mask[22:], obj[22:])


def test_a_click_between_two_prompts_keeps_what_the_far_prompt_added_on_the_slices_before_it():
    """Boxes on two lesions (slices 6 and 16); a click on slice 11 that changes nothing there: the slices between
    the near box and the click keep the far lesion, and the click's chain rejoins at once."""
    from test_chaining import _two_lesions

    volume, obj = _two_lesions()
    prompts = {16: SlicePrompt(box=box_from_mask(obj[16])),
               6: SlicePrompt(box=box_from_mask(obj[6] & (np.arange(64)[:, None] > 32)))}
    session = session_for(volume)
    first = session.propagate("K", prompts, "both")
    assert first.outcomes[11].mask[44, 44]
    second = session.propagate("K", {**prompts, 11: SlicePrompt(points=[[44, 44]], labels=[1])}, "both")
    np.testing.assert_array_equal(second.to_volume(obj.shape), first.to_volume(obj.shape))
    np.testing.assert_array_equal(second.to_volume(obj.shape), obj)
    assert sorted(second.recomputed) == [11, 12]


def test_a_rejoined_chain_does_not_count_the_slices_it_shares_with_its_parent():
    """The chain cache's budget counts a joined chain's own slices only: from the join on its outcomes are the
    parent's, already counted there (counted twice, the cache evicted early)."""
    volume, obj = blob_volume()
    obj[17, 50:55, 52:57] = True
    volume.array[obj] = 1000
    session = session_for(volume)
    seed = {SEED: SlicePrompt(box=box_from_mask(obj[SEED]))}
    session.propagate("K", seed, "both")
    session.propagate("K", {**seed, 17: SlicePrompt(points=[[54, 52]], labels=[1])}, "both")
    chains = list(session._chain._chains._items.values())
    joined = [c for c in chains if c.joined]
    assert len(joined) == 1 and joined[0].seed == 17
    child = joined[0]
    assert len(child.outcomes) == 12 and child.joined_at == 0  # slice 18 already agreed: all 12 are the parent's
    assert child.nbytes == child.last_logits.numel() * child.last_logits.element_size()
