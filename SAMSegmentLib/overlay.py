"""Montage PNGs: a few slices of a volume, windowed grey, with reference and prediction outlines.

Colours: reference outline green, prediction outline red, yellow where the two outlines coincide. Each tile is
one slice along the chosen axis (see slices.py for the in-plane axes), resampled to square pixels (thick-slice
reformats keep their physical aspect), enlarged by a whole-number zoom, and flipped, where the volume's
IJK-to-RAS matrix says so, to the radiological display convention: axial and coronal tiles show patient left on
the right, axial tiles anterior at the top, coronal and sagittal tiles superior at the top, sagittal tiles
anterior on the left. Axes are never swapped, so oblique or permuted volumes show their voxel layout.

Layout (pixels): tiles in a grid of at most ``MAX_COLUMNS`` columns, ``GAP`` pixels between and around tiles,
then a legend band of ``LEGEND_HEIGHT`` pixels at the bottom (swatches green REF, red PRED, yellow BOTH). Each tile
carries its slice index (e.g. ``K 12``) in its top-left corner. Text is drawn and the PNG (RGB, 8 bits per channel)
written with Pillow.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .slices import extract_slice, slice_geometry, to_model_grid
from .volume import Volume, axis_index, in_plane_axes
from .windowing import Window, auto_window

log = logging.getLogger(__name__)

GREEN = (0, 230, 0)
RED = (255, 40, 40)
YELLOW = (255, 230, 0)
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
GAP = 4
LEGEND_HEIGHT = 20
MAX_COLUMNS = 4
TARGET_TILE_PX = 192  # tiles are zoomed by a whole factor until their longer side reaches this
FONT_PX = 13  # Pillow's built-in font (Aileron Regular) at this size: capitals about 9 pixels tall

# Desired RAS direction of screen-right and screen-down for each slice normal (radiological convention).
_SCREEN = {
    "K": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])),  # right = patient left, down = posterior
    "J": (np.array([-1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # right = patient left, down = inferior
    "I": (np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # right = posterior, down = inferior
}


# --- PNG and text ---------------------------------------------------------------------------------------------


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image [height, width, 3] as PNG (via a temporary file, then renamed)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB image [height, width, 3], got shape {rgb.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    Image.fromarray(rgb).save(tmp, format="PNG")
    tmp.replace(path)
    return path


@functools.cache
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_PX)


def outline(mask: np.ndarray) -> np.ndarray:
    """Inner boundary of a 2D mask: pixels inside with a 4-neighbour outside (the image edge counts as outside)."""
    mask = np.asarray(mask, dtype=bool)
    p = np.pad(mask, 1, constant_values=False)
    interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return mask & ~interior


def _nearest_resize(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a 2D array to ``shape`` with pixel-centre alignment."""
    rows, cols = mask.shape
    r = np.minimum(((np.arange(shape[0]) + 0.5) * rows / shape[0]).astype(int), rows - 1)
    c = np.minimum(((np.arange(shape[1]) + 0.5) * cols / shape[1]).astype(int), cols - 1)
    return mask[r][:, c]


def display_flips(volume: Volume, axis: str) -> tuple[bool, bool]:
    """(flip columns, flip rows) that bring a slice along ``axis`` to the radiological display convention."""
    axis = axis.upper()
    ax_x, ax_y = in_plane_axes(axis)
    m = volume.ijk_to_ras[:3, :3]
    right, down = _SCREEN[axis]
    flip_x = float(m[:, axis_index(ax_x)] @ right) < 0
    flip_y = float(m[:, axis_index(ax_y)] @ down) < 0
    return flip_x, flip_y


