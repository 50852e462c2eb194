"""The effect's engine driver (SAMSegment/SAMSegmentEffectLib/controller.py): requests to an engine, events drained
without blocking, superseded previews dropped, propagation streamed and cancellable, model availability; no Qt.

Models are the test doubles of Testing/doubles.py (BoxModel segments exactly the prompt box; ThresholdModel the
bright voxels inside it), run through the real engine core and SegmentationSession, in process (the engine process
and its client have tests of their own, Testing/engine/test_engine_*.py, and test_controller_engine_process.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from doubles import BoxModel, ThresholdModel
from SAMSegmentEffectLib.controller import ModelStatus, SegmentAnythingController, model_status, models, user_message

from SAMSegmentLib.engine.core import EngineCore
from SAMSegmentLib.engine.local import InProcessEngine
from SAMSegmentLib.prompts import PromptError, SlicePrompt

ROOT = Path(__file__).resolve().parents[2]


class Factory:
    """Builds in-process engines whose models are doubles; records where and how often models and sessions are
    built."""

    def __init__(self, model_cls=BoxModel, **kwargs):
        self.model_cls, self.kwargs = model_cls, kwargs
        self.models_built = 0
        self.sessions_built = 0
        self.threads = set()
        self.last_model = None

    def load(self, spec):
        self.threads.add(threading.current_thread().name)
        self.models_built += 1
        self.last_model = self.model_cls(**self.kwargs)
        return self.last_model

    def __call__(self):
        factory = self

        class CountingCore(EngineCore):
            def open_session(self, *args, **kwargs):
                factory.sessions_built += 1
                return super().open_session(*args, **kwargs)

        return InProcessEngine(CountingCore(self.load))


def wait_for(controller, kinds, timeout=20.0):
    """Poll like the effect's timer until an event of one of ``kinds`` arrives; returns all events seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += controller.poll()
        if any(e.kind in kinds for e in seen):
            return seen
        time.sleep(0.01)
    raise AssertionError(f"no {kinds} event within {timeout} s; got {[e.kind for e in seen]}")


def blob(n=20, first=4, last=15):
    array = np.zeros((n, 48, 40), dtype=np.int16)
    yy, xx = np.mgrid[0:48, 0:40]
    obj = np.zeros(array.shape, bool)
    for k in range(first, last + 1):
        obj[k] = (xx - 20) ** 2 + (yy - 24) ** 2 <= 10**2
    array[obj] = 1000
    return array, obj


@pytest.fixture
def controller():
    made = []

    def make(factory):
        c = SegmentAnythingController(engine=factory)
        made.append(c)
        return c

    yield make
    for c in made:
        c.shutdown()


def test_preview_runs_in_the_engine_and_comes_back_as_an_event(controller):
    factory = Factory()
    c = controller(factory)
    array, _ = blob()
    c.configure("box", "cpu", 64)
    c.set_volume(array, np.diag([0.8, 0.8, 2.5, 1.0]), key=("vol", 1))
    c.preview("K", 7, SlicePrompt(box=[5, 6, 14, 20]))
    events = wait_for(c, {"preview", "error"})
    (event,) = [e for e in events if e.kind == "preview"]
    assert (event.axis, event.index) == ("K", 7)
    expected = np.zeros((48, 40), bool)
    expected[6:21, 5:15] = True
    np.testing.assert_array_equal(event.mask, expected)
    assert factory.threads and all(t.startswith("samsegment-engine") for t in factory.threads)  # not here
    assert not c.busy


def test_superseded_previews_are_dropped(controller):
    factory = Factory(encode_delay=0.2)
    c = controller(factory)
    array, _ = blob()
    c.set_volume(array, np.eye(4), key=1)
    c.preview("K", 3, SlicePrompt(box=[0, 0, 5, 5]))
    c.preview("K", 3, SlicePrompt(box=[0, 0, 9, 9]))
    c.preview("K", 3, SlicePrompt(box=[0, 0, 2, 2]))  # the one that counts
    events = []
    deadline = time.monotonic() + 20
    while c.busy and time.monotonic() < deadline:
        events += c.poll()
        time.sleep(0.01)
    events += c.poll()
    previews = [e for e in events if e.kind == "preview"]
    assert len(previews) == 1 and previews[0].mask.sum() == 9


def test_prefetch_yields_to_a_preview(controller):
    factory = Factory(encode_delay=0.05)
    c = controller(factory)
    array, _ = blob(n=40)
    c.set_volume(array, np.eye(4), key=1)
    c.prefetch("K", range(40))
    time.sleep(0.15)
    c.preview("K", 20, SlicePrompt(box=[1, 1, 3, 3]))
    wait_for(c, {"preview"}, timeout=5)  # well before 40 embeddings x 0.05 s would have finished
    assert factory.last_model.encode_calls < 40


