"""Draws the SAMSegment icons (numpy, written with Pillow); run it to regenerate them after a change.

    python Resources/make_icons.py

SAMSegment/Resources/Icons/SAMSegment.png (128 px): module and extension icon.
SAMSegment/SegmentEditorSegmentAnythingLib/SegmentEditorEffect.png (21 px, like the built-in effect icons).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SUPERSAMPLE = 8


def draw(size: int) -> np.ndarray:
    """RGBA [size, size, 4] uint8, drawn at SUPERSAMPLE x resolution and averaged (anti-aliased)."""
    n = size * SUPERSAMPLE
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / n  # 0..1, y down
    rgba = np.zeros((n, n, 4), dtype=float)

    def paint(mask, color, alpha=1.0):
        a = mask.astype(float) * alpha
        rgba[..., :3] = rgba[..., :3] * (1 - a[..., None]) + np.asarray(color)[None, None, :] * a[..., None]
        rgba[..., 3] = np.maximum(rgba[..., 3], a)

    # rounded dark tile
    r = 0.16
    cx, cy = np.clip(x, r, 1 - r), np.clip(y, r, 1 - r)
    paint(np.hypot(x - cx, y - cy) <= r, (0.13, 0.16, 0.22))
    # a grey "slice" disc (anatomy)
    paint(np.hypot(x - 0.5, (y - 0.52) * 1.1) <= 0.36, (0.42, 0.45, 0.5))
    # the segmented object: a yellow blob
    blob = ((x - 0.47) / 0.19) ** 2 + ((y - 0.55) / 0.15) ** 2 + 0.35 * np.sin(6 * x) * (y - 0.5) <= 1
    paint(blob, (1.0, 0.82, 0.1), 0.85)
    # the box prompt
    w = 0.035 if size >= 64 else 0.06
    box = (x > 0.22) & (x < 0.74) & (y > 0.33) & (y < 0.77)
    inner = (x > 0.22 + w) & (x < 0.74 - w) & (y > 0.33 + w) & (y < 0.77 - w)
    paint(box & ~inner, (1.0, 1.0, 1.0))
    # the include point: green dot with a white rim
    paint(np.hypot(x - 0.47, y - 0.55) <= 0.085, (1.0, 1.0, 1.0))
    paint(np.hypot(x - 0.47, y - 0.55) <= 0.06, (0.2, 0.85, 0.3))

    small = rgba.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 4).mean(axis=(1, 3))
    return np.clip(np.rint(small * 255), 0, 255).astype(np.uint8)


def write_png(rgba: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba).save(path, format="PNG")


if __name__ == "__main__":
    write_png(draw(128), ROOT / "SAMSegment" / "Resources" / "Icons" / "SAMSegment.png")
    write_png(draw(21), ROOT / "SAMSegment" / "SegmentEditorSegmentAnythingLib" / "SegmentEditorEffect.png")
    print("icons written")
