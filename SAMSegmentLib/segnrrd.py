"""Slicer segmentation files (``.seg.nrrd``): a labelmap NRRD with Segment* key-value fields Slicer reads.

Written with slicerio, which knows the exact field conventions; the geometry is given in the NRRD's LPS space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_COLOR = (0.95, 0.35, 0.2)  # RGB in [0, 1]: the segment colour when none is given


def write_seg_nrrd(mask_kji: np.ndarray, ijk_to_ras: np.ndarray, path: str | Path, segment_name: str = "Segment_1",
                   label_value: int = 1, color: tuple[float, float, float] = DEFAULT_COLOR) -> None:
    """Write a one-segment ``.seg.nrrd`` whose segment has ``label_value`` in a labelmap on the given grid."""
    import slicerio

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ijk_to_ras, dtype=float)
    voxels_ijk = np.ascontiguousarray(np.transpose(np.asarray(mask_kji, dtype=np.uint8), (2, 1, 0)))
    segmentation = {
        "voxels": voxels_ijk,
        "ijkToLPS": lps,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": [
            {
                "id": "Segment_1",
                "name": segment_name,
                "labelValue": int(label_value),
                "layer": 0,
                "color": list(color),
                "extent": [0, voxels_ijk.shape[0] - 1, 0, voxels_ijk.shape[1] - 1, 0, voxels_ijk.shape[2] - 1],
            }
        ],
    }
    slicerio.write_segmentation(str(path), segmentation)