def test_propagation_streams_outcomes_and_finishes(controller):
    factory = Factory(ThresholdModel)
    c = controller(factory)
    array, obj = blob()
    c.set_volume(array, np.eye(4), key=1)
    c.propagate("K", {9: SlicePrompt(box=[8, 12, 32, 36])}, "both")
    assert c.propagating and c.busy
    events = wait_for(c, {"propagated", "error"})
    outcomes = [e for e in events if e.kind == "outcome"]
    progress = [e for e in events if e.kind == "progress"]
    done = [e for e in events if e.kind == "propagated"][0]
    assert outcomes[0].index == 9
    assert {e.index for e in outcomes} == set(done.result.outcomes)
    assert progress and progress[-1].done == progress[-1].total
    for e in outcomes:
        np.testing.assert_array_equal(e.mask, obj[e.index])
    assert not c.propagating


def test_propagation_cancel_within_a_slice(controller):
    factory = Factory(ThresholdModel, encode_delay=0.05)
    c = controller(factory)
    array, _ = blob(n=60, first=2, last=57)
    c.set_volume(array, np.eye(4), key=1)
    c.propagate("K", {30: SlicePrompt(box=[8, 12, 32, 36])}, "both")
    wait_for(c, {"outcome"})
    with pytest.raises(RuntimeError, match="already running"):
        c.propagate("K", {30: SlicePrompt(box=[8, 12, 32, 36])})
    c.cancel_propagation()
    t0 = time.monotonic()
    events = wait_for(c, {"cancelled", "propagated"})
    assert time.monotonic() - t0 < 2.0
    assert [e.kind for e in events if e.kind in ("cancelled", "propagated")] == ["cancelled"]


def test_forgotten_jobs_report_nothing(controller):
    """Leaving the effect (or Clear all) mid-propagation: nothing it still computes may reach the next session."""
    factory = Factory(ThresholdModel, encode_delay=0.05)
    c = controller(factory)
    array, _ = blob(n=40, first=2, last=37)
    c.set_volume(array, np.eye(4), key=1)
    c.propagate("K", {20: SlicePrompt(box=[8, 12, 32, 36])}, "both")
    c.preview("K", 3, SlicePrompt(box=[8, 12, 32, 36]))
    wait_for(c, {"outcome"})
    c.cancel_all(forget=True)
    assert not c.busy and not c.propagating
    time.sleep(0.3)
    assert c.poll() == []
    c.preview("K", 5, SlicePrompt(box=[1, 1, 3, 3]))  # the controller keeps working afterwards
    assert [e.index for e in wait_for(c, {"preview"}) if e.kind == "preview"] == [5]


def test_errors_become_messages(controller):
    c = controller(Factory())
    with pytest.raises(RuntimeError, match="select a source volume"):
        c.preview("K", 1, SlicePrompt(box=[0, 0, 1, 1]))
    array, _ = blob()
    c.set_volume(array, np.eye(4), key=1)
    c.preview("K", 2, SlicePrompt(points=[[3, 3]], labels=[0]))
    events = wait_for(c, {"error"})
    (error,) = [e for e in events if e.kind == "error"]
    assert error.job == "preview" and "only exclude points" in error.message
    c.preview("K", 99, SlicePrompt(box=[0, 0, 1, 1]))
    assert "outside the volume" in wait_for(c, {"error"})[-1].message


def test_model_reused_when_only_the_volume_changes(controller):
    factory = Factory()
    c = controller(factory)
    array, _ = blob()
    c.configure("box", "cpu", 64)
    c.set_volume(array, np.eye(4), key=1)
    c.load()
    assert any(e.kind == "status" for e in wait_for(c, {"status"}))
    c.set_volume(array.copy(), np.eye(4), key=2)
    c.preview("K", 5, SlicePrompt(box=[0, 0, 3, 3]))
    wait_for(c, {"preview"})
    assert (factory.models_built, factory.sessions_built) == (1, 2)
    c.configure("other-model", "cpu", 64)
    c.preview("K", 5, SlicePrompt(box=[0, 0, 3, 3]))
    wait_for(c, {"preview"})
    assert factory.models_built == 2
    c.set_volume(array, np.eye(4), key=2)  # same key: nothing rebuilt
    c.preview("K", 6, SlicePrompt(box=[0, 0, 3, 3]))
    wait_for(c, {"preview"})
    assert factory.sessions_built == 3


def test_user_message():
    assert user_message(PromptError("slice 3 has only exclude points")) == "Slice 3 has only exclude points"
    assert user_message(ZeroDivisionError("division by zero")) == "ZeroDivisionError: division by zero"


