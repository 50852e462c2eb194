"""Prompt glyphs on a slice view: one vtkActor2D of coloured line segments in view pixels. VTK only, no trame.

The segments come from SAMSegmentEffectLib.interaction.glyph_segments (include points: green circled '+', exclude
points: red circled 'x', the slice's box and the rubber band: yellow rectangle), the same drawing as the desktop
effect's PromptPipeline.
"""

from __future__ import annotations

import numpy as np
from vtkmodules.vtkCommonCore import vtkPoints, vtkUnsignedCharArray
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkRenderingCore import vtkActor2D, vtkPolyDataMapper2D

__all__ = ["PromptGlyphs"]


class PromptGlyphs:
    """Line segments [N, 2, 2] (view pixels, origin bottom left) with colours [N, 3] (0..1) as one 2D actor."""

    def __init__(self, line_width: float = 2.0) -> None:
        self.polydata = vtkPolyData()
        mapper = vtkPolyDataMapper2D()
        mapper.SetInputData(self.polydata)
        mapper.SetScalarModeToUseCellData()
        self.actor = vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetLineWidth(line_width)
        self.count = 0

    def update(self, segments: np.ndarray, colors: np.ndarray) -> None:
        segments = np.asarray(segments, dtype=float).reshape(-1, 2, 2)
        colors = np.asarray(colors, dtype=float).reshape(-1, 3)
        if len(segments) != len(colors):
            raise ValueError(f"{len(segments)} segments but {len(colors)} colours")
        points = vtkPoints()
        lines = vtkCellArray()
        scalars = vtkUnsignedCharArray()
        scalars.SetNumberOfComponents(3)
        for (a, b), color in zip(segments, colors, strict=True):
            ia = points.InsertNextPoint(a[0], a[1], 0.0)
            ib = points.InsertNextPoint(b[0], b[1], 0.0)
            lines.InsertNextCell(2, (ia, ib))
            scalars.InsertNextTuple3(*(int(round(255 * float(c))) for c in color))
        self.polydata.SetPoints(points)
        self.polydata.SetLines(lines)
        self.polydata.GetCellData().SetScalars(scalars)
        self.polydata.Modified()
        self.count = len(segments)
