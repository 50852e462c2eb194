"""Binary payloads between engine clients and ``samsegment serve``: envelopes, masks, prompts, volume streams.

An *envelope* is ``b"SAMS"``, a little-endian uint32 header length, a UTF-8 JSON header, then the blobs whose byte
lengths the header lists under ``"blobs"``. A *record stream* (propagation results) is a sequence of envelopes, each
preceded by its uint32 length. JSON carries only small values (indices, boxes, a few points, scores); voxels travel
as blobs: a mask as its bounding box, bit-packed and zlib-compressed; a volume as raw or zlib-compressed bytes.

Framing is written here by hand because it is a dozen lines; compression is zlib (standard library).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..prompts import SlicePrompt

MAGIC = b"SAMS"
_U32 = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 20
CONTENT_TYPE = "application/x-samsegment"
STREAM_CONTENT_TYPE = "application/x-samsegment-stream"
VOLUME_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")

__all__ = [
    "CONTENT_TYPE",
    "PayloadTooLarge",
    "STREAM_CONTENT_TYPE",
    "RecordReader",
    "VolumeDecoder",
    "WireError",
    "mask_from_wire",
    "mask_to_wire",
    "pack",
    "pack_record",
    "prompt_from_wire",
    "prompt_to_wire",
    "prompts_from_wire",
    "prompts_to_wire",
    "unpack",
    "volume_chunks",
]


class WireError(ValueError):
    """A payload that does not follow the format; the message says what is wrong (answered with HTTP 400)."""


class PayloadTooLarge(WireError):
    """A volume larger than the server accepts (answered with HTTP 413)."""


# ------------------------------------------------------------------------------------------------ envelopes


def pack(header: dict[str, Any], blobs: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    header = dict(header)
    header["blobs"] = [len(b) for b in blobs]
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return b"".join([MAGIC, _U32.pack(len(text)), text, *blobs])


def split_header(data: bytes) -> tuple[dict[str, Any], int] | None:
    """(header, offset of the first blob) once ``data`` holds a whole header; None while it is incomplete."""
    if len(data) < 8:
        if data and not MAGIC.startswith(bytes(data[:4])):
            raise WireError("the payload is not a SAMSegment envelope")
        return None
    if bytes(data[:4]) != MAGIC:
        raise WireError("the payload is not a SAMSegment envelope")
    (size,) = _U32.unpack_from(data, 4)
    if size > MAX_HEADER_BYTES:
        raise WireError(f"the payload header is too large ({size} bytes)")
    if len(data) < 8 + size:
        return None
    try:
        header = json.loads(bytes(data[8 : 8 + size]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("the payload header is not valid JSON") from None
    if not isinstance(header, dict):
        raise WireError("the payload header must be a JSON object")
    return header, 8 + size


def unpack(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """Header and blobs of one whole envelope; WireError when truncated, padded or malformed."""
    split = split_header(data)
    if split is None:
        raise WireError("the payload is truncated (incomplete header)")
    header, offset = split
    sizes = header.get("blobs", [])
    if not isinstance(sizes, list) or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise WireError("the payload header's 'blobs' must list byte lengths")
    blobs = []
    for n in sizes:
        if offset + n > len(data):
            raise WireError("the payload is truncated (a blob is shorter than its header says)")
        blobs.append(bytes(data[offset : offset + n]))
        offset += n
    if offset != len(data):
        raise WireError(f"the payload has {len(data) - offset} unexpected bytes after its blobs")
    return header, blobs


def pack_record(header: dict[str, Any], blobs: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    body = pack(header, blobs)
    return _U32.pack(len(body)) + body


class RecordReader:
    """Splits a record stream fed in arbitrary pieces into (header, blobs) records."""

    MAX_RECORD_BYTES = 1 << 30

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], list[bytes]]]:
        self._buffer += data
        out = []
        while len(self._buffer) >= 4:
            (size,) = _U32.unpack_from(self._buffer, 0)
            if size > self.MAX_RECORD_BYTES:
                raise WireError(f"a streamed record is too large ({size} bytes)")
            if len(self._buffer) < 4 + size:
                break
            out.append(unpack(bytes(self._buffer[4 : 4 + size])))
            del self._buffer[: 4 + size]
        return out

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)


# ------------------------------------------------------------------------------------------------ masks


def mask_to_wire(mask: np.ndarray) -> tuple[dict[str, Any], bytes]:
    """A bool [rows, cols] mask as (meta, blob): the bounding box [r0, r1, c0, c1] (inclusive) of its True voxels
    and those voxels bit-packed (row-major) and zlib-compressed; an empty mask has bbox None and an empty blob."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise WireError(f"a slice mask must be 2D, not {mask.ndim}D")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return {"shape": list(mask.shape), "bbox": None}, b""
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    packed = np.packbits(mask[r0 : r1 + 1, c0 : c1 + 1], axis=None)
    return {"shape": list(mask.shape), "bbox": [r0, r1, c0, c1]}, zlib.compress(packed.tobytes(), 1)


