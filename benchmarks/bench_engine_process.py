"""What the process boundary costs: preview round trips and volume opening, in process vs the engine process.

Three ways to reach the same engine core, in one run:

- in-process: InProcessEngine (the CLI's default);
- local engine process: LocalEngine, the child process Slicer starts (volume through a memory-mapped file);
- loopback HTTP: the same server reached as a remote one (volume uploaded zlib-compressed), as a shared GPU server
  would be, here on 127.0.0.1.

Preview = a box prompt on a slice whose embedding is cached (LiteMedSAM on lung2), timed from the call to the mask
in the caller's hands; 'added' is the difference to in-process. Open = a 512 x 512 x 600 int16 volume (random
values, 315 MB) from ``open_session`` to the session being ready, the model already loaded.

    .venv/bin/python benchmarks/bench_engine_process.py [--previews 40] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from SAMSegmentLib.engine.api import SessionSpec  # noqa: E402
from SAMSegmentLib.engine.child import LocalEngine  # noqa: E402
from SAMSegmentLib.engine.client import RemoteEngine  # noqa: E402
from SAMSegmentLib.engine.local import InProcessEngine  # noqa: E402
from SAMSegmentLib.io import read_volume  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt  # noqa: E402

LUNG2 = ROOT.parent / "shared" / "data" / "ct_lung_tumor_pyradiomics" / "lung2_crop_ct.nrrd"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(engine, spec: SessionSpec, volume, big: np.ndarray, previews: int) -> dict:
    session = engine.open_session(volume.array, volume.ijk_to_ras, spec, volume_key="lung2")
    session.preview("K", 17, SlicePrompt(box=[80, 90, 130, 140])).wait(600)  # model loaded, slice embedded
    times = []
    for n in range(previews):
        box = [80 + n % 3, 90, 130, 140 + n % 2]
        start = time.perf_counter()
        session.preview("K", 17, SlicePrompt(box=box)).wait(60)
        times.append(time.perf_counter() - start)
    session.close()
    start = time.perf_counter()
    opened = engine.open_session(big, np.diag([0.7, 0.7, 1.0, 1.0]), spec, volume_key="big")
    opened.opening.wait(600)
    open_s = time.perf_counter() - start
    opened.close()
    return {"p50": 1000 * statistics.median(times), "p95": 1000 * percentile(times, 95), "open": open_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--previews", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not LUNG2.exists():
        print(f"needs the shared data ({LUNG2})")
        return 2
    volume = read_volume(LUNG2)
    rng = np.random.default_rng(0)
    big = rng.integers(-1000, 1500, size=(600, 512, 512), dtype=np.int16)
    spec = SessionSpec(model="litemedsam", device=args.device)

    rows = []
    engine = InProcessEngine()
    rows.append(("in-process", measure(engine, spec, volume, big, args.previews)))
    engine.close()
    local = LocalEngine(device=args.device, log_path="/tmp/samsegment-bench-engine.log")
    rows.append(("local engine process", measure(local, spec, volume, big, args.previews)))
    remote = RemoteEngine(local.process.url, token=local.process.token)  # same server, no shared folder
    rows.append(("loopback HTTP (remote)", measure(remote, spec, volume, big, args.previews)))
    remote.close()
    local.close()

    base = rows[0][1]
    print(f"\npreview round trip (LiteMedSAM, cached embedding, {args.previews} previews) and opening a "
          f"512 x 512 x 600 int16 volume")
    print("| engine | preview p50 ms | p95 ms | added p50 ms | added p95 ms | open s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p50'] - base['p50']:+.1f} | "
              f"{r['p95'] - base['p95']:+.1f} | {r['open']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
