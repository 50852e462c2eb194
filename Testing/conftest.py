"""Shared pytest fixtures: the shared data folder, a per-session weights cache, and test doubles."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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
