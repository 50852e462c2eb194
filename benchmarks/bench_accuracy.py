"""Accuracy benchmark: the shared cases of ../shared/data (Testing/engine/cases.py) under each evaluation protocol,
with the real LiteMedSAM weights on the CLI's defaults (backend auto, precision auto: OpenVINO, bf16 on CPUs with
native bf16, fp32 on the others).

For each case and protocol: Dice (box-per-slice, one-box, box3d) and, for click protocols, DSC_AUC, final Dice and
NSD (2 mm, area-weighted), the Dice after each click, and the change of Dice on each clicked slice (the slice the
click landed on, before and after that click: a correction should never lower it).

Usage: python benchmarks/bench_accuracy.py [--cases lung2,t2] [--protocols one-box,box3d-clicks-5]
       [--window fit|volume|...] [--embedding-cache DIR] [--json OUT.json]

``--embedding-cache DIR`` keeps encoder outputs on disk keyed by the exact image the encoder saw, so re-runs (for
instance after a change in propagation or corrections) only decode; it never changes results. Wrap real runs in
``flock /tmp/samsegment-heavy.lock`` on shared machines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "engine"))
warnings.filterwarnings("ignore")

from cases import CASES  # noqa: E402

from SAMSegmentLib.evaluation import parse_protocol, run_protocol  # noqa: E402
from SAMSegmentLib.io import read_labelmap, read_volume  # noqa: E402
from SAMSegmentLib.metrics import compare_masks, spacing_kji  # noqa: E402
from SAMSegmentLib.models import load_model  # noqa: E402
from SAMSegmentLib.models.base import Embedding, SliceModel  # noqa: E402
from SAMSegmentLib.session import SegmentationSession  # noqa: E402
from SAMSegmentLib.windowing import parse_window  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
DEFAULT_PROTOCOLS = "box-per-slice,one-box,box3d,box3d-clicks-5"


class DiskCachedModel(SliceModel):
    """Wraps a model so that ``encode`` results persist in a folder, keyed by the image bytes and precision."""

    def __init__(self, inner: SliceModel, folder: Path) -> None:
        super().__init__(inner.device)
        self.inner, self.folder = inner, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name, self.capabilities, self.low_res_size = inner.name, inner.capabilities, inner.low_res_size
        self.autocast_dtype = inner.autocast_dtype
        self.encoded = 0

    def encode(self, image: np.ndarray) -> Embedding:
        image = np.ascontiguousarray(image)
        key = hashlib.sha1(image.tobytes() + repr((image.shape, self.name, str(self.inner.autocast_dtype))).encode())
        path = self.folder / f"{key.hexdigest()}.pt"
        if path.exists():
            data = torch.load(path, weights_only=False)
            return Embedding(data["tensors"], tuple(data["image_hw"]), data["extra"])
        self.encoded += 1
        emb = self.inner.encode(image)
        torch.save({"tensors": emb.tensors, "image_hw": emb.image_hw, "extra": emb.extra}, path)
        return emb

    def decode(self, *args, **kwargs):
        return self.inner.decode(*args, **kwargs)

    def upscale(self, *args, **kwargs):
        return self.inner.upscale(*args, **kwargs)

    def mask_to_low_res(self, *args, **kwargs):
        return self.inner.mask_to_low_res(*args, **kwargs)


def default_model(embedding_cache: Path | None = None, backend: str = "auto", precision: str = "auto") -> SliceModel:
    """LiteMedSAM on the CPU with the CLI's defaults (printed), its encoder outputs kept in ``embedding_cache``."""
    model = load_model("litemedsam", device="cpu", backend=backend, precision=precision)
    print(f"LiteMedSAM on the CPU, backend {model.backend}, precision {model.precision}")
    return DiskCachedModel(model, embedding_cache) if embedding_cache else model


def load_case(name: str):
    folder, image, label, value, axis = CASES[name]
    volume = read_volume(DATA / folder / image)
    labels, _ = read_labelmap(DATA / folder / label)
    return volume, labels == value, axis


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--protocols", default=DEFAULT_PROTOCOLS)
    parser.add_argument("--window", default="fit")
    parser.add_argument("--embedding-cache", default=None, type=Path)
    parser.add_argument("--json", default=None, type=Path)
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    args = parser.parse_args()
    model = default_model(args.embedding_cache, args.backend, args.precision)
    results: dict = {}
    print("| case | protocol | Dice | NSD 2 mm | DSC_AUC | Dice per click | clicked-slice Dice change | window | s |")
    print("|---|---|---:|---:|---:|---|---|---|---:|")
    for name in args.cases.split(","):
        volume, reference, axis = load_case(name)
        for protocol_name in args.protocols.split(","):
            protocol = parse_protocol(protocol_name)
            session = SegmentationSession(model, volume, window=parse_window(args.window, volume.array))
            start = time.perf_counter()
            run = run_protocol(session, reference, axis, protocol)
            seconds = time.perf_counter() - start
            m = compare_masks(run.mask, reference, spacing_kji(volume.spacing_ijk))
            row = {"dice": m.dice, "nsd_2mm": m.nsd_2mm, "window": [session.window.name, session.window.low,
                                                                   session.window.high], "seconds": seconds}
            changes = []
            if run.dice_per_click is not None:
                row.update(dsc_auc=run.dsc_auc, nsd_auc=run.nsd_auc, dice_per_click=run.dice_per_click,
                           clicks=[(c.index, c.x, c.y, c.label) for c in run.clicks])
                changes = [after - before for before, after in run.clicked_slice_dice]
                row["clicked_slice_dice_change"] = changes
            results.setdefault(name, {})[protocol_name] = row
            per_click = " ".join(f"{d:.3f}" for d in run.dice_per_click or [])
            auc = f"{run.dsc_auc:.3f}" if run.dsc_auc is not None else ""
            change = " ".join(f"{c:+.3f}" for c in changes)
            print(f"| {name} | {protocol_name} | {m.dice:.3f} | {m.nsd_2mm:.3f} | {auc} | {per_click} | {change} | "
                  f"{session.window.name} [{session.window.low:.0f}, {session.window.high:.0f}] | {seconds:.0f} |",
                  flush=True)
    for protocol_name in args.protocols.split(","):
        values = [results[n][protocol_name]["dice"] for n in results]
        print(f"mean Dice {protocol_name}: {np.mean(values):.3f} (min {np.min(values):.3f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
