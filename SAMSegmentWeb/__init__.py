"""SAMSegment in the browser: a trame-slicer app with the Segment Anything effect beside trame-slicer's own tools.

It shares SAMSegmentEffectLib (interaction, controller, bridge: MRML-level, Qt-free) with the Slicer layer and is not
part of the extension's CMake packaging. Modules:

- runtime: process set-up that must happen before any OpenGL context exists (triton before Mesa's llvmpipe)
- keys: key strokes -> actions, once per stroke, DOM and VTK key names
- glyphs: the prompt glyph actor (VTK)
- effect: the effect's behaviour (prompts, preview, apply, propagate) on MRML nodes; no trame, no trame-slicer
- adapter: everything that touches trame-slicer (effect and pipeline classes, editor writes and undo, views, UI parts)
- app: one browser session: the trame server, its UI, the poll task
- launcher: ``samsegment web``: one session process per browser tab behind one port
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_EFFECT_LIB_PARENT = ROOT / "SAMSegment"  # SAMSegmentEffectLib lives in the Slicer module folder

if str(_EFFECT_LIB_PARENT) not in sys.path:
    sys.path.insert(0, str(_EFFECT_LIB_PARENT))
