"""A segmentation request: prompted slices along one axis plus how to propagate. PROMPTS.json reads into this.

PROMPTS.json (an exact contract)::

    {"axis": "K", "propagate": "both", "range": [0, 40],
     "prompts": [{"slice": 15, "box": [i0, j0, i1, j1]},
                 {"slice": 15, "points": [[i, j, 1], [i, j, 0]]},
                 {"slice": 18, "points": [[i, j, 0]]}]}

Box corners and points are voxel indices in the slice plane (the two axes other than ``axis``, in I, J, K order);
box corners are inclusive; point label 1 includes, 0 excludes; entries on the same slice form one prompt.

- A slice with a box: the object in the box (its points refine it).
- A slice with points and no box is a correction where the propagation reaches it: the propagated result there
  (its mask and box) is the context, include points add to it, exclude points remove from it; propagation then
  continues outward from the corrected slice, which keeps its corrected result, until the correction's effect
  dies out (beyond that slice the earlier result stays: ``ChainParams.join_fraction``); a part the correction
  added apart from the context also runs back toward the prompt whose propagation reached the slice, and the
  slices between get it where it does not overlap what they show (``ChainParams.back_runs``). On a slice the
  propagation does not reach (or with ``"propagate": "none"``) points alone segment from the points and need an
  include point.
- A 3D box: ``{"slice": 15, "box3d": [i0, j0, i1, j1, first, last]}`` (axis K; the in-plane corners as for
  ``box``, then the object's first and last slice along ``axis``, inclusive): the box on slice 15 and the slice
  range the object occupies. Propagation stays inside that range (as the initial prompt of the CVPR 2025
  interactive segmentation challenge).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .prompts import PromptError, SlicePrompt
from .volume import AXES, Volume

DIRECTIONS = ("none", "both", "forward", "backward")


@dataclass
class SegmentationRequest:
    """Prompts by slice index along ``axis``; ``propagate`` one of DIRECTIONS; ``range`` inclusive or None."""

    axis: str = "K"
    prompts: dict[int, SlicePrompt] = field(default_factory=dict)
    propagate: str = "none"
    range: tuple[int, int] | None = None

    def validate(self, volume: Volume) -> None:
        """Raise PromptError naming the first problem (axis, direction, range, slices and coordinates)."""
        if self.axis not in AXES:
            raise PromptError(f"axis must be I, J or K, not {self.axis!r}")
        if self.propagate not in DIRECTIONS:
            raise PromptError(f"propagate must be one of {', '.join(DIRECTIONS)}, not {self.propagate!r}")
        if not self.prompts:
            raise PromptError("no prompts given: add at least one box or include point")
        n = volume.axis_length(self.axis)
        if self.range is not None:
            lo, hi = self.range
            if lo > hi:
                raise PromptError(f"range [{lo}, {hi}] is empty: the first index must not exceed the second")
            if lo < 0 or hi >= n:
                raise PromptError(f"range [{lo}, {hi}] is outside the volume along {self.axis} (0 .. {n - 1})")
        from .slices import slice_geometry

        shape = slice_geometry(volume, self.axis).shape
        for index, prompt in sorted(self.prompts.items()):
            if not 0 <= index < n:
                raise PromptError(f"prompt on slice {index} is outside the volume along {self.axis} (0 .. {n - 1})")
            if self.range is not None and not self.range[0] <= index <= self.range[1]:
                raise PromptError(f"prompt on slice {index} lies outside the range {list(self.range)}")
            prompt.check_inside(shape, f"slice {index}")
            if prompt.extent is not None and not (0 <= prompt.extent[0] and prompt.extent[1] < n):
                raise PromptError(f"the 3D box on slice {index} spans slices {list(prompt.extent)}, outside the "
                                  f"volume along {self.axis} (0 .. {n - 1})")
            if prompt.extent is not None and not prompt.extent[0] <= index <= prompt.extent[1]:
                raise PromptError(f"the 3D box on slice {index} spans slices {list(prompt.extent)}, which do not "
                                  "include its own slice")
        if not any(p.has_include for p in self.prompts.values()):
            first = min(self.prompts)
            raise PromptError(f"slice {first} has only exclude points and nothing to correct: add an include point "
                              "or a box")
        if self.propagate == "none":
            for index, prompt in sorted(self.prompts.items()):
                if not prompt.has_include:
                    raise PromptError(f"slice {index} has only exclude points and propagation is off, so there is "
                                      "nothing to correct: add an include point or a box, or propagate")


def request_from_dict(data: dict) -> SegmentationRequest:
    """Build a request from the PROMPTS.json structure; raises PromptError on malformed content."""
    if not isinstance(data, dict):
        raise PromptError("the prompts file must hold a JSON object with 'axis' and 'prompts'")
    axis = str(data.get("axis", "K")).upper()
    propagate = str(data.get("propagate", "none")).lower()
    rng = data.get("range")
    if rng is not None:
        if not (isinstance(rng, (list, tuple)) and len(rng) == 2):
            raise PromptError("'range' must be two slice indices [first, last]")
        rng = (_as_int(rng[0], "range"), _as_int(rng[1], "range"))
    entries = data.get("prompts")
    if not isinstance(entries, list) or not entries:
        raise PromptError("'prompts' must be a non-empty list of {'slice': ..., 'box' or 'points': ...}")
    prompts: dict[int, SlicePrompt] = {}
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "slice" not in entry:
            raise PromptError(f"prompt #{n + 1} needs a 'slice' index")
        index = _as_int(entry["slice"], f"prompt #{n + 1} slice")
        box = entry.get("box")
        box3d = entry.get("box3d")
        points = entry.get("points") or []
        extent = None
        if box3d is not None:
            if box is not None:
                raise PromptError(f"prompt #{n + 1} (slice {index}) has both 'box' and 'box3d': give one")
            if not isinstance(box3d, (list, tuple)) or len(box3d) != 6:
                raise PromptError(f"prompt #{n + 1} (slice {index}): 'box3d' must be [x0, y0, x1, y1, first, last]")
            box = list(box3d[:4])
            extent = (_as_int(box3d[4], f"prompt #{n + 1} box3d first slice"),
                      _as_int(box3d[5], f"prompt #{n + 1} box3d last slice"))
        if box is None and not points:
            raise PromptError(f"prompt #{n + 1} (slice {index}) has neither 'box', 'box3d' nor 'points'")
        if box is not None and (not isinstance(box, (list, tuple)) or len(box) != 4):
            raise PromptError(f"prompt #{n + 1} (slice {index}): 'box' must be [x0, y0, x1, y1]")
        try:
            pts = np.asarray(points, dtype=float).reshape(-1, 3) if points else np.zeros((0, 3))
        except ValueError:
            raise PromptError(f"prompt #{n + 1} (slice {index}): each point must be [x, y, label]") from None
        prompt = SlicePrompt(points=pts[:, :2], labels=pts[:, 2].astype(int), box=box, extent=extent)
        prompts[index] = prompts[index].merged(prompt) if index in prompts else prompt
    return SegmentationRequest(axis=axis, prompts=prompts, propagate=propagate, range=rng)


def read_json_file(path: str | Path, what: str = "prompts file"):
    """Parsed JSON content of a prompts/markups file; PromptError (one readable line) when missing or malformed."""
    path = Path(path)
    if not path.exists():
        raise PromptError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PromptError(f"{path.name} is not valid JSON (line {exc.lineno}: {exc.msg})") from None


def read_prompts_json(path: str | Path) -> SegmentationRequest:
    return request_from_dict(read_json_file(path))


def _as_int(value, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"{what} must be a slice index, not {value!r}") from None
    if not math.isfinite(f) or f != int(f):  # JSON allows NaN and Infinity
        raise PromptError(f"{what} must be a whole slice index, not {value!r}")
    return int(f)
