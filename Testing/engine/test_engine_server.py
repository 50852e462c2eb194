"""``samsegment serve`` and its client over real loopback HTTP (uvicorn in a thread, models are test doubles):

- the in-process engine and the engine server give the same masks for the same requests;
- access: tokens checked (401 with a reason), /health open, protocol mismatch explained (409);
- isolation: another token's session ids answer exactly like unknown ones, and cannot be cancelled or closed;
- malformed payloads get a 4xx with a reason and the server keeps serving;
- a client that disconnects mid-propagation frees it; an expired session (evicted, or the server restarted) is
  reopened and the request replayed without the caller noticing.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import zlib

import numpy as np
import pytest
from doubles import ThresholdModel
from engine_servers import blob_volume, threaded_server

from SAMSegmentLib.engine import wire
from SAMSegmentLib.engine.api import EngineError, SessionSpec
from SAMSegmentLib.engine.client import BadRequest, RemoteEngine
from SAMSegmentLib.engine.core import EngineCore
from SAMSegmentLib.engine.local import InProcessEngine
from SAMSegmentLib.prompts import PromptError, SlicePrompt

TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-0123456789abcdef"
SPEC = SessionSpec(model="litemedsam", window=(0.0, 1000.0))
BOX = SlicePrompt(box=[8, 12, 32, 36])


class SlowThreshold(ThresholdModel):
    def __init__(self):
        super().__init__(encode_delay=0.05)


@pytest.fixture
def server():
    core = EngineCore(model_loader=lambda spec: ThresholdModel())
    with threaded_server(core, tokens=(TOKEN_A, TOKEN_B), max_upload_mb=1) as running:
        yield running


def raw(server, method, path, body=b"", token=TOKEN_A, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    h = {"X-SAMSegment-Protocol": "1", **(headers or {})}
    if token:
        h["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=h)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    try:
        return response.status, json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.status, data


def upload(server, array, token=TOKEN_A, encoding="zlib"):
    header = wire.volume_header(array, np.eye(4), encoding)
    payload = array.tobytes()
    body = wire.pack(header) + (zlib.compress(payload) if encoding == "zlib" else payload)
    return raw(server, "POST", "/v1/volumes", body, token)


def open_raw_session(server, token=TOKEN_A):
    array, _ = blob_volume()
    status, data = upload(server, array, token)
    assert status == 200, data
    status, data = raw(server, "POST", "/v1/sessions", json.dumps({"volume": data["volume"], "spec": SPEC.to_json()}),
                       token)
    assert status == 200, data
    return data["session"]


def collect(request, timeout=20):
    """Wait for a propagation; its outcomes by slice index."""
    outcomes = {}

    def keep(event):
        if event.kind == "result":
            outcomes[event.value.index] = event.value

    request.wait(timeout, on_event=keep)
    return outcomes


def preview_body(index=10, box=(8, 12, 32, 36)):
    blobs: list[bytes] = []
    return wire.pack({"axis": "K", "index": index, "prompt": wire.prompt_to_wire(SlicePrompt(box=list(box)), blobs)},
                     blobs)


# --------------------------------------------------------------------------------------------------- agreement


def test_in_process_and_server_agree(server):
    array, obj = blob_volume()
    results = []
    for engine in (InProcessEngine(model_loader=lambda spec: ThresholdModel()),
                   RemoteEngine(server.url, token=TOKEN_A)):
        try:
            session = engine.open_session(array, np.diag([0.8, 0.8, 2.5, 1.0]), SPEC)
            preview = session.preview("K", 10, BOX).wait(20)
            request = session.propagate("K", {10: BOX}, "both")
            outcomes = collect(request)
            results.append((preview, outcomes, request.result))
        finally:
            engine.close()
    (p1, o1, s1), (p2, o2, s2) = results
    np.testing.assert_array_equal(p1.mask, p2.mask)
    np.testing.assert_array_equal(p1.mask, obj[10])
    assert p1.score == pytest.approx(p2.score) and p1.window == p2.window
    assert sorted(o1) == sorted(o2) == list(range(20))
    for index in o1:
        np.testing.assert_array_equal(o1[index].mask, o2[index].mask)
        np.testing.assert_array_equal(o1[index].mask, obj[index])
        assert (o1[index].source, o1[index].seed, o1[index].stopped) == (o2[index].source, o2[index].seed,
                                                                          o2[index].stopped)
    assert s1.recomputed == s2.recomputed


# --------------------------------------------------------------------------------------------------- access


def test_health_is_open_and_everything_else_needs_the_token(server):
    status, data = raw(server, "GET", "/health", token=None)
    assert status == 200 and data["status"] == "ok" and data["protocol"] == 1
    status, data = raw(server, "POST", "/v1/hello", json.dumps({"protocol": 1}), token=None)
    assert status == 401 and "needs an access token" in data["error"]
    status, data = raw(server, "POST", "/v1/hello", json.dumps({"protocol": 1}), token="wrong-token-0123456789")
    assert status == 401 and "wrong" in data["error"] and "wrong-token" not in data["error"]
    status, data = raw(server, "POST", "/v1/hello", json.dumps({"protocol": 1}))
    assert status == 200 and data["protocol"] == 1


def test_client_reports_a_wrong_token_in_one_sentence(server):
    engine = RemoteEngine(server.url, token="not-the-token-0123456789")
    with pytest.raises(EngineError, match="access token is wrong"):
        engine.hello().wait(10)
    engine.close()


def test_protocol_mismatch_is_explained(server):
    status, data = raw(server, "POST", "/v1/hello", json.dumps({"protocol": 99, "client_version": "9.9"}),
                       headers={"X-SAMSegment-Protocol": "1"})
    assert status == 409 and "update the server or the extension" in data["error"]
    status, data = raw(server, "POST", "/v1/volumes", b"", headers={"X-SAMSegment-Protocol": "99"})
    assert status == 409 and "protocol 99" in data["error"]


def test_another_tokens_session_looks_unknown_and_stays_intact(server):
    sid = open_raw_session(server, TOKEN_A)
    for method, path, body in [("POST", f"/v1/sessions/{sid}/preview", preview_body()),
                               ("POST", f"/v1/sessions/{sid}/cancel", json.dumps({"job": "abcdefgh"})),
                               ("DELETE", f"/v1/sessions/{sid}", b"")]:
        status_b, data_b = raw(server, method, path, body, TOKEN_B)
        status_x, data_x = raw(server, method, path.replace(sid, "made-up-session-id"), body, TOKEN_B)
        assert status_b == status_x == 410 and data_b == data_x  # indistinguishable from an unknown id
    status, data = raw(server, "POST", f"/v1/sessions/{sid}/preview", preview_body(), TOKEN_A)
    assert status == 200  # still there for its owner
    assert len(sid) >= 24


# --------------------------------------------------------------------------------------------------- bad input


def test_upload_limit(server):
    big = np.zeros((40, 128, 128), np.int16)  # 1.3 MB > 1 MB
    status, data = upload(server, big, encoding="raw")
    assert status == 413 and "upload limit of 1 MB" in data["error"]


@pytest.mark.parametrize("case", ["truncated", "longer", "dtype", "nan", "garbage", "matrix"])
def test_malformed_volumes_get_a_reason(server, case):
    array = np.arange(2 * 8 * 8, dtype=np.int16).reshape(2, 8, 8)
    header = wire.volume_header(array, np.eye(4), "raw")
    payload = array.tobytes()
    if case == "truncated":
        body = wire.pack(header) + payload[:-10]
    elif case == "longer":
        body = wire.pack(header) + payload + b"12"
    elif case == "dtype":
        body = wire.pack(dict(header, dtype="object")) + payload
    elif case == "nan":
        f = array.astype(np.float32)
        f[1, 2, 3] = np.nan
        body = wire.pack(wire.volume_header(f, np.eye(4), "raw")) + f.tobytes()
    elif case == "garbage":
        body = b"this is not an envelope"
    else:
        body = wire.pack(dict(header, ijk_to_ras=[[0] * 4] * 4)) + payload
    status, data = raw(server, "POST", "/v1/volumes", body)
    assert status == 400, data
    assert data["code"] == "bad-request" and len(data["error"]) > 10
    assert upload(server, array)[0] == 200  # and the server keeps serving


@pytest.mark.parametrize("case,match", [
    ("box outside", "outside"),
    ("slice outside", "outside the volume"),
    ("bad axis", "axis must be"),
    ("truncated", "truncated"),
    ("exclude only", "exclude"),
])
def test_malformed_previews_get_a_reason(server, case, match):
    sid = open_raw_session(server)
    body = preview_body()
    if case == "box outside":
        body = preview_body(box=(8, 12, 300, 36))
    elif case == "slice outside":
        body = preview_body(index=400)
    elif case == "bad axis":
        h, b = wire.unpack(body)
        body = wire.pack(dict(h, axis="Q"), b)
    elif case == "truncated":
        body = body[:-3]
    elif case == "exclude only":
        blobs: list[bytes] = []
        body = wire.pack({"axis": "K", "index": 3, "prompt": wire.prompt_to_wire(
            SlicePrompt(points=[[5, 5]], labels=[0]), blobs)}, blobs)
    status, data = raw(server, "POST", f"/v1/sessions/{sid}/preview", body)
    assert status == 400 and match in data["error"], data
    assert raw(server, "POST", f"/v1/sessions/{sid}/preview", preview_body())[0] == 200


def test_bad_propagation_is_refused_before_it_starts(server):
    engine = RemoteEngine(server.url, token=TOKEN_A)
    array, _ = blob_volume()
    session = engine.open_session(array, np.eye(4), SPEC)
    with pytest.raises(BadRequest, match="outside the volume"):
        session.propagate("K", {50: BOX}, "both").wait(10)
    with pytest.raises(BadRequest, match="propagate must be"):
        session.propagate("K", {5: BOX}, "sideways").wait(10)
    assert session.preview("K", 5, BOX).wait(10).mask.any()
    engine.close()


def test_unknown_model_is_a_bad_request(server):
    engine = RemoteEngine(server.url, token=TOKEN_A)
    array, _ = blob_volume()
    session = engine.open_session(array, np.eye(4), SessionSpec(model="no-such-model"))
    with pytest.raises(BadRequest, match="no-such-model"):
        session.opening.wait(10)
    engine.close()


# --------------------------------------------------------------------------------------------------- faults


def test_disconnect_mid_propagation_frees_it():
    core = EngineCore(model_loader=lambda spec: SlowThreshold())
    with threaded_server(core, tokens=(TOKEN_A,)) as server:
        array, _ = blob_volume(n=80, first=2, last=77)
        status, data = upload(server, array)
        status, data = raw(server, "POST", "/v1/sessions", json.dumps({"volume": data["volume"],
                                                                       "spec": SPEC.to_json()}))
        sid = data["session"]
        blobs: list[bytes] = []
        body = wire.pack({"axis": "K", "prompts": wire.prompts_to_wire({40: BOX}, blobs), "direction": "both",
                          "range": None, "job": "job-disconnect"}, blobs)
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall((f"POST /v1/sessions/{sid}/propagate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        assert sock.recv(100)  # the stream has started
        session = core.session(sid, owner=_owner(TOKEN_A))
        job = session.propagation
        assert job is not None and not job.done
        sock.close()
        deadline = time.monotonic() + 5
        while not job.done and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.state == "cancelled"
        assert job.progress[0] < 70  # stopped long before the 78 slices were done


def _owner(token):
    from SAMSegmentLib.engine.server import owner_of

    return owner_of(token)


def test_an_evicted_session_is_reopened_and_the_request_replayed(server):
    engine = RemoteEngine(server.url, token=TOKEN_A)
    array, obj = blob_volume()
    session = engine.open_session(array, np.eye(4), SPEC, volume_key="v")
    assert session.preview("K", 10, BOX).wait(10).mask.any()
    first = session.sid
    server.core.close_session(first, owner=_owner(TOKEN_A))  # what an eviction does
    result = session.preview("K", 11, BOX).wait(10)
    np.testing.assert_array_equal(result.mask, obj[11])
    assert session.sid != first
    engine.close()


def test_a_restarted_server_gets_the_volume_again_and_the_request_is_replayed():
    array, obj = blob_volume()
    core1 = EngineCore(model_loader=lambda spec: ThresholdModel())
    with threaded_server(core1, tokens=(TOKEN_A,)) as first:
        port = first.port
        engine = RemoteEngine(first.url, token=TOKEN_A)
        session = engine.open_session(array, np.eye(4), SPEC, volume_key="v")
        assert session.preview("K", 10, BOX).wait(10).mask.any()
    core2 = EngineCore(model_loader=lambda spec: ThresholdModel())
    with threaded_server(core2, tokens=(TOKEN_A,), port=port):
        outcomes = collect(session.propagate("K", {10: BOX}, "both"))
        assert sorted(outcomes) == list(range(20))
        for index, outcome in outcomes.items():
            np.testing.assert_array_equal(outcome.mask, obj[index])
        assert core2.session_ids == [session.sid]
    engine.close()


def test_a_stopped_server_is_reported_in_one_sentence():
    core = EngineCore(model_loader=lambda spec: ThresholdModel())
    with threaded_server(core) as server:
        url = server.url
    engine = RemoteEngine(url)
    array, _ = blob_volume()
    session = engine.open_session(array, np.eye(4), SPEC)
    with pytest.raises(EngineError, match="cannot be reached"):
        session.preview("K", 1, BOX).wait(10)
    engine.close()


def test_cancelled_previews_that_were_not_sent_never_reach_the_model():
    """The effect cancels a superseded preview of the same slice; one still queued in the client is dropped unsent."""
    model = ThresholdModel()
    core = EngineCore(model_loader=lambda spec: model)
    with threaded_server(core, tokens=(TOKEN_A,)) as server:
        array, _ = blob_volume()
        engine = RemoteEngine(server.url, token=TOKEN_A, max_connections=1)
        try:
            session = engine.open_session(array, np.eye(4), SPEC)
            session.preview("K", 10, BOX).wait(20)
            before = per_preview = model.decode_calls  # a box preview decodes each of the box's trials
            first = session.preview("K", 10, SlicePrompt(box=[9, 12, 32, 36]))
            superseded = [session.preview("K", 10, SlicePrompt(box=[8, 12, 32, 36 - n])) for n in range(1, 4)]
            last = session.preview("K", 10, SlicePrompt(box=[8, 13, 32, 36]))
            for request in superseded:
                request.cancel()
            assert last.wait(20).mask.any() and first.wait(20).mask.any()
            for request in superseded:
                with pytest.raises(EngineError):  # a cancelled request ends as cancelled, not with a mask
                    request.wait(5)
            assert model.decode_calls - before == 2 * per_preview  # the first (already sent) and the last one only
        finally:
            engine.close()


def test_a_preview_does_not_wait_for_another_clients_propagation():
    core = EngineCore(model_loader=lambda spec: SlowThreshold())
    with threaded_server(core, tokens=(TOKEN_A, TOKEN_B)) as server:
        array, _ = blob_volume(n=60, first=2, last=57)
        a = RemoteEngine(server.url, token=TOKEN_A)
        b = RemoteEngine(server.url, token=TOKEN_B)
        sa = a.open_session(array, np.eye(4), SPEC)
        sb = b.open_session(array.copy(), np.eye(4), SPEC)
        sb.preview("K", 3, BOX).wait(10)  # b's session is open and its slice 3 embedded
        propagation = sa.propagate("K", {30: BOX}, "both")
        deadline = time.monotonic() + 10
        while propagation.progress[0] < 5 and time.monotonic() < deadline:
            a.poll(0.01)
            time.sleep(0.01)
        started = time.monotonic()
        sb.preview("K", 3, SlicePrompt(box=[9, 12, 32, 36])).wait(10)
        waited = time.monotonic() - started
        a.poll(0.01)
        assert not propagation.done, "the propagation finished first: the test proves nothing"
        # one slice of the propagation takes >= 0.05 s (encode) and it has 55 left: the preview got in between
        assert waited < 0.05 * 10
        propagation.cancel()
        with pytest.raises(EngineError):
            propagation.wait(10)
        a.close()
        b.close()


def test_prompt_errors_keep_their_type_through_the_stream(server):
    engine = RemoteEngine(server.url, token=TOKEN_A)
    array, _ = blob_volume()
    session = engine.open_session(array, np.eye(4), SPEC)
    # valid on its face (it passes validation), but slice 2 lies behind a forward-only propagation from slice 10, so
    # its exclude-only correction has nothing to correct: the job itself fails, and its error record must arrive as
    # a PromptError
    request = session.propagate("K", {10: BOX, 2: SlicePrompt(points=[[3, 3]], labels=[0])}, "forward")
    with pytest.raises(PromptError, match="exclude"):
        request.wait(10)
    assert not isinstance(request.error, BadRequest)
    engine.close()


# --------------------------------------------------------------------------------------------------- memory


def test_memory_budget_evicts_idle_sessions_lru_and_clients_reopen():
    """Budget for two sessions' caches plus volumes: a third client's session evicts the least recently used idle
    one, whose next request reopens it transparently (and gives the same mask)."""
    array, obj = blob_volume()
    vol_mb = array.nbytes / 2**20
    core = EngineCore(model_loader=lambda spec: ThresholdModel(), memory_mb=int(2 * 4 + 3 * vol_mb) + 1,
                      session_cache_mb=4)
    loads = []
    with threaded_server(core, tokens=(TOKEN_A,)) as server:
        engines = [RemoteEngine(server.url, token=TOKEN_A) for _ in range(3)]
        sessions = []
        for n, engine in enumerate(engines):
            session = engine.open_session(array + n, np.eye(4), SessionSpec(window=(0, 1000), cache_mb=64))
            session.preview("K", 10, BOX).wait(10)
            sessions.append(session)
            loads.append(core.memory_used)
        assert core.evictions >= 1  # the first (least recently used) went to make room for the third
        assert max(loads) <= core.memory_bytes
        first = sessions[0].sid
        assert first not in core.session_ids
        result = sessions[0].preview("K", 11, BOX).wait(10)  # reopened, volume sent again
        np.testing.assert_array_equal(result.mask, obj[11])
        assert sessions[0].sid != first
        for engine in engines:
            engine.close()


def test_one_model_copy_serves_every_session(server):
    calls = []
    core = EngineCore(model_loader=lambda spec: calls.append(spec) or ThresholdModel())
    with threaded_server(core) as running:
        engines = [RemoteEngine(running.url) for _ in range(3)]
        array, _ = blob_volume()
        for engine in engines:
            engine.open_session(array, np.eye(4), SPEC).preview("K", 10, BOX).wait(10)
        assert len(calls) == 1 and len(core.session_ids) == 3
        for engine in engines:
            engine.close()


def test_idle_sessions_expire():
    core = EngineCore(model_loader=lambda spec: ThresholdModel(), idle_timeout_s=0.2)
    with threaded_server(core) as server:
        engine = RemoteEngine(server.url)
        array, obj = blob_volume()
        session = engine.open_session(array, np.eye(4), SPEC)
        session.preview("K", 10, BOX).wait(10)
        time.sleep(0.4)
        other = RemoteEngine(server.url)
        other.open_session(array, np.eye(4), SPEC).opening.wait(10)  # opening runs the expiry
        assert session.sid not in core.session_ids
        np.testing.assert_array_equal(session.preview("K", 9, BOX).wait(10).mask, obj[9])
        engine.close()
        other.close()


def test_https_with_the_servers_certificate(tmp_path):
    import ssl

    from engine_servers import self_signed_certificate

    cert, key = self_signed_certificate(tmp_path)
    core = EngineCore(model_loader=lambda spec: ThresholdModel())
    with threaded_server(core, tokens=(TOKEN_A,), tls=(cert, key)) as server:
        assert server.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=cert)
        engine = RemoteEngine(server.url, token=TOKEN_A, ssl_context=trusted)
        array, obj = blob_volume()
        session = engine.open_session(array, np.eye(4), SPEC)
        np.testing.assert_array_equal(session.preview("K", 10, BOX).wait(10).mask, obj[10])
        outcomes = collect(session.propagate("K", {10: BOX}, "both"))
        assert sorted(outcomes) == list(range(20))
        engine.close()
        untrusting = RemoteEngine(server.url, token=TOKEN_A)  # the system's CAs do not know this certificate
        with pytest.raises(EngineError, match="cannot be reached|certificate"):
            untrusting.hello().wait(10)
        untrusting.close()


def test_a_client_of_another_protocol_gets_an_actionable_message(server, monkeypatch):
    import SAMSegmentLib.engine.client as client_module

    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", 99)
    engine = RemoteEngine(server.url, token=TOKEN_A)
    with pytest.raises(EngineError, match="update the server or the extension"):
        engine.hello().wait(10)
    array, _ = blob_volume()
    session = engine.open_session(array, np.eye(4), SPEC)
    with pytest.raises(EngineError, match="protocol 99"):
        session.opening.wait(10)
    engine.close()


def test_tokens_never_reach_the_log(server, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    for token in (TOKEN_A, "a-wrong-token-0123456789", None):
        raw(server, "POST", "/v1/hello", json.dumps({"protocol": 1}), token=token)
    engine = RemoteEngine(server.url, token=TOKEN_B)
    array, _ = blob_volume()
    engine.open_session(array, np.eye(4), SPEC).preview("K", 10, BOX).wait(10)
    engine.close()
    text = caplog.text
    assert TOKEN_A not in text and TOKEN_B not in text and "a-wrong-token" not in text


@pytest.mark.parametrize("shared", [False, True], ids=["upload", "shared-file"])
def test_nan_voxels_travel_as_the_minimum_with_a_warning(tmp_path, shared):
    """As in process (Volume), NaN and infinite voxels become the smallest finite value, with one warning, before
    they leave the client; the server itself refuses non-finite payloads."""
    array, obj = blob_volume()
    values = array.astype(np.float32)
    values[0, 0, :5] = np.nan
    values[1, 3, 3] = np.inf
    core = EngineCore(model_loader=lambda spec: ThresholdModel())
    with threaded_server(core, shared_dir=tmp_path if shared else None) as server:
        engine = RemoteEngine(server.url, shared_dir=tmp_path if shared else None)
        session = engine.open_session(values, np.eye(4), SPEC)
        info = session.opening.wait(10)
        assert "6 voxel(s) are NaN or infinite" in info["warning"] and "minimum (0)" in info["warning"]
        np.testing.assert_array_equal(session.preview("K", 10, BOX).wait(10).mask, obj[10])
        stored = next(iter(core._volumes.values())).volume.array
        assert np.isfinite(stored).all() and stored[0, 0, 0] == 0.0
        engine.close()


@pytest.mark.parametrize("kind", ["in-process", "server"])
def test_each_object_gets_its_own_fitted_window(server, kind):
    """window_mode fit: the first prompt fixes the window for its object; new_object() lets the next prompt fit
    another (same behaviour in process and through the server)."""
    array, _ = blob_volume()
    array = array.astype(np.int16)
    array[:, :, :20] += 300  # the left half is brighter, so boxes on either side fit different windows
    engine = (InProcessEngine(model_loader=lambda spec: ThresholdModel()) if kind == "in-process"
              else RemoteEngine(server.url, token=TOKEN_A))
    session = engine.open_session(array, np.eye(4), SessionSpec(window_mode="fit"))
    first = session.preview("K", 10, SlicePrompt(box=[2, 2, 15, 40])).wait(10).window
    again = session.preview("K", 11, SlicePrompt(box=[22, 2, 38, 40])).wait(10).window
    assert first == again  # same object, same window
    session.new_object().wait(10)
    other = session.preview("K", 11, SlicePrompt(box=[22, 2, 38, 40])).wait(10).window
    assert other != first
    engine.close()
