"""The effect's controller against a real engine process running LiteMedSAM, driven the way Slicer drives it: from
an emulated main thread that holds the GIL between 40 ms ticks (Testing/slicer_main_thread.py).

- the first preview after loading arrives within 3 ticks of the engine having it;
- a 20-slice propagation finishes within 1.3x the time the same propagation takes free-running;
- no tick keeps the main thread busy for more than 20 ms (CPU time of the tick; its wall time is reported too);
- killing the engine process mid-propagation gives one clear message, writes nothing, and the next action works.

benchmarks/bench_slicer_main_thread.py runs the same scenario against the in-process engine for comparison.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from SAMSegmentEffectLib.controller import EngineProvider, SegmentAnythingController
from shared_data import shared_case
from slicer_main_thread import EmulatedMainThread

from SAMSegmentLib.engine.api import SessionSpec
from SAMSegmentLib.engine.child import LocalEngine
from SAMSegmentLib.io import read_volume
from SAMSegmentLib.prompts import SlicePrompt

pytestmark = pytest.mark.slow

# t2 spinal cord (60 x 55 x 52, J axis): the cord runs through every coronal slice, so a propagation does model work
# on each of the 20 slices of its range.
AXIS, SEED, RANGE = "J", 27, (18, 37)
BOX = SlicePrompt(box=[22, 0, 36, 51])


@pytest.fixture(scope="module")
def t2():
    return read_volume(shared_case("mr_spinal_cord_sct", "t2.nii.gz"))


@pytest.fixture
def controller(tmp_path):
    provider = EngineProvider(lambda: LocalEngine(python=sys.executable, device="cpu",
                                                  log_path=tmp_path / "engine.log"))
    c = SegmentAnythingController(engine=provider)
    yield c
    c.shutdown()
    provider.reset()


def seed_box(volume):
    from SAMSegmentLib.prompts import box_from_mask
    from SAMSegmentLib.slices import extract_slice

    label = read_volume(shared_case("mr_spinal_cord_sct", "t2_seg-manual.nii.gz")).array > 0
    return SlicePrompt(box=box_from_mask(extract_slice(label, AXIS, SEED)))


def run_until(main: EmulatedMainThread, controller, kinds, timeout_s, seen):
    """Tick until an event of one of ``kinds`` arrives; ``seen`` collects (tick start time, event)."""

    def tick() -> bool:
        began = time.time()
        events = controller.poll()
        seen.extend((began, e) for e in events)
        return any(e.kind in kinds for e in events)

    return main.run(tick, timeout_s)


def test_preview_and_propagation_from_an_emulated_slicer_main_thread(controller, t2):
    main = EmulatedMainThread(0.040)
    controller.configure("litemedsam", "cpu")
    controller.set_volume(t2.array, t2.ijk_to_ras, key=("t2", 1))
    controller.load()
    seen = []
    loading = run_until(main, controller, {"status", "error"}, 180, seen)
    assert loading.finished and "status" in [e.kind for _, e in seen], [e.message for _, e in seen]

    box = seed_box(t2)
    controller.preview(AXIS, SEED, box)
    seen = []
    first = run_until(main, controller, {"preview", "error"}, 120, seen)
    event = next((e for _, e in seen if e.kind == "preview"), None)
    assert first.finished and event is not None, [e.message for _, e in seen]
    assert event.mask.sum() > 50
    ticks_after_ready = sum(1 for t in first.ticks if t.started >= event.ready_at)
    assert ticks_after_ready <= 3, f"the preview waited {ticks_after_ready} ticks after the engine had it"

    # free-running reference: the same propagation in another session of the same engine process, waited for
    # without any main-thread emulation (fresh caches: its own volume key, and the same preview first)
    engine = controller.provider.current
    reference = engine.open_session(t2.array, t2.ijk_to_ras, SessionSpec(model="litemedsam", device="cpu"),
                                    volume_key=("t2", "reference"))
    reference.preview(AXIS, SEED, box).wait(120)
    started = time.monotonic()
    ref_outcomes = {}
    reference.propagate(AXIS, {SEED: box}, "both", RANGE).wait(
        300, on_event=lambda e: ref_outcomes.__setitem__(e.value.index, e.value) if e.kind == "result" else None)
    free_s = time.monotonic() - started
    reference.close()

    controller.propagate(AXIS, {SEED: box}, "both", RANGE)
    seen = []
    propagation = run_until(main, controller, {"propagated", "error", "cancelled"}, 300, seen)
    done = next((e for _, e in seen if e.kind == "propagated"), None)
    assert propagation.finished and done is not None, [e.message for _, e in seen]
    outcomes = done.result.outcomes
    assert sorted(outcomes) == list(range(RANGE[0], RANGE[1] + 1))
    assert sum(1 for o in outcomes.values() if o.mask.any()) == 20  # model work on all 20 slices
    for index, outcome in outcomes.items():
        np.testing.assert_array_equal(outcome.mask, ref_outcomes[index].mask)
    ratio = propagation.seconds / free_s
    print(f"\nfree-running {free_s:.2f} s, from the emulated main thread {propagation.seconds:.2f} s "
          f"(x{ratio:.2f}); ticks {len(propagation.ticks)}, max tick {propagation.max_tick_cpu_ms:.1f} ms CPU / "
          f"{propagation.max_tick_wall_ms:.1f} ms wall; first preview {ticks_after_ready} tick(s) after ready")
    assert ratio <= 1.3
    for run in (loading, first, propagation):
        assert run.max_tick_cpu_ms <= 20.0


def test_killing_the_engine_mid_propagation(controller, t2):
    main = EmulatedMainThread(0.040)
    controller.configure("litemedsam", "cpu")
    controller.set_volume(t2.array, t2.ijk_to_ras, key=("t2", 1))
    controller.propagate(AXIS, {SEED: seed_box(t2)}, "both", RANGE)
    seen = []
    run_until(main, controller, {"outcome", "error"}, 180, seen)
    assert "outcome" in [e.kind for _, e in seen], [e.message for _, e in seen]
    engine = controller.provider.current
    engine.process.proc.kill()
    seen = []
    run = run_until(main, controller, {"error", "propagated"}, 30, seen)
    kinds = [e.kind for _, e in seen]
    assert run.finished and "propagated" not in kinds  # nothing reaches the segment
    errors = [e for _, e in seen if e.kind == "error"]
    assert len(errors) == 1 and errors[0].job == "engine"
    assert "stopped" in errors[0].message and "restarts with your next action" in errors[0].message
    assert not controller.propagating

    controller.preview(AXIS, SEED, seed_box(t2))  # the next action starts a new engine process
    seen = []
    run = run_until(main, controller, {"preview", "error"}, 180, seen)
    assert run.finished and "preview" in [e.kind for _, e in seen], [e.message for _, e in seen]
    assert controller.provider.current is not engine and controller.provider.generation == 2
