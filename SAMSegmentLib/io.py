"""Reading and writing volumes with SimpleITK (NRRD, NIfTI, MHA, ..., DICOM series folders) as engine Volumes.

SimpleITK stores LPS physical coordinates; Volume.ijk_to_ras is RAS, so the first two rows flip sign.

A DICOM series is read with SimpleITK's GDCM series reader: a folder's series are found by SeriesInstanceUID and
each series' files are sorted along the slice normal, so index k of the volume is file k of ``DicomSeries.files``
(the order a DICOM SEG written from a mask on this volume must follow; see dicomseg.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .volume import Volume, VolumeError

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def ijk_to_ras_from_sitk(image) -> np.ndarray:
    """IJK-to-RAS 4x4 from a SimpleITK image's origin, spacing and direction (LPS)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    m = np.eye(4)
    m[:3, :3] = direction * spacing[None, :]
    m[:3, 3] = np.array(image.GetOrigin(), dtype=float)
    return LPS_TO_RAS @ m


def apply_geometry_to_sitk(image, ijk_to_ras: np.ndarray) -> None:
    """Set origin, spacing and direction of a SimpleITK image from an IJK-to-RAS matrix."""
    m = LPS_TO_RAS @ np.asarray(ijk_to_ras, dtype=float)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    direction = m[:3, :3] / spacing[None, :]
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in direction.reshape(-1)])
    image.SetOrigin([float(v) for v in m[:3, 3]])


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series of a folder: its SeriesInstanceUID, SeriesDescription and files in slice order."""

    uid: str
    description: str
    files: tuple[Path, ...]

    def describe(self) -> str:
        """``UID ('description', N slices)``, for messages listing a folder's series."""
        return f"{self.uid} ({self.description!r}, {len(self.files)} slices)" if self.description else \
            f"{self.uid} (no description, {len(self.files)} slices)"


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The DICOM series directly in ``folder`` (GDCM series IDs: SeriesInstanceUID), files sorted by position."""
    import SimpleITK as sitk

    folder = Path(folder)
    out = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        header = sitk.ImageFileReader()
        header.SetFileName(str(files[0]))
        header.ReadImageInformation()
        description = header.GetMetaData("0008|103e").strip() if header.HasMetaDataKey("0008|103e") else ""
        out.append(DicomSeries(uid, description, files))
    return out


def select_dicom_series(folder: str | Path, uid: str | None = None) -> DicomSeries:
    """The series ``uid`` of ``folder``, or its only series; VolumeError listing the series found otherwise."""
    folder = Path(folder)
    found = list_dicom_series(folder)
    if not found:
        raise VolumeError(f"no DICOM series found in the folder {folder} (give a DICOM series folder or an image file)")
    listing = "; ".join(s.describe() for s in found)
    if uid is not None:
        for series in found:
            if series.uid == uid.strip():
                return series
        raise VolumeError(f"{folder} holds no DICOM series {uid}; it holds {listing}")
    if len(found) > 1:
        raise VolumeError(f"{folder} holds {len(found)} DICOM series; choose one with --series UID: {listing}")
    return found[0]


def _as_volume(image, name: str) -> Volume:
    """A SimpleITK image as a Volume, refusing vector and non-3D images (``name`` says which in the message)."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel; expected a scalar (grey) volume")
    if image.GetDimension() != 3:
        raise VolumeError(f"{name} is a {image.GetDimension()}D image; expected a 3D volume")
    return Volume(sitk.GetArrayFromImage(image), ijk_to_ras_from_sitk(image))  # array [k, j, i]


def read_dicom_series(series: DicomSeries) -> Volume:
    """The series as a Volume; index k is ``series.files[k]``."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise VolumeError(f"cannot read the DICOM series {series.uid} ({first})") from None
    return _as_volume(image, f"the DICOM series {series.uid}")


def read_image(path: str | Path, series: str | None = None) -> tuple[Volume, DicomSeries | None]:
    """A 3D scalar volume from an image file or a DICOM series folder (``series``: its SeriesInstanceUID, needed
    when the folder holds several), plus the DicomSeries read (None for a file).

    Raises VolumeError with a readable reason for a missing path, 2D, 4D or vector images, one DICOM slice instead of
    its folder, or an ambiguous folder.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"image file not found: {path}")
    if path.is_dir():
        chosen = select_dicom_series(path, series)
        return read_dicom_series(chosen), chosen
    if series is not None:
        raise VolumeError(f"{path.name} is a file; --series chooses among the DICOM series of a folder")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise VolumeError(f"cannot read {path.name} as an image ({first})") from None
    if image.HasMetaDataKey("0020|000e") and (image.GetDimension() == 2 or image.GetSize()[2] == 1):
        raise VolumeError(f"{path.name} is one DICOM slice; give the folder that holds its series instead")
    return _as_volume(image, path.name), None


def read_volume(path: str | Path, series: str | None = None) -> Volume:
    """The volume of :func:`read_image` (an image file, or a DICOM series folder)."""
    return read_image(path, series)[0]


def write_labelmap(mask_kji: np.ndarray, reference: Volume, path: str | Path, label_value: int = 1,
                   segment_name: str = "Segment_1", color: tuple[float, float, float] | None = None,
                   dicom_source: DicomSeries | None = None, model_name: str = "SAMSegment") -> Path:
    """Write a binary mask on the reference grid: ``.nii.gz``/``.nrrd``/``.mha`` labelmap, ``.seg.nrrd``, or a DICOM
    SEG (``.dcm``, needs ``dicom_source``: the series ``reference`` was read from; see dicomseg.py).

    ``segment_name`` and ``color`` (RGB in [0, 1]) name the segment of ``.seg.nrrd`` and ``.dcm`` outputs.
    Written to a temporary file first and renamed, so a failure leaves no half-written output.
    """
    import SimpleITK as sitk

    from .segnrrd import DEFAULT_COLOR

    path = Path(path)
    mask = (np.asarray(mask_kji) > 0).astype(np.uint8) * np.uint8(label_value)
    if mask.shape != reference.array.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the image {reference.array.shape}")
    name = path.name.lower()
    if name.endswith(".dcm"):
        if dicom_source is None:
            raise VolumeError(f"{path.name}: a DICOM SEG references the slices of its source series, so the image "
                              f"must be a DICOM series folder; write .nii.gz, .nrrd or .seg.nrrd for other images")
        from .dicomseg import write_dicom_seg

        return write_dicom_seg(mask, dicom_source, path, segment_name, color or DEFAULT_COLOR, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial" + ("".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix))
    if name.endswith(".seg.nrrd"):
        from .segnrrd import write_seg_nrrd

        tmp = path.with_name(f".{path.name}.partial.seg.nrrd")
        write_seg_nrrd(mask, reference.ijk_to_ras, tmp, segment_name=segment_name, label_value=label_value,
                       color=color or DEFAULT_COLOR)
    else:
        if not any(name.endswith(ext) for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")):
            raise ValueError(f"unsupported output type for {path.name}: use .nii.gz, .nrrd, .mha, .seg.nrrd or .dcm")
        image = sitk.GetImageFromArray(mask)
        apply_geometry_to_sitk(image, reference.ijk_to_ras)
        sitk.WriteImage(image, str(tmp), useCompression=True)
    tmp.replace(path)
    return path


def read_labelmap(path: str | Path) -> tuple[np.ndarray, Volume]:
    """A label image as an integer array [k, j, i] plus its geometry as a Volume."""
    vol = read_volume(path)
    return np.rint(vol.array).astype(np.int32), vol
