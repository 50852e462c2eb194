"""One model on one volume: single-slice previews and propagation, the API the effect and the CLI share.

Everything here runs torch: the engine (engine/core.py) calls it on its threads, never on a GUI thread.

Windows: an explicit ``window`` (e.g. the one the user sees in Slicer) is used for everything. Without one,
``window_mode`` decides: ``"fit"`` (default) fits a window to each object from the grey levels in and around its
first prompt and keeps it for that object's previews and propagation (``windowing.fit_window``); ``"volume"`` uses
one automatic window for the whole volume. A session segments one object at a time: :meth:`new_object` starts the
next one, which gets its own fitted window. Results say which window they used (``SliceResult.window``,
``PropagationResult.window``; :attr:`window` is the current one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from .embedding_cache import DEFAULT_BUDGET_BYTES
from .models.base import SliceModel
from .predictor import SlicePredictor, SliceResult
from .prompts import PromptError, SlicePrompt, box_from_mask
from .propagation.chaining import DEFAULT_CHAIN_CACHE_BYTES, ChainParams, ChainPropagator
from .propagation.plan import PropagationResult, SliceOutcome
from .request import SegmentationRequest
from .slices import extract_slice
from .volume import Volume, axis_index
from .windowing import WINDOW_MODES, Window, auto_window, fit_window, prompt_region

log = logging.getLogger(__name__)


class SegmentationSession:
    """Holds the predictor (embedding cache), the current object's window and the propagators' reusable state."""

    def __init__(self, model: SliceModel, volume: Volume, window: Window | None = None,
                 cache_bytes: int = DEFAULT_BUDGET_BYTES, chain_params: ChainParams | None = None,
                 window_mode: str = "fit", chain_cache_bytes: int = DEFAULT_CHAIN_CACHE_BYTES) -> None:
        if window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode must be one of {', '.join(WINDOW_MODES)}, not {window_mode!r}")
        self.model = model
        self.volume = volume
        self.explicit_window = window
        self.window_mode = window_mode
        self._volume_window: Window | None = None
        self._object_window: Window | None = None
        self.predictor = SlicePredictor(model, volume, window=window or self.volume_window, cache_bytes=cache_bytes)
        self._chain = ChainPropagator(self.predictor, chain_params, cache_bytes=chain_cache_bytes)
        self._memory = None

    # --- windows ------------------------------------------------------------------------------------------------

    @property
    def volume_window(self) -> Window:
        """The automatic window of the whole volume (computed once)."""
        if self._volume_window is None:
            self._volume_window = auto_window(self.volume.array)
        return self._volume_window

    @property
    def window(self) -> Window:
        """The window in use: the explicit one, else the current object's (fitted once it has a prompt), else the
        volume's."""
        if self.explicit_window is not None:
            return self.explicit_window
        if self.window_mode == "fit" and self._object_window is not None:
            return self._object_window
        return self.volume_window

    @property
    def window_fitted(self) -> bool:
        """Whether the current object has its own fitted window yet (fit mode, no explicit window)."""
        return self.explicit_window is None and self.window_mode == "fit" and self._object_window is not None

    def new_object(self) -> None:
        """Start the next object: its first prompt fits a new window (cached embeddings of other windows stay)."""
        self._object_window = None
        self.predictor.window = self.window

    def _window_for(self, axis: str, prompts: dict[int, SlicePrompt]) -> Window:
        """The window for prompts of the current object: fitted from them the first time (fit mode)."""
        if self.explicit_window is None and self.window_mode == "fit" and self._object_window is None:
            self._object_window = self._fit(axis, prompts)
            log.info("window fitted to the object: %s [%.1f, %.1f]", self._object_window.name,
                     self._object_window.low, self._object_window.high)
        self.predictor.window = self.window
        return self.window

    def _fit(self, axis: str, prompts: dict[int, SlicePrompt]) -> Window:
        """Fit to the largest box among the prompts (the most representative view of the object; the lowest slice
        on ties), else to the first prompt with a mask, else to the first with points."""

        def rank(item):
            index, p = item
            area = 0.0 if p.box is None else float((p.box[2] - p.box[0] + 1) * (p.box[3] - p.box[1] + 1))
            return (p.box is None, -area, p.mask is None, index)

        index, prompt = min(prompts.items(), key=rank)
        values = extract_slice(self.volume.array, axis, index)
        box = prompt.box
        if box is None and prompt.mask is not None and prompt.mask.any():
            box = box_from_mask(prompt.mask)
        include = prompt.points[prompt.labels == 1] if len(prompt.points) else prompt.points
        region = prompt_region(values, box, include if len(include) else prompt.points)
        return fit_window(self.volume.array, region)

    # --- segmentation -------------------------------------------------------------------------------------------

    def preview(self, axis: str, index: int, prompt: SlicePrompt) -> SliceResult:
        """Mask for one slice from its prompt (the embedding is cached, so repeated clicks are fast).

        A prompt with a mask and points corrects that mask (see prompts.py); a points-only prompt is segmented
        from its points (use :meth:`propagate` to correct a propagated slice).
        """
        axis = axis.upper()
        axis_index(axis)
        self._window_for(axis, {int(index): prompt})
        return self.predictor.predict(axis, index, prompt)

    def prefetch(self, axis: str, indices, should_stop: Callable[[], bool] = lambda: False) -> int:
        """Compute embeddings of ``indices`` ahead of time with the current window; returns how many were
        computed. In fit mode nothing is computed before the object's first prompt (its window is not known)."""
        if self.explicit_window is None and self.window_mode == "fit" and self._object_window is None:
            return 0
        self.predictor.window = self.window
        return self.predictor.prefetch(axis, indices, should_stop)

    def propagate(
        self,
        axis: str,
        prompts: dict[int, SlicePrompt],
        direction: str = "both",
        frange: tuple[int, int] | None = None,
        on_slice: Callable[[SliceOutcome], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Callable[[int, int], None] | None = None,
    ) -> PropagationResult:
        """Prompted slices plus propagation in ``direction`` ('none', 'both', 'forward', 'backward').

        Points-only prompts on slices the propagation reaches correct the result there (see chaining.py); a
        prompt with ``extent`` (a 3D box) bounds propagation to its slice range.
        """
        if not prompts:
            raise PromptError("no prompts given: add at least one box or include point")
        axis = axis.upper()
        window = self._window_for(axis, prompts)
        if self.model.capabilities.memory_propagation and direction != "none":
            propagator = self._memory_propagator()
            extents = [p.extent for p in prompts.values() if p.extent is not None]
            if extents:  # chaining narrows the range itself; memory propagation is given the 3D box's slices
                n = self.volume.axis_length(axis)
                lo, hi = frange if frange is not None else (0, n - 1)
                frange = (max(lo, min(e[0] for e in extents)), min(hi, max(e[1] for e in extents)))
        else:
            propagator = self._chain
        result = propagator.run(axis, prompts, direction, frange, on_slice, should_stop, progress)
        result.window = window
        return result

    def segment(self, request: SegmentationRequest, on_slice=None, should_stop=lambda: False,
                progress=None) -> np.ndarray:
        """Run a whole request; returns the bool mask volume [k, j, i]."""
        request.validate(self.volume)
        result = self.propagate(request.axis, request.prompts, request.propagate, request.range,
                                on_slice, should_stop, progress)
        return result.to_volume(self.volume.array.shape)

    def _memory_propagator(self):
        if self._memory is None:
            from .propagation.memory_session import MemoryPropagator

            self._memory = MemoryPropagator(self.predictor)
        return self._memory
