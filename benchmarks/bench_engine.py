"""Engine benchmark on the CPU: per model and backend (torch fp32, torch bf16 autocast, OpenVINO f32, OpenVINO bf16),
model load seconds (the first OpenVINO load includes the one-time export), embedding seconds per slice, and
prompt-to-mask latency p50 / p95 with a cached embedding (``SlicePredictor.predict``: decoder, upscaling, mapping to
the voxel grid; one decode, without the box trials) and the p50 of a drawn box's preview (``len(BOX_TRIALS)``
decodes, the surest one upscaled), with speed-ups against torch fp32 and against the torch bf16 autocast of earlier releases, all in one process.
LiteMedSAM uses its real weights on the lung2 case of ../shared/data (box on every benchmarked labelled slice):
Dice against the reference and mask agreement (Dice) with torch fp32 are printed too. SAM and SAM 2 models use
random weights (seeded, so their exports are cached between runs): timing only.

With ``--dice``, it also prints the Dice of LiteMedSAM per backend on every shared case (Testing/engine/cases.py)
for the box-per-slice and one-box (propagated both ways) protocols, and the change against torch fp32.

Usage: python benchmarks/bench_engine.py [--models litemedsam,sam2.1_hiera_tiny,medsam2] [--slices 6] [--dice]
Timings are wall-clock on this machine, warm (one untimed encode and decode first).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from SAMSegmentLib.backends import openvino_available  # noqa: E402
from SAMSegmentLib.io import read_labelmap, read_volume  # noqa: E402
from SAMSegmentLib.models import load_model  # noqa: E402
from SAMSegmentLib.predictor import SlicePredictor  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt, box_from_mask  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ct_lung_tumor_pyradiomics"
CONFIGS = (("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"))
BASELINE = ("torch", "fp32")
OLD_DEFAULT = ("torch", "bf16")  # the CPU default before the OpenVINO backend


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def run(model_name: str, backend: str, precision: str, volume, ref, slices, n_prompts: int) -> dict:
    random_init = model_name != "litemedsam"
    torch.manual_seed(0)  # random models: the same weights for every backend (and the same cached export)
    start = time.perf_counter()
    model = load_model(model_name, device="cpu", random_init=random_init, backend=backend, precision=precision)
    row: dict = {"model": model_name + (" (random)" if random_init else ""), "backend": backend,
                 "precision": precision, "load_s": time.perf_counter() - start}
    predictor = SlicePredictor(model, volume)
    predictor.predict("K", slices[0], SlicePrompt(box=box_from_mask(ref[slices[0]])))  # warm-up, untimed
    predictor.cache.clear()
    start = time.perf_counter()
    for k in slices:
        predictor.embedding("K", k)
    row["embed_s"] = (time.perf_counter() - start) / len(slices)
    pred = np.zeros_like(ref)
    latencies, previews = [], []
    for k in slices:
        box = box_from_mask(ref[k])
        for n in range(n_prompts):
            prompt = SlicePrompt(box=box + np.array([-1, -1, 1, 1]) * (n % 3))  # distinct prompts, same slice
            for trials, times in ((False, latencies), (True, previews)):
                t0 = time.perf_counter()
                predictor.predict("K", k, prompt, box_trials=trials)
                times.append(time.perf_counter() - t0)
        pred[k] = predictor.predict("K", k, SlicePrompt(box=box)).mask
    row["p50_ms"] = 1000 * statistics.median(latencies)
    row["p95_ms"] = 1000 * float(np.percentile(latencies, 95))
    row["preview_p50_ms"] = 1000 * statistics.median(previews)
    row["dice"] = dice(pred[slices], ref[slices])  # over the benchmarked slices only
    row["mask"] = pred
    return row


def dice_table(configs) -> None:
    """LiteMedSAM Dice per backend, case and protocol (one session per case and backend: embeddings are shared by
    the two protocols), with the change against torch fp32."""
    sys.path.insert(0, str(ROOT / "Testing" / "engine"))
    from cases import CASES, box_per_slice_prompts, one_box_prompts

    from SAMSegmentLib.request import request_from_dict
    from SAMSegmentLib.session import SegmentationSession

    results: dict = {}
    seconds: dict = {}
    for config in configs:
        model = load_model("litemedsam", device="cpu", backend=config[0], precision=config[1])
        start = time.perf_counter()
        for name, (folder, image, label, value, axis) in CASES.items():
            volume = read_volume(ROOT.parent / "shared" / "data" / folder / image)
            lab, _ = read_labelmap(ROOT.parent / "shared" / "data" / folder / label)
            ref = np.rint(lab).astype(np.int64) == value
            session = SegmentationSession(model, volume)
            for protocol, build in (("box-per-slice", box_per_slice_prompts), ("one-box", one_box_prompts)):
                request = request_from_dict(build(ref, axis))
                results[(config, name, protocol)] = dice(session.segment(request), ref)
        seconds[config] = time.perf_counter() - start
    print("\nLiteMedSAM Dice per backend on the shared cases (change against torch fp32 in brackets)")
    header = ["case", "protocol"] + [f"{b} {p}" for b, p in configs]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    worst = {c: 0.0 for c in configs}
    for name in CASES:
        for protocol in ("box-per-slice", "one-box"):
            base = results[(BASELINE, name, protocol)]
            cells = []
            for c in configs:
                d = results[(c, name, protocol)]
                worst[c] = max(worst[c], abs(d - base))
                cells.append(f"{d:.4f}" if c == BASELINE else f"{d:.4f} ({d - base:+.4f})")
            print(f"| {name} | {protocol} | " + " | ".join(cells) + " |")
    print("| largest abs change | | " + " | ".join(f"{worst[c]:.4f}" for c in configs) + " |")
    print("| seconds, all cases | | " + " | ".join(f"{seconds[c]:.0f}" for c in configs) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="litemedsam,sam2.1_hiera_tiny,medsam2",
                        help="comma separated (sam_vit_b works too; its first OpenVINO export takes minutes)")
    parser.add_argument("--slices", type=int, default=6, help="labelled slices of lung2 to encode per model")
    parser.add_argument("--prompts", type=int, default=10, help="prompts decoded per slice for the latency figures")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dice", action="store_true", help="also the Dice table on every shared case (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = [c for c in CONFIGS if c[0] == "torch" or openvino_available()]
    volume = read_volume(DATA / "lung2_crop_ct.nrrd")
    label, _ = read_labelmap(DATA / "lung2_crop_label.nrrd")
    ref = label == 1
    slices = [k for k in range(ref.shape[0]) if ref[k].any()][: args.slices]
    rows = []
    for name in args.models.split(","):
        runs = {c: run(name, *c, volume, ref, slices, args.prompts) for c in configs}
        for r in runs.values():
            base, old = runs[BASELINE], runs[OLD_DEFAULT]
            r["embed_x_fp32"] = base["embed_s"] / r["embed_s"]
            r["embed_x_old"] = old["embed_s"] / r["embed_s"]
            r["p50_x_fp32"] = base["p50_ms"] / r["p50_ms"]
            r["p50_x_old"] = old["p50_ms"] / r["p50_ms"]
            r["agree"] = dice(r["mask"][slices], base["mask"][slices])
            rows.append(r)
    print(f"\nCPU threads: {torch.get_num_threads()}, slices per model: {len(slices)} (lung2, 224 x 224), "
          f"{args.prompts} prompts per slice; speed-ups (x) against torch fp32 and against torch bf16 autocast "
          f"(the earlier CPU default)")
    header = ("model", "backend", "precision", "load s", "embed s/slice", "x fp32", "x bf16 (old)", "decode p50 ms",
              "p95 ms", "x fp32", "x bf16 (old)", "box preview p50 ms", "Dice", "agree fp32")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | {r['precision']} | {r['load_s']:.1f} | {r['embed_s']:.3f} | "
              f"{r['embed_x_fp32']:.2f} | {r['embed_x_old']:.2f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
              f"{r['p50_x_fp32']:.2f} | {r['p50_x_old']:.2f} | {r['preview_p50_ms']:.1f} | {r['dice']:.4f} | "
              f"{r['agree']:.4f} |")
    print("Dice columns are meaningful only for real weights (litemedsam); random models give timing only. "
          "'load s' of the first OpenVINO row of a model includes its one-time export unless it was cached.")
    if args.dice:
        dice_table(configs)


if __name__ == "__main__":
    main()