def mask_from_wire(meta: Any, blob: bytes, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    if not isinstance(meta, dict):
        raise WireError("a mask needs its 'shape' and 'bbox'")
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) and 0 < v < 1 << 16 for v in shape)):
        raise WireError("a mask's 'shape' must be [rows, cols]")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise WireError(f"the mask has shape {tuple(shape)}, the slice is {tuple(expected_shape)}")
    out = np.zeros(shape, dtype=bool)
    bbox = meta.get("bbox")
    if bbox is None:
        return out
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int) for v in bbox)):
        raise WireError("a mask's 'bbox' must be [r0, r1, c0, c1]")
    r0, r1, c0, c1 = bbox
    if not (0 <= r0 <= r1 < shape[0] and 0 <= c0 <= c1 < shape[1]):
        raise WireError("a mask's 'bbox' lies outside its shape")
    n = (r1 - r0 + 1) * (c1 - c0 + 1)
    try:
        raw = zlib.decompress(blob, bufsize=(n + 7) // 8)
    except zlib.error:
        raise WireError("a mask's data is not valid zlib data") from None
    if len(raw) != (n + 7) // 8:
        raise WireError("a mask's data does not match its bounding box")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=n).astype(bool)
    out[r0 : r1 + 1, c0 : c1 + 1] = bits.reshape(r1 - r0 + 1, c1 - c0 + 1)
    return out


# ------------------------------------------------------------------------------------------------ prompts


def prompt_to_wire(prompt: SlicePrompt, blobs: list[bytes]) -> dict[str, Any]:
    """JSON for one slice prompt; its mask (if any) is appended to ``blobs`` and referenced by index."""
    out: dict[str, Any] = {
        "points": [[float(x), float(y)] for x, y in np.asarray(prompt.points, dtype=float).reshape(-1, 2)],
        "labels": [int(v) for v in np.asarray(prompt.labels).reshape(-1)],
        "box": None if prompt.box is None else [float(v) for v in np.asarray(prompt.box, dtype=float)],
        "extent": None if prompt.extent is None else [int(prompt.extent[0]), int(prompt.extent[1])],
    }
    if prompt.mask is not None:
        meta, blob = mask_to_wire(prompt.mask)
        meta["blob"] = len(blobs)
        blobs.append(blob)
        out["mask"] = meta
    return out


def prompt_from_wire(data: Any, blobs: list[bytes]) -> SlicePrompt:
    from ..prompts import PromptError

    if not isinstance(data, dict):
        raise WireError("a prompt must be a JSON object with 'points', 'labels' and 'box'")
    points = data.get("points") or []
    labels = data.get("labels") or []
    try:
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        lab = np.asarray(labels, dtype=int).reshape(-1)
        box = data.get("box")
        box = None if box is None else np.asarray(box, dtype=float).reshape(4)
    except (TypeError, ValueError):
        raise WireError("a prompt's points must be [x, y] pairs, labels integers and the box 4 numbers") from None
    if not (np.isfinite(pts).all() and (box is None or np.isfinite(box).all())):
        raise WireError("a prompt's coordinates must be finite numbers")
    extent = data.get("extent")
    if extent is not None and not (isinstance(extent, list) and len(extent) == 2
                                   and all(isinstance(v, int) for v in extent)):
        raise WireError("a prompt's 'extent' must be [first, last] slice indices")
    mask = None
    if data.get("mask") is not None:
        meta = data["mask"]
        index = meta.get("blob") if isinstance(meta, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(blobs):
            raise WireError("a prompt's mask refers to a missing blob")
        mask = mask_from_wire(meta, blobs[index])
    try:
        return SlicePrompt(points=pts, labels=lab, box=box, mask=mask,
                           extent=None if extent is None else (extent[0], extent[1]))
    except PromptError as exc:
        raise WireError(str(exc)) from None


def prompts_to_wire(prompts: dict[int, SlicePrompt], blobs: list[bytes]) -> list[dict[str, Any]]:
    return [dict(prompt_to_wire(p, blobs), slice=int(i)) for i, p in sorted(prompts.items())]


def prompts_from_wire(items: Any, blobs: list[bytes]) -> dict[int, SlicePrompt]:
    if not isinstance(items, list):
        raise WireError("'prompts' must be a list of slice prompts")
    out: dict[int, SlicePrompt] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("slice"), int):
            raise WireError("each prompt needs an integer 'slice'")
        index = item["slice"]
        prompt = prompt_from_wire(item, blobs)
        out[index] = out[index].merged(prompt) if index in out else prompt
    return out


