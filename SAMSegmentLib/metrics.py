"""Overlap and surface metrics between two binary masks on the same voxel grid, in the field's conventions.

Masks are numpy arrays (volumes ``[k, j, i]``; 2D masks work too); ``spacing`` gives the voxel size in millimetres
along each array axis in the same order (for a ``[k, j, i]`` volume: ``(sk, sj, si)``, i.e. ``Volume.spacing_ijk``
reversed, see :func:`spacing_kji`).

Conventions (named the same way in ``samsegment evaluate``'s reports):

- ``dice``: 2|A∩B| / (|A| + |B|).
- ``nsd`` (normalised surface Dice at a tolerance, "surface Dice"): the area-weighted convention of DeepMind's
  ``surface-distance`` package, which MedSAM, LiteMedSAM and the CVPR 2024 / 2025 challenges report. Surfaces are
  made of surface elements (surfels) on the grid of voxel corners: every 2 x 2 x 2 neighbourhood that is neither
  empty nor full carries the marching-cubes surface area of its configuration (``surface_distance``'s lookup
  table, scaled by the spacing; contour lengths in 2D). NSD = (area of A's surfels within the tolerance of B's
  surfels + the same from B to A) / (total area of both).
- ``hd95``: the larger of the two directed 95th percentiles of the surfel distances, each area-weighted
  (``surface_distance.compute_robust_hausdorff(..., 95)``; MONAI's ``compute_hausdorff_distance`` also takes the
  larger directed percentile, over boundary voxels).
- ``nsd_voxels`` (an extra, MONAI's default): the same surface Dice counting boundary voxels (foreground voxels
  with a background face neighbour, outside the array counts as background) instead of surfel areas. On
  thick-slice data it differs from ``nsd`` by 0.15-0.40 for one-voxel errors, so never compare it with papers.

Distances are Euclidean between grid points, in mm, from SimpleITK's ``SignedMaurerDistanceMap``.

Why not call ``surface_distance.compute_surface_distances``: it runs scipy's distance transform over the whole
volume (this module crops to the masks' bounding box and uses SimpleITK's, as the accuracy issue asked) and imports
scipy namespaces that SciPy deprecates (a warning per call). Only its surfel-area lookup table is used; the results
are checked against the package itself in Testing/engine/test_metrics.py.

Empty masks:

============  =====  ======  =====
masks         Dice   NSD     HD95
============  =====  ======  =====
both empty    1      1       0
one empty     0      0       inf
============  =====  ======  =====
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRIC_DEFINITIONS = {
    "dice": "Dice coefficient 2|A∩B|/(|A|+|B|)",
    "nsd_1mm": "normalised surface Dice at 1 mm, area-weighted surfels (DeepMind surface-distance convention)",
    "nsd_2mm": "normalised surface Dice at 2 mm, area-weighted surfels (DeepMind surface-distance convention; "
               "the CVPR 2024/2025 challenges' NSD)",
    "hd95_mm": "95th-percentile Hausdorff distance in mm: the larger of the two directed area-weighted 95th "
               "percentiles (surface-distance compute_robust_hausdorff)",
    "nsd_2mm_voxels": "normalised surface Dice at 2 mm counting boundary voxels (MONAI's default; not comparable "
                      "with published tables)",
}


@dataclass(frozen=True)
class MaskMetrics:
    """Dice; area-weighted NSD at 1 and 2 mm; HD95 in mm (inf when exactly one mask is empty); boundary-voxel NSD
    at 2 mm."""

    dice: float
    nsd_1mm: float
    nsd_2mm: float
    hd95_mm: float
    nsd_2mm_voxels: float


@dataclass(frozen=True)
class SurfaceDistances:
    """Surfel distances (mm) from A's surface to B's and back, with each surfel's area (mm², or mm in 2D)."""

    a_to_b: np.ndarray
    b_to_a: np.ndarray
    areas_a: np.ndarray
    areas_b: np.ndarray


def spacing_kji(spacing_ijk: Sequence[float]) -> tuple[float, float, float]:
    """Voxel size (mm) in array-axis order for ``[k, j, i]`` arrays, from a spacing given along (I, J, K)."""
    si, sj, sk = (float(s) for s in spacing_ijk)
    return sk, sj, si


