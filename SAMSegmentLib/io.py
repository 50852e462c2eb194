"""Reading and writing volumes with SimpleITK (NRRD, NIfTI, MHA, ...) as engine Volumes.

SimpleITK stores LPS physical coordinates; Volume.ijk_to_ras is RAS, so the first two rows flip sign.
"""

from __future__ import annotations

import logging
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


def read_volume(path: str | Path) -> Volume:
    """Read a 3D scalar image; raises VolumeError with a readable reason for missing, 2D, 4D or vector images."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise VolumeError(f"image file not found: {path}")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise VolumeError(f"cannot read {path.name} as an image ({first})") from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(f"{path.name} has {image.GetNumberOfComponentsPerPixel()} values per voxel; expected a scalar (grey) volume")
    if image.GetDimension() != 3:
        raise VolumeError(f"{path.name} is a {image.GetDimension()}D image; expected a 3D volume")
    array = sitk.GetArrayFromImage(image)  # [k, j, i]
    return Volume(array, ijk_to_ras_from_sitk(image))


def write_labelmap(mask_kji: np.ndarray, reference: Volume, path: str | Path, label_value: int = 1,
                   segment_name: str = "Segment_1") -> Path:
    """Write a binary mask on the reference grid: ``.nii.gz``/``.nrrd``/``.mha`` labelmap, or ``.seg.nrrd``.

    Written to a temporary file first and renamed, so a failure leaves no half-written output.
    """
    import SimpleITK as sitk

    path = Path(path)
    mask = (np.asarray(mask_kji) > 0).astype(np.uint8) * np.uint8(label_value)
    if mask.shape != reference.array.shape:
        raise ValueError(f"mask shape {mask.shape} does not match the image {reference.array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.lower()
    tmp = path.with_name(f".{path.name}.partial" + ("".join(path.suffixes[-2:]) if name.endswith(".nii.gz") else path.suffix))
    if name.endswith(".seg.nrrd"):
        from .segnrrd import write_seg_nrrd

        tmp = path.with_name(f".{path.name}.partial.seg.nrrd")
        write_seg_nrrd(mask, reference.ijk_to_ras, tmp, segment_name=segment_name, label_value=label_value)
    else:
        if not any(name.endswith(ext) for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")):
            raise ValueError(f"unsupported output type for {path.name}: use .nii.gz, .nrrd, .mha or .seg.nrrd")
        image = sitk.GetImageFromArray(mask)
        apply_geometry_to_sitk(image, reference.ijk_to_ras)
        sitk.WriteImage(image, str(tmp), useCompression=True)
    tmp.replace(path)
    return path


def read_labelmap(path: str | Path) -> tuple[np.ndarray, Volume]:
    """A label image as an integer array [k, j, i] plus its geometry as a Volume."""
    vol = read_volume(path)
    return np.rint(vol.array).astype(np.int32), vol
