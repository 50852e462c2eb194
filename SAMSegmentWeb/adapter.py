"""Everything that touches trame-slicer, in one place (its API is young: keep the surface small and visible).

- offscreen_slice_views: trame-slicer's own slice views (SliceView: its displayable managers, offscreen) for tests
- window_pixels: a view's rendered RGB pixels, read the way trame-slicer's remote views read them
"""

from __future__ import annotations

import numpy as np

from .runtime import preload_model_runtime

__all__ = ["offscreen_slice_views", "window_pixels"]

VIEW_ORIENTATIONS = {"Red": "Axial", "Green": "Coronal", "Yellow": "Sagittal"}


def offscreen_slice_views(slicer_app, size: tuple[int, int] = (300, 300), names=("Red", "Green", "Yellow")) -> dict:
    """Axial (Red), coronal (Green) and sagittal (Yellow) slice views of ``slicer_app`` rendering offscreen, created
    by trame-slicer's DirectViewFactory (the same SliceView class and displayable managers its web views use)."""
    preload_model_runtime()
    from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

    factory = DirectViewFactory(do_render_offscreen=True)
    slicer_app.view_manager.register_factory(factory)
    definitions = {"Red": ViewLayoutDefinition.axial_view, "Green": ViewLayoutDefinition.coronal_view,
                   "Yellow": ViewLayoutDefinition.sagittal_view}
    views = {}
    for name in names:
        view = slicer_app.view_manager.create_view(definitions[name]())
        view.render_window().SetSize(*size)
        view.interactor().UpdateSize(*size)
        views[name] = view
    return views


def window_pixels(view) -> np.ndarray:
    """RGB uint8 [rows, cols, 3] of the view after a render, top row first (as the browser shows it)."""
    from slicer import vtkMRMLLayerDisplayableManager
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonDataModel import vtkImageData

    window = view.render_window()
    window.Render()
    image = vtkImageData()
    vtkMRMLLayerDisplayableManager.RenderWindowBufferToImage(window, image)
    cols, rows, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, cols, -1)
    return pixels[::-1, :, :3].copy()
