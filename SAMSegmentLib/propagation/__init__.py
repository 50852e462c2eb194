"""Slice-to-slice propagation through a volume: chaining (single-image models) and memory (SAM 2 family).

Both produce SliceOutcome objects, one per slice, streamed in order outward from the prompted slices.
"""

from __future__ import annotations

from .plan import PropagationCancelled, PropagationResult, SliceOutcome, plan_chains

__all__ = ["PropagationCancelled", "PropagationResult", "SliceOutcome", "plan_chains"]
