"""A segmentation request: prompted slices along one axis plus how to propagate. PROMPTS.json reads into this.

PROMPTS.json (an exact contract)::

    {"axis": "K", "propagate": "none", "range": [0, 40],
     "prompts": [{"slice": 15, "box": [i0, j0, i1, j1]}, {"slice": 15, "points": [[i, j, 1], [i, j, 0]]}]}

Box corners and points are voxel indices in the slice plane (the two axes other than ``axis``, in I, J, K order);
box corners are inclusive; point label 1 includes, 0 excludes; entries on the same slice form one prompt.
"""

from __future__ import annotations

import json
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
            if not prompt.has_include:
                raise PromptError(f"slice {index} has only exclude points: add an include point or a box")


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
        points = entry.get("points") or []
        if box is None and not points:
            raise PromptError(f"prompt #{n + 1} (slice {index}) has neither 'box' nor 'points'")
        if box is not None and (not isinstance(box, (list, tuple)) or len(box) != 4):
            raise PromptError(f"prompt #{n + 1} (slice {index}): 'box' must be [x0, y0, x1, y1]")
        try:
            pts = np.asarray(points, dtype=float).reshape(-1, 3) if points else np.zeros((0, 3))
        except ValueError:
            raise PromptError(f"prompt #{n + 1} (slice {index}): each point must be [x, y, label]") from None
        prompt = SlicePrompt(points=pts[:, :2], labels=pts[:, 2].astype(int), box=box)
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
    if f != int(f):
        raise PromptError(f"{what} must be a whole slice index, not {value!r}")
    return int(f)
