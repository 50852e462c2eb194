"""Worker: model code only on the worker thread, ordered streaming, cancel latency, exceptions carried over."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from doubles import ThresholdModel

from SAMSegmentLib.prompts import SlicePrompt, box_from_mask
from SAMSegmentLib.propagation import PropagationCancelled
from SAMSegmentLib.session import SegmentationSession
from SAMSegmentLib.worker import JobCancelled, Worker


@pytest.fixture
def worker():
    w = Worker()
    yield w
    w.shutdown()


def _propagation_job(ctx, session, prompts):
    def on_slice(outcome):
        ctx.emit(outcome.index)

    try:
        return session.propagate("K", prompts, "both", on_slice=on_slice, should_stop=lambda: ctx.cancelled,
                                 progress=ctx.progress)
    except PropagationCancelled:
        ctx.check_cancel()
        raise


def _volume():
    from test_chaining import blob_volume

    return blob_volume(n=30, first=2, last=27)


def test_model_runs_only_on_worker_thread_and_results_stream_in_order(worker):
    volume, obj = _volume()
    model = ThresholdModel()
    session = SegmentationSession(model, volume)
    seed = 14
    job = worker.submit(_propagation_job, session, {seed: SlicePrompt(box=box_from_mask(obj[seed]))}, name="propagate")
    result = job.get(timeout=60)
    events = job.drain()
    streamed = [e.value for e in events if e.kind == "result"]
    progress = [e.value for e in events if e.kind == "progress"]
    assert streamed[0] == seed and sorted(streamed) == list(range(30))
    assert [abs(i - seed) for i in streamed] == sorted(abs(i - seed) for i in streamed)
    assert progress[-1][0] == progress[-1][1] == 30 and [p[0] for p in progress] == sorted(p[0] for p in progress)
    assert events[-1].kind == "done" and result.outcomes[seed].source == "prompt"
    assert model.encode_threads == {Worker.THREAD_NAME} and model.decode_threads == {Worker.THREAD_NAME}
    assert threading.current_thread().name not in model.encode_threads


def test_cancel_takes_effect_within_one_slice(worker):
    volume, obj = _volume()
    slice_seconds = 0.2
    session = SegmentationSession(ThresholdModel(encode_delay=slice_seconds), volume)
    job = worker.submit(_propagation_job, session, {14: SlicePrompt(box=box_from_mask(obj[14]))})
    while not any(e.kind == "result" for e in job.drain()):
        time.sleep(0.01)
    time.sleep(slice_seconds * 1.5)
    asked = time.monotonic()
    job.cancel()
    assert job.wait(timeout=10)
    latency = time.monotonic() - asked
    assert job.state == "cancelled"
    assert latency <= slice_seconds + 0.15, f"cancel took {latency:.2f} s, one slice takes {slice_seconds} s"
    with pytest.raises(JobCancelled):
        job.get()
    assert job.progress[0] < 30


def test_exception_reaches_caller_with_its_message(worker):
    def boom(ctx):
        raise ValueError("slice 12 is outside the volume")

    job = worker.submit(boom)
    with pytest.raises(ValueError, match="slice 12 is outside"):
        job.get(timeout=5)
    assert job.state == "error" and job.drain()[-1].kind == "error"
    # the worker survives and runs the next job
    assert worker.call(lambda: threading.current_thread().name, timeout=5) == Worker.THREAD_NAME


def test_jobs_run_one_at_a_time_in_order(worker):
    order = []
    jobs = [worker.submit(lambda ctx, n=n: order.append(n) or time.sleep(0.01)) for n in range(5)]
    for j in jobs:
        j.wait(5)
    assert order == list(range(5))


def test_cancel_all_cancels_queued_jobs(worker):
    gate = threading.Event()
    first = worker.submit(lambda ctx: gate.wait(5) and ctx.check_cancel())
    queued = worker.submit(lambda ctx: "ran")
    worker.cancel_all()
    gate.set()
    assert first.wait(5) and queued.wait(5)
    assert first.state == "cancelled" and queued.state == "cancelled"
    assert np.isscalar(len(queued.drain()))
