"""Weights downloads in a child process, watched without blocking (the Slicer module's progress dialog polls it).

A Python thread in Slicer's interpreter would be starved of the GIL (see DESIGN.md), so the download runs as
``samsegment models --download NAME`` in another process (Slicer's PythonSlicer), which writes its progress to a
small JSON file; ``poll()`` reads that file and the process state. Cancel ends the process: the partial file stays
in the cache and the next download resumes it. No Qt here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import SAMSegmentLib

__all__ = ["DownloadState", "WeightsDownload"]


@dataclass(frozen=True)
class DownloadState:
    """``state``: 'running', 'done' (``path``), 'failed' (``message``) or 'cancelled'; bytes ``done`` of ``total``."""

    state: str
    done: int = 0
    total: int = 0
    message: str = ""
    path: str = ""


class WeightsDownload:
    """One model's weights download in a child process."""

    def __init__(self, model: str, python: str | None = None, env: dict[str, str] | None = None) -> None:
        self.model = model
        self.python = python or sys.executable
        self.env = env
        self.folder = Path(tempfile.mkdtemp(prefix="samsegment-download-"))
        self.progress_file = self.folder / "progress.json"
        self.log_path = self.folder / "download.log"
        self.proc: subprocess.Popen | None = None
        self._cancelled = False
        self._final: DownloadState | None = None

    def start(self) -> None:
        root = str(Path(SAMSegmentLib.__file__).resolve().parent.parent)
        argv = ["models", "--download", self.model, "--progress-file", str(self.progress_file)]
        bootstrap = f"import sys; sys.path.insert(0, {root!r}); from SAMSegmentLib.cli import main; sys.exit(main({argv!r}))"
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([self.python, "-c", bootstrap], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env,
                                         creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))

    def _read(self) -> dict:
        try:
            return json.loads(self.progress_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def poll(self) -> DownloadState:
        """Where the download stands (never blocks)."""
        if self._final is not None:
            return self._final
        info = self._read()
        code = self.proc.poll() if self.proc is not None else None
        if code is None:
            return DownloadState("running", int(info.get("done", 0)), int(info.get("total", 0)))
        info = self._read()
        if self._cancelled:
            state = DownloadState("cancelled", int(info.get("done", 0)), int(info.get("total", 0)))
        elif code == 0 and info.get("path"):
            state = DownloadState("done", path=str(info["path"]))
        else:
            message = str(info.get("error") or self._last_log_line() or f"the download process failed ({code})")
            state = DownloadState("failed", message=message)
        self._final = state
        self.cleanup()
        return state

    def _last_log_line(self) -> str:
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        last = lines[-1] if lines else ""
        return last.removeprefix("samsegment: error: ")

    def cancel(self) -> None:
        """Stop the download; the partial file stays and the next attempt resumes it."""
        self._cancelled = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
