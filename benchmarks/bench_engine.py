"""Engine benchmark: per model, embedding seconds per slice (fp32 and bf16 autocast), prompt-to-mask latency
(p50, p95) with a cached embedding, and the Dice change from bf16 (real LiteMedSAM weights, box on every labelled
slice of the lung2 case of ../shared/data). SAM and SAM 2 use random weights (no download here): timing only.

Usage: python benchmarks/bench_engine.py [--models litemedsam,sam_vit_b,sam2.1_hiera_tiny] [--slices 6]
Prints a table; timings are wall-clock on this machine, warm (one untimed run first).
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

from SAMSegmentLib.io import read_labelmap, read_volume  # noqa: E402
from SAMSegmentLib.models import load_model  # noqa: E402
from SAMSegmentLib.predictor import SlicePredictor  # noqa: E402
from SAMSegmentLib.prompts import SlicePrompt, box_from_mask  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "ct_lung_tumor_pyradiomics"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def run(model_name: str, n_slices: int, n_prompts: int) -> dict:
    volume = read_volume(DATA / "lung2_crop_ct.nrrd")
    label, _ = read_labelmap(DATA / "lung2_crop_label.nrrd")
    ref = label == 1
    slices = [k for k in range(ref.shape[0]) if ref[k].any()][:n_slices]
    random_init = model_name != "litemedsam"
    model = load_model(model_name, device="cpu", random_init=random_init)
    row: dict = {"model": model_name + (" (random)" if random_init else "")}
    masks: dict[str, np.ndarray] = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        model.autocast_dtype = dtype
        predictor = SlicePredictor(model, volume)
        predictor.embedding("K", slices[0])  # warm-up, untimed
        predictor.cache.clear()
        start = time.perf_counter()
        for k in slices:
            predictor.embedding("K", k)
        row[f"embed_s_{precision}"] = (time.perf_counter() - start) / len(slices)
        pred = np.zeros_like(ref)
        latencies = []
        for k in slices:
            box = box_from_mask(ref[k])
            for n in range(n_prompts):
                prompt = SlicePrompt(box=box + np.array([-1, -1, 1, 1]) * (n % 3))  # distinct prompts, same slice
                t0 = time.perf_counter()
                predictor.predict("K", k, prompt)
                latencies.append(time.perf_counter() - t0)
            pred[k] = predictor.predict("K", k, SlicePrompt(box=box)).mask
        masks[precision] = pred
        row[f"p50_ms_{precision}"] = 1000 * statistics.median(latencies)
        row[f"p95_ms_{precision}"] = 1000 * float(np.percentile(latencies, 95))
        row[f"dice_{precision}"] = dice(pred[slices], ref[slices])  # over the benchmarked slices only
    row["dice_change_bf16"] = row["dice_bf16"] - row["dice_fp32"]
    row["mask_agreement"] = dice(masks["bf16"][slices], masks["fp32"][slices])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="litemedsam,sam_vit_b,sam2.1_hiera_tiny,medsam2")
    parser.add_argument("--slices", type=int, default=6, help="labelled slices of lung2 to encode per model")
    parser.add_argument("--prompts", type=int, default=5, help="prompts decoded per slice for the latency figures")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [run(name, args.slices, args.prompts) for name in args.models.split(",")]
    print(f"\nCPU threads: {torch.get_num_threads()}, slices per model: {args.slices} (lung2, 224 x 224)")
    header = (
        "model",
        "embed s fp32",
        "embed s bf16",
        "bf16/fp32",
        "p50 ms",
        "p95 ms",
        "p50 ms bf16",
        "Dice fp32",
        "Dice bf16",
        "dDice",
        "bf16~fp32",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(
            f"| {r['model']} | {r['embed_s_fp32']:.3f} | {r['embed_s_bf16']:.3f} | "
            f"{r['embed_s_bf16'] / r['embed_s_fp32']:.2f} | {r['p50_ms_fp32']:.1f} | {r['p95_ms_fp32']:.1f} | "
            f"{r['p50_ms_bf16']:.1f} | {r['dice_fp32']:.3f} | {r['dice_bf16']:.3f} | "
            f"{r['dice_change_bf16']:+.4f} | {r['mask_agreement']:.3f} |"
        )
    print("Dice columns are meaningful only for real weights (litemedsam); random models give timing only.")


if __name__ == "__main__":
    main()
