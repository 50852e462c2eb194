"""Jobs (SAMSegmentLib/jobs.py): events in order, cancel before and during a run, errors carried to the caller."""

from __future__ import annotations

import threading

import pytest

from SAMSegmentLib.jobs import Job, JobCancelled


def run_in_thread(job: Job) -> threading.Thread:
    t = threading.Thread(target=job._run, daemon=True)
    t.start()
    return t


def test_events_arrive_in_order_with_the_result():
    def work(ctx, n):
        for i in range(n):
            ctx.progress(i + 1, n)
            ctx.emit(i * i)
        return "finished"

    seen = []
    job = Job("squares", work, (4,), {}, on_event=seen.append)
    run_in_thread(job).join(5)
    assert job.get(1) == "finished" and job.state == "done"
    assert [e.kind for e in seen] == ["progress", "result"] * 4 + ["done"]
    assert [e.value for e in seen if e.kind == "result"] == [0, 1, 4, 9]
    assert job.drain() == []  # the callback got them: the job holds no copies of its results
    assert job.progress == (4, 4)


def test_cancel_takes_effect_at_the_next_check():
    started, release = threading.Event(), threading.Event()

    def work(ctx):
        started.set()
        release.wait(5)
        ctx.check_cancel()
        return "not reached"

    job = Job("slow", work, (), {})
    t = run_in_thread(job)
    started.wait(5)
    job.cancel()
    release.set()
    t.join(5)
    assert job.state == "cancelled"
    with pytest.raises(JobCancelled):
        job.get(1)


def test_a_job_cancelled_before_it_runs_never_runs():
    ran = []
    job = Job("queued", lambda ctx: ran.append(1), (), {})
    job.cancel()
    job._run()
    assert job.state == "cancelled" and ran == []


def test_exceptions_reach_the_caller_with_their_message():
    def work(ctx):
        raise ValueError("slice 99 is outside the volume")

    job = Job("bad", work, (), {})
    job._run()
    assert job.state == "error"
    with pytest.raises(ValueError, match="slice 99"):
        job.get(1)


def test_a_broken_event_callback_does_not_break_the_job():
    def callback(event):
        raise RuntimeError("listener bug")

    job = Job("ok", lambda ctx: 42, (), {}, on_event=callback)
    job._run()
    assert job.get(1) == 42
