"""Memory propagation (SAM 2 family) on a SlicePredictor's volume: voxel prompts in, voxel masks out.

The frames are the predictor's windowed square-pixel slice images, produced lazily; memory.py does the tracking.
Adding or changing a prompt can change every propagated slice (every frame attends to the conditioning frames),
so each run recomputes all propagated slices; prompted slices keep their prompted result.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..predictor import SlicePredictor
from ..prompts import SlicePrompt
from ..slices import logits_to_voxel_grid, mask_to_model_grid
from .memory import FramePrompt, propagate_memory
from .plan import PropagationResult, SliceOutcome


class MemoryPropagator:
    """Runs SAM 2 memory propagation along one axis of the predictor's volume."""

    def __init__(self, predictor: SlicePredictor) -> None:
        self.predictor = predictor
        self.sam2_model = predictor.model.sam2_model
        norm = getattr(predictor.model, "frame_normalisation", None)
        self._norm = norm if norm is not None else {}

    def frame_prompt(self, axis: str, prompt: SlicePrompt) -> FramePrompt:
        """Voxel-plane prompt -> frame (model-grid) pixel prompt. SAM 2 takes a mask only without points/box."""
        geo = self.predictor.geometry(axis)
        has_clicks = prompt.box is not None or len(prompt.points) > 0
        return FramePrompt(
            points=geo.to_model_xy(prompt.points),
            labels=prompt.labels,
            box=geo.box_to_model(prompt.box) if prompt.box is not None else None,
            mask=None if has_clicks or prompt.mask is None else mask_to_model_grid(prompt.mask, geo),
        )

    def run(
        self,
        axis: str,
        prompts: dict[int, SlicePrompt],
        direction: str = "both",
        frange: tuple[int, int] | None = None,
        on_slice: Callable[[SliceOutcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[int, int], None] | None = None,
    ) -> PropagationResult:
        axis = axis.upper()
        n = self.predictor.volume.axis_length(axis)
        lo, hi = frange if frange is not None else (0, n - 1)
        geo = self.predictor.geometry(axis)
        seeds = sorted(prompts)
        if direction == "forward":
            total = hi - min(seeds) + 1
        elif direction == "backward":
            total = max(seeds) - lo + 1
        else:
            total = hi - lo + 1
        result = PropagationResult(axis)
        frame_prompts = {}
        for index, prompt in prompts.items():
            prompt.check_inside(geo.shape, f"slice {index} ({axis})")
            frame_prompts[index] = self.frame_prompt(axis, prompt)

        def on_frame(index: int, logits: torch.Tensor, score: float) -> None:
            voxel_logits = logits_to_voxel_grid(logits, geo)
            source = "prompt" if index in prompts else "propagated"
            seed = index if index in prompts else min(seeds, key=lambda s: abs(s - index))
            outcome = SliceOutcome(index, voxel_logits > 0, float(score), source, seed)
            result.outcomes[index] = outcome
            result.recomputed.append(index)
            if on_slice is not None:
                on_slice(outcome)
            if progress is not None:
                progress(len(result.outcomes), max(total, len(result.outcomes)))

        propagate_memory(
            self.sam2_model,
            lambda index: self.predictor.slice_image(axis, index),
            n,
            frame_prompts,
            direction=direction,
            frame_range=(lo, hi),
            on_frame=on_frame,
            should_stop=should_stop,
            forward_image=getattr(self.predictor.model, "forward_image", None),
            **self._norm,
        )
        return result
