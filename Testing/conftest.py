"""Shared pytest fixtures: the shared data folder, a per-session weights cache, and test doubles."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTING = Path(__file__).resolve().parent

# OpenVINO's telemetry forks a process per event that hangs without internet (see
# SAMSegmentLib/backends/ov_runtime._block_telemetry); tests that import openvino themselves must not start it either.
if "openvino" not in sys.modules:
    sys.modules.setdefault("openvino_telemetry", None)


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

from shared_data import SHARED_DATA, shared_case  # noqa: E402,F401 - re-exported for the tests


@pytest.fixture(scope="session", autouse=True)
def session_weights_cache(tmp_path_factory: pytest.TempPathFactory):
    """A weights cache folder for the whole test session (checksum sidecars, OpenVINO exports).

    Exports are built at most once per session (the first test that loads a model on the OpenVINO backend pays
    the export) and never land in the user's cache or in ../shared. A cache named by the caller's
    SAMSEGMENT_WEIGHTS_DIR is kept (CI can point it at a persistent folder).
    """
    if os.environ.get("SAMSEGMENT_WEIGHTS_DIR"):
        yield Path(os.environ["SAMSEGMENT_WEIGHTS_DIR"])
        return
    folder = tmp_path_factory.mktemp("weights-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAMSEGMENT_WEIGHTS_DIR", str(folder))
        yield folder
