"""Intensity windowing: volume values -> 8-bit grey levels the models were trained on.

A window is (low, high) in the volume's units (HU for CT); values map linearly to 0..255 and clip outside.
Two automatic windows, each computed once and kept (so that neighbouring slices agree):

- ``volume`` (:func:`auto_window`): once per volume. CT (data in Hounsfield units) gets the soft-tissue preset,
  anything else the 0.5-99.5 percentiles of its non-background voxels.
- ``fit`` (:func:`fit_window`): once per object, from the grey levels in and around its first box (or points).
  CT: the window is centred on the object's own intensity (median of the box's central half) and wide enough to
  show 90 % of the box (its 5th to 95th percentile: the tissue the object borders) unclipped, at least 400 HU wide.
  A nodule in lung gets a lung-like window, a liver a soft-tissue one. MedSAM and LiteMedSAM were trained on CT
  windowed by anatomy-specific presets, which put the target near mid-grey; this reproduces that choice from the
  prompt. Other modalities (MR, ...): the volume window the models were trained with (0.5-99.5 volume
  percentiles), widened where the box's own 1st-99th percentiles fall outside it (a bright lesion is not clipped).

Measured with LiteMedSAM (bf16, ../shared/data; reference box on every labelled slice / one box + propagation):
lung2 0.882 / 0.879 with the volume window (soft tissue), 0.911 / 0.900 fitted; t2, brain1 and liver unchanged
within 0.003. Narrow percentile windows of the box alone were worse on the MR cases (brain1 0.78-0.84) and
percentiles of a region grown around the box included air in the liver case (0.81).
"""

from __future__ import annotations

import logging
import math
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
WINDOW_MODES = ("fit", "volume")  # automatic windows: fitted to each object, or one per volume

FIT_CT_MIN_HALF_WIDTH = 200.0  # HU: a fitted CT window is at least as wide as the soft-tissue preset
FIT_BOX_PERCENTILES = (5.0, 95.0)  # CT: the part of the box shown unclipped
FIT_MR_PERCENTILES = (1.0, 99.0)  # other modalities: the part of the box the volume window must not clip
POINTS_REGION_FRACTION = 0.125  # a points-only prompt: a square of this fraction of the slice's smaller side


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


def fit_window(array: np.ndarray, region: np.ndarray, is_ct: bool | None = None) -> Window:
    """The window fitted to one object from ``region``: the voxel values in its box on the prompted slice.

    ``region`` is 2D [rows, cols] (the box, edges inclusive), or any array of values (its centre is then not
    known and the median of all values is used). ``is_ct`` None decides from the volume (:func:`looks_like_ct`).
    See the module docstring for the rule.
    """
    region = np.asarray(region, dtype=np.float32)
    if region.size == 0:
        raise ValueError("cannot fit a window to an empty region")
    if is_ct is None:
        is_ct = looks_like_ct(array)
    if is_ct:
        if region.ndim == 2 and min(region.shape) >= 4:
            h, w = region.shape
            inner = region[h // 4 : h - h // 4, w // 4 : w - w // 4]
        else:
            inner = region
        level = float(np.median(inner))
        lo, hi = np.percentile(region, FIT_BOX_PERCENTILES)
        half = max(FIT_CT_MIN_HALF_WIDTH, level - float(lo), float(hi) - level)
        return Window(max(level - half, -1024.0), level + half, "fit-ct")
    base = percentile_window(array)
    lo, hi = np.percentile(region, FIT_MR_PERCENTILES)
    return Window(min(base.low, float(lo)), max(base.high, float(hi)), "fit-percentile")


WINDOW_SYNTAX = "fit, volume, WIDTH,LEVEL (e.g. 400,40) or one of " + ", ".join(CT_PRESETS)


def check_window_text(text: str | None) -> None:
    """Raise ValueError (saying what is allowed) unless ``text`` is a window :func:`parse_window` understands."""
    if text is None or text in ("fit", "volume") or text in CT_PRESETS:
        return
    try:
        width, level = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--window must be {WINDOW_SYNTAX}, not {text!r}") from None
    if not (math.isfinite(width) and math.isfinite(level)):
        raise ValueError(f"--window's width and level must be finite numbers, not {text!r}")
    if not width > 0:
        raise ValueError(f"--window's width must be positive, not {width:g}")


def parse_window(text: str | None, array: np.ndarray | None = None) -> Window | None:
    """'WIDTH,LEVEL' or a CT preset name -> Window; 'volume' -> the volume's automatic window; 'fit' or None -> None
    (the session fits a window to each object). ValueError for anything else."""
    check_window_text(text)
    if text is None or text == "fit":
        return None
    if text == "volume":
        return auto_window(array)
    if text in CT_PRESETS:
        return auto_window(array, preset=text)
    width, level = (float(v) for v in text.split(","))
    return Window.from_width_level(width, level)


def prompt_region(slice_values: np.ndarray, box: np.ndarray | None, points: np.ndarray | None) -> np.ndarray:
    """The values a window is fitted to: inside ``box`` (inclusive voxel corners (x0, y0, x1, y1)) on a slice
    [rows, cols], or, with points only, a square around the points (at least ``POINTS_REGION_FRACTION`` of the
    slice's smaller side)."""
    rows, cols = slice_values.shape
    if box is None:
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        if pts.size == 0:
            raise ValueError("a window needs a box or points to fit to")
        side = max(4.0, POINTS_REGION_FRACTION * min(rows, cols))
        cx, cy = pts.mean(axis=0)
        half_x = max(side / 2, (pts[:, 0].max() - pts[:, 0].min()) / 2)
        half_y = max(side / 2, (pts[:, 1].max() - pts[:, 1].min()) / 2)
        box = np.array([cx - half_x, cy - half_y, cx + half_x, cy + half_y])
    x0, y0, x1, y1 = (int(round(v)) for v in np.asarray(box, dtype=float))
    x0, x1 = max(0, min(x0, cols - 1)), max(0, min(x1, cols - 1))
    y0, y1 = max(0, min(y0, rows - 1)), max(0, min(y1, rows - 1))
    return slice_values[min(y0, y1) : max(y0, y1) + 1, min(x0, x1) : max(x0, x1) + 1]


def _sample(array: np.ndarray, max_values: int = 2_000_000) -> np.ndarray:
    """A strided subsample of the volume (deterministic) so statistics stay cheap on large volumes."""
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // max_values)
    return flat[::step]
