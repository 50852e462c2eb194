"""DICOM Segmentation objects (SEG): one binary segment on the grid of its source DICOM series, written by highdicom.

The SEG references every slice of the source series (SOP Instance UIDs, Frame of Reference), holds one frame per
source slice the mask touches (empty slices are left out, as highdicom does by default), and names the segment
with its label, a colour (RecommendedDisplayCIELabValue) and the generic Slicer terminology "Tissue / Tissue"
(the engine does not know what was segmented). The algorithm is recorded as semi-automatic (user prompts + model).

Mask slice k is the source file ``series.files[k]`` (io.read_dicom_series reads them in that order), rows and
columns as in the DICOM pixel data (numpy ``[k, j, i]``: j = row, i = column). highdicom and pydicom are an
optional extra (``pip install samsegment[dicom]``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import __version__
from .io import DicomSeries
from .models import MissingPackageError
from .segnrrd import DEFAULT_COLOR

log = logging.getLogger(__name__)


def require_highdicom() -> None:
    """Raise MissingPackageError with the install command when highdicom cannot be imported."""
    try:
        import highdicom  # noqa: F401
    except ImportError as exc:
        raise MissingPackageError(
            f"writing a DICOM SEG needs the Python package 'highdicom', which is not installed (pip install "
            f"highdicom, or pip install 'samsegment[dicom]'): {exc}"
        ) from None


def write_dicom_seg(mask_kji: np.ndarray, series: DicomSeries, path: str | Path, segment_name: str = "Segment_1",
                    color: tuple[float, float, float] = DEFAULT_COLOR, model_name: str = "SAMSegment") -> Path:
    """Write ``mask_kji`` (bool-like ``[k, j, i]`` on the series' grid) as a one-segment binary DICOM SEG at ``path``.

    ``color`` is RGB in [0, 1]. Written through a temporary file and renamed; raises ValueError when the mask does
    not match the series' grid.
    """
    require_highdicom()
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.sr.codedict import codes

    path = Path(path)
    sources = [dcmread(str(f), stop_before_pixels=True) for f in series.files]
    mask = np.asarray(mask_kji) > 0
    first = sources[0]
    grid = (len(sources), int(first.Rows), int(first.Columns))
    if mask.shape != grid:
        raise ValueError(f"the mask {mask.shape} does not match the DICOM series {series.uid} {grid} (slices, rows, "
                         f"columns)")
    rgb = tuple(int(round(255 * min(1.0, max(0.0, float(c))))) for c in color)
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=segment_name,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"SAMSegment {model_name}", family=codes.DCM.ArtificialIntelligence, version=__version__),
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=int(getattr(first, "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="SAMSegment",
        manufacturer_model_name=model_name,
        software_versions=__version__,
        device_serial_number="0",
        series_description=f"SAMSegment: {segment_name}"[:64],
        content_label="SAMSEGMENT",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        seg.save_as(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("DICOM SEG %s: %d frames referencing series %s", path, int(seg.NumberOfFrames), series.uid)
    return path
