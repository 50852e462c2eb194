"""How a model runs: torch (CUDA, MPS, CPU) or graphs exported once to OpenVINO (CPU), behind one SliceModel.

A loaded model (models/base.py ``SliceModel``) keeps its torch modules; the OpenVINO backend adds compiled graphs
to ``model.runners`` (``image_encoder``, ``prompt_decoder``) and the adapters run those instead of the torch parts,
with the same inputs and outputs. Everything above the model (predictor, propagators, prefetch, evaluation) is
unchanged. Backend and precision are decided in one place, ``models.load_model``, through :func:`resolve_backend`
and :func:`resolve_precision`:

- backend ``auto``: OpenVINO on the CPU when the ``openvino`` package is importable, torch on CUDA and MPS (and on
  the CPU without openvino);
- precision ``auto``: the fastest one whose Dice stayed within 0.005 of torch fp32 on every shared case for
  box-per-slice and one-box (benchmarks/bench_engine.py --dice; :data:`AUTO_PRECISION`): with OpenVINO, bf16 on
  CPUs that compute it natively (AVX512_BF16 or AMX; 2.4x faster per embedding than OpenVINO fp32, largest Dice
  change 0.0037 on brain1 box-per-slice and one-box) and fp32 on the others (where OpenVINO would
  run the bf16 hint in fp32 anyway); with torch, fp32 (its CPU bf16 autocast is only 1.2-1.3x faster and is slow
  on CPUs without native bf16). That measurement exists only for LiteMedSAM, the one model with real weights
  offline (:data:`BF16_CHECKED_MODELS`): the other models stay fp32 under ``auto`` until their Dice is checked.
  ``precision="fp32"`` keeps the fp32 numerics everywhere.

Exports live in the weights cache (``<weights_dir>/openvino``), keyed by the weights' SHA-256, the torch and
openvino versions and the graph version; see export_cache.py for how they are built and verified.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ..models.base import SliceModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
#: What ``precision="auto"`` means per backend (see the module docstring for the measurement behind it).
AUTO_PRECISION = {"openvino": "bf16", "torch": "fp32"}  # openvino: bf16 only where native_bf16() ...
#: ... and only for the models whose bf16 Dice was measured against torch fp32 on the shared cases.
BF16_CHECKED_MODELS = frozenset({"litemedsam"})

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "BackendUnavailableError",
    "apply_backend",
    "exports_dir",
    "openvino_available",
    "resolve_backend",
    "resolve_precision",
    "state_dict_sha256",
]


class BackendUnavailableError(RuntimeError):
    """The requested backend or precision cannot run here; the message says what to choose instead."""


def openvino_available() -> bool:
    """True when the optional ``openvino`` package is installed."""
    from .ov_runtime import openvino_available as available

    return available()


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """'torch' or 'openvino' for the requested ``backend`` (auto, torch, openvino) on ``device``."""
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "openvino" if device.type == "cpu" and openvino_available() else "torch"
    if backend == "openvino":
        if device.type != "cpu":
            raise BackendUnavailableError(
                f"the OpenVINO backend runs on the CPU only, not on {device.type}; use --device cpu or --backend torch"
            )
        if not openvino_available():
            raise BackendUnavailableError(
                "the OpenVINO backend needs the 'openvino' package, which is not installed: "
                "pip install openvino (or pip install samsegment[openvino]), or use --backend torch"
            )
    return backend


def resolve_precision(precision: str | None, backend: str, device: torch.device, model: str | None = None) -> str:
    """'fp32' or 'bf16' for the requested ``precision`` (auto, fp32, bf16) with ``backend`` on ``device`` for the
    model named ``model`` (auto means bf16 only for :data:`BF16_CHECKED_MODELS`)."""
    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise BackendUnavailableError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if backend == "openvino":
        from .ov_runtime import native_bf16

        if precision == "auto":
            checked = model in BF16_CHECKED_MODELS
            return AUTO_PRECISION["openvino"] if checked and native_bf16() else "fp32"
        if precision == "bf16" and not native_bf16():
            log.warning("this CPU has no native bf16 (AVX512_BF16 or AMX): OpenVINO runs in fp32")
            return "fp32"
        return precision
    if precision == "auto":
        return AUTO_PRECISION["torch"] if device.type == "cpu" else "fp32"
    return precision


def exports_dir() -> Path:
    """Where exported graphs are cached: ``<weights cache>/openvino``."""
    from ..models.checkpoints import weights_dir

    return weights_dir() / "openvino"


def state_dict_sha256(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes): the weights key of models built without a
    weights file (random initialisation in tests and benchmarks)."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def apply_backend(model: SliceModel, backend: str, precision: str, weights_sha256: str | None = None,
                  root: Path | None = None) -> SliceModel:
    """Make ``model`` run with ``backend`` ('torch' / 'openvino') at ``precision`` ('fp32' / 'bf16').

    torch: bf16 means autocast. openvino: each graph the model offers (``model.export_graphs()``) is exported
    once into ``root`` (default :func:`exports_dir`) under ``weights_sha256`` (default: the hash of the state dict)
    and compiled at ``precision``.
    """
    import torch

    model.runners = {}
    if backend == "torch":
        model.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    elif backend == "openvino":
        from .ov_runtime import compile_graph, export_graph

        model.autocast_dtype = torch.bfloat16 if precision == "bf16" else None  # the parts left in torch
        root = Path(root) if root is not None else exports_dir()
        graphs = model.export_graphs()
        if graphs and weights_sha256 is None:
            weights_sha256 = state_dict_sha256(model.torch_module())
        for part, spec in graphs.items():
            folder = export_graph(spec, root, f"{model.name}-{part}", weights_sha256)
            model.runners[part] = compile_graph(folder, precision)
    else:
        raise BackendUnavailableError(f"unknown backend {backend!r}")
    model.backend = backend
    model.precision = precision
    log.info("%s runs on %s (%s%s)", model.name, backend, precision,
             f", OpenVINO: {', '.join(model.runners)}" if model.runners else "")
    return model
