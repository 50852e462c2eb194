"""Fixtures for the Slicer-layer tests: the SAMSegment/ modules on sys.path, and one headless Slicer scene.

The scene comes from trame-slicer's SlicerApp (slicer-core's MRML, Segmentations and Volumes logic, no Qt): built
once per session (about 1-3 s). Tests that need it skip, saying why, where slicer-core or trame-slicer is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "SAMSegment"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


@pytest.fixture(scope="session")
def slicer_app():
    """trame-slicer's SlicerApp: a vtkMRMLScene with the Segmentations, Volumes, ... module logics registered."""
    pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")
    core = pytest.importorskip("trame_slicer.core", reason="trame-slicer is not installed (pip install trame-slicer)")
    return core.SlicerApp()


@pytest.fixture
def scene(slicer_app):
    """The session's scene, emptied after each test."""
    yield slicer_app.scene
    slicer_app.scene.Clear(False)
