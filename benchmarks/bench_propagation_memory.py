"""Peak memory of SAM 2 propagation through a volume: our streamed driver vs sam2's stock video predictor.

Each configuration runs in a fresh subprocess (CPU, SAM 2.1 tiny with random weights, synthetic 512 x 512 uint8
slices, one object prompted with a box and a click on the middle slice, propagated forward then backward):

- ``ours``: :func:`SAMSegmentLib.propagation.memory.propagate_memory`, slices produced on demand by a function,
  results streamed to a callback that keeps nothing;
- ``stock``: what most integrations do: the slices written as JPEG files (before the measurement), then
  ``init_state(folder, offload_video_to_cpu=True)``, ``add_new_points_or_box`` and ``propagate_in_video`` forward
  and ``reverse=True``. ``--stock-max-track N`` limits each of its passes to N frames (sam2's
  ``max_frame_num_to_track``) to save time at 1024; its frame tensor is still loaded for every slice, so its memory
  is then a lower bound.

Peak memory is the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` once the model is
built, cross-checked by a thread sampling ``VmRSS``). torch allocations are invisible to tracemalloc, not to RSS.
"MB per added slice" is the peak difference between the largest and the smallest slice count, divided by the
number of added slices.

    .venv/bin/python benchmarks/bench_propagation_memory.py --image-size 512 1024 --slices 40 160
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

FRAME_SIZE = 512
MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


def synthetic_slice(k: int, num_slices: int, size: int = FRAME_SIZE) -> np.ndarray:
    """uint8 [size, size]: a bright ellipse that grows towards the middle slice, on noise; the same for a given k."""
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[:size, :size]
    t = (k - num_slices / 2) / num_slices
    radius = size * (0.2 - 0.15 * abs(t))
    img = 50 + 15 * rng.standard_normal((size, size))
    img[((xx - size * (0.5 + 0.1 * t)) / 1.2) ** 2 + (yy - size / 2) ** 2 < radius**2] += 140
    return np.clip(img, 0, 255).astype(np.uint8)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class _RssSampler:
    """Highest VmRSS seen by a background thread polling every few milliseconds."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak_kb = _status_kb("VmRSS")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, _status_kb("VmRSS"))
            time.sleep(self.interval_s)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _child(config: str, num_slices: int, image_size: int, jpeg_dir: str | None, stock_max_track: int | None) -> dict:
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from SAMSegmentLib.propagation.memory import FramePrompt, propagate_memory

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = build_sam2_video_predictor(
        MODEL_CONFIG, ckpt_path=None, device="cpu", hydra_overrides_extra=[f"++model.image_size={image_size}"]
    )
    mid = num_slices // 2
    c = FRAME_SIZE / 2
    box = np.array([c - 100, c - 100, c + 100, c + 100], dtype=np.float32)
    point = np.array([[c, c]], dtype=np.float32)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM: measure propagation, not model building
        hwm_reset = True
    except OSError:
        hwm_reset = False
    base_mb = _status_kb("VmRSS") / 1024
    tracked = 0
    t0 = time.perf_counter()
    with _RssSampler() as sampler, torch.inference_mode():
        if config == "ours":

            def on_frame(index: int, logits: torch.Tensor, score: float) -> None:
                nonlocal tracked
                tracked += 1
                _ = (logits > 0).numpy()

            propagate_memory(
                model,
                lambda k: synthetic_slice(k, num_slices),
                num_slices,
                {mid: FramePrompt(points=point, labels=[1], box=box)},
                direction="both",
                on_frame=on_frame,
            )
        else:
            state = model.init_state(jpeg_dir, offload_video_to_cpu=True)
            model.add_new_points_or_box(state, mid, 1, points=point, labels=np.array([1]), box=box)
            for reverse in (False, True):
                for _, _, masks in model.propagate_in_video(
                    state, max_frame_num_to_track=stock_max_track, reverse=reverse
                ):
                    tracked += 1
                    _ = (masks[0, 0] > 0).cpu().numpy()
            tracked -= 1  # the prompted slice is yielded by both passes
    seconds = time.perf_counter() - t0
    peak_mb = (_status_kb("VmHWM") if hwm_reset else sampler.peak_kb) / 1024
    return {
        "config": config,
        "image_size": image_size,
        "slices": num_slices,
        "tracked": tracked,
        "base_mb": base_mb,
        "peak_mb": max(peak_mb, sampler.peak_kb / 1024),
        "seconds": seconds,
    }


