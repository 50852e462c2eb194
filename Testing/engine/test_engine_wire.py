"""Binary payloads between engine clients and the server (SAMSegmentLib/engine/wire.py): exact round trips, and a
clear WireError for every malformed input."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from SAMSegmentLib.engine import wire
from SAMSegmentLib.prompts import SlicePrompt


def test_envelope_round_trip_and_damage():
    body = wire.pack({"a": 1, "b": [1, 2]}, [b"xyz", b"", b"\x00" * 5])
    header, blobs = wire.unpack(body)
    assert header["a"] == 1 and blobs == [b"xyz", b"", b"\x00" * 5]
    with pytest.raises(wire.WireError, match="truncated"):
        wire.unpack(body[:-1])
    with pytest.raises(wire.WireError, match="unexpected bytes"):
        wire.unpack(body + b"!")
    with pytest.raises(wire.WireError, match="not a SAMSegment envelope"):
        wire.unpack(b"GET / HTTP/1.1\r\n")
    with pytest.raises(wire.WireError, match="truncated"):
        wire.unpack(body[:6])


def test_record_stream_in_arbitrary_pieces():
    records = [wire.pack_record({"i": i}, [bytes([i]) * i]) for i in range(5)]
    stream = b"".join(records)
    reader = wire.RecordReader()
    out = []
    for cut in range(0, len(stream), 3):
        out += reader.feed(stream[cut : cut + 3])
    assert [h["i"] for h, _ in out] == list(range(5))
    assert [b[0] for _, b in out] == [bytes([i]) * i for i in range(5)]
    assert reader.pending_bytes == 0


@pytest.mark.parametrize("seed", range(4))
def test_masks_travel_as_their_bounding_box(seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros((97, 61), bool)
    mask[10:40, 20:33] = rng.random((30, 13)) < 0.6
    meta, blob = wire.mask_to_wire(mask)
    r0, r1, c0, c1 = meta["bbox"]
    assert (r0, c0) >= (10, 20) and (r1, c1) <= (39, 32)
    assert len(blob) < mask.size // 8  # compressed bits of the box, far less than the slice
    np.testing.assert_array_equal(wire.mask_from_wire(meta, blob), mask)


def test_empty_and_full_masks():
    empty = np.zeros((5, 7), bool)
    meta, blob = wire.mask_to_wire(empty)
    assert meta["bbox"] is None and blob == b""
    np.testing.assert_array_equal(wire.mask_from_wire(meta, blob), empty)
    full = np.ones((5, 7), bool)
    np.testing.assert_array_equal(wire.mask_from_wire(*wire.mask_to_wire(full)), full)


def test_bad_masks_are_refused():
    meta, blob = wire.mask_to_wire(np.eye(6, dtype=bool))
    with pytest.raises(wire.WireError, match="outside its shape"):
        wire.mask_from_wire(dict(meta, bbox=[0, 9, 0, 5]), blob)
    with pytest.raises(wire.WireError, match="does not match"):
        wire.mask_from_wire(meta, zlib.compress(b"\x00" * 100))
    with pytest.raises(wire.WireError, match="not valid zlib"):
        wire.mask_from_wire(meta, b"garbage")
    with pytest.raises(wire.WireError, match="the slice is"):
        wire.mask_from_wire(meta, blob, expected_shape=(6, 7))


def test_prompts_round_trip_with_a_mask():
    mask = np.zeros((20, 30), bool)
    mask[3:9, 4:12] = True
    prompts = {4: SlicePrompt(points=[[3.5, 2.0], [10, 11]], labels=[1, 0], box=[1, 2, 15, 16], extent=(2, 7)),
               9: SlicePrompt(mask=mask)}
    blobs: list[bytes] = []
    items = wire.prompts_to_wire(prompts, blobs)
    back = wire.prompts_from_wire(items, blobs)
    assert sorted(back) == [4, 9]
    np.testing.assert_array_equal(back[4].points, prompts[4].points)
    np.testing.assert_array_equal(back[4].labels, [1, 0])
    np.testing.assert_array_equal(back[4].box, [1, 2, 15, 16])
    np.testing.assert_array_equal(back[9].mask, mask)
    assert back[4].extent == (2, 7) and back[9].extent is None


@pytest.mark.parametrize("item,match", [
    ({"slice": 1, "points": [[1, 2, 3]]}, "points must be"),
    ({"slice": 1, "box": [1, 2]}, "box 4 numbers"),
    ({"slice": 1, "box": [0, 0, float("nan"), 3]}, "finite"),
    ({"slice": 1, "points": [[1, 2]], "labels": [5]}, "labels must be 1"),
    ({"slice": "one"}, "integer 'slice'"),
    ({"slice": 1, "mask": {"shape": [2, 2], "bbox": None, "blob": 3}}, "missing blob"),
])
def test_malformed_prompts(item, match):
    with pytest.raises(wire.WireError, match=match):
        wire.prompts_from_wire([item], [])


@pytest.mark.parametrize("encoding", ["raw", "zlib"])
def test_volume_streams_round_trip(encoding):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 2000, size=(7, 33, 29)).astype(np.int16)
    decoder = wire.VolumeDecoder(array.shape, array.dtype, encoding)
    for chunk in wire.volume_chunks(array, encoding, chunk_bytes=1000):
        for cut in range(0, len(chunk), 333):
            decoder.feed(chunk[cut : cut + 333])
    np.testing.assert_array_equal(decoder.finish(), array)


def test_volume_stream_damage():
    array = np.arange(1000, dtype=np.int16).reshape(10, 10, 10)
    raw = array.tobytes()
    short = wire.VolumeDecoder(array.shape, array.dtype, "raw")
    short.feed(raw[:-2])
    with pytest.raises(wire.WireError, match="truncated"):
        short.finish()
    long = wire.VolumeDecoder(array.shape, array.dtype, "raw")
    with pytest.raises(wire.WireError, match="longer than its shape"):
        long.feed(raw + b"xx")
    cut = wire.VolumeDecoder(array.shape, array.dtype, "zlib")
    cut.feed(zlib.compress(raw)[:-5])
    with pytest.raises(wire.WireError, match="truncated"):
        cut.finish()
    bomb = wire.VolumeDecoder((2, 2, 2), np.dtype(np.uint8), "zlib")
    with pytest.raises(wire.WireError, match="longer than its shape"):
        bomb.feed(zlib.compress(b"\x00" * 10_000_000))


@pytest.mark.parametrize("header,match", [
    ({"shape": [1, 2], "dtype": "int16", "ijk_to_ras": np.eye(4).tolist()}, "three positive integers"),
    ({"shape": [1, 2, 3], "dtype": "complex64", "ijk_to_ras": np.eye(4).tolist()}, "'dtype' must be one of"),
    ({"shape": [1, 2, 3], "dtype": "int16", "ijk_to_ras": np.zeros((4, 4)).tolist()}, "invertible"),
    ({"shape": [1, 2, 3], "dtype": "int16", "ijk_to_ras": [[1, 2]]}, "invertible"),
    ({"shape": [1000, 1000, 1000], "dtype": "float64", "ijk_to_ras": np.eye(4).tolist()}, "over this server.s upload limit"),
])
def test_volume_headers(header, match):
    with pytest.raises(wire.WireError, match=match):
        wire.parse_volume_header(header, max_bytes=1 << 30)