# ------------------------------------------------------------------------------------------------ volumes


def volume_header(array: np.ndarray, ijk_to_ras: np.ndarray, encoding: str) -> dict[str, Any]:
    return {"shape": [int(s) for s in array.shape], "dtype": str(array.dtype),
            "ijk_to_ras": np.asarray(ijk_to_ras, dtype=float).tolist(), "encoding": encoding}


def volume_chunks(array: np.ndarray, encoding: str = "zlib", chunk_bytes: int = 4 << 20,
                  level: int = 1, fill: float | None = None) -> Iterator[bytes]:
    """The volume's C-order bytes, raw or zlib-compressed, a chunk at a time (each step does bounded work).
    ``fill``: the value that NaN and infinite voxels of a float volume travel as (None: as they are)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    step = max(1, chunk_bytes // flat.itemsize)
    compressor = zlib.compressobj(level) if encoding == "zlib" else None
    for start in range(0, flat.size, step):
        values = flat[start : start + step]
        if fill is not None:
            values = np.where(np.isfinite(values), values, values.dtype.type(fill))
        piece = values.tobytes()
        if compressor is None:
            yield piece
        else:
            out = compressor.compress(piece)
            if out:
                yield out
    if compressor is not None:
        yield compressor.flush()


def parse_volume_header(header: dict[str, Any], max_bytes: int) -> tuple[tuple[int, int, int], np.dtype, np.ndarray]:
    """Validated (shape [k, j, i], dtype, ijk_to_ras) of a volume upload; WireError otherwise."""
    shape = header.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise WireError("the volume's 'shape' must be three positive integers [k, j, i]")
    dtype = header.get("dtype")
    if dtype not in VOLUME_DTYPES:
        raise WireError(f"the volume's 'dtype' must be one of {', '.join(VOLUME_DTYPES)}, not {dtype!r}")
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dt.itemsize
    if nbytes > max_bytes:
        raise PayloadTooLarge(f"the volume is {nbytes / 1e6:,.1f} MB, over this server's upload limit of "
                              f"{max_bytes / 2**20:,.0f} MB")
    try:
        m = np.asarray(header.get("ijk_to_ras"), dtype=float)
    except (TypeError, ValueError):
        raise WireError("the volume's 'ijk_to_ras' must be a 4 x 4 matrix of numbers") from None
    if m.shape != (4, 4) or not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise WireError("the volume's 'ijk_to_ras' must be an invertible 4 x 4 matrix of finite numbers")
    return tuple(shape), dt, m  # type: ignore[return-value]


class VolumeDecoder:
    """Fills a preallocated array from the body of a volume upload fed in pieces (raw or zlib)."""

    def __init__(self, shape: tuple[int, int, int], dtype: np.dtype, encoding: str) -> None:
        if encoding not in ("raw", "zlib"):
            raise WireError(f"the volume's 'encoding' must be 'raw' or 'zlib', not {encoding!r}")
        self.array = np.empty(shape, dtype=dtype)
        self._flat = self.array.reshape(-1).view(np.uint8)
        self._filled = 0
        self._inflate = zlib.decompressobj() if encoding == "zlib" else None

    def feed(self, data: bytes) -> None:
        if self._inflate is None:
            self._write(data)
            return
        while data:
            room = self._flat.size - self._filled
            try:
                out = self._inflate.decompress(data, room + 1)
            except zlib.error:
                raise WireError("the volume data is not valid zlib data") from None
            self._write(out)
            data = self._inflate.unconsumed_tail
            if not out and data:
                break

    def _write(self, data: bytes) -> None:
        n = len(data)
        if self._filled + n > self._flat.size:
            raise WireError("the volume data is longer than its shape and dtype say")
        self._flat[self._filled : self._filled + n] = np.frombuffer(data, dtype=np.uint8)
        self._filled += n

    def finish(self) -> np.ndarray:
        if self._inflate is not None:
            try:
                self._write(self._inflate.flush())
            except zlib.error:
                raise WireError("the volume data is not valid zlib data") from None
            if not self._inflate.eof:
                raise WireError("the volume data is truncated (the compressed stream did not end)")
        if self._filled != self._flat.size:
            raise WireError(f"the volume data is truncated ({self._filled} of {self._flat.size} bytes)")
        return self.array
