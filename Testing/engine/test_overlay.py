"""Overlay montage: a valid PNG (own decoder and SimpleITK agree), the documented size, outlines where expected."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from SAMSegmentLib.overlay import (
    GAP,
    GREEN,
    LEGEND_HEIGHT,
    RED,
    YELLOW,
    choose_slices,
    display_flips,
    encode_png,
    montage_shape,
    render_montage,
    write_overlay,
)
from SAMSegmentLib.volume import Volume
from SAMSegmentLib.windowing import Window

# LPS-aligned volume (the usual DICOM case): i -> patient left, j -> posterior, k -> superior. In RAS that is
# diag(-1, -1, 1): axial tiles need no flip (left on the right, anterior at the top).
LPS_ALIGNED = np.diag([-1.0, -1.0, 1.0, 1.0])


def decode_png(data: bytes) -> np.ndarray:
    """A minimal PNG decoder for 8-bit RGB, non-interlaced images (all five row filters)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + length
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert (depth, color, interlace) == (8, 2, 0)
    raw = zlib.decompress(idat)
    stride = 3 * width
    assert len(raw) == height * (stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    for r in range(height):
        ftype, line = raw[r * (stride + 1)], np.frombuffer(raw, np.uint8, stride, r * (stride + 1) + 1).astype(np.int32)
        prev = out[r - 1] if r else np.zeros(stride, np.int32)
        cur = np.zeros(stride, np.int32)
        for c in range(stride):
            a = cur[c - 3] if c >= 3 else 0
            b = prev[c]
            cc = prev[c - 3] if c >= 3 else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            cur[c] = (line[c] + pred) & 0xFF
        out[r] = cur
    return out.reshape(height, width, 3).astype(np.uint8)


def test_png_round_trip_own_decoder_and_simpleitk(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    data = encode_png(rgb)
    np.testing.assert_array_equal(decode_png(data), rgb)
    sitk = pytest.importorskip("SimpleITK")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == (11, 7) and image.GetNumberOfComponentsPerPixel() == 3
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), rgb)


def _volume_with_masks():
    array = np.full((3, 40, 50), -100.0, dtype=np.float32)
    array[:, 5:35, 5:45] = 60.0
    reference = np.zeros(array.shape, dtype=bool)
    prediction = np.zeros(array.shape, dtype=bool)
    reference[1, 5:16, 10:21] = True  # rows j 5..15, cols i 10..20
    prediction[1, 20:31, 30:41] = True  # disjoint
    prediction[1, 5:16, 10:15] = True  # shares reference's left edge (i = 10) and its top and bottom rows there
    return Volume(array, LPS_ALIGNED.copy()), reference, prediction


def test_montage_size_colours_and_positions(tmp_path: Path):
    volume, reference, prediction = _volume_with_masks()
    zoom = 2
    path = write_overlay(tmp_path / "overlay.png", volume, reference, prediction, "K",
                         Window.from_width_level(400, 40), zoom=zoom)
    rgb = decode_png(path.read_bytes())
    assert display_flips(volume, "K") == (False, False)
    assert rgb.shape == (40 * zoom + 2 * GAP + LEGEND_HEIGHT, 50 * zoom + 2 * GAP, 3)  # only slice 1 has voxels
    assert rgb.shape[:2] == montage_shape(1, (40 * zoom, 50 * zoom))

    def pixel(j: int, i: int, dy: int = 0, dx: int = 0) -> tuple[int, ...]:
        return tuple(int(v) for v in rgb[GAP + j * zoom + dy, GAP + i * zoom + dx])

    assert pixel(10, 20, dx=zoom - 1) == GREEN  # right edge of the reference only
    assert pixel(25, 40, dx=zoom - 1) == RED  # right edge of the disjoint prediction part
    assert pixel(10, 10) == YELLOW  # left edge shared by both outlines
    inside = pixel(25, 35)  # inside the prediction: grey image, no outline
    assert inside[0] == inside[1] == inside[2]
    assert (rgb == np.array(GREEN, np.uint8)).all(-1).sum() > 20
    assert (rgb == np.array(RED, np.uint8)).all(-1).sum() > 20


def test_thick_slices_are_shown_with_square_pixels():
    array = np.zeros((6, 20, 30), dtype=np.float32)  # k spacing 4 mm, in-plane 1 mm
    ijk_to_ras = np.diag([-1.0, -1.0, 4.0, 1.0])
    reference = np.zeros(array.shape, dtype=bool)
    reference[2:4, 8:12, 10:20] = True
    rgb = render_montage(Volume(array, ijk_to_ras), "J", reference, None, Window(0, 1), zoom=1)
    n_slices = 4  # j = 8..11
    assert rgb.shape[:2] == montage_shape(n_slices, (6 * 4, 30))
    # coronal: rows are k; k points superior, so it is flipped to put superior at the top
    assert display_flips(Volume(array, ijk_to_ras), "J") == (False, True)


def test_choose_slices_samples_evenly_and_falls_back_to_the_middle():
    mask = np.zeros((40, 4, 4), dtype=bool)
    mask[5:35] = True
    picks = choose_slices("K", [mask, None], max_tiles=12)
    assert len(picks) == 12 and picks[0] == 5 and picks[-1] == 34
    assert choose_slices("K", [np.zeros((9, 2, 2), dtype=bool)]) == [4]
    assert choose_slices("I", [mask]) == [0, 1, 2, 3]