def test_model_status_states(monkeypatch, tmp_path):
    import SAMSegmentEffectLib.controller as C

    from SAMSegmentLib.requirements import Unmet

    monkeypatch.setenv("SAMSEGMENT_WEIGHTS_DIR", str(tmp_path))
    assert set(models()) >= {"litemedsam", "sam_vit_b", "sam2.1_hiera_tiny", "medsam2"}
    status = model_status("sam_vit_b")
    assert status.state == "download" and "375 MB" in status.label
    spec = models()["sam_vit_b"]
    (tmp_path / spec.filename).write_bytes(b"x" * 10)  # wrong size: not usable
    assert model_status("sam_vit_b").state == "download"
    monkeypatch.setattr(C, "unmet_requirements", lambda family, backend="torch", device="auto": [Unmet("sam2>=1.1.0,<1.2", "1.0")])
    status = model_status("sam2.1_hiera_tiny")
    assert status.state == "needs-package" and status.packages == ("sam2>=1.1.0,<1.2",) and not status.needs_torch
    assert status.label == "sam2.1_hiera_tiny (needs sam2)" and "sam2 1.0 is installed" in status.detail
    monkeypatch.setattr(C, "unmet_requirements", lambda family, backend="torch", device="auto": [Unmet("torch>=2.1", None),
                                                                 Unmet("segment-anything>=1.0", None)])
    status = model_status("medsam_vit_b")
    assert status.needs_torch and status.packages == ("segment-anything>=1.0",)
    assert status.label == "medsam_vit_b (needs PyTorch, segment-anything)"
    assert ModelStatus("x", "manual").label == "x (weights needed)"


def test_model_status_reads_the_installed_versions():
    """Nothing patched: in this environment every requirement of LiteMedSAM and of the engine process is met."""
    assert model_status("litemedsam").state == "ready"


def test_slicer_layer_imports_without_torch(tmp_path):
    """Slicer imports the extension at startup, possibly before PyTorch is installed: the modules the module and
    effect import at load time must not need torch, and the model list must still be available."""
    script = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch blocked for this test")
        sys.meta_path.insert(0, Block())
        sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / "SAMSegment")!r}]
        import SAMSegmentEffectLib.controller, SAMSegmentEffectLib.interaction, SAMSegmentEffectLib.bridge
        import SAMSegmentEffectLib.controller as C
        from SAMSegmentLib.requirements import Unmet
        C.unmet_requirements = lambda *args: [Unmet("torch>=2.1", None)]
        names = list(C.models())
        status = C.model_status("litemedsam")
        assert "litemedsam" in names and status.needs_torch, status
        assert "torch" not in sys.modules
        print("ok", len(names))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_an_engine_that_cannot_start_is_one_message_and_the_next_action_tries_again(controller):
    attempts = []

    def broken():
        attempts.append(1)
        if len(attempts) == 1:
            raise FileNotFoundError("PythonSlicer")  # e.g. Popen of a missing executable
        return Factory()()

    c = controller(broken)
    array, _ = blob()
    c.configure("box", "cpu", 64)
    c.set_volume(array, np.eye(4), key=1)
    c.preview("K", 7, SlicePrompt(box=[5, 6, 14, 20]))  # no exception reaches the effect's event handler
    events = wait_for(c, {"error"})
    errors = [e for e in events if e.kind == "error"]
    assert len(errors) == 1 and errors[0].job == "engine" and "could not be started" in errors[0].message
    c.preview("K", 7, SlicePrompt(box=[5, 6, 14, 20]))
    assert [e.kind for e in wait_for(c, {"preview", "error"}) if e.kind in ("preview", "error")] == ["preview"]
    assert len(attempts) == 2


def test_a_settings_change_during_a_propagation_waits_for_it(controller):
    factory = Factory(encode_delay=0.05)
    c = controller(factory)
    array, _ = blob()
    c.configure("box", "cpu", 64)
    c.set_volume(array, np.eye(4), key=1)
    c.propagate("K", {7: SlicePrompt(box=[10, 14, 30, 34])}, "both")
    c.configure("box", "cpu", 128)  # another cache size: another session spec ...
    c.preview("K", 7, SlicePrompt(box=[10, 14, 30, 34]))  # ... which must not close the running propagation's
    events = wait_for(c, {"propagated", "cancelled", "error"}, timeout=60)
    assert "propagated" in [e.kind for e in events], [(e.kind, e.message) for e in events]
    assert factory.sessions_built == 1
    c.preview("K", 7, SlicePrompt(box=[10, 14, 30, 34]))  # after it: the new settings take effect
    wait_for(c, {"preview"})
    assert factory.sessions_built == 2


def test_a_crash_noticed_by_the_next_action_ends_the_old_engines_requests(controller):
    engines = []

    class Crashable(InProcessEngine):
        crashed = None

    def make():
        factory = Factory(encode_delay=0.2)
        engine = Crashable(EngineCore(factory.load))
        engines.append(engine)
        return engine

    c = controller(make)
    array, _ = blob()
    c.configure("box", "cpu", 64)
    c.set_volume(array, np.eye(4), key=1)
    c.propagate("K", {7: SlicePrompt(box=[10, 14, 30, 34])}, "both")
    assert c.propagating
    engines[0].crashed = "the engine process stopped (exit code -9)"
    c.preview("K", 7, SlicePrompt(box=[10, 14, 30, 34]))  # notices the crash before any poll: a new engine
    events = wait_for(c, {"preview"}, timeout=30)
    errors = [e for e in events if e.kind == "error"]
    assert len(errors) == 1 and errors[0].job == "engine" and "exit code -9" in errors[0].message
    assert not c.propagating and len(engines) == 2
