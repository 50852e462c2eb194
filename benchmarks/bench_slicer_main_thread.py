"""The effect's controller driven from an emulation of Slicer's main thread (GIL held between 40 ms ticks), with the
engine in a child process (today's design) and in this process (the old design: model code on Python threads of
Slicer's interpreter, which starve).

For each: time from the click to the preview (and how many ticks after the engine had it), a 20-slice propagation
(t2 spinal cord, J axis) against the same propagation free-running, and the longest tick. Bounded: each phase gives
up after --limit seconds and says so.

    .venv/bin/python benchmarks/bench_slicer_main_thread.py [--limit 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "SAMSegment", ROOT / "Testing"):
    sys.path.insert(0, str(p))

from SAMSegmentEffectLib.controller import EngineProvider, SegmentAnythingController  # noqa: E402
from slicer_main_thread import EmulatedMainThread  # noqa: E402

from SAMSegmentLib.engine.api import SessionSpec  # noqa: E402
from SAMSegmentLib.engine.child import LocalEngine  # noqa: E402
from SAMSegmentLib.engine.local import InProcessEngine  # noqa: E402
from SAMSegmentLib.io import read_volume  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt, box_from_mask  # noqa: E402
from SAMSegmentLib.slices import extract_slice  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mr_spinal_cord_sct"
AXIS, SEED, RANGE = "J", 27, (18, 37)


def run_until(main, controller, kinds, limit):
    seen = []

    def tick():
        events = controller.poll()
        seen.extend(events)
        return any(e.kind in kinds for e in events)

    return main.run(tick, limit), seen


def scenario(name, make_engine, volume, box, limit):
    provider = EngineProvider(make_engine)
    controller = SegmentAnythingController(engine=provider)
    main = EmulatedMainThread(0.040)
    row = {"engine": name}
    try:
        controller.configure("litemedsam", "cpu")
        controller.set_volume(volume.array, volume.ijk_to_ras, key="t2")
        controller.load()
        run, _ = run_until(main, controller, {"status", "error"}, limit)
        row["load"] = run.seconds if run.finished else None
        if not run.finished:
            return row
        controller.preview(AXIS, SEED, box)
        run, seen = run_until(main, controller, {"preview", "error"}, limit)
        preview = next((e for e in seen if e.kind == "preview"), None)
        row["preview"] = run.seconds if preview else None
        row["ticks_after_ready"] = sum(1 for t in run.ticks if preview and t.started >= preview.ready_at)
        if preview is None:
            return row
        controller.propagate(AXIS, {SEED: box}, "both", RANGE)
        run, seen = run_until(main, controller, {"propagated", "error"}, limit)
        row["propagate"] = run.seconds if run.finished else None
        row["max_tick_ms"] = run.max_tick_wall_ms
        engine = provider.current
        reference = engine.open_session(volume.array, volume.ijk_to_ras, SessionSpec(device="cpu"), volume_key="ref")
        reference.preview(AXIS, SEED, box).wait(limit)
        start = time.monotonic()
        reference.propagate(AXIS, {SEED: box}, "both", RANGE).wait(limit)
        row["free"] = time.monotonic() - start
        return row
    except TimeoutError:
        return row
    finally:
        controller.shutdown()
        provider.reset()


def fmt(value, unit="s"):
    return "did not finish" if value is None else f"{value:.2f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=300.0, help="seconds each phase may take (default 300)")
    args = parser.parse_args()
    volume = read_volume(DATA / "t2.nii.gz")
    label = read_volume(DATA / "t2_seg-manual.nii.gz").array > 0
    box = SlicePrompt(box=box_from_mask(extract_slice(label, AXIS, SEED)))
    rows = [scenario("engine process (now)", lambda: LocalEngine(device="cpu"), volume, box, args.limit),
            scenario("in-process threads (before)", InProcessEngine, volume, box, args.limit)]
    print("\nfrom an emulated Slicer main thread (GIL held between 40 ms ticks), LiteMedSAM on CPU, t2, 20 slices")
    print("| engine | load | click -> preview | ticks after ready | propagate 20 slices | free-running | ratio |"
          " longest tick |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ratio = (f"{r['propagate'] / r['free']:.2f}x" if r.get("propagate") and r.get("free") else "-")
        print(f"| {r['engine']} | {fmt(r.get('load'))} | {fmt(r.get('preview'))} | {r.get('ticks_after_ready', '-')} "
              f"| {fmt(r.get('propagate'))} | {fmt(r.get('free'))} | {ratio} | "
              f"{fmt(r.get('max_tick_ms'), 'ms')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
