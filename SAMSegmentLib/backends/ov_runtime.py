"""OpenVINO on the CPU: export a model's graphs once into the weights cache, then run them from there.

Export goes straight from the torch module with ``openvino.convert_model`` (OpenVINO's PyTorch frontend: TorchScript
tracing), which needs no ONNX file or package in between, and is saved as OpenVINO IR (``model.xml`` + ``model.bin``)
with float32 weights (``compress_to_fp16=False``). Precision is chosen when compiling: ``INFERENCE_PRECISION_HINT``
``f32`` or ``bf16`` (bf16 only where the CPU computes it natively, AVX512_BF16 or AMX), so one export serves both.

Before an export is trusted (see export_cache.py) it is loaded, compiled in f32 and run on the example inputs; its
outputs must match the torch module's within ``CHECK_RTOL`` of their largest magnitude.

Run-time numbers (2-core Xeon with AMX, LiteMedSAM, from benchmarks/bench_engine.py): see the README.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from .export_cache import ExportError, cached_export
from .graphs import GraphSpec

log = logging.getLogger(__name__)

GRAPH_VERSION = 4  # bump when a graph in graphs.py changes meaning: old exports are then rebuilt
CHECK_RTOL = 1e-3
XML = "model.xml"


def openvino_available() -> bool:
    """True when the ``openvino`` package can be imported."""
    _block_telemetry()
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _block_telemetry() -> None:
    """Keep OpenVINO's usage telemetry (Google Analytics, on by default) out of this process.

    ``import openvino`` and ``convert_model`` send events through ``openvino_telemetry``, which forks a process from
    a worker thread to send each. Without internet that child hangs for ever (it blocks on the stdin lock held by the
    engine's exit-with-parent watcher) and keeps the server's sockets open: connections the server has closed never
    close for the client, whose next request on them is never answered. Clinical machines should not phone home
    anyway. No setting exists for this (only a consent file in the user's home); with ``openvino_telemetry``
    unimportable, OpenVINO uses its own stub (``openvino.tools.ovc.telemetry_stub``).
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # None: ``import openvino_telemetry`` -> ImportError


def _ov():
    _block_telemetry()
    import openvino

    return openvino


_core = None
_core_lock = threading.Lock()


def core():
    """The process's one ``openvino.Core``."""
    global _core
    with _core_lock:
        if _core is None:
            _core = _ov().Core()
        return _core


def native_bf16() -> bool:
    """True when OpenVINO reports native bf16 on this CPU (AVX512_BF16 / AMX)."""
    try:
        return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # an unusual build without the property: be conservative
        return False


def versions() -> dict[str, str]:
    return {"torch": torch.__version__, "openvino": _ov().__version__, "graph_version": str(GRAPH_VERSION)}


class OpenVINOGraph:
    """A compiled graph: call with torch tensors or numpy arrays, get float32 torch tensors (copies) back.

    One infer request guarded by a lock: calls from several threads run one after another.
    """

    def __init__(self, compiled, precision: str, path: Path) -> None:
        self.compiled = compiled
        self.precision = precision
        self.path = path
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def __call__(self, *inputs) -> list[torch.Tensor]:
        arrays = [
            np.ascontiguousarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
            for x in inputs
        ]
        with self._lock:
            self._request.infer(arrays, share_inputs=True)  # no input copies: the arrays outlive the call
            # the request reuses its output buffers: copy before releasing it
            return [torch.from_numpy(np.array(self._request.get_output_tensor(i).data, dtype=np.float32))
                    for i in range(len(self.compiled.outputs))]


def compile_graph(path: Path, precision: str) -> OpenVINOGraph:
    """Compile ``path/model.xml`` for the CPU with ``precision`` 'fp32' or 'bf16'."""
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": max(1, torch.get_num_threads()),
    }
    compiled = core().compile_model(core().read_model(str(path / XML)), "CPU", config)
    return OpenVINOGraph(compiled, precision, path)


def _torch_outputs(spec: GraphSpec) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = spec.module(*spec.example_inputs)
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o.detach().float() for o in out]


def _build(spec: GraphSpec, folder: Path) -> None:
    ov = _ov()
    import warnings

    with warnings.catch_warnings():  # tracing warns about Python values it records as constants
        warnings.simplefilter("ignore")
        with torch.no_grad():
            model = ov.convert_model(spec.module, example_input=spec.example_inputs,
                                     input=[ov.PartialShape(shape) for _, shape in spec.inputs])
    for port, (name, _) in zip(model.inputs, spec.inputs, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, spec.outputs, strict=True):
        port.get_tensor().set_names({name})
    ov.save_model(model, str(folder / XML), compress_to_fp16=False)


def _check(spec: GraphSpec, reference: list[torch.Tensor], folder: Path) -> None:
    graph = compile_graph(folder, "fp32")
    got = graph(*spec.example_inputs)
    if len(got) != len(reference):
        raise ExportError(f"the export in {folder} has {len(got)} outputs, the model {len(reference)}")
    for name, g, r in zip(spec.outputs, got, reference, strict=True):
        if tuple(g.shape) != tuple(r.shape):
            raise ExportError(f"output {name} of the export has shape {tuple(g.shape)}, the model {tuple(r.shape)}")
        err = float((g - r).abs().max())
        scale = max(1.0, float(r.abs().max()))
        if not err <= CHECK_RTOL * scale:
            raise ExportError(f"output {name} of the export differs from the model by {err:.3g} (scale {scale:.3g})")


def export_graph(spec: GraphSpec, root: Path, label: str, weights_sha256: str) -> Path:
    """The cached export folder of ``spec`` (built, checked and stored first when needed)."""
    key = {"runtime": "openvino", "graph": label, "weights_sha256": weights_sha256, **versions(),
           "inputs": spec.inputs, "shape": spec.shape_key}
    reference: list[torch.Tensor] = []

    def build(folder: Path) -> None:
        log.info("exporting %s to OpenVINO (once; this takes a while)", label)
        reference.extend(_torch_outputs(spec))
        _build(spec, folder)

    return cached_export(root, label, key, build, lambda folder: _check(spec, reference, folder))
