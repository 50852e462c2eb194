"""Overlay montage: a valid PNG (Pillow writes, SimpleITK reads), the documented size, outlines, labels and legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMSegmentLib.overlay import (
    GAP,
    GREEN,
    LEGEND_HEIGHT,
    RED,
    TEXT,
    YELLOW,
    choose_slices,
    display_flips,
    montage_shape,
    render_montage,
    write_overlay,
    write_png,
)
from SAMSegmentLib.volume import Volume
from SAMSegmentLib.windowing import Window

# LPS-aligned volume (the usual DICOM case): i -> patient left, j -> posterior, k -> superior. In RAS that is
# diag(-1, -1, 1): axial tiles need no flip (left on the right, anterior at the top).
LPS_ALIGNED = np.diag([-1.0, -1.0, 1.0, 1.0])


def decode_png(path: Path) -> np.ndarray:
    """The PNG as RGB uint8 [height, width, 3], read by SimpleITK (an independent PNG reader)."""
    image = sitk.ReadImage(str(path))
    assert image.GetNumberOfComponentsPerPixel() == 3
    return sitk.GetArrayFromImage(image)


def test_png_round_trip_pillow_writes_simpleitk_reads(tmp_path: Path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    path = write_png(tmp_path / "sub" / "x.png", rgb)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sitk.ReadImage(str(path)).GetSize() == (11, 7)
    np.testing.assert_array_equal(decode_png(path), rgb)
    assert not list(path.parent.glob(".*partial"))  # written through a temporary file
    with pytest.raises(ValueError, match="RGB"):
        write_png(tmp_path / "grey.png", rgb[..., 0])


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
    rgb = decode_png(path)
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


def test_slice_labels_and_legend_are_drawn():
    """Each tile's top-left corner carries its label in TEXT colour; the legend band holds the three swatches."""
    array = np.zeros((4, 30, 30), dtype=np.float32)  # black slices: any light pixel in a corner is text
    reference = np.zeros(array.shape, dtype=bool)
    reference[1:3, 20:25, 20:25] = True
    rgb = render_montage(Volume(array, LPS_ALIGNED.copy()), "K", reference, None, Window(0, 1), zoom=2)
    tile = 60
    for c in range(2):  # slices 1 and 2 side by side
        corner = rgb[GAP:GAP + 18, GAP + c * (tile + GAP):GAP + c * (tile + GAP) + 30].astype(int)
        lit = (corner > 128).all(-1)
        assert 10 <= lit.sum() <= corner.shape[0] * corner.shape[1] // 2
        assert (corner == np.array(TEXT)).all(-1).any()
    legend = rgb[-LEGEND_HEIGHT:]
    for colour in (GREEN, RED, YELLOW):
        assert (legend == np.array(colour, np.uint8)).all(-1).sum() >= 14 * 10
    assert (legend > 128).all(-1).sum() > 20  # the words (no swatch colour is light in all three channels)


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
