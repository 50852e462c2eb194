"""``samsegment evaluate``: simulate prompts from a reference label, segment, and measure accuracy.

Protocols (prompts derived from the reference = union of the chosen label values; slices along one axis):

``box-per-slice``
    The reference's bounding box on every slice that holds reference voxels; no propagation.
``one-box``
    One box on the slice where the reference is largest (most voxels); propagate in both directions.
``box3d``
    The initial prompt of the CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation"
    challenge (``get_boxes.py`` of JunMa11/CVPR-MedSegFMCompetition): the reference's first and last slice along
    the axis, and its bounding box on the middle slice (the median of the reference voxels' slice indices, the
    challenge's ``z_mid``); propagation in both directions, bounded by the first and last slice. The challenge
    grows the box by a random 0-5 pixels (at 256 px); here the box is tight unless ``--jitter`` is given.
``clicks-N`` / ``box3d-clicks-N``
    ``one-box`` / ``box3d``, then N simulated clicks, as the challenge's ``CVPR25_iter_eval.py`` places them:
    the error is every voxel where prediction and reference differ; of its 26-connected components the largest
    is corrected; the click goes to the component voxel farthest from the component's outside (Euclidean
    distance in voxel units, the volume's border counting as outside; ties: one of the farthest voxels drawn
    with ``numpy.random.RandomState(42)``, the challenge's ``np.random.seed(42)``); it is an include click
    where the reference holds that voxel, an exclude click otherwise. Each click is a correction with the
    previous prediction as context: on a prompted slice it joins the prompt together with that slice's current
    mask; on any other slice it is a points-only prompt, which the engine resolves against the propagated
    result there (see request.py). After each click the propagation runs again (the session caches chains, so
    only what a click changes is recomputed).

    Reported like the challenge: ``dice_per_click`` and ``nsd_per_click`` (N + 1 values: the initial prompt,
    then after each click; NSD at 2 mm, and 0 where Dice is at most 0.2, as the challenge does);
    ``dsc_auc`` and ``nsd_auc``, the trapezoidal area under those curves over the N click steps (unit spacing,
    the initial prompt excluded: for N = 5 at most 4, ``scipy.integrate.cumulative_trapezoid(dscs[-5:],
    np.arange(5))[-1]`` in the challenge); the final Dice and NSD are the row's ``dice`` and ``nsd_2mm``.
    When nothing is left to correct, the remaining entries repeat the last values.

Box jitter (``--jitter F``): each box edge moves by a uniform random amount in [-F, F] times the box's side
length (voxels), clipped to the slice; seeded per case from ``--seed`` and the case name, so results do not
depend on case order.

Metrics (see metrics.py; their definitions are written into report.json under ``"metrics"``): Dice; NSD at 1 and
2 mm and HD95 in the area-weighted surface-distance convention of MedSAM and the CVPR 2024 / 2025 challenges;
``nsd_2mm_voxels``, the boundary-voxel NSD (MONAI's default), as an extra.

Outputs in the output folder: ``report.json`` (exactly ``{"cases": [{"case", "dice", "nsd_1mm", "nsd_2mm",
"hd95_mm", "nsd_2mm_voxels", "seconds"[, "dice_per_click", "nsd_per_click", "dsc_auc", "nsd_auc"]}, ...], ...}``;
further top-level keys follow "cases"), ``report.md`` (a table with a mean row). One case (IMAGE LABEL):
``prediction.nii.gz`` and ``overlay.png`` in the folder itself. ``--cases CSV``: ``<case>/prediction.nii.gz`` and
``<case>/overlay.png`` per case. Predictions are labelmaps on the image grid with value 1 inside. HD95 is ``null``
in JSON when exactly one mask is empty. ``seconds`` is the wall time of the model work of a case (session set-up,
encoding, decoding, propagation); reading, writing, metrics and click simulation are not counted.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import (
    METRIC_DEFINITIONS,
    compare_masks,
    connected_components,
    dice,
    normalized_surface_dice,
    spacing_kji,
    squared_distance_to,
)
from .models.base import SliceModel
from .prompts import SlicePrompt, box_from_mask
from .request import SegmentationRequest
from .session import SegmentationSession
from .slices import extract_slice
from .volume import AXES, Volume, axis_index
from .windowing import Window, check_window_text, parse_window

log = logging.getLogger(__name__)

CASE_KEYS = ("case", "dice", "nsd_1mm", "nsd_2mm", "hd95_mm", "nsd_2mm_voxels", "seconds")
CLICK_KEYS = ("dice_per_click", "nsd_per_click", "dsc_auc", "nsd_auc")
CLICK_NSD_TOLERANCE_MM = 2.0  # the challenge's NSD tolerance
CLICK_NSD_MIN_DICE = 0.2  # the challenge computes NSD only above this Dice (0 otherwise)
CLICK_SEED = 42  # the challenge's np.random.seed(42) for ties between farthest voxels
PROTOCOL_DEFINITIONS = {
    "dice_per_click": "Dice after the initial prompt, then after each simulated click",
    "nsd_per_click": "NSD at 2 mm (area-weighted) after the initial prompt and each click; 0 where Dice <= 0.2, "
                     "as the CVPR 2025 challenge",
    "dsc_auc": "trapezoidal area under Dice over the click steps (unit spacing, initial prompt excluded; "
               "CVPR 2025 challenge's DSC_AUC, at most N - 1)",
    "nsd_auc": "the same for NSD (CVPR 2025 challenge's NSD_AUC)",
}


class EvaluationError(ValueError):
    """Bad evaluation input (cases file, label values, protocol); the message says what to fix."""


# --- protocols and simulated prompts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Protocol:
    """``kind`` is 'box-per-slice', 'one-box' or 'box3d'; ``clicks`` the number of corrective clicks after it."""

    kind: str
    clicks: int = 0

    @property
    def name(self) -> str:
        if self.kind == "one-box" and self.clicks:
            return f"clicks-{self.clicks}"
        if self.kind == "box3d" and self.clicks:
            return f"box3d-clicks-{self.clicks}"
        return self.kind


def parse_protocol(text: str) -> Protocol:
    """'box-per-slice', 'one-box', 'box3d', 'clicks-N' or 'box3d-clicks-N' (N >= 0) -> Protocol."""
    t = str(text).strip().lower()
    if t in ("box-per-slice", "one-box", "box3d"):
        return Protocol(t)
    m = re.fullmatch(r"(box3d-)?clicks-(\d+)", t)
    if m:
        return Protocol("box3d" if m.group(1) else "one-box", int(m.group(2)))
    raise EvaluationError(f"unknown protocol {text!r}: use box-per-slice, one-box, box3d, clicks-N or "
                          "box3d-clicks-N (e.g. box3d-clicks-5)")


def parse_label_values(text: str | int | None) -> tuple[int, ...]:
    """'1' or '1,2' (also ';', '+' or spaces between values) -> (1, 2)."""
    if text is None or str(text).strip() == "":
        return (1,)
    parts = [p for p in re.split(r"[,;+\s]+", str(text).strip()) if p]
    try:
        values = tuple(int(float(p)) for p in parts)
    except ValueError:
        raise EvaluationError(f"label values must be whole numbers separated by commas, not {text!r}") from None
    if any(v == 0 for v in values):
        raise EvaluationError("label value 0 is background; choose the values of the structure to evaluate")
    return values


def slice_areas(mask: np.ndarray, axis: str) -> np.ndarray:
    """Voxel count of ``mask`` [k, j, i] on every slice along ``axis``."""
    n = axis_index(axis)
    other = tuple(a for a in range(3) if a != 2 - n)
    return np.asarray(mask, dtype=bool).sum(axis=other)


def largest_slice(mask: np.ndarray, axis: str) -> int:
    """Index of the slice along ``axis`` with the most mask voxels (the lowest index on ties)."""
    areas = slice_areas(mask, axis)
    if not areas.any():
        raise EvaluationError("the reference mask is empty")
    return int(np.argmax(areas))


def jitter_box(box: np.ndarray, shape: tuple[int, int], fraction: float, rng: np.random.Generator | None
               ) -> np.ndarray:
    """Move each edge of an inclusive box (x0, y0, x1, y1) by U(-fraction, fraction) x side, clipped to ``shape``.

    ``shape`` is the slice's (rows, cols); sides are in voxels (x1 - x0 + 1). The result is a valid box again.
    """
    box = np.asarray(box, dtype=float)
    if fraction <= 0 or rng is None:
        return box.copy()
    rows, cols = shape
    w, h = box[2] - box[0] + 1.0, box[3] - box[1] + 1.0
    d = rng.uniform(-fraction, fraction, size=4) * np.array([w, h, w, h])
    x0, y0, x1, y1 = box + d
    x0, x1 = sorted((float(np.clip(x0, 0, cols - 1)), float(np.clip(x1, 0, cols - 1))))
    y0, y1 = sorted((float(np.clip(y0, 0, rows - 1)), float(np.clip(y1, 0, rows - 1))))
    return np.array([x0, y0, x1, y1])


def box_per_slice_prompts(reference: np.ndarray, axis: str, jitter: float = 0.0,
                          rng: np.random.Generator | None = None) -> dict[int, SlicePrompt]:
    """A box prompt (the reference's bounding box on that slice, optionally jittered) on every labelled slice."""
    prompts: dict[int, SlicePrompt] = {}
    for index in np.nonzero(slice_areas(reference, axis))[0]:
        ref2d = extract_slice(reference, axis, int(index))
        box = box_from_mask(ref2d)
        if box is not None:
            prompts[int(index)] = SlicePrompt(box=jitter_box(box, ref2d.shape, jitter, rng))
    return prompts


def one_box_prompt(reference: np.ndarray, axis: str, jitter: float = 0.0,
                   rng: np.random.Generator | None = None) -> dict[int, SlicePrompt]:
    """One box on the slice where the reference is largest."""
    index = largest_slice(reference, axis)
    ref2d = extract_slice(reference, axis, index)
    box = box_from_mask(ref2d)
    assert box is not None
    return {index: SlicePrompt(box=jitter_box(box, ref2d.shape, jitter, rng))}


def box3d_prompt(reference: np.ndarray, axis: str, jitter: float = 0.0,
                 rng: np.random.Generator | None = None) -> dict[int, SlicePrompt]:
    """The challenge's 3D box: the box on the middle slice (median slice index of the reference voxels) with the
    reference's first and last slice as ``extent``."""
    indices = np.sort(np.nonzero(np.asarray(reference, dtype=bool))[2 - axis_index(axis)])
    if indices.size == 0:
        raise EvaluationError("the reference mask is empty")
    mid = int(indices[indices.size // 2])
    ref2d = extract_slice(reference, axis, mid)
    box = box_from_mask(ref2d)
    assert box is not None
    return {mid: SlicePrompt(box=jitter_box(box, ref2d.shape, jitter, rng),
                             extent=(int(indices[0]), int(indices[-1])))}


@dataclass(frozen=True)
class Click:
    """A simulated click: slice ``index`` along the axis, in-plane voxel (x, y), ``label`` 1 include / 0 exclude.

    ``voxel_kji`` is the clicked voxel, ``region_voxels`` the size of the 3D error component it corrects and
    ``depth`` its distance (voxel units) from that component's outside.
    """

    index: int
    x: int
    y: int
    label: int
    region_voxels: int
    depth: float
    voxel_kji: tuple[int, int, int] = (0, 0, 0)


def _components26(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected components of a 3D bool mask: (labels int32 [k, j, i], voxel count per label incl. 0)."""
    labels = connected_components(mask)
    return labels, np.bincount(labels.reshape(-1))


def _in_plane(voxel_kji: tuple[int, int, int], axis: str) -> tuple[int, int, int]:
    """(slice index along ``axis``, x, y) of a voxel (k, j, i); x, y as in slices.py."""
    k, j, i = voxel_kji
    return {"K": (k, i, j), "J": (j, i, k), "I": (i, j, k)}[axis.upper()]


def next_click(prediction: np.ndarray, reference: np.ndarray, axis: str) -> Click | None:
    """The challenge's next click (see the module docstring), or None when prediction equals the reference."""
    pred, ref = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
    error = pred != ref
    if not error.any():
        return None
    labels, counts = _components26(error)
    counts[0] = 0
    largest = int(np.argmax(counts))
    component = labels == largest
    box = tuple(slice(max(0, int(a.min()) - 1), int(a.max()) + 2) for a in np.nonzero(component))
    crop = np.pad(component[box], 1)  # the volume's border counts as outside, like the challenge's zero padding
    depth2 = squared_distance_to(~crop)[1:-1, 1:-1, 1:-1]  # voxel units: exact integers
    peak = depth2.max()
    farthest = np.argwhere(depth2 == peak)  # C order, as numpy.argwhere on the whole volume
    chosen = farthest[np.random.RandomState(CLICK_SEED).choice(len(farthest))]
    voxel = tuple(int(c + b.start) for c, b in zip(chosen, box, strict=True))
    index, x, y = _in_plane(voxel, axis)
    return Click(index, x, y, int(ref[voxel]), int(counts[largest]), float(np.sqrt(peak)), voxel)


def add_click(prompts: dict[int, SlicePrompt], click: Click, prediction: np.ndarray, axis: str
              ) -> dict[int, SlicePrompt]:
    """A new prompt dict with ``click`` added as a correction with ``prediction`` [k, j, i] as context.

    On a slice with a box (or a mask) the click joins that prompt and the slice's current mask becomes its
    context; elsewhere it joins that slice's points-only prompt (or starts one), which the engine resolves
    against the propagated result there.
    """
    out = dict(prompts)
    point = SlicePrompt(points=[[click.x, click.y]], labels=[click.label])
    old = out.get(click.index)
    if old is None:
        out[click.index] = point
    elif old.points_only:
        out[click.index] = old.merged(point)
    else:
        current = np.array(extract_slice(prediction, axis, click.index), dtype=bool)
        merged = old.merged(point)
        out[click.index] = merged.with_mask(current if current.any() else old.mask)
    return out


@dataclass
class ProtocolRun:
    """What one protocol produced on one case: final ``mask`` [k, j, i], model ``seconds``, prompts, clicks."""

    mask: np.ndarray
    seconds: float
    prompts: dict[int, SlicePrompt]
    clicks: list[Click] = field(default_factory=list)
    dice_per_click: list[float] | None = None
    nsd_per_click: list[float] | None = None
    clicked_slice_dice: list[tuple[float, float]] = field(default_factory=list)  # per click: (before, after)

    @property
    def dsc_auc(self) -> float | None:
        return _auc(self.dice_per_click)

    @property
    def nsd_auc(self) -> float | None:
        return _auc(self.nsd_per_click)


def _auc(values: list[float] | None) -> float | None:
    """Trapezoidal area over the click steps (unit spacing, the initial prompt's value excluded)."""
    if values is None or len(values) < 2:
        return None
    return float(np.trapezoid(np.asarray(values[1:], dtype=float))) if len(values) > 2 else 0.0


def click_nsd(mask: np.ndarray, reference: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The challenge's per-step NSD: 2 mm, area-weighted, 0 where Dice is at most 0.2."""
    if dice(mask, reference) <= CLICK_NSD_MIN_DICE:
        return 0.0
    return normalized_surface_dice(mask, reference, CLICK_NSD_TOLERANCE_MM, spacing)


def run_protocol(session: SegmentationSession, reference: np.ndarray, axis: str, protocol: Protocol,
                 jitter: float = 0.0, rng: np.random.Generator | None = None,
                 progress: Callable[[int, int], None] | None = None) -> ProtocolRun:
    """Simulate ``protocol`` from ``reference`` [k, j, i] on the session's volume; time only the model work."""
    axis = axis.upper()
    volume = session.volume
    shape = volume.array.shape
    if protocol.kind == "box-per-slice":
        prompts, direction = box_per_slice_prompts(reference, axis, jitter, rng), "none"
    elif protocol.kind == "box3d":
        prompts, direction = box3d_prompt(reference, axis, jitter, rng), "both"
    else:
        prompts, direction = one_box_prompt(reference, axis, jitter, rng), "both"
    SegmentationRequest(axis=axis, prompts=prompts, propagate=direction).validate(volume)
    start = time.perf_counter()
    mask = session.propagate(axis, prompts, direction, progress=progress).to_volume(shape)
    seconds = time.perf_counter() - start
    run = ProtocolRun(mask, seconds, prompts)
    if protocol.kind == "box-per-slice" or protocol.clicks == 0:
        return run
    spacing = spacing_kji(volume.spacing_ijk)
    run.dice_per_click = [dice(mask, reference)]
    run.nsd_per_click = [click_nsd(mask, reference, spacing)]
    for _ in range(protocol.clicks):
        click = next_click(run.mask, reference, axis)
        if click is None:
            run.dice_per_click.append(run.dice_per_click[-1])
            run.nsd_per_click.append(run.nsd_per_click[-1])
            continue
        run.clicks.append(click)
        run.prompts = add_click(run.prompts, click, run.mask, axis)
        log.info("click %d on slice %d at (%d, %d), %s, error region of %d voxels", len(run.clicks), click.index,
                 click.x, click.y, "include" if click.label else "exclude", click.region_voxels)
        before = dice(extract_slice(run.mask, axis, click.index), extract_slice(reference, axis, click.index))
        start = time.perf_counter()
        run.mask = session.propagate(axis, run.prompts, direction).to_volume(shape)
        run.seconds += time.perf_counter() - start
        after = dice(extract_slice(run.mask, axis, click.index), extract_slice(reference, axis, click.index))
        run.clicked_slice_dice.append((before, after))
        run.dice_per_click.append(dice(run.mask, reference))
        run.nsd_per_click.append(click_nsd(run.mask, reference, spacing))
    return run


# --- cases --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One evaluation case: paths, the label values forming the reference, and the slice axis."""

    name: str
    image: Path
    label: Path
    label_values: tuple[int, ...] = (1,)
    axis: str = "K"
    series: str | None = None  # SeriesInstanceUID when ``image`` is a DICOM folder holding several series


def case_name_from(path: str | Path) -> str:
    """A case name from an image file name (known image extensions stripped)."""
    name = Path(path).name
    for ext in (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).strip("._")
    if not safe:
        raise EvaluationError(f"case name {name!r} has no usable characters for a folder name")
    return safe


def read_cases_csv(path: str | Path, label_values: tuple[int, ...] = (1,), axis: str = "K") -> list[Case]:
    """Cases from a CSV with a header ``case,image,label[,label_values,axis]``.

    Relative paths are relative to the CSV's folder; empty optional cells take ``label_values`` and ``axis``.
    ``label_values`` cells may hold several values separated by ';', '+', spaces or (quoted) commas.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"cases file not found: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in ("case", "image", "label") if c not in header]
        if missing:
            raise EvaluationError(f"{path.name} needs the columns case,image,label[,label_values,axis]; "
                                  f"missing {', '.join(missing)}")
        cases: list[Case] = []
        seen: set[str] = set()
        for n, raw in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not any(row.values()):
                continue
            if not row.get("case") or not row.get("image") or not row.get("label"):
                raise EvaluationError(f"{path.name} line {n}: case, image and label must not be empty")
            name = _safe_name(row["case"])
            if name in seen:
                raise EvaluationError(f"{path.name} line {n}: case name {row['case']!r} is used twice")
            seen.add(name)
            ax = (row.get("axis") or axis).upper()
            if ax not in AXES:
                raise EvaluationError(f"{path.name} line {n}: axis must be I, J or K, not {ax!r}")
            values = parse_label_values(row["label_values"]) if row.get("label_values") else label_values
            image, label = (Path(row[c]) for c in ("image", "label"))
            cases.append(Case(name, image if image.is_absolute() else path.parent / image,
                              label if label.is_absolute() else path.parent / label, values, ax))
    if not cases:
        raise EvaluationError(f"{path.name} lists no cases")
    return cases


def load_case(case: Case) -> tuple[Volume, np.ndarray]:
    """Read a case's image and its reference mask (bool [k, j, i], union of the label values)."""
    from .io import read_labelmap, read_volume

    for p in (case.image, case.label):
        if not Path(p).exists():
            raise FileNotFoundError(f"case {case.name}: file not found: {p}")
    volume = read_volume(case.image, case.series)
    labels, label_volume = read_labelmap(case.label)
    if labels.shape != volume.array.shape:
        raise EvaluationError(f"case {case.name}: the label ({_ijk(labels.shape)} voxels) and the image "
                              f"({_ijk(volume.array.shape)} voxels) have different grids")
    if not np.allclose(label_volume.ijk_to_ras, volume.ijk_to_ras, atol=1e-3):
        log.warning("case %s: the label's geometry differs from the image's; using the image's", case.name)
    reference = np.isin(labels, case.label_values)
    if not reference.any():
        present = [int(v) for v in np.unique(labels) if v != 0][:20]
        raise EvaluationError(f"case {case.name}: no voxel has label value(s) "
                              f"{','.join(map(str, case.label_values))} in {Path(case.label).name} "
                              f"(values present: {present or 'none'})")
    return volume, reference


def _ijk(shape_kji: tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in reversed(shape_kji))


def _case_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


def _round(value: float, digits: int = 6) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def evaluate_case(model: SliceModel, case: Case, protocol: Protocol, out_dir: Path, window: Window | str | None = None,
                  jitter: float = 0.0, seed: int = 0, progress: Callable[[int, int], None] | None = None
                  ) -> tuple[dict, dict]:
    """Run one case; write ``out_dir/prediction.nii.gz`` and ``out_dir/overlay.png``.

    ``window`` is a Window, a 'fit' / 'volume' / preset / 'WIDTH,LEVEL' string, or None (fitted to the object).
    Returns (the report row with keys in ``CASE_KEYS`` order, plus ``CLICK_KEYS`` for clicks protocols; a details
    dict).
    """
    from .io import write_labelmap
    from .overlay import write_overlay

    volume, reference = load_case(case)
    if isinstance(window, str):
        window = parse_window(window, volume.array)
    rng = _case_rng(seed, case.name) if jitter > 0 else None
    start = time.perf_counter()
    session = SegmentationSession(model, volume, window=window)
    setup = time.perf_counter() - start
    run = run_protocol(session, reference, case.axis, protocol, jitter, rng, progress)
    seconds = setup + run.seconds
    m = compare_masks(run.mask, reference, spacing_kji(volume.spacing_ijk))
    row: dict = {"case": case.name, "dice": _round(m.dice), "nsd_1mm": _round(m.nsd_1mm),
                 "nsd_2mm": _round(m.nsd_2mm), "hd95_mm": _round(m.hd95_mm),
                 "nsd_2mm_voxels": _round(m.nsd_2mm_voxels), "seconds": round(seconds, 3)}
    if run.dice_per_click is not None:
        row["dice_per_click"] = [_round(d) for d in run.dice_per_click]
        row["nsd_per_click"] = [_round(d) for d in run.nsd_per_click]
        row["dsc_auc"] = _round(run.dsc_auc)
        row["nsd_auc"] = _round(run.nsd_auc)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_labelmap(run.mask, volume, out_dir / "prediction.nii.gz")
    write_overlay(out_dir / "overlay.png", volume, reference, run.mask, case.axis, session.window)
    details = {
        "case": case.name, "image": str(case.image), "label": str(case.label),
        "label_values": list(case.label_values), "axis": case.axis,
        "window": {"name": session.window.name, "low": session.window.low, "high": session.window.high},
        "prompted_slices": sorted(int(i) for i in run.prompts),
        "clicks": [{"slice": c.index, "x": c.x, "y": c.y, "label": c.label, "region_voxels": c.region_voxels,
                    "voxel_kji": list(c.voxel_kji), "slice_dice_before": _round(b), "slice_dice_after": _round(a)}
                   for c, (b, a) in zip(run.clicks, run.clicked_slice_dice, strict=True)],
        "reference_voxels": int(reference.sum()), "predicted_voxels": int(run.mask.sum()),
    }
    return row, details


def mean_row(rows: list[dict]) -> dict:
    """Means over cases: Dice, NSD, seconds; HD95 over the cases where it is finite (``hd95_finite`` counts them)."""
    out: dict = {}
    for key in CASE_KEYS[1:]:
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = _round(float(np.mean(values))) if values else None
    out["hd95_finite"] = sum(1 for r in rows if r.get("hd95_mm") is not None)
    for key in ("dice_per_click", "nsd_per_click"):
        clicks = [r[key] for r in rows if key in r]
        if clicks:
            n = min(len(c) for c in clicks)
            out[key] = [_round(float(np.mean([c[i] for c in clicks if c[i] is not None]))) for i in range(n)]
    for key in ("dsc_auc", "nsd_auc"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = _round(float(np.mean(values)))
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict], title: str | None = None) -> str:
    """The report as a markdown table with a mean row (HD95 mean over finite values)."""
    with_clicks = any("dice_per_click" in r for r in rows)
    head = ["case", "Dice", "NSD 1 mm", "NSD 2 mm", "HD95 (mm)", "NSD 2 mm (voxels)", "seconds"]
    if with_clicks:
        head += ["DSC_AUC", "NSD_AUC", "Dice per click"]
    lines = [f"## {title}", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]

    def cells(r: dict, name: str) -> list[str]:
        c = [name, _fmt(r["dice"]), _fmt(r["nsd_1mm"]), _fmt(r["nsd_2mm"]), _fmt(r["hd95_mm"], 2),
             _fmt(r.get("nsd_2mm_voxels")), _fmt(r["seconds"], 1)]
        if with_clicks:
            c += [_fmt(r.get("dsc_auc")), _fmt(r.get("nsd_auc")),
                  " → ".join(_fmt(d) for d in r.get("dice_per_click", []))]
        return c

    for r in rows:
        lines.append("| " + " | ".join(cells(r, r["case"])) + " |")
    mean = mean_row(rows)
    label = f"**mean** ({len(rows)} cases" + (f", HD95 over {mean['hd95_finite']}" if mean["hd95_finite"] < len(rows)
                                              else "") + ")"
    lines.append("| " + " | ".join(cells(mean, label)) + " |")
    lines += ["", "NSD and HD95: area-weighted surface elements (DeepMind surface-distance, as MedSAM and the CVPR "
              "2024/2025 challenges report); HD95 is the larger of the two directed 95th percentiles. "
              "NSD (voxels): boundary-voxel count (MONAI's default), not comparable with published tables."]
    if with_clicks:
        lines.append("DSC_AUC / NSD_AUC: trapezoidal area under Dice / NSD (2 mm) over the click steps, as the CVPR "
                     "2025 interactive challenge.")
    return "\n".join(lines) + "\n"


def write_reports(out_dir: Path, rows: list[dict], extra: dict, title: str) -> tuple[Path, Path]:
    """Write ``report.json`` (cases first, then ``extra``) and ``report.md``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [{k: r[k] for k in (*CASE_KEYS, *CLICK_KEYS) if k in r} for r in rows]
    definitions = {k: v for k, v in METRIC_DEFINITIONS.items() if k in CASE_KEYS}
    if any("dice_per_click" in r for r in rows):
        definitions.update(PROTOCOL_DEFINITIONS)
    payload = {"cases": cases, **extra, "metrics": definitions, "mean": mean_row(rows)}
    json_path, md_path = out_dir / "report.json", out_dir / "report.md"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    md_path.write_text(f"# SAMSegment evaluation\n\n{markdown_table(rows, title)}")
    return json_path, md_path


def evaluate_cases(model: SliceModel, cases: list[Case], protocol: Protocol, out_dir: str | Path,
                   window: Window | str | None = None, jitter: float = 0.0, seed: int = 0, per_case_folders=None,
                   progress: Callable[[int, int], None] | None = None,
                   slice_progress: Callable[[int, int], None] | None = None, extra: dict | None = None) -> dict:
    """Evaluate ``cases`` with one model; write predictions, overlays and reports into ``out_dir``.

    ``per_case_folders`` None means: a folder per case when there is more than one case. ``progress`` gets
    (cases done, cases total); ``slice_progress`` the per-slice progress of each case's first propagation.
    Returns the report dict written to ``report.json``.
    """
    out_dir = Path(out_dir)
    if per_case_folders is None:
        per_case_folders = len(cases) > 1
    if jitter < 0 or jitter > 1:
        raise EvaluationError(f"--jitter must be between 0 and 1 (a fraction of the box size), not {jitter}")
    rows, details = [], []
    for n, case in enumerate(cases):
        log.info("case %s (%d/%d)", case.name, n + 1, len(cases))
        folder = out_dir / case.name if per_case_folders else out_dir
        row, detail = evaluate_case(model, case, protocol, folder, window, jitter, seed, slice_progress)
        rows.append(row)
        details.append(detail)
        if progress is not None:
            progress(n + 1, len(cases))
    info = {"protocol": protocol.name, "model": getattr(model, "name", "?"), "jitter": jitter, "seed": seed,
            **(extra or {}), "details": details}
    write_reports(out_dir, rows, info, f"{protocol.name} · {info['model']}")
    return {"cases": rows, **info, "mean": mean_row(rows)}


# --- command line -------------------------------------------------------------------------------------------------


def main_evaluate(args) -> int:
    """``samsegment evaluate``: see the module docstring. Prints the summary table; returns the exit code."""
    from .cli import CliError, ProgressBar, load_model_for, progress_enabled

    try:
        protocol = parse_protocol(args.protocol)
        values = parse_label_values(args.label_values)
        if args.cases:
            if args.image or args.label or getattr(args, "series", None):
                raise CliError("give either IMAGE LABEL [--series UID] or --cases CSV, not both")
            cases = read_cases_csv(args.cases, values, args.axis)
        else:
            if not (args.image and args.label):
                raise CliError("give IMAGE and LABEL (or --cases CSV)")
            cases = [Case(_safe_name(case_name_from(args.image)), Path(args.image), Path(args.label), values,
                          args.axis, getattr(args, "series", None))]
        for case in cases:
            for p in (case.image, case.label):
                if not Path(p).exists():
                    raise FileNotFoundError(f"case {case.name}: file not found: {p}")
        if not 0 <= args.jitter <= 1:
            raise CliError(f"--jitter must be between 0 and 1 (a fraction of the box size), not {args.jitter}")
        check_window_text(args.window)  # before the model loads, not after it on the first case
    except EvaluationError as exc:
        raise CliError(str(exc)) from None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    start = time.perf_counter()
    model = load_model_for(args)
    load_seconds = time.perf_counter() - start
    several = bool(args.cases)
    bar = ProgressBar(f"evaluate {protocol.name}", enabled=progress_enabled(args))
    slice_bar = None if several else ProgressBar(f"{cases[0].name}", enabled=progress_enabled(args))
    try:
        report = evaluate_cases(model, cases, protocol, args.output, args.window, args.jitter, args.seed,
                                per_case_folders=several, progress=bar if several else None,
                                slice_progress=slice_bar,
                                extra={"device": str(model.device), "backend": getattr(model, "backend", "torch"),
                                       "precision": getattr(model, "precision", args.precision),
                                       "model_load_seconds": round(load_seconds, 3)})
    except EvaluationError as exc:
        raise CliError(str(exc)) from None
    out = Path(args.output)
    print(markdown_table(report["cases"], f"{protocol.name} · {args.model}"), end="")
    print(f"wrote {out / 'report.json'}, {out / 'report.md'} and "
          + (f"{len(cases)} case folders" if several else "prediction.nii.gz, overlay.png") + f" in {out}")
    return 0
