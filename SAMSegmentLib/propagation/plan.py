"""What propagation produces and which slices each prompted slice (seed) is responsible for.

Slice indices are along the request's axis. A chain is (seed, step) with step +1 (forward, increasing index) or
-1 (backward) and the last index it may reach (inclusive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class PropagationCancelled(Exception):
    """Propagation stopped because the user cancelled; results so far were streamed but nothing is final."""


@dataclass
class SliceOutcome:
    """Result on one slice: ``mask`` bool [rows, cols] on the voxel slice grid (all False when the object ended),
    ``score`` the model's predicted IoU (or object score), ``source`` 'prompt' or 'propagated', ``seed`` the
    prompted slice it came from, ``stopped`` the stop-rule reason on the slice where a chain ended."""

    index: int
    mask: np.ndarray
    score: float
    source: str
    seed: int
    stopped: str | None = None


@dataclass
class PropagationResult:
    """Outcomes by slice index, and the slices the model ran on in this run (the others were reused, or left
    empty without model work because their chain had ended); ``window`` is the intensity window the model saw
    (a ``windowing.Window``; None when unknown)."""

    axis: str
    outcomes: dict[int, SliceOutcome] = field(default_factory=dict)
    recomputed: list[int] = field(default_factory=list)
    window: Any = None

    def to_volume(self, shape_kji: tuple[int, int, int]) -> np.ndarray:
        """Bool mask volume [k, j, i] with every outcome written into its slice."""
        from ..slices import slice_view

        out = np.zeros(shape_kji, dtype=bool)
        for index, outcome in self.outcomes.items():
            slice_view(out, self.axis, index)[...] = outcome.mask
        return out


def plan_chains(
    seeds: list[int], direction: str, lo: int, hi: int, steps: dict[int, tuple[int, ...]] | None = None
) -> list[tuple[int, int, int]]:
    """Chains (seed, step, last index) covering [lo, hi] from the sorted seeds.

    ``both``: between two seeds each covers half the gap (the nearer seed wins; the lower seed takes the middle
    slice), and the outermost seeds run on to lo and hi. ``forward``: each seed runs up to the slice before the next
    seed, the last one to hi. ``backward``: mirror image. ``none``: no chains.

    ``steps`` optionally restricts seeds to some directions (+1, -1): a corrected slice propagates only outward,
    away from the seed whose chain reached it. Between two seeds of which only one runs into the gap, that one
    covers the whole gap.
    """
    seeds = sorted(s for s in set(seeds) if lo <= s <= hi)
    chains: list[tuple[int, int, int]] = []
    if direction == "none" or not seeds:
        return chains
    wanted = {"both": (1, -1), "forward": (1,), "backward": (-1,)}[direction]

    def runs(seed: int, step: int) -> bool:
        return step in wanted and (steps is None or step in steps.get(seed, (1, -1)))

    for n, s in enumerate(seeds):
        nxt = seeds[n + 1] if n + 1 < len(seeds) else None
        prv = seeds[n - 1] if n > 0 else None
        if runs(s, 1):
            if nxt is None:
                last = hi
            elif direction == "both" and runs(nxt, -1):
                last = (s + nxt) // 2
            else:
                last = nxt - 1
            if last > s:
                chains.append((s, +1, last))
        if runs(s, -1):
            if prv is None:
                last = lo
            elif direction == "both" and runs(prv, 1):
                last = (prv + s) // 2 + 1
            else:
                last = prv + 1
            if last < s:
                chains.append((s, -1, last))
    return chains
