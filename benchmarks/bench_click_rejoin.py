"""Correction cost benchmark: box3d-clicks-5 on the shared cases of ../shared/data with the real LiteMedSAM weights
on the CLI's defaults, with a correction's chain rejoining the chain it corrected once its effect dies out
(``ChainParams.join_fraction``, the default) and without (the baseline, same process, same embeddings: every slice
beyond a click is redrawn from it).

Per case and setting: the slices the model re-ran for after each click, the propagation seconds per click (model
work only; embeddings come from the session's cache after the first run) and the final Dice.

Usage: python benchmarks/bench_click_rejoin.py [--cases lung2,t2] [--clicks 5] [--embedding-cache DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_accuracy import CASES, default_model, load_case  # noqa: E402

from SAMSegmentLib.evaluation import add_click, box3d_prompt, next_click  # noqa: E402
from SAMSegmentLib.metrics import dice  # noqa: E402
from SAMSegmentLib.propagation.chaining import ChainParams  # noqa: E402
from SAMSegmentLib.session import SegmentationSession  # noqa: E402
from SAMSegmentLib.windowing import parse_window  # noqa: E402


def run_clicks(model, volume, reference, axis: str, params: ChainParams, clicks: int
               ) -> tuple[list[int], list[float], float]:
    """(slices re-run per click, seconds per click, final Dice) of the 3D box and ``clicks`` simulated clicks."""
    session = SegmentationSession(model, volume, window=parse_window("fit", volume.array), chain_params=params)
    prompts = box3d_prompt(reference, axis)
    mask = session.propagate(axis, prompts, "both").to_volume(reference.shape)
    counts, seconds = [], []
    for _ in range(clicks):
        click = next_click(mask, reference, axis)
        if click is None:
            break
        prompts = add_click(prompts, click, mask, axis)
        start = time.perf_counter()
        result = session.propagate(axis, prompts, "both")
        seconds.append(time.perf_counter() - start)
        counts.append(len(result.recomputed))
        mask = result.to_volume(reference.shape)
    return counts, seconds, dice(mask, reference)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--embedding-cache", default=None, type=Path)
    args = parser.parse_args()
    model = default_model(args.embedding_cache)
    settings = {"rejoin (default)": ChainParams(), "redraw (baseline)": dataclasses.replace(ChainParams(),
                                                                                            join_fraction=None)}
    totals: dict[str, tuple[list[int], list[float]]] = {name: ([], []) for name in settings}
    print("| case | setting | slices re-run per click | s per click | final Dice |")
    print("|---|---|---|---:|---:|")
    for name in args.cases.split(","):
        volume, reference, axis = load_case(name)
        for setting, params in settings.items():
            counts, seconds, final = run_clicks(model, volume, reference, axis, params, args.clicks)
            totals[setting][0].extend(counts)
            totals[setting][1].extend(seconds)
            print(f"| {name} | {setting} | {' '.join(map(str, counts))} | {np.mean(seconds):.3f} | {final:.4f} |",
                  flush=True)
    (rc, rs), (bc, bs) = totals["rejoin (default)"], totals["redraw (baseline)"]
    print(f"mean slices re-run per click: rejoin {np.mean(rc):.1f}, redraw {np.mean(bc):.1f}; "
          f"s per click: rejoin {np.mean(rs):.3f}, redraw {np.mean(bs):.3f} ({np.mean(bs) / np.mean(rs):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
