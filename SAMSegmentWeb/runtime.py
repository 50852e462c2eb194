"""Process set-up for rendering next to in-process models.

Mesa's llvmpipe (the CPU OpenGL that VTK's EGL path uses on machines without a GPU) loads its own LLVM when the
first GL context is created; triton (imported by torch when a model loads) bundles another LLVM, and loading it
after llvmpipe crashes the process (measured: segmentation fault, exit 139, whether torch was imported before the GL
context or not; no crash when triton is imported first). ``preload_model_runtime`` imports triton, when installed,
before any GL context exists. Web sessions need none of this (their models run in the engine process); a process
that renders and runs models itself (the test process: offscreen views next to in-process models) does.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

log = logging.getLogger(__name__)

__all__ = ["preload_model_runtime"]

_done = False


def preload_model_runtime() -> None:
    """Import triton now if it is installed (call before the first OpenGL context of the process)."""
    global _done
    if _done:
        return
    _done = True
    try:
        if importlib.util.find_spec("triton") is not None:
            importlib.import_module("triton")
    except Exception as exc:  # a broken triton only matters to models that use it; rendering must not fail
        log.warning("triton could not be imported before rendering (%s); model loading may crash", exc)