def _spacing(ndim: int, spacing: Sequence[float] | None) -> tuple[float, ...]:
    sp = tuple(1.0 for _ in range(ndim)) if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != ndim:
        raise ValueError(f"spacing has {len(sp)} values for a {ndim}D mask")
    if any(s <= 0 for s in sp):
        raise ValueError(f"spacing must be positive, got {sp}")
    return sp


def _check(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, tuple]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return a, b, _spacing(a.ndim, spacing)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|); 1.0 when both masks are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def squared_distance_to(features: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Squared Euclidean distance (mm²) from every element to the nearest ``True`` element of ``features``.

    0 on the features; ``inf`` everywhere when there is none. 2D or 3D arrays; ``spacing`` per array axis (default
    1, i.e. voxel units: with integer spacing the values are exact integers). SimpleITK's Maurer transform.
    """
    import SimpleITK as sitk

    features = np.asarray(features, dtype=bool)
    sp = _spacing(features.ndim, spacing)
    if not features.any():
        return np.full(features.shape, np.inf)
    image = sitk.GetImageFromArray(features.astype(np.uint8))
    image.SetSpacing(tuple(reversed(sp)))  # SimpleITK orders axes x, y(, z): the array's axes reversed
    dist = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=True, useImageSpacing=True,
                                        backgroundValue=0)
    out = sitk.GetArrayFromImage(dist).astype(np.float64)
    out[features] = 0.0  # inside the features the signed map is <= 0
    return np.maximum(out, 0.0)


def connected_components(mask: np.ndarray) -> np.ndarray:
    """Labels (int32, 0 = background) of the fully connected components of a bool mask: 8-connected in 2D,
    26-connected in 3D (SimpleITK's ConnectedComponent)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(mask, dtype=np.uint8))
    return sitk.GetArrayFromImage(sitk.ConnectedComponent(image, True)).astype(np.int32)


def distance_to(features: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Euclidean distance (mm) from every element to the nearest ``True`` element (``inf`` if there is none)."""
    return np.sqrt(squared_distance_to(features, spacing))


def surface(mask: np.ndarray) -> np.ndarray:
    """Bool array of boundary voxels: foreground with a background face neighbour (outside counts as background)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis=axis) & np.roll(padded, -1, axis=axis)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return mask & ~interior[inner]


def _bounding_slices(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight slices around the ``True`` elements, or None when there are none."""
    if not mask.any():
        return None
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.nonzero(mask.any(axis=other))[0]
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def _surfels(mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(surfel positions bool, surfel areas float) on the corner grid of a mask padded by one voxel all round.

    The neighbour code of each corner is the 2 x 2(x 2) pattern of the voxels around it, weighted by
    ``surface_distance``'s encoding kernel; its table gives the area (3D, mm²) or contour length (2D, mm).
    """
    from scipy import ndimage
    from surface_distance import lookup_tables

    if mask.ndim == 3:
        table = lookup_tables.create_table_neighbour_code_to_surface_area(spacing)
        kernel, full = lookup_tables.ENCODE_NEIGHBOURHOOD_3D_KERNEL, 0b11111111
    elif mask.ndim == 2:
        table = lookup_tables.create_table_neighbour_code_to_contour_length(spacing)
        kernel, full = lookup_tables.ENCODE_NEIGHBOURHOOD_2D_KERNEL, 0b1111
    else:
        raise ValueError(f"surface metrics need 2D or 3D masks, not {mask.ndim}D")
    padded = np.pad(mask.astype(np.uint8), 1)
    codes = ndimage.correlate(padded, kernel.astype(np.uint8), mode="constant", cval=0)
    borders = (codes != 0) & (codes != full)
    return borders, np.asarray(table)[codes]


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> SurfaceDistances:
    """Area-weighted surfel distances between two non-empty masks (see the module docstring).

    Computed on the bounding box of both masks plus one voxel (exact: surfels lie within it).
    """
    a, b, sp = _check(a, b, spacing)
    box = _bounding_slices(a | b)
    if box is None or not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    borders_a, areas_a = _surfels(a[box], sp)
    borders_b, areas_b = _surfels(b[box], sp)
    to_a, to_b = distance_to(borders_a, sp), distance_to(borders_b, sp)
    return SurfaceDistances(to_b[borders_a], to_a[borders_b], areas_a[borders_a], areas_b[borders_b])


def _within(distances: np.ndarray, tolerance_mm: float) -> np.ndarray:
    """Distances at most ``tolerance_mm``, allowing for the float32 rounding of SimpleITK's distance map."""
    return distances <= tolerance_mm * (1.0 + 1e-6)


def _directed_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """Smallest distance at which the cumulative area fraction reaches ``percent`` (surface-distance's rule)."""
    order = np.argsort(distances, kind="stable")
    d, w = distances[order], areas[order]
    cum = np.cumsum(w) / np.sum(w)
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(d[min(idx, d.size - 1)])


def _surface_dice(sd: SurfaceDistances, tolerance_mm: float) -> float:
    """Area-weighted share of both surfaces within ``tolerance_mm`` of the other (1 without any surface)."""
    total = float(sd.areas_a.sum() + sd.areas_b.sum())
    within = sd.areas_a[_within(sd.a_to_b, tolerance_mm)].sum() + sd.areas_b[_within(sd.b_to_a, tolerance_mm)].sum()
    return float(within) / total if total > 0 else 1.0


def _from_distances(sd: SurfaceDistances) -> tuple[float, float, float]:
    """(NSD 1 mm, NSD 2 mm, HD95) from surfel distances."""
    hd = max(_directed_percentile(sd.a_to_b, sd.areas_a, 95.0), _directed_percentile(sd.b_to_a, sd.areas_b, 95.0))
    return _surface_dice(sd, 1.0), _surface_dice(sd, 2.0), hd


def _empty_surface_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Surface Dice when a mask is empty: 1 when both are (nothing to disagree on), 0 when exactly one is."""
    return 1.0 if not a.any() and not b.any() else 0.0


def normalized_surface_dice(a: np.ndarray, b: np.ndarray, tolerance_mm: float,
                            spacing: Sequence[float] | None = None) -> float:
    """Area-weighted surface Dice at ``tolerance_mm``; 1 when both masks are empty, 0 when exactly one is."""
    a, b, sp = _check(a, b, spacing)
    if not (a.any() and b.any()):
        return _empty_surface_dice(a, b)
    return _surface_dice(surface_distances(a, b, sp), tolerance_mm)


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """The larger directed area-weighted 95th-percentile surface distance (mm); 0 both empty, inf one empty."""
    a, b, sp = _check(a, b, spacing)
    if not a.any() and not b.any():
        return 0.0
    if not a.any() or not b.any():
        return math.inf
    return _from_distances(surface_distances(a, b, sp))[2]


def boundary_voxel_nsd(a: np.ndarray, b: np.ndarray, tolerance_mm: float,
                       spacing: Sequence[float] | None = None) -> float:
    """Surface Dice counting boundary voxels (MONAI's default convention); an extra, see the module docstring."""
    a, b, sp = _check(a, b, spacing)
    if not (a.any() and b.any()):
        return _empty_surface_dice(a, b)
    box = _bounding_slices(a | b)
    sa, sb = surface(a)[box], surface(b)[box]
    dab, dba = distance_to(sb, sp)[sa], distance_to(sa, sp)[sb]
    return (int(_within(dab, tolerance_mm).sum()) + int(_within(dba, tolerance_mm).sum())) / (dab.size + dba.size)


def compare_masks(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None
                  ) -> MaskMetrics:
    """All metrics at once (surfel distances computed once)."""
    a, b, sp = _check(prediction, reference, spacing)
    d = dice(a, b)
    if not a.any() and not b.any():
        return MaskMetrics(d, 1.0, 1.0, 0.0, 1.0)
    if not a.any() or not b.any():
        return MaskMetrics(d, 0.0, 0.0, math.inf, 0.0)
    nsd1, nsd2, hd = _from_distances(surface_distances(a, b, sp))
    return MaskMetrics(dice=d, nsd_1mm=nsd1, nsd_2mm=nsd2, hd95_mm=hd, nsd_2mm_voxels=boundary_voxel_nsd(a, b, 2.0, sp))
