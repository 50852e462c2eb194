"""Promptable segmentation of one slice of a volume: cached embeddings + prompt decoding + corrections.

Prompts are in voxel coordinates of the slice plane (see slices.py); results come back on the slice's voxel grid.

Corrections (a prompt with a context mask and points, see prompts.py). Models trained on boxes (LiteMedSAM, MedSAM)
barely react to clicks, and letting them redraw the whole contour from box + clicks loses more than it gains
(measured on ../shared/data: replacing the contour lowered the slice Dice after 73 % of simulated clicks). So a
correction changes the context only around each click:

- include point outside the context: add the model's region there (box: the context's box grown to contain the
  point, plus the points) when it is at most ``LOCAL_AREA_FACTOR`` times the click's disc; otherwise add the disc;
- exclude point inside the context: remove the part of the context the model drops around the point (same bound),
  otherwise the disc;

where a click's disc is the disc around it that reaches the context's boundary (radius: the distance to the
nearest context voxel for an include, to the nearest outside voxel for an exclude, in mm). Everything farther from
the clicks keeps the context.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .embedding_cache import DEFAULT_BUDGET_BYTES, EmbeddingCache
from .metrics import distance_to
from .models.base import Embedding, SliceModel
from .prompts import PromptError, SlicePrompt, box_from_mask
from .slices import (
    SliceGeometry,
    extract_slice,
    logits_to_voxel_grid,
    mask_to_model_grid,
    slice_geometry,
    to_model_grid,
)
from .volume import Volume, axis_index
from .windowing import Window, auto_window

log = logging.getLogger(__name__)

LOCAL_AREA_FACTOR = 4.0  # a correction takes the model's region around a click when at most this many discs
BOX_MARGIN = (0.05, 2.0)  # context boxes grow by this fraction of their side, and at least this many voxels


@dataclass
class SliceResult:
    """Prediction on one slice: ``mask`` bool [rows, cols] on the voxel grid, ``logits`` float [rows, cols],
    ``score`` the model's predicted IoU, ``low_res_logits`` [1, 256, 256] (to feed back as a mask prompt),
    ``window`` the intensity window the model saw."""

    axis: str
    index: int
    mask: np.ndarray
    logits: np.ndarray
    score: float
    low_res_logits: torch.Tensor
    window: Window | None = None


def grow_box(box: np.ndarray, shape: tuple[int, int], fraction: float = BOX_MARGIN[0],
             least: float = BOX_MARGIN[1]) -> np.ndarray:
    """An inclusive box (x0, y0, x1, y1) grown by ``fraction`` of its side (at least ``least`` voxels) on each
    edge, clipped to a slice of ``shape`` (rows, cols)."""
    x0, y0, x1, y1 = np.asarray(box, dtype=float)
    rows, cols = shape
    mx, my = max(least, fraction * (x1 - x0 + 1)), max(least, fraction * (y1 - y0 + 1))
    return np.array([max(0.0, x0 - mx), max(0.0, y0 - my), min(cols - 1.0, x1 + mx), min(rows - 1.0, y1 + my)])


def _component_at(mask: np.ndarray, x: int, y: int) -> np.ndarray:
    """The 8-connected component of a 2D mask containing pixel (x, y) (all False when that pixel is off)."""
    if not mask[y, x]:
        return np.zeros_like(mask)
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    return labels == labels[y, x]


class SlicePredictor:
    """One model on one volume: slice images (windowed, square pixels), embeddings (cached), decoding."""

    def __init__(
        self,
        model: SliceModel,
        volume: Volume,
        window: Window | None = None,
        cache: EmbeddingCache | None = None,
        cache_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        self.model = model
        self.volume = volume
        self.window = window or auto_window(volume.array)  # the window in use; the session sets it per object
        self.cache = cache if cache is not None else EmbeddingCache(cache_bytes)
        self._geometry: dict[str, SliceGeometry] = {}
        log.info("window for volume %s: %s [%.1f, %.1f]", volume.uid, self.window.name, self.window.low, self.window.high)

    def geometry(self, axis: str) -> SliceGeometry:
        axis = axis.upper()
        if axis not in self._geometry:
            self._geometry[axis] = slice_geometry(self.volume, axis)
        return self._geometry[axis]

    def slice_image(self, axis: str, index: int) -> np.ndarray:
        """The uint8 model-grid image [model_rows, model_cols] the model sees for this slice."""
        raw = extract_slice(self.volume.array, axis, index)
        grey = self.window.apply_float(raw)
        grid = to_model_grid(grey, self.geometry(axis))
        return np.clip(np.rint(grid), 0, 255).astype(np.uint8)

    def cache_key(self, axis: str, index: int) -> tuple:
        return (self.volume.uid, self.volume.version, axis.upper(), int(index), self.window.key, self.model.name)

    def embedding(self, axis: str, index: int) -> Embedding:
        return self.cache.get_or_compute(
            self.cache_key(axis, index), lambda: self.model.encode(self.slice_image(axis, index))
        )

    def prefetch(self, axis: str, indices: Iterable[int], should_stop=lambda: False) -> int:
        """Compute embeddings ahead of time (skipping cached ones); returns how many were computed."""
        n = self.volume.axis_length(axis)
        done = 0
        for index in indices:
            if should_stop():
                break
            if 0 <= index < n and self.cache_key(axis, index) not in self.cache:
                self.embedding(axis, index)
                done += 1
        return done

    def predict(
        self,
        axis: str,
        index: int,
        prompt: SlicePrompt,
        mask_logits: torch.Tensor | None = None,
        multimask: bool | None = None,
    ) -> SliceResult:
        """Segment slice ``index`` along ``axis`` from ``prompt``.

        ``mask_logits`` ([1, 256, 256] low-res logits, e.g. a neighbour's result) is used as mask prompt when
        given; otherwise ``prompt.mask`` (an existing contour) is. ``multimask`` None chooses automatically:
        several candidates, best by predicted IoU, when the prompt is a single point and nothing else.
        """
        axis = axis.upper()
        axis_index(axis)
        geo = self.geometry(axis)
        prompt.check_inside(geo.shape, f"slice {index} ({axis})")
        if prompt.mask is not None and len(prompt.points) and prompt.mask.any():
            return self.correct(axis, index, prompt)
        if not prompt.has_include:
            raise PromptError(f"slice {index} ({axis}) has only exclude points and nothing to correct there: add an "
                              "include point or a box, or click on a slice the propagation reached")
        emb = self.embedding(axis, index)
        points = geo.to_model_xy(prompt.points) if len(prompt.points) else None
        labels = prompt.labels if len(prompt.points) else None
        box = geo.box_to_model(prompt.box) if prompt.box is not None else None
        mask_input = mask_logits
        if mask_input is None and prompt.mask is not None and prompt.mask.any():
            mask_input = self.model.mask_to_low_res(mask_to_model_grid(prompt.mask, geo), emb)
        if multimask is None:
            multimask = box is None and mask_input is None and points is not None and len(points) == 1
        if not self.model.capabilities.multimask:
            multimask = False
        decoded = self.model.decode(emb, points, labels, box, mask_input, multimask=multimask)
        best = decoded.best()
        low = decoded.low_res_logits[best : best + 1]
        model_logits = self.model.upscale(low, emb)[0]
        logits = logits_to_voxel_grid(model_logits.cpu(), geo)
        return SliceResult(axis, int(index), logits > 0, logits, float(decoded.iou[best]), low, self.window)

    def correct(self, axis: str, index: int, prompt: SlicePrompt) -> SliceResult:
        """Correct ``prompt.mask`` (the context) with ``prompt.points``: see the module docstring.

        ``prompt.box`` (optional) replaces the context's grown box as the model's box. Points are applied in
        order; a point already on the right side of the context changes nothing.
        """
        axis = axis.upper()
        geo = self.geometry(axis)
        context = np.asarray(prompt.mask, dtype=bool)
        box = prompt.box if prompt.box is not None else grow_box(box_from_mask(context), context.shape)
        include = prompt.points[prompt.labels == 1]
        if len(include):
            box = np.array([min(box[0], include[:, 0].min()), min(box[1], include[:, 1].min()),
                            max(box[2], include[:, 0].max()), max(box[3], include[:, 1].max())])
        proposal = self.predict(axis, index, SlicePrompt(points=prompt.points, labels=prompt.labels, box=box),
                                multimask=False)
        mask = context.copy()
        rows, cols = mask.shape
        yy, xx = np.mgrid[:rows, :cols]
        sy, sx = geo.spacing
        for (px, py), label in zip(prompt.points, prompt.labels, strict=True):
            x, y = int(np.clip(round(px), 0, cols - 1)), int(np.clip(round(py), 0, rows - 1))
            if bool(mask[y, x]) == bool(label):
                continue
            if label == 1:
                radius = float(distance_to(mask, geo.spacing)[y, x])
                region = _component_at(proposal.mask, x, y) & ~mask
            else:
                radius = float(distance_to(~np.pad(mask, 1), geo.spacing)[1:-1, 1:-1][y, x])
                region = _component_at(mask & ~proposal.mask, x, y)
            disc = ((xx - x) * sx) ** 2 + ((yy - y) * sy) ** 2 <= radius**2
            if not region.any() or region.sum() > LOCAL_AREA_FACTOR * disc.sum():
                region = disc
            region[y, x] = True
            mask = mask | region if label == 1 else mask & ~region
        logits = np.where(mask, np.maximum(proposal.logits, 1.0), np.minimum(proposal.logits, -1.0))
        emb = self.embedding(axis, index)
        low = self.model.mask_to_low_res(mask_to_model_grid(mask, geo), emb)
        return SliceResult(axis, int(index), mask, logits.astype(np.float32), proposal.score, low, self.window)