def _write_jpegs(num_slices: int, folder: Path) -> None:
    from PIL import Image

    for k in range(num_slices):
        Image.fromarray(synthetic_slice(k, num_slices)).save(folder / f"{k:05d}.jpg", quality=95)


def _run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed with exit status {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, nargs="+", default=[1024], help="model input sizes")
    parser.add_argument("--slices", type=int, nargs="+", default=[40, 160], help="slice counts")
    parser.add_argument("--configs", nargs="+", default=["ours", "stock"], choices=["ours", "stock"])
    parser.add_argument("--stock-max-track", type=int, default=None, help="frames per stock pass (default all)")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON-lines file: each finished run is appended, runs already in it are reused (resume a long benchmark)",
    )
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        config, slices, size, jpeg_dir, max_track = args.child
        result = _child(
            config,
            int(slices),
            int(size),
            None if jpeg_dir == "-" else jpeg_dir,
            None if max_track == "-" else int(max_track),
        )
        print(json.dumps(result))
        return 0

    rows = []
    done: dict[tuple, dict] = {}
    if args.results is not None and args.results.exists():
        for line in args.results.read_text().splitlines():
            r = json.loads(line)
            done[(r["config"], r["image_size"], r["slices"], r.get("stock_max_track"))] = r
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_dirs = {}
        if "stock" in args.configs:
            for n in args.slices:
                jpeg_dirs[n] = Path(tmp) / f"slices{n}"
                jpeg_dirs[n].mkdir()
                _write_jpegs(n, jpeg_dirs[n])
        for size in args.image_size:
            for config in args.configs:
                for n in args.slices:
                    child_args = [
                        config,
                        str(n),
                        str(size),
                        str(jpeg_dirs[n]) if config == "stock" else "-",
                        str(args.stock_max_track) if config == "stock" and args.stock_max_track else "-",
                    ]
                    max_track = args.stock_max_track if config == "stock" else None
                    row = done.get((config, size, n, max_track))
                    if row is None:
                        row = _run_child(child_args)
                        row["stock_max_track"] = max_track
                        if args.results is not None:
                            with args.results.open("a") as f:
                                f.write(json.dumps(row) + "\n")
                    rows.append(row)
                    print(
                        f"  {config} {size} px {n} slices: peak {row['peak_mb']:.0f} MB, {row['seconds']:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )

    print(f"SAM 2.1 tiny, random weights, CPU ({os.cpu_count()} cores), {FRAME_SIZE} x {FRAME_SIZE} uint8 slices")
    header = f"{'config':<7} {'image':>5} {'slices':>6} {'tracked':>7} {'peak MB':>8} {'MB/added slice':>14} {'seconds':>8} {'s/slice':>7}"
    print(header)
    print("-" * len(header))
    growth: dict[tuple[str, int], float] = {}
    for size in args.image_size:
        for config in args.configs:
            group = sorted(
                (r for r in rows if r["config"] == config and r["image_size"] == size), key=lambda r: r["slices"]
            )
            if len(group) > 1:
                growth[(config, size)] = (group[-1]["peak_mb"] - group[0]["peak_mb"]) / (
                    group[-1]["slices"] - group[0]["slices"]
                )
            for r in group:
                per_slice = f"{growth[(config, size)]:.2f}" if r is group[-1] and len(group) > 1 else ""
                print(
                    f"{config:<7} {size:>5} {r['slices']:>6} {r['tracked']:>7} {r['peak_mb']:>8.0f} {per_slice:>14} "
                    f"{r['seconds']:>8.1f} {r['seconds'] / max(r['tracked'], 1):>7.2f}"
                )
    for size in args.image_size:
        if ("ours", size) in growth and ("stock", size) in growth:
            ours, stock = growth[("ours", size)], growth[("stock", size)]
            ratio = f"{stock / ours:.0f}x" if ours > 0.01 else "ours does not grow"
            print(f"image {size}: stock grows {stock:.2f} MB per added slice, ours {ours:.2f} MB ({ratio})")
    if args.stock_max_track:
        print(f"stock passes limited to {args.stock_max_track} frames each: its growth is a lower bound")
    return 0


if __name__ == "__main__":
    sys.exit(main())
