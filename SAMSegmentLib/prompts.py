"""Prompts on one slice, in voxel coordinates of that slice's plane (x, y) = (first, second in-plane axis).

See slices.py for which voxel axes x and y are for each slice normal. Boxes are inclusive voxel corners
(x0, y0, x1, y1); a box given with its corners the other way round (x0 > x1 or y0 > y1) is normalised, with one
warning. Coordinates must be finite numbers (NaN or infinity is refused). Point label 1 includes, 0 excludes.

What a prompt means depends on what it holds:

- a box (with or without points): segment the object in the box (points refine inside it);
- a mask (an existing contour) with points: correct that contour (include points add, exclude points remove);
- points only: on a slice that propagation reaches, correct the propagated result there (its mask and box are
  the context); elsewhere, segment from the points (they need an include point);
- ``extent`` (first, last) with a box: a 3D box, the object lies on slices first..last along the prompt's axis
  and propagation from this slice stays inside them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


class PromptError(ValueError):
    """A prompt that cannot be used; the message says which and why."""


@dataclass
class SlicePrompt:
    """Everything the user gave on one slice.

    ``points`` is float [N, 2] (x, y), ``labels`` int [N] (1 include, 0 exclude), ``box`` float [4] or None,
    ``mask`` an optional bool [rows, cols] on the voxel slice grid (an existing contour to refine or correct),
    ``extent`` an optional inclusive (first, last) slice range of the object (a 3D box, with ``box``).
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=float))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=int))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    extent: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=float).reshape(-1, 2)
        self.labels = np.asarray(self.labels, dtype=int).reshape(-1)
        if len(self.points) != len(self.labels):
            raise PromptError("each point needs exactly one label (1 include, 0 exclude)")
        if not np.isfinite(self.points).all():
            raise PromptError("point coordinates must be numbers (found NaN or infinity)")
        if self.labels.size and not np.isin(self.labels, (0, 1)).all():
            raise PromptError("point labels must be 1 (include) or 0 (exclude)")
        if self.box is not None:
            b = np.asarray(self.box, dtype=float).reshape(-1)
            if b.size != 4:
                raise PromptError("a box needs 4 numbers: x0, y0, x1, y1")
            if not np.isfinite(b).all():
                raise PromptError("box corners must be numbers (found NaN or infinity)")
            x0, y0, x1, y1 = b
            self.box = np.array([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
            if x0 > x1 or y0 > y1:
                log.warning("box (%g, %g, %g, %g) has its corners the other way round; using (%g, %g, %g, %g)",
                            x0, y0, x1, y1, *self.box)
        if self.extent is not None:
            first, last = (int(v) for v in self.extent)
            if self.box is None:
                raise PromptError("a 3D box needs a box on its slice as well as its first and last slice")
            self.extent = (min(first, last), max(first, last))

    @property
    def is_empty(self) -> bool:
        return self.box is None and len(self.points) == 0 and self.mask is None

    @property
    def has_include(self) -> bool:
        return self.box is not None or bool((self.labels == 1).any()) or (self.mask is not None and self.mask.any())

    @property
    def points_only(self) -> bool:
        """Points and nothing else: a correction where there is something to correct (see the module docstring)."""
        return self.box is None and self.mask is None and len(self.points) > 0

    def merged(self, other: SlicePrompt) -> SlicePrompt:
        """Union of two prompts on the same slice (the later box, mask and extent win)."""
        return SlicePrompt(
            points=np.concatenate([self.points, other.points]),
            labels=np.concatenate([self.labels, other.labels]),
            box=other.box if other.box is not None else self.box,
            mask=other.mask if other.mask is not None else self.mask,
            extent=other.extent if other.extent is not None else self.extent,
        )

    def with_mask(self, mask: np.ndarray | None) -> SlicePrompt:
        """The same points, box and extent with ``mask`` as the context."""
        return SlicePrompt(points=self.points, labels=self.labels, box=self.box, mask=mask, extent=self.extent)

    def check_inside(self, shape: tuple[int, int], where: str = "") -> None:
        """Raise PromptError if a point or box corner lies outside a slice of ``shape`` (rows, cols)."""
        rows, cols = shape
        label = f" on {where}" if where else ""
        for x, y in self.points:
            if not (-0.5 <= x <= cols - 0.5 and -0.5 <= y <= rows - 0.5):
                raise PromptError(f"point ({x:g}, {y:g}){label} is outside the slice (x 0..{cols - 1}, y 0..{rows - 1})")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x0 < -0.5 or y0 < -0.5 or x1 > cols - 0.5 or y1 > rows - 0.5:
                raise PromptError(
                    f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}){label} is outside the slice (x 0..{cols - 1}, y 0..{rows - 1})"
                )
        if self.mask is not None and tuple(self.mask.shape) != (rows, cols):
            raise PromptError(f"mask prompt{label} has shape {self.mask.shape}, the slice is {(rows, cols)}")


def box_from_mask(mask: np.ndarray) -> np.ndarray | None:
    """Tight inclusive box (x0, y0, x1, y1) of a 2D mask [rows, cols], or None if empty."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)
