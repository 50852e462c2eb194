"""Intensity windowing: volume values -> 8-bit grey levels the models were trained on.

A window is (low, high) in the volume's units (HU for CT); values map linearly to 0..255 and clip outside.
The automatic window is computed once per volume so that neighbouring slices agree:
CT (data in Hounsfield units) gets a preset, anything else the 0.5-99.5 percentiles of its non-background voxels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# (width, level) presets in HU, as in Slicer's volume display presets.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "ct-soft-tissue": (400.0, 40.0),
    "ct-abdomen": (350.0, 40.0),
    "ct-lung": (1500.0, -600.0),
    "ct-bone": (1800.0, 400.0),
    "ct-brain": (80.0, 40.0),
    "ct-mediastinum": (500.0, 50.0),
}
DEFAULT_CT_PRESET = "ct-soft-tissue"


@dataclass(frozen=True)
class Window:
    """Linear intensity window [low, high] -> [0, 255]; ``name`` records where it came from."""

    low: float
    high: float
    name: str = "explicit"

    @classmethod
    def from_width_level(cls, width: float, level: float, name: str = "explicit") -> Window:
        if width <= 0:
            raise ValueError(f"window width must be positive, got {width}")
        return cls(level - width / 2.0, level + width / 2.0, name)

    @property
    def key(self) -> tuple[float, float]:
        """Hashable identity for caches (rounded so float noise does not miss the cache)."""
        return round(self.low, 3), round(self.high, 3)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Map ``values`` to uint8 grey levels."""
        span = max(self.high - self.low, 1e-6)
        scaled = (np.asarray(values, dtype=np.float32) - self.low) * (255.0 / span)
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def apply_float(self, values: np.ndarray) -> np.ndarray:
        """Map ``values`` to float grey levels in [0, 255] (no rounding; for resampling before quantisation)."""
        span = max(self.high - self.low, 1e-6)
        scaled = (np.asarray(values, dtype=np.float32) - self.low) * (255.0 / span)
        return np.clip(scaled, 0.0, 255.0)


def looks_like_ct(array: np.ndarray) -> bool:
    """True when values look like Hounsfield units: air near -1000 present and a signed range up to tissue/bone."""
    sample = _sample(array)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return float(lo) <= -500.0 and float(hi) >= -100.0


def percentile_window(array: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> Window:
    """Percentile window over the non-background voxels (values above the minimum) of the whole volume."""
    sample = _sample(array).astype(np.float32)
    fg = sample[sample > sample.min()]
    if fg.size < 16:
        fg = sample
    lo, hi = np.percentile(fg, [lower, upper])
    if hi <= lo:  # (nearly) constant foreground: fall back to the whole range
        lo, hi = float(sample.min()), float(max(sample.max(), sample.min() + 1.0))
    return Window(float(lo), float(hi), f"percentile-{lower:g}-{upper:g}")


def auto_window(array: np.ndarray, preset: str | None = None) -> Window:
    """The automatic window for a volume: a CT preset for HU data, percentiles otherwise."""
    if preset is not None:
        if preset not in CT_PRESETS:
            raise ValueError(f"unknown window preset {preset!r}; choose one of {', '.join(CT_PRESETS)}")
        width, level = CT_PRESETS[preset]
        return Window.from_width_level(width, level, preset)
    if looks_like_ct(array):
        width, level = CT_PRESETS[DEFAULT_CT_PRESET]
        return Window.from_width_level(width, level, DEFAULT_CT_PRESET)
    return percentile_window(array)


def _sample(array: np.ndarray, max_values: int = 2_000_000) -> np.ndarray:
    """A strided subsample of the volume (deterministic) so statistics stay cheap on large volumes."""
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // max_values)
    return flat[::step]