def choose_slices(axis: str, masks: list[np.ndarray | None], max_tiles: int = 12) -> list[int]:
    """Slice indices along ``axis`` holding voxels of any mask, evenly sampled down to ``max_tiles``.

    With no voxels anywhere, the middle slice. ``masks`` are ``[k, j, i]`` bool arrays (None entries ignored).
    """
    present = [np.asarray(m, dtype=bool) for m in masks if m is not None]
    if not present:
        raise ValueError("choose_slices needs at least one mask")
    n = axis_index(axis)
    other = tuple(a for a in range(3) if a != 2 - n)
    any_voxel = np.zeros(present[0].shape[2 - n], dtype=bool)
    for m in present:
        any_voxel |= m.any(axis=other)
    indices = np.nonzero(any_voxel)[0]
    if indices.size == 0:
        return [present[0].shape[2 - n] // 2]
    if indices.size <= max_tiles:
        return [int(i) for i in indices]
    picks = np.unique(np.rint(np.linspace(0, indices.size - 1, max_tiles)).astype(int))
    return [int(indices[p]) for p in picks]


def auto_zoom(model_shape: tuple[int, int], target: int = TARGET_TILE_PX) -> int:
    """Whole-number enlargement (1 to 4) that brings a tile's longer side near ``target`` pixels."""
    return int(min(4, max(1, math.ceil(target / max(model_shape)))))


def render_tile(volume: Volume, axis: str, index: int, window: Window, reference: np.ndarray | None = None,
                prediction: np.ndarray | None = None, zoom: int = 1) -> np.ndarray:
    """One slice as RGB uint8 [rows, cols, 3] at square pixels times ``zoom``, outlines drawn, display-oriented."""
    axis = axis.upper()
    geo = slice_geometry(volume, axis)
    grey = to_model_grid(window.apply_float(extract_slice(volume.array, axis, index)), geo)
    grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    out_shape = (geo.model_shape[0] * zoom, geo.model_shape[1] * zoom)
    grey = np.repeat(np.repeat(grey, zoom, axis=0), zoom, axis=1)
    tile = np.repeat(grey[:, :, None], 3, axis=2)
    edges = []
    for mask in (reference, prediction):
        if mask is None:
            edges.append(np.zeros(out_shape, dtype=bool))
            continue
        m = _nearest_resize(np.asarray(extract_slice(mask, axis, index), dtype=bool), out_shape)
        edges.append(outline(m))
    ref_edge, pred_edge = edges
    tile[ref_edge & ~pred_edge] = GREEN
    tile[pred_edge & ~ref_edge] = RED
    tile[ref_edge & pred_edge] = YELLOW
    flip_x, flip_y = display_flips(volume, axis)
    if flip_x:
        tile = tile[:, ::-1]
    if flip_y:
        tile = tile[::-1]
    return np.ascontiguousarray(tile)


def montage_shape(n_tiles: int, tile_shape: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a montage of ``n_tiles`` tiles of ``tile_shape`` (rows, cols), legend included."""
    cols = min(n_tiles, MAX_COLUMNS)
    rows = math.ceil(n_tiles / cols)
    th, tw = tile_shape
    return rows * th + (rows + 1) * GAP + LEGEND_HEIGHT, cols * tw + (cols + 1) * GAP


def render_montage(volume: Volume, axis: str = "K", reference: np.ndarray | None = None,
                   prediction: np.ndarray | None = None, window: Window | None = None, max_tiles: int = 12,
                   zoom: int | None = None, indices: list[int] | None = None) -> np.ndarray:
    """The montage as RGB uint8 [height, width, 3]; see the module docstring for layout and colours.

    ``reference`` and ``prediction`` are bool ``[k, j, i]`` masks on the volume's grid (either may be None);
    ``indices`` overrides the slice choice (:func:`choose_slices`); ``zoom`` None picks :func:`auto_zoom`.
    """
    axis = axis.upper()
    window = window or auto_window(volume.array)
    for name, mask in (("reference", reference), ("prediction", prediction)):
        if mask is not None and np.shape(mask) != volume.array.shape:
            raise ValueError(f"{name} mask shape {np.shape(mask)} does not match the volume {volume.array.shape}")
    if indices is None:
        masks = [m for m in (reference, prediction) if m is not None]
        indices = choose_slices(axis, masks, max_tiles) if masks else [volume.axis_length(axis) // 2]
    geo = slice_geometry(volume, axis)
    zoom = auto_zoom(geo.model_shape) if zoom is None else int(zoom)
    tiles = [render_tile(volume, axis, i, window, reference, prediction, zoom) for i in indices]
    th, tw = tiles[0].shape[:2]
    height, width = montage_shape(len(tiles), (th, tw))
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = BACKGROUND
    cols = min(len(tiles), MAX_COLUMNS)
    corners = []
    for n, tile in enumerate(tiles):
        r, c = divmod(n, cols)
        top, left = GAP + r * (th + GAP), GAP + c * (tw + GAP)
        canvas[top:top + th, left:left + tw] = tile
        corners.append((left, top))
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for index, (left, top) in zip(indices, corners, strict=True):
        draw.text((left + 3, top + 2), f"{axis} {index}", fill=TEXT, font=_font())
    _draw_legend(draw, height)
    return np.asarray(image).copy()


def _draw_legend(draw: ImageDraw.ImageDraw, height: int) -> None:
    middle = height - LEGEND_HEIGHT // 2
    left = GAP
    for color, label in ((GREEN, "REF"), (RED, "PRED"), (YELLOW, "BOTH")):
        draw.rectangle((left, middle - 5, left + 13, middle + 4), fill=color)
        left += 14 + 4
        draw.text((left, middle), label, fill=TEXT, font=_font(), anchor="lm")
        left += int(math.ceil(draw.textlength(label, font=_font()))) + 12


def write_overlay(path: str | Path, volume: Volume, reference: np.ndarray | None = None,
                  prediction: np.ndarray | None = None, axis: str = "K", window: Window | None = None,
                  max_tiles: int = 12, zoom: int | None = None) -> Path:
    """Render :func:`render_montage` and write it as a PNG; returns the path."""
    rgb = render_montage(volume, axis, reference, prediction, window, max_tiles, zoom)
    out = write_png(path, rgb)
    log.info("overlay %s: %d x %d pixels", out, rgb.shape[1], rgb.shape[0])
    return out
