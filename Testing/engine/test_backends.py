"""Backends: the export cache (atomic, verified, rebuilt when corrupted), backend and precision resolution, the
torch path without openvino, and OpenVINO against torch on LiteMedSAM's real weights and on SAM.

The OpenVINO exports of LiteMedSAM are built once per test session into the session's weights cache (see
conftest.py) and shared by every test here (and by the CLI tests, which run the default backend).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cases import CASES, box_per_slice_prompts, dice, one_box_prompts
from conftest import shared_case

from SAMSegmentLib.backends import (
    BackendUnavailableError,
    exports_dir,
    resolve_backend,
    resolve_precision,
    state_dict_sha256,
)
from SAMSegmentLib.backends.export_cache import MANIFEST, cached_export, check_entry

CPU = torch.device("cpu")


# --- export cache (no openvino needed) ----------------------------------------------------------------------------


def _writer(calls: list):
    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "model.bin").write_bytes(bytes(range(256)) * 64)
        (folder / "model.xml").write_text("<net/>")

    return build


def test_export_cache_builds_once_then_reuses(tmp_path):
    calls: list = []
    key = {"weights_sha256": "ab" * 32, "torch": "1"}
    first = cached_export(tmp_path, "m-part", key, _writer(calls))
    second = cached_export(tmp_path, "m-part", key, _writer(calls))
    assert first == second and len(calls) == 1
    manifest = json.loads((first / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.bin", "model.xml"}
    assert manifest["files"]["model.bin"]["size"] == 256 * 64
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folder left
    other = cached_export(tmp_path, "m-part", {**key, "torch": "2"}, _writer(calls))
    assert other != first and len(calls) == 2  # a new torch version is a new entry


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete-file", "delete-manifest", "bad-manifest"])
def test_export_cache_detects_corruption_and_rebuilds(tmp_path, damage):
    calls: list = []
    key = {"weights_sha256": "cd" * 32}
    folder = cached_export(tmp_path, "m-part", key, _writer(calls))
    good = (folder / "model.bin").read_bytes()
    target = folder / "model.bin"
    if damage == "flip-byte":  # same size, new mtime: caught by the SHA-256
        data = bytearray(good)
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(good[:10])
    elif damage == "delete-file":
        target.unlink()
    elif damage == "delete-manifest":
        (folder / MANIFEST).unlink()
    else:
        (folder / MANIFEST).write_text("{not json")
    assert check_entry(folder, key) is not None
    again = cached_export(tmp_path, "m-part", key, _writer(calls))
    assert len(calls) == 2, "the damaged entry must be rebuilt"
    assert again == folder and (again / "model.bin").read_bytes() == good
    assert check_entry(again, key) is None


def test_failed_or_partial_export_leaves_nothing_trusted(tmp_path):
    key = {"weights_sha256": "ef" * 32}

    def broken(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"half")
        raise RuntimeError("export crashed")

    with pytest.raises(RuntimeError, match="export crashed"):
        cached_export(tmp_path, "m-part", key, broken)
    assert list(tmp_path.iterdir()) == []

    def wrong(folder: Path) -> None:
        raise ValueError("outputs differ")

    with pytest.raises(ValueError, match="outputs differ"):
        cached_export(tmp_path, "m-part", key, _writer([]), check=wrong)
    assert list(tmp_path.iterdir()) == []
    # a folder under the final name without a manifest (a copy interrupted by hand, say) is not trusted
    calls: list = []
    final = cached_export(tmp_path, "m-part", key, _writer(calls))
    (final / MANIFEST).unlink()
    (final / "model.bin").write_bytes(b"partial")
    cached_export(tmp_path, "m-part", key, _writer(calls))
    assert len(calls) == 2 and check_entry(final, key) is None


def test_state_dict_hash_follows_weights():
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert state_dict_sha256(a) == state_dict_sha256(b)
    with torch.no_grad():
        b.weight[0, 0] += 1e-3
    assert state_dict_sha256(a) != state_dict_sha256(b)


# --- backend and precision resolution ------------------------------------------------------------------------------


def _hide_openvino(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError


def test_resolution_without_openvino(monkeypatch):
    _hide_openvino(monkeypatch)
    assert resolve_backend("auto", CPU) == "torch"
    assert resolve_backend("torch", CPU) == "torch"
    with pytest.raises(BackendUnavailableError, match="pip install openvino"):
        resolve_backend("openvino", CPU)
    assert resolve_precision("auto", "torch", CPU) == "fp32"
    assert resolve_precision("bf16", "torch", CPU) == "bf16"
    assert resolve_precision("auto", "torch", torch.device("cuda")) == "fp32"
    assert resolve_precision("fp32", "torch", CPU) == "fp32"
    with pytest.raises(BackendUnavailableError, match="unknown precision"):
        resolve_precision("fp16", "torch", CPU)
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        resolve_backend("onnx", CPU)


def test_resolution_with_openvino():
    pytest.importorskip("openvino")
    from SAMSegmentLib.backends.ov_runtime import native_bf16

    assert resolve_backend("auto", CPU) == "openvino"
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    assert resolve_backend("auto", torch.device("mps")) == "torch"
    with pytest.raises(BackendUnavailableError, match="CPU only"):
        resolve_backend("openvino", torch.device("cuda"))
    assert resolve_precision("auto", "openvino", CPU, "litemedsam") == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("bf16", "openvino", CPU) == ("bf16" if native_bf16() else "fp32")
    assert resolve_precision("fp32", "openvino", CPU) == "fp32"


def test_torch_backend_without_openvino(monkeypatch, tmp_path):
    """Without the package, auto loads plain torch and exports nothing; bf16 still means autocast there."""
    from SAMSegmentLib.models import load_model

    _hide_openvino(monkeypatch)
    monkeypatch.setenv("SAMSEGMENT_WEIGHTS_DIR", str(tmp_path))
    model = load_model("litemedsam", device="cpu")
    assert (model.backend, model.precision, model.runners, model.autocast_dtype) == ("torch", "fp32", {}, None)
    model = load_model("litemedsam", device="cpu", precision="bf16")
    assert (model.backend, model.precision, model.autocast_dtype) == ("torch", "bf16", torch.bfloat16)
    assert exports_dir() == tmp_path / "openvino" and not exports_dir().exists()
    emb = model.encode(np.full((64, 80), 100, dtype=np.uint8))
    assert emb.tensors["image_embed"].shape == (1, 256, 64, 64)


def test_cli_openvino_missing_is_one_line(monkeypatch, capsys, tmp_path):
    from SAMSegmentLib.cli import main

    _hide_openvino(monkeypatch)
    code = main(["demo", "-o", str(tmp_path / "out"), "--backend", "openvino", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "pip install openvino" in err and "--backend torch" in err


# --- OpenVINO against torch --------------------------------------------------------------------------------------

PROMPTS = {
    "box": dict(box=np.array([40.0, 50.0, 150.0, 160.0])),
    "one point": dict(points=np.array([[90.0, 100.0]]), labels=np.array([1])),
    "three points": dict(points=np.array([[90.0, 100.0], [60.0, 70.0], [120.0, 150.0]]), labels=np.array([1, 0, 1])),
    "box and points": dict(box=np.array([40.0, 50.0, 150.0, 160.0]), points=np.array([[30.0, 30.0]]),
                           labels=np.array([0])),
}


def _phantom(h: int = 180, w: int = 200) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = 40 + 15 * np.random.default_rng(1).standard_normal((h, w))
    img[((xx - 95) / 1.3) ** 2 + (yy - 105) ** 2 < 45**2] += 140
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def litemedsam_pair():
    """LiteMedSAM (real weights) on torch fp32 and on OpenVINO fp32 (exported once per session)."""
    pytest.importorskip("openvino")
    from SAMSegmentLib.models import load_model

    return (load_model("litemedsam", device="cpu", backend="torch", precision="fp32"),
            load_model("litemedsam", device="cpu", backend="openvino", precision="fp32"))


def _compare_decoders(ref_model, ov_model, image, atol_embed, atol_logits):
    e_ref, e_ov = ref_model.encode(image), ov_model.encode(image)
    assert e_ov.extra == e_ref.extra
    assert float((e_ov.tensors["image_embed"] - e_ref.tensors["image_embed"]).abs().max()) <= atol_embed
    for name, kw in PROMPTS.items():
        for multimask in (False, True):
            a = ref_model.decode(e_ref, multimask=multimask, **kw)
            b = ov_model.decode(e_ref, multimask=multimask, **kw)  # same embedding: the decoder alone
            assert a.low_res_logits.shape == b.low_res_logits.shape, name
            assert float((a.low_res_logits - b.low_res_logits).abs().max()) <= atol_logits, (name, multimask)
            assert float((a.iou - b.iou).abs().max()) <= 1e-4, (name, multimask)
    mask = ref_model.mask_to_low_res(_phantom() > 100, e_ref)
    a = ref_model.decode(e_ref, box=PROMPTS["box"]["box"], mask_input=mask)
    b = ov_model.decode(e_ref, box=PROMPTS["box"]["box"], mask_input=mask)
    assert float((a.low_res_logits - b.low_res_logits).abs().max()) <= atol_logits


def test_openvino_matches_torch_litemedsam(litemedsam_pair):
    torch_model, ov_model = litemedsam_pair
    assert set(ov_model.runners) == {"image_encoder", "prompt_decoder"}
    _compare_decoders(torch_model, ov_model, _phantom(), atol_embed=1e-4, atol_logits=2e-3)


def test_export_is_reused_and_a_corrupted_one_rebuilt(litemedsam_pair):
    """The second load reads the session's export; damaging the cached weights file forces a rebuild."""
    from SAMSegmentLib.models import load_model

    _, ov_model = litemedsam_pair
    folder = ov_model.runners["prompt_decoder"].path
    built = folder.stat().st_mtime_ns
    again = load_model("litemedsam", device="cpu", backend="openvino", precision="fp32")
    assert again.runners["prompt_decoder"].path == folder and folder.stat().st_mtime_ns == built
    binary = folder / "model.bin"
    data = bytearray(binary.read_bytes())
    data[len(data) // 2] ^= 0x55  # same size: only the hash can tell
    binary.write_bytes(bytes(data))
    assert check_entry(folder, json.loads((folder / MANIFEST).read_text())["key"]) is not None
    rebuilt = load_model("litemedsam", device="cpu", backend="openvino", precision="fp32")
    assert rebuilt.runners["prompt_decoder"].path == folder
    assert check_entry(folder, json.loads((folder / MANIFEST).read_text())["key"]) is None
    emb = rebuilt.encode(_phantom())
    a = litemedsam_pair[0].decode(emb, box=PROMPTS["box"]["box"])
    b = rebuilt.decode(emb, box=PROMPTS["box"]["box"])
    assert float((a.low_res_logits - b.low_res_logits).abs().max()) <= 2e-3


@pytest.mark.slow
def test_openvino_matches_torch_sam(tmp_path):
    """SAM ViT-B (random, two encoder blocks as in test_equivalence_sam.py) exported to OpenVINO f32."""
    pytest.importorskip("openvino")
    pytest.importorskip("segment_anything")
    from segment_anything import sam_model_registry

    from SAMSegmentLib.backends import apply_backend
    from SAMSegmentLib.models.sam import SAM

    torch.manual_seed(0)
    net = sam_model_registry["vit_b"]()
    net.image_encoder.blocks = torch.nn.ModuleList([net.image_encoder.blocks[1], net.image_encoder.blocks[2]])
    net.eval()
    ref = SAM(net, "cpu")
    ov_model = SAM(net, "cpu")
    ov_model.name = "sam_vit_b_test"
    apply_backend(ov_model, "openvino", "fp32", root=tmp_path)
    assert set(ov_model.runners) == {"image_encoder", "prompt_decoder"}
    rgb = np.repeat(_phantom()[:, :, None], 3, axis=2)
    _compare_decoders(ref, ov_model, rgb, atol_embed=1e-3, atol_logits=2e-3)


@pytest.mark.slow
def test_default_cpu_backend_keeps_fp32_dice_on_lung2():
    """The default CPU backend and precision (OpenVINO fp32) and OpenVINO bf16 against torch fp32 on a real case:
    box on every labelled slice, and one box propagated both ways (benchmarks/bench_engine.py --dice: all cases)."""
    pytest.importorskip("openvino")
    from SAMSegmentLib.io import read_labelmap, read_volume
    from SAMSegmentLib.models import load_model
    from SAMSegmentLib.request import request_from_dict
    from SAMSegmentLib.session import SegmentationSession

    folder, image, label, value, axis = CASES["lung2"]
    volume = read_volume(shared_case(folder, image))
    lab, _ = read_labelmap(shared_case(folder, label))
    ref = np.rint(lab).astype(np.int64) == value
    from SAMSegmentLib.backends.ov_runtime import native_bf16

    # bf16 only where the CPU computes it (elsewhere OpenVINO runs it in fp32, which "auto" already covers)
    configs = [("torch", "fp32"), ("auto", "auto")] + ([("openvino", "bf16")] if native_bf16() else [])
    scores = {}
    for backend, precision in configs:
        model = load_model("litemedsam", device="cpu", backend=backend, precision=precision)
        session = SegmentationSession(model, volume)
        for protocol, build in (("box-per-slice", box_per_slice_prompts), ("one-box", one_box_prompts)):
            scores[(backend, protocol)] = dice(session.segment(request_from_dict(build(ref, axis))), ref)
    print(scores)
    for protocol in ("box-per-slice", "one-box"):
        for backend in [c[0] for c in configs[1:]]:
            assert abs(scores[(backend, protocol)] - scores[("torch", protocol)]) <= 0.005, (backend, protocol, scores)


def test_auto_falls_back_to_torch_when_an_export_fails(monkeypatch, caplog):
    """backend auto: a failed export (unwritable cache, a graph that does not convert) leaves a working torch model;
    backend openvino asked for explicitly: the error is raised."""
    pytest.importorskip("openvino")
    from SAMSegmentLib.backends import ov_runtime
    from SAMSegmentLib.backends.export_cache import ExportError
    from SAMSegmentLib.models import load_model

    def fail(*args, **kwargs):
        raise ExportError("cannot write the model export cache in /nowhere; set SAMSEGMENT_WEIGHTS_DIR")

    monkeypatch.setattr(ov_runtime, "export_graph", fail)
    model = load_model("litemedsam", device="cpu")
    assert (model.backend, model.precision, model.runners) == ("torch", "fp32", {})
    assert "using torch" in caplog.text
    with pytest.raises(ExportError, match="SAMSEGMENT_WEIGHTS_DIR"):
        load_model("litemedsam", device="cpu", backend="openvino")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, caplog, native):
    """OpenVINO's auto precision is bf16 on CPUs with native bf16 and fp32 elsewhere, without the warning an
    explicit bf16 request gets there; models whose bf16 Dice was never measured stay fp32."""
    import logging

    from SAMSegmentLib.backends import ov_runtime

    monkeypatch.setattr(ov_runtime, "native_bf16", lambda: native)
    with caplog.at_level(logging.WARNING):
        assert resolve_precision("auto", "openvino", CPU, "litemedsam") == ("bf16" if native else "fp32")
        assert resolve_precision("auto", "openvino", CPU, "sam2.1_hiera_tiny") == "fp32"
        assert resolve_precision("auto", "openvino", CPU) == "fp32"
    assert not caplog.records
    assert resolve_precision("auto", "torch", CPU) == "fp32"
    if not native:
        with caplog.at_level(logging.WARNING):
            assert resolve_precision("bf16", "openvino", CPU) == "fp32"
        assert "no native bf16" in caplog.text
