"""One model on one volume: single-slice previews and propagation, the API the effect and the CLI share.

Everything here runs torch: the engine (engine/core.py) calls it on its threads, never on a GUI thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from .embedding_cache import DEFAULT_BUDGET_BYTES
from .models.base import SliceModel
from .predictor import SlicePredictor, SliceResult
from .prompts import PromptError, SlicePrompt
from .propagation.chaining import ChainParams, ChainPropagator
from .propagation.plan import PropagationResult, SliceOutcome
from .request import SegmentationRequest
from .volume import Volume
from .windowing import Window

log = logging.getLogger(__name__)


class SegmentationSession:
    """Holds the predictor (embedding cache) and the propagators' reusable state for one volume."""

    def __init__(self, model: SliceModel, volume: Volume, window: Window | None = None,
                 cache_bytes: int = DEFAULT_BUDGET_BYTES, chain_params: ChainParams | None = None) -> None:
        self.model = model
        self.volume = volume
        self.predictor = SlicePredictor(model, volume, window=window, cache_bytes=cache_bytes)
        self._chain = ChainPropagator(self.predictor, chain_params)
        self._memory = None

    @property
    def window(self) -> Window:
        return self.predictor.window

    def preview(self, axis: str, index: int, prompt: SlicePrompt) -> SliceResult:
        """Mask for one slice from its prompt (the embedding is cached, so repeated clicks are fast)."""
        return self.predictor.predict(axis, index, prompt)

    def prefetch(self, axis: str, indices, should_stop: Callable[[], bool] = lambda: False) -> int:
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
        """Prompted slices plus propagation in ``direction`` ('none', 'both', 'forward', 'backward')."""
        if not prompts:
            raise PromptError("no prompts given: add at least one box or include point")
        if self.model.capabilities.memory_propagation and direction != "none":
            propagator = self._memory_propagator()
        else:
            propagator = self._chain
        return propagator.run(axis.upper(), prompts, direction, frange, on_slice, should_stop, progress)

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
