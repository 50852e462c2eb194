"""Promptable segmentation of one slice of a volume: cached embeddings + prompt decoding + corrections.

Prompts are in voxel coordinates of the slice plane (see slices.py); results come back on the slice's voxel grid.

Corrections (a prompt with a context mask and points, see prompts.py). Models trained on boxes (LiteMedSAM, MedSAM)
barely react to clicks, and letting them redraw the whole contour from box + clicks loses more than it gains
(measured on ../shared/data: replacing the contour lowered the slice Dice after 73 % of simulated clicks). So a
correction changes the context only around each click, one click after the other (the model sees the points up to
the current one, so a later click never changes what an earlier one did):

- include point outside the context: the model's region containing the point, from the best-scoring of a few
  boxes (the context's box grown to the point, boxes of the object's size around the point), when it is at most
  ``LOCAL_AREA_FACTOR`` times the click's disc; otherwise the disc;
- exclude point inside the context: the part of the context the model drops around the point (from the context's
  box, or that box with its edge nearest the point moved past it), under the same bound and less than half the
  context; otherwise the disc;

where a click's disc is the disc around it that reaches the context's boundary (radius: the distance to the
nearest context voxel for an include, to the nearest outside voxel for an exclude, in mm): in the middle of a
missed or leaked band, it stays inside the band. A disc of at most ``SMALL_DISC_VOXELS`` voxels (a band one or
two voxels wide) is the correction itself, without asking the model. Everything farther from the clicks keeps the
context. With an empty context (the propagation had ended there), the prompt's box is the size hint for the
include boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .embedding_cache import DEFAULT_BUDGET_BYTES, EmbeddingCache
from .metrics import connected_components, distance_to
from .models.base import Decoded, Embedding, SliceModel
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
# A click whose disc holds at most this many voxels sits in a band one or two voxels wide: the correction is the
# disc alone (the model's region, up to LOCAL_AREA_FACTOR discs, spills over the band's far side). Measured
# (box3d-clicks-5): an include click on t2 lowered its slice's Dice by 0.006 with OpenVINO bf16, +0.007 with
# this; no other click on the shared cases changed, in fp32 or bf16.
SMALL_DISC_VOXELS = 5
BOX_MARGIN = (0.05, 2.0)  # context boxes grow by this fraction of their side, and at least this many voxels
# A box the user drew (or the evaluation's tight reference box) is also tried grown by these many pixels per side,
# in 256ths of the model input's longest side; the result the model is surest of (predicted IoU) is kept, cut to the
# drawn box (the trials change what the model sees, not where the mask may go). MedSAM-style training moves each box
# edge outward by a random few pixels (MedSAM: up to 20 at 1024, 5 at 256), and a too tight box makes the model
# shrink the whole mask: on t2 (a 7-voxel-wide cord, 4.3 model pixels per voxel) a box about half a voxel inside
# the cord gave half of it (Dice 0.55; 0.92 with the trials). Measured (benchmarks/bench_box_jitter.py: per case the
# tight box, +1 and +2 voxels, 8 random boxes of +-5 % per side), smallest one-box Dice 0.526 -> 0.898 on lung2 and
# 0.643 -> 0.953 on t2, 3D box 0.686 -> 0.962 on t2; mean over all boxes and cases 0.847 -> 0.874 (one box) and
# 0.887 -> 0.901 (3D box). Not cutting to the drawn box gave the same to +-0.002. Every second pixel does as well as
# (0, 1, 2, 3, 4, 6); (0, 3, 6) lost lung2's worst box (0.874). Each trial is one more decode: a box preview p50
# of 14 -> 53 ms on OpenVINO bf16, 59 -> 234 ms on torch fp32 (benchmarks/bench_engine.py, 2-core CPU).
# Propagation's own boxes are not varied (``box_trials=False``).
BOX_TRIALS = (0.0, 2.0, 4.0, 6.0)


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


def trial_boxes(box: np.ndarray, geometry: SliceGeometry, pixels: tuple[float, ...] = BOX_TRIALS) -> list[np.ndarray]:
    """An inclusive voxel box (x0, y0, x1, y1) grown by each of ``pixels`` (256ths of the longest side of the
    model's square-pixel image) per edge, converted to voxels along each axis and clipped to the slice; distinct
    boxes only, the box as given first."""
    rows, cols = geometry.shape
    sy, sx = geometry.scale  # model pixels per voxel
    unit = max(geometry.model_shape) / 256.0
    x0, y0, x1, y1 = np.asarray(box, dtype=float)
    out: list[np.ndarray] = []
    for p in pixels:
        gx, gy = p * unit / sx, p * unit / sy
        grown = np.array([max(0.0, x0 - gx), max(0.0, y0 - gy), min(cols - 1.0, x1 + gx), min(rows - 1.0, y1 + gy)])
        if not any(np.array_equal(grown, b) for b in out):
            out.append(grown)
    return out


def box_footprint(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Voxels of a slice of ``shape`` (rows, cols) whose centres lie inside an inclusive box (x0, y0, x1, y1): voxel
    x spans [x - 0.5, x + 0.5], so x0 - 0.5 <= x <= x1 + 0.5 (fractional corners included)."""
    x0, y0, x1, y1 = np.asarray(box, dtype=float)
    rows, cols = shape
    out = np.zeros(shape, dtype=bool)
    c0, c1 = max(0, int(np.ceil(x0 - 0.5))), min(cols - 1, int(np.floor(x1 + 0.5)))
    r0, r1 = max(0, int(np.ceil(y0 - 0.5))), min(rows - 1, int(np.floor(y1 + 0.5)))
    out[r0 : r1 + 1, c0 : c1 + 1] = True
    return out


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
    labels = connected_components(mask)
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
        # (0.0,): a drawn box is used as it is. SAM 2's memory propagation seeds its tracker with the box as given,
        # so its preview does the same (the two must agree on the prompted slice).
        self.box_trials: tuple[float, ...] = (0.0,) if model.capabilities.memory_propagation else BOX_TRIALS
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
        box_trials: bool = True,
    ) -> SliceResult:
        """Segment slice ``index`` along ``axis`` from ``prompt``.

        ``mask_logits`` ([1, 256, 256] low-res logits, e.g. a neighbour's result) is used as mask prompt when
        given; otherwise ``prompt.mask`` (an existing contour) is. ``multimask`` None chooses automatically:
        several candidates, best by predicted IoU, when the prompt is a single point and nothing else.
        A prompt that is a box alone is also tried grown by ``self.box_trials`` (``BOX_TRIALS``, see there) unless
        ``box_trials`` is False; the result with the highest predicted IoU is returned, cut to the drawn box.
        """
        axis = axis.upper()
        axis_index(axis)
        geo = self.geometry(axis)
        prompt.check_inside(geo.shape, f"slice {index} ({axis})")
        if prompt.mask is not None and len(prompt.points):
            return self.correct(axis, index, prompt)
        if not prompt.has_include:
            raise PromptError(f"slice {index} ({axis}) has only exclude points and nothing to correct there: add an "
                              "include point or a box, or click on a slice the propagation reached")
        emb = self.embedding(axis, index)
        if box_trials and prompt.box is not None and not len(prompt.points) and prompt.mask is None \
                and mask_logits is None:
            multi = bool(multimask) and self.model.capabilities.multimask
            tried = [self.model.decode(emb, None, None, geo.box_to_model(box), None, multimask=multi)
                     for box in trial_boxes(prompt.box, geo, self.box_trials)]
            surest = max(tried, key=lambda d: float(d.iou[d.best()]))  # the first (the box as given) on a tie
            result = self._result(axis, index, emb, surest)
            if len(self.box_trials) > 1:  # the trials change what the model sees, not where the mask may go
                inside = box_footprint(prompt.box, geo.shape)
                result.mask &= inside
                result.logits = np.where(inside, result.logits, np.minimum(result.logits, -1.0)).astype(np.float32)
            return result
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
        return self._result(axis, index, emb, decoded)

    def _result(self, axis: str, index: int, emb: Embedding, decoded: Decoded) -> SliceResult:
        """The decoded candidate with the best predicted IoU, on the slice's voxel grid."""
        best = decoded.best()
        low = decoded.low_res_logits[best : best + 1]
        model_logits = self.model.upscale(low, emb)[0]
        logits = logits_to_voxel_grid(model_logits.cpu(), self.geometry(axis))
        return SliceResult(axis, int(index), logits > 0, logits, float(decoded.iou[best]), low, self.window)

    def correct(self, axis: str, index: int, prompt: SlicePrompt) -> SliceResult:
        """Correct ``prompt.mask`` (the context, possibly empty) with ``prompt.points``: see the module docstring.

        ``prompt.box`` (optional) is the object's box for the model: the context's grown box by default; with an
        empty context, the hint for the object's size (a neighbouring slice's box). Points are applied in order;
        a point already on the right side of the mask changes nothing.
        """
        axis = axis.upper()
        geo = self.geometry(axis)
        context = np.asarray(prompt.mask, dtype=bool)
        base = prompt.box
        if base is None and context.any():
            base = grow_box(box_from_mask(context), context.shape)
        mask = context.copy()
        rows, cols = mask.shape
        score = 0.0
        for n, ((px, py), label) in enumerate(zip(prompt.points, prompt.labels, strict=True)):
            x, y = int(np.clip(round(px), 0, cols - 1)), int(np.clip(round(py), 0, rows - 1))
            if bool(mask[y, x]) == bool(label):
                continue
            # the model sees the points up to this one: a later click never changes what an earlier one did
            upto = SlicePrompt(points=prompt.points[: n + 1], labels=prompt.labels[: n + 1])
            if label == 1:
                region, s = self._include_region(axis, index, mask, x, y, base, upto)
                mask |= region
            else:
                region, s = self._exclude_region(axis, index, mask, x, y, base, upto)
                mask &= ~region
            score = max(score, s)
        emb = self.embedding(axis, index)
        logits = np.where(mask, 1.0, -1.0).astype(np.float32)
        low = self.model.mask_to_low_res(mask_to_model_grid(mask, geo), emb)
        return SliceResult(axis, int(index), mask, logits, score, low, self.window)

    def _disc(self, axis: str, shape: tuple[int, int], x: int, y: int, centre_distance_mm: float) -> np.ndarray:
        """Voxels around (x, y) closer than the contour: ``centre_distance_mm`` is the distance to the nearest
        voxel across the contour, which lies half a voxel before it."""
        sy, sx = self.geometry(axis).spacing
        radius_mm = max(0.0, centre_distance_mm - 0.5 * min(sx, sy))
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        disc = ((xx - x) * sx) ** 2 + ((yy - y) * sy) ** 2 <= radius_mm**2
        disc[y, x] = True
        return disc

    def _decode_box(self, axis: str, index: int, box: np.ndarray, prompt: SlicePrompt) -> SliceResult:
        rows, cols = self.geometry(axis).shape
        b = np.clip(np.asarray(box, dtype=float), 0, [cols - 1, rows - 1, cols - 1, rows - 1])
        return self.predict(axis, index, SlicePrompt(points=prompt.points, labels=prompt.labels, box=b),
                            multimask=False)

    def _include_region(self, axis, index, mask, x, y, base, prompt) -> tuple[np.ndarray, float]:
        """Voxels an include click at (x, y) adds: the best model region containing it that stays local, or the
        click's disc (reaching the mask). Candidates: the object's box grown to the click and as far beyond it as
        the mask is from it, and boxes of the object's size and half its size centred on the click (for a part of
        the object away from the mask). The model's predicted IoU picks among them."""
        geo = self.geometry(axis)
        disc = None
        boxes = []
        if mask.any():
            reach = float(distance_to(mask, geo.spacing)[y, x])  # mm from the click to the mask
            disc = self._disc(axis, mask.shape, x, y, reach)
            if disc.sum() <= SMALL_DISC_VOXELS:
                return disc & ~mask, 0.0
        if base is not None:
            # the click is the middle of what is missing: the box reaches as far beyond it as the mask is before it
            rx, ry = (0.0, 0.0) if disc is None else (reach / geo.spacing[1], reach / geo.spacing[0])
            boxes.append(np.array([min(base[0], x - rx), min(base[1], y - ry), max(base[2], x + rx),
                                   max(base[3], y + ry)]))
            w, h = base[2] - base[0], base[3] - base[1]
            for f in (0.5, 0.25):
                boxes.append(np.array([x - f * w, y - f * h, x + f * w, y + f * h]))
        best: tuple[float, np.ndarray] | None = None
        for box in boxes:
            r = self._decode_box(axis, index, box, prompt)
            region = _component_at(r.mask, x, y) & ~mask
            if not region.any():
                continue
            if disc is not None and region.sum() > LOCAL_AREA_FACTOR * disc.sum():
                continue
            if best is None or r.score > best[0]:
                best = (r.score, region)
        if best is not None:
            return best[1], best[0]
        if disc is None:  # nothing to measure the click's reach against: the click voxel
            disc = np.zeros_like(mask)
            disc[y, x] = True
        return disc & ~mask, 0.0

    def _exclude_region(self, axis, index, mask, x, y, base, prompt) -> tuple[np.ndarray, float]:
        """Voxels an exclude click at (x, y) removes: the part of the mask the model drops around it, from the
        object's box or from that box with its edge nearest the click moved past the click, when it stays local
        (at most ``LOCAL_AREA_FACTOR`` discs and less than half the mask); otherwise the click's disc (reaching the
        mask's outside)."""
        geo = self.geometry(axis)
        outside = distance_to(~np.pad(mask, 1), geo.spacing)[1:-1, 1:-1]
        disc = self._disc(axis, mask.shape, x, y, float(outside[y, x])) & mask
        if disc.sum() <= SMALL_DISC_VOXELS:
            return disc, 0.0
        boxes = []
        if base is not None:
            boxes.append(np.asarray(base, dtype=float))
            x0, y0, x1, y1 = base
            edge = int(np.argmin([x - x0, y - y0, x1 - x, y1 - y]))
            cut = np.array(base, dtype=float)
            cut[edge] = (x + 1, y + 1, x - 1, y - 1)[edge]
            if cut[0] <= cut[2] and cut[1] <= cut[3]:
                boxes.append(cut)
        best: tuple[float, np.ndarray] | None = None
        for box in boxes:
            r = self._decode_box(axis, index, box, prompt)
            region = _component_at(mask & ~r.mask, x, y)
            if not region.any() or region.sum() > LOCAL_AREA_FACTOR * disc.sum() or region.sum() * 2 >= mask.sum():
                continue
            if best is None or r.score > best[0]:
                best = (r.score, region)
        if best is not None:
            return best[1], best[0]
        return disc, 0.0
