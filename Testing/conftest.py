"""Shared pytest fixtures: the shared data folder and test doubles."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTING = Path(__file__).resolve().parent


def _import_slicer_meta_package() -> None:
    """Import slicer-core's ``slicer`` once, with Testing/ off sys.path.

    ``slicer`` is a meta-package: it extends its __path__ with every ``slicer/`` folder on sys.path and imports
    every module it finds there. With Testing/ on sys.path (pytest and this file put it there) that includes
    Testing/slicer/, so the first ``import slicer`` imported the test modules as ``slicer.test_*``, and when that
    first import came from SAMSegmentEffectLib.bridge it ended in an import cycle (measured: ImportError 'cannot
    import name BridgeError from partially initialized module'). Later imports reuse this module."""
    if importlib.util.find_spec("slicer") is None:
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != TESTING]
    try:
        import slicer  # noqa: F401
    finally:
        sys.path[:] = saved


_import_slicer_meta_package()
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(TESTING))

SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_case(*parts: str) -> Path:
    """Path of a file in ../shared/data; skips the test (saying why) when the shared data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (CI always has ../shared beside the repository)")
    return path
