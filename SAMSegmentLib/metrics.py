"""Overlap and surface metrics between two binary masks on the same voxel grid.

Masks are numpy arrays of any dimension (volumes are ``[k, j, i]``); ``spacing`` gives the voxel size in
millimetres along each array axis in the same order (for a ``[k, j, i]`` volume: ``(sk, sj, si)``, i.e.
``Volume.spacing_ijk`` reversed, see :func:`spacing_kji`). Distances are between voxel centres, in mm.

Surfaces: a surface voxel is a foreground voxel with at least one face neighbour (6-neighbourhood in 3D) that is
background; voxels outside the array count as background, so a mask touching the border has a surface there.

Conventions for empty masks (the metric values reported by evaluation):

============  =====  ======  =====
masks         Dice   NSD     HD95
============  =====  ======  =====
both empty    1      1       0
one empty     0      0       inf
============  =====  ======  =====

The Euclidean distance transform is exact: the separable lower-envelope algorithm of Felzenszwalb and
Huttenlocher ("Distance transforms of sampled functions", 2012) with anisotropic spacing, vectorised over all
lines of the array at once (numpy only).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MaskMetrics:
    """Dice, normalised surface Dice at 1 and 2 mm, and HD95 in mm (inf when exactly one mask is empty)."""

    dice: float
    nsd_1mm: float
    nsd_2mm: float
    hd95_mm: float


def spacing_kji(spacing_ijk: Sequence[float]) -> tuple[float, float, float]:
    """Voxel size (mm) in array-axis order for ``[k, j, i]`` arrays, from a spacing given along (I, J, K)."""
    si, sj, sk = (float(s) for s in spacing_ijk)
    return sk, sj, si


def _check(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, tuple]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    sp = tuple(1.0 for _ in a.shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != a.ndim:
        raise ValueError(f"spacing has {len(sp)} values for a {a.ndim}D mask")
    if any(s <= 0 for s in sp):
        raise ValueError(f"spacing must be positive, got {sp}")
    return a, b, sp


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A| + |B|); 1.0 when both masks are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Bool array of surface voxels: foreground with a background face neighbour (outside counts as background)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded.copy()
    for axis in range(mask.ndim):
        interior &= np.roll(padded, 1, axis=axis) & np.roll(padded, -1, axis=axis)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return mask & ~interior[inner]


def _envelope_1d(f: np.ndarray, step: float) -> np.ndarray:
    """Squared-distance lower envelope along the last axis: ``d[l, x] = min_q f[l, q] + ((x - q) * step)^2``.

    ``f`` is float [lines, n] with ``inf`` where there is no feature; lines without any finite value stay ``inf``.
    All lines are processed together; the per-line stacks of the Felzenszwalb-Huttenlocher algorithm are arrays
    indexed by line.
    """
    lines, n = f.shape
    out = np.full_like(f, np.inf)
    if lines == 0 or n == 0:
        return out
    pos = np.arange(n, dtype=np.float64) * step
    v = np.zeros((lines, n), dtype=np.int64)  # apex indices of the envelope's parabolas, per line
    z = np.full((lines, n + 1), np.inf)  # boundaries between consecutive envelope parabolas (mm)
    k = np.full(lines, -1, dtype=np.int64)  # index of the rightmost envelope parabola; -1: envelope empty
    for q in range(n):
        fq = f[:, q]
        finite = np.isfinite(fq)
        first = finite & (k < 0)
        if first.any():
            k[first] = 0
            v[first, 0] = q
            z[first, 0] = -np.inf
            z[first, 1] = np.inf
        idx = np.nonzero(finite & ~first)[0]
        if idx.size == 0:
            continue
        gq = fq + pos[q] ** 2  # only read where finite
        s = np.empty(lines)
        s[idx] = _intersection(f, v, k, idx, gq, pos, q)
        pending = idx[s[idx] <= z[idx, k[idx]]]
        while pending.size:  # pop parabolas hidden by the new one
            k[pending] -= 1
            s[pending] = _intersection(f, v, k, pending, gq, pos, q)
            pending = pending[s[pending] <= z[pending, k[pending]]]
        k[idx] += 1
        v[idx, k[idx]] = q
        z[idx, k[idx]] = s[idx]
        z[idx, k[idx] + 1] = np.inf
    started = np.nonzero(k >= 0)[0]
    if started.size == 0:
        return out
    kk = np.zeros(lines, dtype=np.int64)
    for x in range(n):
        pending = started[z[started, kk[started] + 1] < pos[x]]
        while pending.size:
            kk[pending] += 1
            pending = pending[z[pending, kk[pending] + 1] < pos[x]]
        vx = v[started, kk[started]]
        out[started, x] = (pos[x] - pos[vx]) ** 2 + f[started, vx]
    return out


def _intersection(f: np.ndarray, v: np.ndarray, k: np.ndarray, sel: np.ndarray, gq: np.ndarray, pos: np.ndarray,
                  q: int) -> np.ndarray:
    """Position (mm) where the parabola of ``q`` meets the rightmost envelope parabola, for the lines ``sel``."""
    vk = v[sel, k[sel]]
    return (gq[sel] - (f[sel, vk] + pos[vk] ** 2)) / (2.0 * (pos[q] - pos[vk]))


def squared_distance_transform(features: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Exact squared Euclidean distance (mm²) from every voxel to the nearest ``True`` voxel of ``features``.

    ``spacing`` is the voxel size in mm along each array axis (default 1). Everything is ``inf`` when
    ``features`` has no ``True`` voxel.
    """
    features = np.asarray(features, dtype=bool)
    sp = tuple(1.0 for _ in features.shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != features.ndim:
        raise ValueError(f"spacing has {len(sp)} values for a {features.ndim}D array")
    d = np.where(features, 0.0, np.inf)
    for axis in range(features.ndim):
        moved = np.moveaxis(d, axis, -1)
        shape = moved.shape
        env = _envelope_1d(np.ascontiguousarray(moved).reshape(-1, shape[-1]), sp[axis])
        d = np.moveaxis(env.reshape(shape), -1, axis)
    return np.ascontiguousarray(d)


def distance_transform(features: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Exact Euclidean distance (mm) from every voxel to the nearest ``True`` voxel (``inf`` if there is none)."""
    return np.sqrt(squared_distance_transform(features, spacing))


def _bounding_slices(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Tight slices around the ``True`` voxels, or None when there are none."""
    if not mask.any():
        return None
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.nonzero(mask.any(axis=other))[0]
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and from ``b``'s to ``a``'s.

    Both masks must be non-empty. The distance transforms run on the bounding box of both surfaces only (exact:
    the nearest surface voxel always lies inside it).
    """
    a, b, sp = _check(a, b, spacing)
    sa, sb = surface(a), surface(b)
    box = _bounding_slices(sa | sb)
    if box is None:
        raise ValueError("surface distances need two non-empty masks")
    sa, sb = sa[box], sb[box]
    d_to_b = distance_transform(sb, sp)
    d_to_a = distance_transform(sa, sp)
    return d_to_b[sa], d_to_a[sb]


def normalized_surface_dice(a: np.ndarray, b: np.ndarray, tolerance_mm: float,
                            spacing: Sequence[float] | None = None) -> float:
    """Fraction of both surfaces (surface voxels) lying within ``tolerance_mm`` of the other surface.

    ``(|{p in S_A : d(p, S_B) <= tau}| + |{q in S_B : d(q, S_A) <= tau}|) / (|S_A| + |S_B|)``; 1 when both
    masks are empty, 0 when exactly one is.
    """
    a, b, sp = _check(a, b, spacing)
    empty_a, empty_b = not a.any(), not b.any()
    if empty_a and empty_b:
        return 1.0
    if empty_a or empty_b:
        return 0.0
    dab, dba = surface_distances(a, b, sp)
    within = int((dab <= tolerance_mm).sum()) + int((dba <= tolerance_mm).sum())
    return within / (dab.size + dba.size)


def hd95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th percentile (mm) of the pooled symmetric surface distances (A's surface to B's and B's to A's).

    Pooled as in medpy's ``hd95`` (numpy's linear interpolation between order statistics); 0 when both masks are
    empty, ``inf`` when exactly one is.
    """
    a, b, sp = _check(a, b, spacing)
    empty_a, empty_b = not a.any(), not b.any()
    if empty_a and empty_b:
        return 0.0
    if empty_a or empty_b:
        return math.inf
    dab, dba = surface_distances(a, b, sp)
    return float(np.percentile(np.concatenate([dab, dba]), 95))


def compare_masks(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float] | None = None
                  ) -> MaskMetrics:
    """All metrics at once (surface distances computed once)."""
    a, b, sp = _check(prediction, reference, spacing)
    d = dice(a, b)
    empty_a, empty_b = not a.any(), not b.any()
    if empty_a and empty_b:
        return MaskMetrics(d, 1.0, 1.0, 0.0)
    if empty_a or empty_b:
        return MaskMetrics(d, 0.0, 0.0, math.inf)
    dab, dba = surface_distances(a, b, sp)
    pooled = np.concatenate([dab, dba])
    n = pooled.size
    return MaskMetrics(
        dice=d,
        nsd_1mm=int((pooled <= 1.0).sum()) / n,
        nsd_2mm=int((pooled <= 2.0).sum()) / n,
        hd95_mm=float(np.percentile(pooled, 95)),
    )
