"""Box-sensitivity benchmark: how the one-box and 3D-box protocols' Dice depends on how exactly the box is drawn,
on the shared cases of ../shared/data, with the real LiteMedSAM weights on the CLI's defaults.

The evaluation protocols use the reference's tight bounding box; a user draws a looser one, and never twice the
same. For each case and protocol this prints Dice with the tight box, with every edge moved outward by 1 and 2
voxels (a box drawn with a margin), and over ``--seeds`` random boxes whose edges move by U(-jitter, +jitter) x
the box side (``samsegment evaluate --jitter``): their mean and smallest Dice. Each row is run twice in the same
process on the same embeddings: with the drawn box used as it is (the baseline) and with the default box trials
(``predictor.BOX_TRIALS``: the drawn box also tried grown by a few model pixels, the surest result kept). A robust
tool gives about the same Dice in every column.

Usage: python benchmarks/bench_box_jitter.py [--cases lung2,liver] [--seeds 8] [--jitter 0.05]
                                             [--embedding-cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_accuracy import CASES, default_model, load_case  # noqa: E402

from SAMSegmentLib.evaluation import box3d_prompt, one_box_prompt  # noqa: E402
from SAMSegmentLib.metrics import dice  # noqa: E402
from SAMSegmentLib.predictor import BOX_TRIALS, grow_box  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt  # noqa: E402
from SAMSegmentLib.session import SegmentationSession  # noqa: E402
from SAMSegmentLib.slices import slice_geometry  # noqa: E402
from SAMSegmentLib.windowing import parse_window  # noqa: E402

PROTOCOLS = {"one-box": one_box_prompt, "box3d": box3d_prompt}
MARGINS = (1, 2)  # voxels added on every side of the tight box


def with_margin(prompts: dict[int, SlicePrompt], margin: float, shape: tuple[int, int]) -> dict[int, SlicePrompt]:
    """Each prompt's box grown by ``margin`` voxels per side, clipped to the slice ``shape`` (rows, cols)."""
    return {index: dataclasses.replace(prompt, box=grow_box(prompt.box, shape, 0.0, margin))
            for index, prompt in prompts.items()}


def propagated_dice(model, volume, window, axis: str, reference: np.ndarray, trials: tuple[float, ...],
                    prompts: dict[int, SlicePrompt]) -> float:
    """Dice of a fresh session's propagation (both directions) from ``prompts``, a drawn box tried grown by
    ``trials`` (``SlicePredictor.box_trials``)."""
    session = SegmentationSession(model, volume, window=window)
    session.predictor.box_trials = trials
    return dice(session.propagate(axis, prompts, "both").to_volume(reference.shape), reference)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--seeds", type=int, default=8, help="random boxes per case and protocol (default 8)")
    parser.add_argument("--jitter", type=float, default=0.05, help="edge jitter, fraction of the side (default 0.05)")
    parser.add_argument("--embedding-cache", default=None, type=Path)
    args = parser.parse_args()
    model = default_model(args.embedding_cache)
    modes = {"as drawn": (0.0,), "box trials": BOX_TRIALS}
    margins = " | ".join(f"+{m} voxel{'s' if m > 1 else ''}" for m in MARGINS)
    print(f"| case | protocol | drawn box | tight | {margins} | jitter {args.jitter:g}: mean | smallest |")
    print("|---|---|---|---:|" + "---:|" * len(MARGINS) + "---:|---:|")
    summary: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for name in args.cases.split(","):
        volume, reference, axis = load_case(name)
        window = parse_window("fit", volume.array)
        shape = slice_geometry(volume, axis).shape
        for protocol in args.protocols.split(","):
            make = PROTOCOLS[protocol]
            for mode, trials in modes.items():
                run = functools.partial(propagated_dice, model, volume, window, axis, reference, trials)
                tight = run(make(reference, axis))
                grown = [run(with_margin(make(reference, axis), m, shape)) for m in MARGINS]
                rng = np.random.default_rng(0)  # the same random boxes in both modes
                jittered = [run(make(reference, axis, args.jitter, rng)) for _ in range(args.seeds)]
                values = [tight, *grown, *jittered]
                summary.setdefault((protocol, mode), []).append((float(np.mean(values)), min(values)))
                cells = " | ".join(f"{v:.3f}" for v in grown)
                print(f"| {name} | {protocol} | {mode} | {tight:.3f} | {cells} | {np.mean(jittered):.3f} | "
                      f"{min(jittered):.3f} |", flush=True)
    for (protocol, mode), rows in summary.items():
        print(f"{protocol}, {mode}: mean Dice over all boxes and cases {np.mean([r[0] for r in rows]):.3f}, "
              f"worst box per case {' '.join(f'{r[1]:.3f}' for r in rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
