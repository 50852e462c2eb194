"""The real cases of ../shared/data used for accuracy tests: image, label, label value, slice axis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from SAMSegmentLib.metrics import dice
from SAMSegmentLib.prompts import box_from_mask
from SAMSegmentLib.slices import extract_slice

__all__ = ["CASES", "box_filled_dice", "box_per_slice_prompts", "dice", "one_box_prompts", "write_json"]

CASES = {
    # name: (folder, image, label, label value, axis)
    "lung2": ("ct_lung_tumor_pyradiomics", "lung2_crop_ct.nrrd", "lung2_crop_label.nrrd", 1, "K"),
    "t2": ("mr_spinal_cord_sct", "t2.nii.gz", "t2_seg-manual.nii.gz", 1, "J"),
    "brain1": ("mr_brain_tumor_tcga_pyradiomics", "brain1_t1post_image.nrrd", "brain1_label.nrrd", 1, "K"),
    "liver": ("ct_mr_totalseg_example_pseudolabels", "example_ct_sm.nii.gz", "example_ct_sm_totalseg_pred.nii.gz", 5, "K"),
}


def box_per_slice_prompts(ref: np.ndarray, axis: str) -> dict:
    """PROMPTS.json content: the reference bounding box on every labelled slice, propagate none."""
    entries = []
    for index in range(ref.shape[{"K": 0, "J": 1, "I": 2}[axis]]):
        box = box_from_mask(extract_slice(ref, axis, index))
        if box is not None:
            entries.append({"slice": index, "box": [int(v) for v in box]})
    return {"axis": axis, "propagate": "none", "prompts": entries}


def one_box_prompts(ref: np.ndarray, axis: str) -> dict:
    """PROMPTS.json content: the reference box on the slice where the label is largest, propagate both."""
    n = ref.shape[{"K": 0, "J": 1, "I": 2}[axis]]
    areas = [int(extract_slice(ref, axis, i).sum()) for i in range(n)]
    index = int(np.argmax(areas))
    box = box_from_mask(extract_slice(ref, axis, index))
    return {"axis": axis, "propagate": "both", "prompts": [{"slice": index, "box": [int(v) for v in box]}]}


def box_filled_dice(ref: np.ndarray, axis: str) -> float:
    """Dice of the trivial answer: each labelled slice's reference box, filled."""
    filled = np.zeros_like(ref, dtype=bool)
    for entry in box_per_slice_prompts(ref, axis)["prompts"]:
        x0, y0, x1, y1 = entry["box"]
        extract_slice(filled, axis, entry["slice"])[y0 : y1 + 1, x0 : x1 + 1] = True
    return dice(filled, ref)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path
