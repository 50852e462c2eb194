"""The device gate (SAMSegmentLib/engine/gate.py): previews before propagations before prefetches, arrival order
within a priority, long jobs yielding between steps, and a cancel that ends a wait."""

from __future__ import annotations

import threading
import time

from SAMSegmentLib.engine.gate import DeviceGate, GateCancelled


def _start(fn, *args):
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def _wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_priority_then_arrival_order():
    gate = DeviceGate()
    order = []
    gate.acquire(0)  # hold it while the others queue
    threads = []
    for name, priority in [("prefetch", 3), ("propagate-a", 2), ("preview-1", 0), ("propagate-b", 2), ("preview-2", 0)]:
        def job(name=name, priority=priority):
            with gate.hold(priority):
                order.append(name)
        threads.append(_start(job))
        queued = len(threads)
        _wait_until(lambda queued=queued: len(gate._waiting) == queued)
    gate.release()
    for t in threads:
        t.join(5)
    assert order == ["preview-1", "preview-2", "propagate-a", "propagate-b", "prefetch"]


def test_a_long_job_yields_to_a_preview_between_steps():
    gate = DeviceGate()
    log = []
    step_started = threading.Event()

    def propagation():
        gate.acquire(2)
        try:
            for step in range(6):
                gate.yield_turn(2)
                log.append(f"slice{step}")
                step_started.set()
                time.sleep(0.02)
        finally:
            gate.release()

    t = _start(propagation)
    step_started.wait(5)

    def preview():
        with gate.hold(0):
            log.append("preview")

    p = _start(preview)
    p.join(5)
    t.join(5)
    position = log.index("preview")
    assert 1 <= position <= 2, log  # ran at the next slice boundary, not after the whole propagation
    assert [x for x in log if x != "preview"] == [f"slice{i}" for i in range(6)]


def test_two_long_jobs_alternate():
    gate = DeviceGate()
    log = []
    barrier = threading.Barrier(2)

    def propagation(name):
        barrier.wait()
        gate.acquire(2)
        try:
            for _ in range(4):
                gate.yield_turn(2)
                log.append(name)
                time.sleep(0.005)
        finally:
            gate.release()

    threads = [_start(propagation, "a"), _start(propagation, "b")]
    for t in threads:
        t.join(5)
    switches = sum(1 for x, y in zip(log, log[1:], strict=False) if x != y)
    assert sorted(log) == ["a"] * 4 + ["b"] * 4
    assert switches >= 4, log  # slice by slice, not one whole job after the other


def test_cancel_while_waiting():
    gate = DeviceGate()
    gate.acquire(0)
    cancelled = threading.Event()
    outcome = {}

    def waiter():
        try:
            gate.acquire(2, cancelled.is_set)
            outcome["got"] = True
        except GateCancelled:
            outcome["cancelled"] = True

    t = _start(waiter)
    _wait_until(lambda: len(gate._waiting) == 1)
    cancelled.set()
    t.join(2)
    assert outcome == {"cancelled": True}
    assert gate._waiting == []
    gate.release()
    with gate.hold(1):
        assert gate.busy


def test_release_by_a_thread_that_does_not_hold_it_is_ignored():
    gate = DeviceGate()
    gate.acquire(0)
    t = _start(gate.release)
    t.join(2)
    assert gate.busy
    gate.release()
    assert not gate.busy
