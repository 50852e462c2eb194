"""Two-prompt benchmark: the one-box protocol's box on the largest slice plus a second reference box on another
slice of the object, on the shared cases of ../shared/data, with the real LiteMedSAM weights on the CLI's defaults.

The second box goes on the object's first and last slice, the slices next to them, and the slices a quarter of
the way in from each end. For each, Dice with both boxes, with propagation crossing the gap between the two
prompted slices (``ChainParams.cross_gaps``, the default) and without it (the baseline, same process, same
embeddings: each prompted slice's chain then stops at the middle of the gap). A second box should never cost much
accuracy, and a box on a part the first box's propagation never reaches (brain1's second component, slices 11-12)
should add that part without losing the rest.

Usage: python benchmarks/bench_two_boxes.py [--cases lung2,brain1] [--embedding-cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_accuracy import CASES, default_model, load_case  # noqa: E402

from SAMSegmentLib.evaluation import largest_slice, one_box_prompt, slice_areas  # noqa: E402
from SAMSegmentLib.metrics import dice  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt, box_from_mask  # noqa: E402
from SAMSegmentLib.propagation.chaining import ChainParams  # noqa: E402
from SAMSegmentLib.session import SegmentationSession  # noqa: E402
from SAMSegmentLib.slices import extract_slice  # noqa: E402
from SAMSegmentLib.windowing import parse_window  # noqa: E402


def second_box_slices(reference: np.ndarray, axis: str) -> list[int]:
    """Slices for the second box: the object's ends, their neighbours, a quarter in from each end (not the
    largest slice, which holds the first box; each once)."""
    occupied = np.nonzero(slice_areas(reference, axis))[0]
    first, last = int(occupied.min()), int(occupied.max())
    quarter = (last - first) // 4
    wanted = [first, first + 1, first + quarter, last - quarter, last - 1, last]
    big = largest_slice(reference, axis)
    out: list[int] = []
    for z in wanted:
        if z != big and z not in out and extract_slice(reference, axis, z).any():
            out.append(z)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--embedding-cache", default=None, type=Path)
    args = parser.parse_args()
    model = default_model(args.embedding_cache)
    crossing, baseline = ChainParams(), dataclasses.replace(ChainParams(), cross_gaps=False)
    print("| case | one box (slice) | second box slice | two boxes, gap not crossed | two boxes, gap crossed | change |")
    print("|---|---|---:|---:|---:|---:|")
    changes = []
    for name in args.cases.split(","):
        volume, reference, axis = load_case(name)
        window = parse_window("fit", volume.array)
        one = one_box_prompt(reference, axis)
        session = SegmentationSession(model, volume, window=window)
        alone = dice(session.propagate(axis, one, "both").to_volume(reference.shape), reference)
        for z in second_box_slices(reference, axis):
            prompts = {**one, z: SlicePrompt(box=box_from_mask(extract_slice(reference, axis, z)))}
            values = []
            for params in (baseline, crossing):
                session = SegmentationSession(model, volume, window=window, chain_params=params)
                mask = session.propagate(axis, prompts, "both").to_volume(reference.shape)
                values.append(dice(mask, reference))
            changes.append(values[1] - values[0])
            print(f"| {name} | {alone:.3f} ({min(one)}) | {z} | {values[0]:.3f} | {values[1]:.3f} | "
                  f"{values[1] - values[0]:+.3f} |", flush=True)
    print(f"change from crossing the gap: mean {np.mean(changes):+.4f}, smallest {np.min(changes):+.4f}, "
          f"largest {np.max(changes):+.4f} over {len(changes)} second boxes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
