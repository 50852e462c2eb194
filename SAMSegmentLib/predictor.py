"""Promptable segmentation of one slice of a volume: cached embeddings + prompt decoding.

Prompts are in voxel coordinates of the slice plane (see slices.py); results come back on the slice's voxel grid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .embedding_cache import DEFAULT_BUDGET_BYTES, EmbeddingCache
from .models.base import Embedding, SliceModel
from .prompts import PromptError, SlicePrompt
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


@dataclass
class SliceResult:
    """Prediction on one slice: ``mask`` bool [rows, cols] on the voxel grid, ``logits`` float [rows, cols],
    ``score`` the model's predicted IoU, ``low_res_logits`` [1, 256, 256] (to feed back as a mask prompt)."""

    axis: str
    index: int
    mask: np.ndarray
    logits: np.ndarray
    score: float
    low_res_logits: torch.Tensor


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
        self.window = window or auto_window(volume.array)
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
        if not prompt.has_include:
            raise PromptError(f"slice {index} ({axis}) has only exclude points: add an include point or a box")
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
        return SliceResult(axis, int(index), logits > 0, logits, float(decoded.iou[best]), low)
