"""A 3D scalar volume in voxel space: numpy array indexed [k, j, i] plus its IJK-to-RAS matrix.

Conventions (see DESIGN.md): the engine works in voxel indices; physical coordinates (RAS, millimetres) appear only
through ``ijk_to_ras``, a 4x4 homogeneous matrix mapping column vectors (i, j, k, 1) to (R, A, S, 1).

Voxel values must be numbers: NaN and infinite voxels (float images written by other tools for "no data") are
treated as the volume's smallest finite value, with one warning; a volume with no finite voxel is refused.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

AXES = ("I", "J", "K")
_volume_ids = itertools.count(1)


class VolumeError(ValueError):
    """The image cannot be used as a 3D volume; the message says why in plain words."""


@dataclass
class Volume:
    """Voxel array ``array[k, j, i]`` with geometry.

    ``uid`` identifies the volume for caches; bump ``version`` (``touch()``) whenever voxel values change.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray = field(default_factory=lambda: np.eye(4))
    uid: int = field(default_factory=lambda: next(_volume_ids))
    version: int = 0

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise VolumeError(
                f"expected a 3D volume, got {self.array.ndim}D data of shape {tuple(self.array.shape)}"
            )
        if min(self.array.shape) < 1:
            raise VolumeError(f"the volume is empty (shape {tuple(self.array.shape)})")
        self.array = replace_non_finite(self.array)
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=float)
        if self.ijk_to_ras.shape != (4, 4):
            raise VolumeError("ijk_to_ras must be a 4x4 matrix")

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along I, J, K."""
        k, j, i = self.array.shape
        return int(i), int(j), int(k)

    @property
    def spacing_ijk(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along I, J, K (column norms of the direction-scaled matrix)."""
        m = self.ijk_to_ras[:3, :3]
        return tuple(float(np.linalg.norm(m[:, c])) for c in range(3))  # type: ignore[return-value]

    def axis_length(self, axis: str) -> int:
        return self.size_ijk[axis_index(axis)]

    def touch(self) -> None:
        """Mark voxel values as changed so cached embeddings are not reused."""
        self.version += 1


def replace_non_finite(array: np.ndarray) -> np.ndarray:
    """``array`` itself when all voxels are finite (always for integer types); else a copy with NaN and +-Inf
    voxels set to the smallest finite value, after one warning. Raises VolumeError when no voxel is finite."""
    if not np.issubdtype(array.dtype, np.floating):
        return array
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(array.sum(dtype=np.float64)):
            return array  # a NaN or an infinity makes the sum non-finite; overflow only sends us to the exact check
    bad = ~np.isfinite(array)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return array
    if n_bad == array.size:
        raise VolumeError("the volume holds no usable voxel values: every voxel is NaN or infinite")
    out = array.copy()
    low = out[~bad].min()
    out[bad] = low
    log.warning("%d voxel(s) are NaN or infinite; they are treated as the volume's minimum (%g)", n_bad, float(low))
    return out


def axis_index(axis: str) -> int:
    """0, 1, 2 for I, J, K; raises a readable error otherwise."""
    try:
        return AXES.index(str(axis).upper())
    except ValueError:
        raise VolumeError(f"axis must be one of I, J, K, not {axis!r}") from None


def in_plane_axes(axis: str) -> tuple[str, str]:
    """The two in-plane axes of a slice with normal ``axis``, in I, J, K order: (x axis, y axis)."""
    n = axis_index(axis)
    rest = [a for c, a in enumerate(AXES) if c != n]
    return rest[0], rest[1]
