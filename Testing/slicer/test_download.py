"""Weights downloads in a child process (SAMSegment/SAMSegmentEffectLib/download.py), polled from an emulated Slicer
main thread: no Python thread of this process takes part, so nothing starves."""

from __future__ import annotations

import sys
import threading

from SAMSegmentEffectLib.download import WeightsDownload
from slicer_main_thread import EmulatedMainThread


def poll_until_finished(download, timeout_s=120):
    states = []

    def tick():
        states.append(download.poll())
        return states[-1].state != "running"

    run = EmulatedMainThread(0.040).run(tick, timeout_s)
    return run, states


def test_a_finished_download_reports_the_verified_path(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSEGMENT_WEIGHTS_DIR", str(tmp_path))
    threads_before = set(threading.enumerate())
    download = WeightsDownload("litemedsam", python=sys.executable)
    download.start()
    run, states = poll_until_finished(download)
    assert run.finished and states[-1].state == "done", states[-1]
    assert states[-1].path.endswith(".pth")
    assert not set(threading.enumerate()) - threads_before  # the watching started no thread (others may end)
    assert not download.folder.exists()  # progress file cleaned up


def test_a_failed_download_says_why_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSEGMENT_WEIGHTS_DIR", str(tmp_path))
    download = WeightsDownload("no-such-model", python=sys.executable)
    download.start()
    run, states = poll_until_finished(download)
    final = states[-1]
    assert run.finished and final.state == "failed"
    assert "no-such-model" in final.message and "Traceback" not in final.message and "\n" not in final.message


def test_cancel_stops_the_process(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSEGMENT_WEIGHTS_DIR", str(tmp_path))
    download = WeightsDownload("litemedsam", python=sys.executable)
    download.start()
    download.cancel()
    run, states = poll_until_finished(download, timeout_s=30)
    assert run.finished and states[-1].state == "cancelled"
    assert download.proc.poll() is not None
