"""Slices of a volume as 2D images, square-pixel resampling for the model, and the way back.

A slice is named by its normal axis (I, J or K) and its index. Its 2D array has rows along the second in-plane
axis and columns along the first, in I, J, K order:

- axis K: ``array[k, :, :]`` -> rows j, columns i; a point (i, j) is (x, y)
- axis J: ``array[:, j, :]`` -> rows k, columns i; a point (i, k) is (x, y)
- axis I: ``array[:, :, i]`` -> rows k, columns j; a point (j, k) is (x, y)

Pixel coordinates are voxel indices: pixel (x, y) covers [x - 0.5, x + 0.5] x [y - 0.5, y + 0.5].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .volume import Volume, VolumeError, axis_index, in_plane_axes


def extract_slice(array_kji: np.ndarray, axis: str, index: int) -> np.ndarray:
    """The 2D slice ``[rows, cols]`` of a ``[k, j, i]`` array (a view, not a copy)."""
    n = axis_index(axis)
    length = array_kji.shape[2 - n]
    if not 0 <= index < length:
        raise VolumeError(f"slice {index} is outside the volume along {axis} (0 .. {length - 1})")
    if n == 2:
        return array_kji[index, :, :]
    if n == 1:
        return array_kji[:, index, :]
    return array_kji[:, :, index]


def slice_view(array_kji: np.ndarray, axis: str, index: int) -> np.ndarray:
    """Same as :func:`extract_slice`; writable when the array is (for filling a mask volume)."""
    return extract_slice(array_kji, axis, index)


@dataclass(frozen=True)
class SliceGeometry:
    """In-plane geometry of slices along one axis: original size and spacing, and the square-pixel grid.

    ``shape`` is (rows, cols) of the voxel slice; ``spacing`` (row, col) in mm; ``model_shape`` the (rows, cols)
    of the square-pixel image shown to the model, whose pixel size is ``pixel_mm`` in both directions.
    """

    axis: str
    shape: tuple[int, int]
    spacing: tuple[float, float]
    model_shape: tuple[int, int]

    @property
    def pixel_mm(self) -> float:
        return min(self.spacing)

    @property
    def scale(self) -> tuple[float, float]:
        """Model pixels per voxel along (rows, cols)."""
        return self.model_shape[0] / self.shape[0], self.model_shape[1] / self.shape[1]

    @property
    def is_identity(self) -> bool:
        return self.shape == self.model_shape

    def to_model_xy(self, xy: np.ndarray) -> np.ndarray:
        """Voxel (x, y) -> model-image (x, y), both in pixel-centre coordinates."""
        xy = np.asarray(xy, dtype=float)
        sy, sx = self.scale
        out = xy.copy()
        out[..., 0] = (xy[..., 0] + 0.5) * sx - 0.5
        out[..., 1] = (xy[..., 1] + 0.5) * sy - 0.5
        return out

    def box_to_model(self, box: np.ndarray) -> np.ndarray:
        """Inclusive voxel box (x0, y0, x1, y1) -> inclusive model-image box covering the same physical extent.

        Voxel x spans [x, x + 1] in edge coordinates; that edge range scales by the pixel ratio.
        """
        x0, y0, x1, y1 = np.asarray(box, dtype=float)
        sy, sx = self.scale
        return np.array([x0 * sx, y0 * sy, (x1 + 1) * sx - 1, (y1 + 1) * sy - 1])


def slice_geometry(volume: Volume, axis: str) -> SliceGeometry:
    """Geometry of slices with normal ``axis``: the square-pixel grid keeps the physical field of view."""
    ax_x, ax_y = in_plane_axes(axis)
    sp = volume.spacing_ijk
    size = volume.size_ijk
    rows, cols = size[axis_index(ax_y)], size[axis_index(ax_x)]
    sr, sc = sp[axis_index(ax_y)], sp[axis_index(ax_x)]
    pixel = min(sr, sc)
    model_rows = max(1, int(round(rows * sr / pixel)))
    model_cols = max(1, int(round(cols * sc / pixel)))
    return SliceGeometry(axis=axis.upper(), shape=(rows, cols), spacing=(sr, sc), model_shape=(model_rows, model_cols))


def to_model_grid(image: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Resample a float slice [rows, cols] to the square-pixel grid (bilinear, pixel-centre aligned)."""
    if geometry.is_identity:
        return np.asarray(image, dtype=np.float32)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=geometry.model_shape, mode="bilinear", align_corners=False)
    return out[0, 0].numpy()


def logits_to_voxel_grid(logits: torch.Tensor | np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """Model-grid logits [..., model_rows, model_cols] -> logits on the voxel slice grid [..., rows, cols].

    Bilinear sampling at the voxel centres (pixel-centre aligned), so thresholding at 0 gives the mask on the
    original voxel grid.
    """
    t = torch.as_tensor(logits, dtype=torch.float32)
    if geometry.is_identity:
        return t.numpy()
    lead = t.shape[:-2]
    t = t.reshape(1, -1, *t.shape[-2:])
    out = F.interpolate(t, size=geometry.shape, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *geometry.shape).numpy()


def mask_to_model_grid(mask: np.ndarray, geometry: SliceGeometry) -> np.ndarray:
    """A voxel-grid binary mask [rows, cols] resampled (nearest) to the model grid."""
    if geometry.is_identity:
        return np.asarray(mask, dtype=bool)
    t = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    out = F.interpolate(t, size=geometry.model_shape, mode="bilinear", align_corners=False)
    return out[0, 0].numpy() >= 0.5
