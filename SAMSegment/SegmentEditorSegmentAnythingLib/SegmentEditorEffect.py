"""The "Segment Anything" Segment Editor effect: a thin shell around tested, Qt-free modules.

- SAMSegmentEffectLib.interaction: which voxel slice a view shows (oblique views refused), clicks/drags -> prompts per slice
- SAMSegmentEffectLib.controller: requests to the engine process (no model code and no Python thread in Slicer),
  preview / prefetch / propagate, their events
- SAMSegmentEffectLib.bridge: masks <-> segments through the editor's modify-by-labelmap path (masking, overwrite, undo)

Keys (chosen to avoid the Segment Editor's own shortcuts: Escape, Space, z, y, i, q, w, digits, punctuation, and the
slice views' b, f, g, r, t, v and arrows):
  left click = include point, Shift+click = exclude point, left drag = box,
  Enter = apply, p = propagate, BackSpace or x = remove the slice's last prompt, Delete = clear the slice's prompts.
Escape keeps its Segment Editor meaning (leave the effect); an unapplied preview is then discarded.
Keys reach the effect only while the slice view has keyboard focus (it gets it when clicked); keypad Enter arrives
as "Return" (never "KP_Enter"); keys bound to Segment Editor shortcuts (Ctrl+Z, Ctrl+Y, ...) never arrive.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import qt
import slicer
import vtk
from SAMSegmentEffectLib.bridge import (
    BridgeError,
    EffectEditor,
    PreviewLayer,
    VolumeGeometry,
    read_segment_slice,
    write_slices,
)
from SAMSegmentEffectLib.controller import SegmentAnythingController, model_status, models, user_message
from SAMSegmentEffectLib.interaction import (
    GestureTracker,
    PromptStore,
    ViewGeometryError,
    glyph_segments,
    resolve_slice_view,
)
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

POLL_MS = 40  # each tick moves the engine's sockets along for at most controller.POLL_BUDGET_S (10 ms)
PREFETCH_OFFSETS = (0, 1, -1, 2, -2)
DIRECTIONS = [("both", "Both directions"), ("forward", "Increasing slice index"),
              ("backward", "Decreasing slice index")]
WRITE_MODES = [("replace", "Replace the slice"), ("add", "Add to the segment")]
WINDOW_MODES = [("fit", "Fit the object"), ("display", "As displayed")]
HELP = """<html>Segment with Segment Anything models (LiteMedSAM, SAM, MedSAM, SAM 2.1, MedSAM2).<br>
<p><ul style="margin: 0">
<li><b>Left-click</b>: include point. <b>Shift+left-click</b>: exclude point. <b>Left-drag</b>: box.</li>
<li>The predicted mask appears on the slice at once (yellow); add prompts to correct it.</li>
<li><b>Enter</b>: apply the preview to the selected segment (one undo step).</li>
<li><b>p</b>: propagate from the prompted slices through the volume; results appear as they arrive and are written
as one undo step when done. Correct any slice with new prompts and propagate again.</li>
<li><b>BackSpace</b> or <b>x</b>: remove the slice's last prompt. <b>Delete</b>: clear the slice's prompts.</li>
<li><b>Refine existing segment</b>: where the selected segment already covers a slice, it seeds the prompt, and
propagation can start from it.</li>
<li><b>Corrections</b>: on a slice the propagation (or the segment) already covers, Shift+click removes a wrong part
and a click adds a missing part; press p again and the propagation continues from the corrected slice.</li>
<li><b>3D box</b>: set the propagation range (from/to), or draw a box on an orthogonal view too: the object's first
and last slice bound the propagation.</li>
<li><b>Window</b>: <i>Fit the object</i> (default) shows the model a window fitted to the grey levels around your first
box; <i>As displayed</i> uses the window/level you see.</li>
</ul><p>Works on slice views aligned with the source volume's voxel grid (rotated views are refused).
Editable area, intensity masking and overwrite settings apply as in other effects.</html>"""


def _matrix(vtk_matrix) -> np.ndarray:
    return slicer.util.arrayFromVTKMatrix(vtk_matrix)


class PromptPipeline:
    """2D actor drawing one slice view's prompts as coloured line segments."""

    def __init__(self):
        self.polyData = vtk.vtkPolyData()
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(self.polyData)
        mapper.SetScalarModeToUseCellData()
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetLineWidth(2)

    def update(self, segments: np.ndarray, colors: np.ndarray):
        points = vtk.vtkPoints()
        lines = vtk.vtkCellArray()
        scalars = vtk.vtkUnsignedCharArray()
        scalars.SetNumberOfComponents(3)
        for (a, b), color in zip(segments, colors, strict=True):
            ia = points.InsertNextPoint(a[0], a[1], 0.0)
            ib = points.InsertNextPoint(b[0], b[1], 0.0)
            line = vtk.vtkLine()
            line.GetPointIds().SetId(0, ia)
            line.GetPointIds().SetId(1, ib)
            lines.InsertNextCell(line)
            scalars.InsertNextTuple3(*(int(255 * c) for c in color))
        self.polyData.SetPoints(points)
        self.polyData.SetLines(lines)
        self.polyData.GetCellData().SetScalars(scalars)
        self.polyData.Modified()


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment Anything: prompts on slice views -> masks from SAM-family models -> the selected segment."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Segment Anything"  # not translated: modules find effects by name
        scriptedEffect.title = "Segment Anything"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.prompts = PromptStore()
        self.gestures = {}  # slice widget -> GestureTracker
        self.pipelines = {}  # slice widget -> PromptPipeline
        self.lastSlice = {}  # slice widget -> (axis, index) last seen, for prefetching
        self.controller = None
        self.previewLayer = None
        self.geometry = None  # VolumeGeometry of the source volume in the segmentation's frame
        self.volumeKey = None
        self.modelReady = False
        self.activeAxis = None
        self.lastSegmentId = None
        self.polling = False  # onPoll re-entry guard (a dialog opened from a tick runs a nested event loop)
        self.pendingDialogs = []
        self.propagationSegmentId = None  # the segment a running propagation writes into
        self.showingDialog = False
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.connect("timeout()", self.onPoll)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return HELP

    # ------------------------------------------------------------------------------------------- options panel

    def setupOptionsFrame(self):
        from SAMSegment import DEVICES, SAMSegmentSettings

        self.settings = SAMSegmentSettings
        self.modelCombo = qt.QComboBox()
        self.modelCombo.toolTip = "Model (its status in brackets). Changing it keeps your prompts."
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelCombo)
        self.deviceCombo = qt.QComboBox()
        for key, text in DEVICES:
            self.deviceCombo.addItem(text, key)
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceCombo)
        self.windowCombo = qt.QComboBox()
        for key, text in WINDOW_MODES:
            self.windowCombo.addItem(text, key)
        self.windowCombo.toolTip = ("What the model sees: a window fitted to the grey levels in and around the first "
                                    "box of each object (default), or the window/level displayed in the views.")
        self.scriptedEffect.addLabeledOptionsWidget("Window:", self.windowCombo)

        self.refineCheck = qt.QCheckBox("Refine existing segment")
        self.refineCheck.toolTip = ("Where the selected segment already covers a slice, use it as a mask prompt; "
                                    "propagation can then start from the slice you are viewing.")
        self.writeModeCombo = qt.QComboBox()
        for key, text in WRITE_MODES:
            self.writeModeCombo.addItem(text, key)
        self.writeModeCombo.toolTip = "Replace: the slice becomes the prediction. Add: the prediction is added."
        row = qt.QHBoxLayout()
        row.addWidget(self.refineCheck)
        row.addWidget(self.writeModeCombo)
        self.scriptedEffect.addOptionsWidget(row)

        self.directionCombo = qt.QComboBox()
        for key, text in DIRECTIONS:
            self.directionCombo.addItem(text, key)
        self.wholeRangeCheck = qt.QCheckBox("whole volume")
        self.wholeRangeCheck.checked = True
        self.rangeFrom = qt.QSpinBox()
        self.rangeTo = qt.QSpinBox()
        for spin in (self.rangeFrom, self.rangeTo):
            spin.setRange(0, 9999)
            spin.enabled = False
        row = qt.QHBoxLayout()
        row.addWidget(self.directionCombo)
        row.addWidget(self.wholeRangeCheck)
        row.addWidget(qt.QLabel("from"))
        row.addWidget(self.rangeFrom)
        row.addWidget(qt.QLabel("to"))
        row.addWidget(self.rangeTo)
        self.scriptedEffect.addLabeledOptionsWidget("Propagate:", row)

        self.applyButton = qt.QPushButton("Apply (Enter)")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.toolTip = "Write the previewed slices into the selected segment (one undo step)."
        self.propagateButton = qt.QPushButton("Propagate (p)")
        self.propagateButton.objectName = self.__class__.__name__ + "Propagate"
        self.cancelButton = qt.QPushButton("Cancel")
        self.cancelButton.enabled = False
        self.clearButton = qt.QPushButton("Clear all")
        self.clearButton.toolTip = "Forget all prompts and discard the preview."
        row = qt.QHBoxLayout()
        for button in (self.applyButton, self.propagateButton, self.cancelButton, self.clearButton):
            row.addWidget(button)
        self.scriptedEffect.addOptionsWidget(row)

        self.progressBar = qt.QProgressBar()
        self.progressBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        keys = qt.QLabel("<small>Click: include &nbsp; Shift+click: exclude &nbsp; drag: box &nbsp; Enter: apply "
                         "&nbsp; p: propagate &nbsp; BackSpace/x: undo prompt &nbsp; Delete: clear slice "
                         "&nbsp; Esc: leave the effect</small>")
        keys.wordWrap = True
        self.scriptedEffect.addOptionsWidget(keys)

        self.modelCombo.connect("activated(int)", self.onModelSelected)
        self.deviceCombo.connect("activated(int)", self.onDeviceSelected)
        for widget, signal in ((self.refineCheck, "toggled(bool)"), (self.wholeRangeCheck, "toggled(bool)"),
                               (self.windowCombo, "currentIndexChanged(int)"),
                               (self.directionCombo, "currentIndexChanged(int)"),
                               (self.writeModeCombo, "currentIndexChanged(int)"),
                               (self.rangeFrom, "valueChanged(int)"), (self.rangeTo, "valueChanged(int)")):
            widget.connect(signal, self.updateMRMLFromGUI)
        self.applyButton.connect("clicked()", self.onApply)
        self.propagateButton.connect("clicked()", self.onPropagate)
        self.cancelButton.connect("clicked()", self.onCancel)
        self.clearButton.connect("clicked()", self.onClearAll)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("WindowMode", "fit")
        self.scriptedEffect.setParameterDefault("Refine", 0)
        self.scriptedEffect.setParameterDefault("WriteMode", "replace")
        self.scriptedEffect.setParameterDefault("Direction", "both")
        self.scriptedEffect.setParameterDefault("WholeRange", 1)
        self.scriptedEffect.setParameterDefault("RangeFrom", 0)
        self.scriptedEffect.setParameterDefault("RangeTo", 9999)

    def updateGUIFromMRML(self):
        widgets = (self.refineCheck, self.writeModeCombo, self.directionCombo, self.wholeRangeCheck,
                   self.rangeFrom, self.rangeTo, self.modelCombo, self.deviceCombo, self.windowCombo)
        blocked = [w.blockSignals(True) for w in widgets]
        self.refineCheck.checked = self.scriptedEffect.integerParameter("Refine") != 0
        self.windowCombo.setCurrentIndex(max(0, self.windowCombo.findData(self.scriptedEffect.parameter("WindowMode"))))
        self.writeModeCombo.setCurrentIndex(max(0, self.writeModeCombo.findData(self.scriptedEffect.parameter("WriteMode"))))
        self.directionCombo.setCurrentIndex(max(0, self.directionCombo.findData(self.scriptedEffect.parameter("Direction"))))
        whole = self.scriptedEffect.integerParameter("WholeRange") != 0
        self.wholeRangeCheck.checked = whole
        self.rangeFrom.value = self.scriptedEffect.integerParameter("RangeFrom")
        self.rangeTo.value = self.scriptedEffect.integerParameter("RangeTo")
        self.rangeFrom.enabled = self.rangeTo.enabled = not whole
        if self.modelCombo.count == 0:
            self.refreshModelCombo()
        self.modelCombo.setCurrentIndex(max(0, self.modelCombo.findData(self.settings.get("Model"))))
        self.deviceCombo.setCurrentIndex(max(0, self.deviceCombo.findData(self.settings.get("Device"))))
        for w, b in zip(widgets, blocked, strict=True):
            w.blockSignals(b)
        self.updateButtons()
        segmentId = self.scriptedEffect.parameterSetNode().GetSelectedSegmentID()
        if segmentId != self.lastSegmentId:  # another segment: the next prompts are another object
            self.lastSegmentId = segmentId
            if self.controller is not None:
                self.controller.new_object()

    def updateMRMLFromGUI(self, *unused):
        self.scriptedEffect.setParameter("WindowMode", self.windowCombo.itemData(self.windowCombo.currentIndex))
        self.scriptedEffect.setParameter("Refine", 1 if self.refineCheck.checked else 0)
        self.scriptedEffect.setParameter("WriteMode", self.writeModeCombo.itemData(self.writeModeCombo.currentIndex))
        self.scriptedEffect.setParameter("Direction", self.directionCombo.itemData(self.directionCombo.currentIndex))
        self.scriptedEffect.setParameter("WholeRange", 1 if self.wholeRangeCheck.checked else 0)
        self.scriptedEffect.setParameter("RangeFrom", self.rangeFrom.value)
        self.scriptedEffect.setParameter("RangeTo", self.rangeTo.value)
        self.rangeFrom.enabled = self.rangeTo.enabled = not self.wholeRangeCheck.checked

    def modelStatus(self, name):
        return model_status(name, backend=self.settings.get("Backend"), device=self.settings.get("Device"))

    def refreshModelCombo(self):
        current = self.settings.get("Model")
        self.modelCombo.clear()
        try:
            names = list(models())
        except Exception as exc:  # the registry is plain Python; a failure here is a broken install
            self.setStatus(f"Cannot list the models: {exc}", error=True)
            return
        for name in names:
            self.modelCombo.addItem(self.modelStatus(name).label, name)
        self.modelCombo.setCurrentIndex(max(0, self.modelCombo.findData(current)))

    def updateButtons(self):
        propagating = self.controller is not None and self.controller.propagating
        hasPreview = self.previewLayer is not None and len(self.previewLayer) > 0
        self.applyButton.enabled = hasPreview and not propagating
        self.propagateButton.enabled = not propagating
        self.cancelButton.enabled = propagating
        self.progressBar.visible = propagating

    def setStatus(self, text, error=False):
        self.statusLabel.text = text
        self.statusLabel.setStyleSheet("color: #d04030" if error else "")
        if error:
            logging.warning("Segment Anything: %s", text)

    # ------------------------------------------------------------------------------------------- life cycle

    def activate(self):
        if self.controller is None:
            from SAMSegment import engineProvider

            self.controller = SegmentAnythingController(engine=engineProvider())
        self.modelReady = False
        self.refreshModelCombo()
        self.timer.start()
        self.setStatus("Click on a slice to add an include point, drag to draw a box.")
        self.redrawAll()

    def deactivate(self):
        self.timer.stop()
        self.pendingDialogs = []  # messages of this activation are not shown on the next one
        if self.controller is not None:
            self.controller.cancel_all(forget=True)
        for sliceWidget, pipeline in self.pipelines.items():
            self.scriptedEffect.removeActor2D(sliceWidget, pipeline.actor)
        self.pipelines = {}
        self.gestures = {}
        self.removePreview()

    def cleanup(self):
        self.deactivate()
        self.timer.disconnect("timeout()", self.onPoll)
        if self.controller is not None:
            self.controller.shutdown()  # closes this effect's session; the module stops the shared engine at exit
            self.controller = None

    def sourceVolumeNodeChanged(self):
        self.prompts.clear()  # prompts are in the old volume's voxels
        self.resetVolume()

    def referenceGeometryChanged(self):
        self.resetVolume()

    def resetVolume(self):
        self.geometry = None
        self.volumeKey = None
        self.removePreview()
        self.redrawAll()

    def removePreview(self):
        if self.previewLayer is not None:
            self.previewLayer.remove()
            self.previewLayer = None
        if hasattr(self, "applyButton"):
            self.updateButtons()

    # ------------------------------------------------------------------------------------------- model and volume

    def onModelSelected(self, index):
        self.settings.set("Model", self.modelCombo.itemData(index))
        self.modelReady = False

    def onDeviceSelected(self, index):
        self.settings.set("Device", self.deviceCombo.itemData(index))
        self.modelReady = False

    def ensureModel(self) -> bool:
        """Install / download what the chosen model needs (with the user's confirmation), then configure."""
        if self.modelReady:
            return True
        from SAMSegment import SAMSegmentLogic

        logic = SAMSegmentLogic()
        if logic.preparing:  # a click while the first-use install runs: no nested install
            self.setStatus("Installing what the model needs; wait for it to finish.")
            return False
        name = self.settings.get("Model")
        if self.modelStatus(name).state != "ready":
            self.setStatus(f"Preparing {name}...")
            if not logic.prepareModel(name, slicer.util.mainWindow()):
                self.setStatus(f"{name} is not ready: choose another model or install what it needs.", error=True)
                self.refreshModelCombo()
                return False
            self.refreshModelCombo()
        if not self.ensureVolume():
            return False
        self.syncSettings()
        try:
            self.controller.load()
        except Exception as exc:  # e.g. no server URL set: a message, not a traceback
            self.setStatus(user_message(exc), error=True)
            return False
        self.setStatus(f"Starting the engine and loading {name}...")
        self.modelReady = True
        return True

    def displayedWindow(self):
        """(low, high) of the source volume's displayed window/level, or None when it has no display node."""
        volumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        display = volumeNode.GetDisplayNode() if volumeNode is not None else None
        if display is None or not hasattr(display, "GetWindow"):
            return None
        window, level = float(display.GetWindow()), float(display.GetLevel())
        return (level - window / 2.0, level + window / 2.0) if window > 0 else None

    def syncSettings(self):
        """Hand the current model, device and window settings to the controller (a change opens a new engine
        session on the next request; an unchanged one costs nothing)."""
        mode = self.scriptedEffect.parameter("WindowMode") or "fit"
        window = self.displayedWindow() if mode == "display" else None
        self.controller.configure(self.settings.get("Model"), self.settings.get("Device"),
                                  self.settings.get("CacheMB"), window=window, backend=self.settings.get("Backend"),
                                  precision=self.settings.get("Precision"), window_mode="fit")

    def ensureVolume(self, quiet=False) -> bool:
        """Source volume -> controller (array view, no copy) and bridge geometry; False (with a message unless
        ``quiet``) if absent.

        The engine's volume is rebuilt (embeddings recomputed) only when the voxels or the voxel geometry change; the
        bridge geometry also follows parent transforms.
        """
        parameterNode = self.scriptedEffect.parameterSetNode()
        volumeNode = parameterNode.GetSourceVolumeNode() if parameterNode else None
        segmentationNode = parameterNode.GetSegmentationNode() if parameterNode else None
        if volumeNode is None or volumeNode.GetImageData() is None or segmentationNode is None:
            if not quiet:
                self.setStatus("Select a segmentation and a source volume.", error=True)
            return False
        try:
            geometry = VolumeGeometry.from_volume_node(volumeNode, segmentationNode)
        except BridgeError as exc:
            if not quiet:
                self.setStatus(str(exc), error=True)
            return False
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        ijkToRas = _matrix(ijkToRas)
        key = (volumeNode.GetID(), volumeNode.GetImageData().GetMTime(), tuple(np.round(ijkToRas, 6).ravel()))
        if key != self.volumeKey:
            array = slicer.util.arrayFromVolume(volumeNode)
            if array.ndim == 4:  # multi-component: first component, as the Segment Editor does
                array = array[..., 0]
            if self.volumeKey is not None and key[0] != self.volumeKey[0]:
                self.prompts.clear()
            self.controller.set_volume(array, ijkToRas, key)
            self.volumeKey = key
            self.geometry = None
        if (self.geometry is None or self.geometry.size_ijk != geometry.size_ijk
                or not np.allclose(self.geometry.ijk_to_world, geometry.ijk_to_world, atol=1e-6)):
            self.geometry = geometry
            self.removePreview()
        return True

    def ensurePreview(self):
        if self.previewLayer is None or self.previewLayer.node is None or self.previewLayer.node.GetScene() is None:
            segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
            transform = segmentationNode.GetTransformNodeID() if segmentationNode else None
            self.previewLayer = PreviewLayer(slicer.mrmlScene, self.geometry, parent_transform_id=transform)
        return self.previewLayer

    # ------------------------------------------------------------------------------------------- views

    def sliceView(self, sliceWidget, quiet=False):
        """The SliceView (axis, index, pixel -> voxel) of a slice widget, or None with a message (none if ``quiet``)."""
        if self.geometry is None and not self.ensureVolume(quiet=quiet):
            return None
        sliceNode = sliceWidget.sliceLogic().GetSliceNode()
        if sliceNode.GetLayoutGridRows() * sliceNode.GetLayoutGridColumns() > 1:
            if not quiet:
                self.setStatus("Light box views are not supported: use a single-slice view.", error=True)
            return None
        volumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        toWorld = vtk.vtkMatrix4x4()
        if not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(volumeNode.GetParentTransformNode(), None,
                                                                           toWorld):
            if not quiet:
                self.setStatus("The source volume is under a non-linear transform: harden it (Data module: "
                               "right-click the volume > Harden transform) to prompt on it.", error=True)
            return None
        ijkToWorld = _matrix(toWorld) @ _matrix(ijkToRas)
        name = f"The {sliceNode.GetLayoutName() or sliceNode.GetName()} view"
        try:
            return resolve_slice_view(_matrix(sliceNode.GetXYToRAS()), ijkToWorld, self.geometry.size_ijk, name)
        except ViewGeometryError as exc:
            if not quiet:
                self.setStatus(str(exc), error=True)
            return None

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget" or self.controller is None:
            return False
        tracker = self.gestures.setdefault(viewWidget, GestureTracker())
        xy = callerInteractor.GetEventPosition()

        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
                return False
            return tracker.press(xy, shift=bool(callerInteractor.GetShiftKey()))
        if eventId == vtk.vtkCommand.MouseMoveEvent and tracker.active:
            band = tracker.move(xy)
            if band is not None:
                self.redraw(viewWidget, rubberBand=band)
                return True
            return False
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent and tracker.active:
            gesture = tracker.release(xy)
            if gesture is None:
                self.redraw(viewWidget)
                return False
            self.onGesture(viewWidget, gesture)
            return not gesture.shift
        if eventId == vtk.vtkCommand.LeftButtonDoubleClickEvent:
            return True  # not "maximize view" while prompting
        if eventId == vtk.vtkCommand.KeyPressEvent:
            return self.onKey(viewWidget, callerInteractor.GetKeySym())
        return False

    def onGesture(self, viewWidget, gesture):
        if not self.ensureVolume():
            return
        view = self.sliceView(viewWidget)
        if view is None:
            return
        start = view.slice_xy(gesture.start)
        if not view.contains(start) or (gesture.kind == "drag" and not view.contains(view.slice_xy(gesture.end))):
            self.setStatus("The prompt is outside the volume: click inside the image.", error=True)
            self.redraw(viewWidget)
            return
        if not self.ensureModel():
            return
        self.prompts.apply_gesture(view.axis, view.index, gesture, view.slice_xy)
        self.activeAxis = view.axis
        self.redraw(viewWidget)
        self.requestPreview(view.axis, view.index)

    def onKey(self, viewWidget, key) -> bool:
        if key in ("Return", "KP_Enter"):
            self.onApply()
            return True
        if key == "p":
            self.onPropagate(viewWidget)
            return True
        if key in ("BackSpace", "x", "Delete"):
            view = self.sliceView(viewWidget)
            if view is None:
                return True
            if key == "Delete":
                self.prompts.clear_slice(view.axis, view.index)
            else:
                self.prompts.remove_last(view.axis, view.index)
            self.redraw(viewWidget)
            self.requestPreview(view.axis, view.index)
            return True
        return False

    def processViewNodeEvents(self, callerViewNode, eventId, viewWidget):
        """Slice moved, panned or zoomed: redraw the prompts there and prefetch embeddings around the new slice.
        Quiet: panning without a source volume must not write an error on every move."""
        if not callerViewNode or not callerViewNode.IsA("vtkMRMLSliceNode"):
            return
        if self.geometry is None and not self.ensureVolume(quiet=True):
            return
        self.redraw(viewWidget)
        if not self.modelReady or self.controller is None:
            return
        view = self.sliceView(viewWidget, quiet=True)
        if view is None:
            return
        where = (view.axis, view.index)
        if self.lastSlice.get(viewWidget) != where:
            self.lastSlice[viewWidget] = where
            n = self.geometry.size_ijk["IJK".index(view.axis)]
            self.controller.prefetch(view.axis, [view.index + d for d in PREFETCH_OFFSETS if 0 <= view.index + d < n])

    def redrawAll(self):
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for name in layoutManager.sliceViewNames():
            self.redraw(layoutManager.sliceWidget(name))

    def redraw(self, sliceWidget, rubberBand=None):
        if sliceWidget is None or self.geometry is None:
            return
        pipeline = self.pipelines.get(sliceWidget)
        if pipeline is None:
            pipeline = PromptPipeline()
            self.scriptedEffect.addActor2D(sliceWidget, pipeline.actor)
            self.pipelines[sliceWidget] = pipeline
        view = self.sliceView(sliceWidget, quiet=True)
        if view is None:
            segments, colors = np.zeros((0, 2, 2)), np.zeros((0, 3))
        else:
            segments, colors = glyph_segments(self.prompts, view.axis, view.index, view.view_xy,
                                              rubber_band=rubberBand)
        pipeline.update(segments, colors)
        sliceWidget.sliceView().scheduleRender()

    # ------------------------------------------------------------------------------------------- prompts -> jobs

    def refineMask(self, axis, index):
        """The selected segment on a slice when Refine is on and it covers the slice, else None."""
        if self.scriptedEffect.integerParameter("Refine") == 0:
            return None
        return self.selectedSegmentSlice(axis, index)

    def selectedSegmentSlice(self, axis, index):
        """The selected segment's mask on a slice of the source volume's grid, or None when empty or unreadable."""
        parameterNode = self.scriptedEffect.parameterSetNode()
        segmentId = parameterNode.GetSelectedSegmentID()
        if not segmentId:
            return None
        try:
            mask = read_segment_slice(parameterNode.GetSegmentationNode(), segmentId, self.geometry, axis, index)
        except BridgeError:
            return None
        return mask if mask.any() else None

    def correctionContext(self, axis, index):
        """What a points-only prompt on this slice corrects: the previewed mask there, else the selected segment
        there (what an applied propagation wrote), or None."""
        if self.previewLayer is not None and self.previewLayer.has_slice(axis, index):
            mask = dict(((a, i), m) for a, i, m in self.previewLayer.slices())[(axis, index)]
            if mask.any():
                return mask
        return self.selectedSegmentSlice(axis, index)

    def requestPreview(self, axis, index):
        self.syncSettings()
        mask = self.refineMask(axis, index)
        if mask is None and self.prompts.box(axis, index) is None and self.prompts.has_prompts(axis, index):
            mask = self.correctionContext(axis, index)  # points only: correct what the slice shows
        prompt = self.prompts.slice_prompt(axis, index, mask)
        if prompt is None or not prompt.has_include:
            if self.previewLayer is not None:
                self.previewLayer.clear_slice(axis, index)
                self.updateButtons()
            if prompt is not None:
                self.setStatus("Add an include point or a box: exclude points alone correct a slice only where the "
                               "propagation or the segment already covers it.")
            return
        self.controller.preview(axis, index, prompt)

    def onPropagate(self, viewWidget=None):
        if self.controller is None or self.controller.propagating:
            return
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return
        if not self.ensureModel():
            return
        axis = self.activeAxis
        current = None
        if viewWidget is not None:
            current = self.sliceView(viewWidget, quiet=True)
            axis = current.axis if current is not None else axis
        if axis is None:
            axes = self.prompts.axes()
            axis = axes[0] if axes else None
        if axis is None:
            self.setStatus("Add prompts on a slice first (click or draw a box), then propagate.", error=True)
            return
        masks = {}
        for index in self.prompts.indices(axis):
            mask = self.refineMask(axis, index)
            if mask is not None:
                masks[index] = mask
        if current is not None and current.axis == axis and current.index not in masks:
            seed = self.refineMask(axis, current.index)
            if seed is not None:
                masks[current.index] = seed  # refine: propagate from the existing segment on this slice
        n = self.geometry.size_ijk["IJK".index(axis)]
        frange = None
        if self.scriptedEffect.integerParameter("WholeRange") == 0:
            lo = max(0, min(self.scriptedEffect.integerParameter("RangeFrom"), n - 1))
            hi = max(0, min(self.scriptedEffect.integerParameter("RangeTo"), n - 1))
            frange = (min(lo, hi), max(lo, hi))
        # a 3D box: the range fields, or a box drawn on an orthogonal view, give the object's first and last slice
        extent = frange if frange is not None else self.prompts.box_extent(axis)
        if extent is not None:
            extent = (max(0, extent[0]), min(n - 1, extent[1]))
        # points-only slices go as they are: the engine corrects the propagated result there
        prompts = self.prompts.slice_prompts(axis, masks, extent)
        if not any(p.has_include for p in prompts.values()):
            self.setStatus(f"No slice along {axis} has a box or include point to propagate from.", error=True)
            return
        self.syncSettings()
        self.controller.propagate(axis, prompts, self.scriptedEffect.parameter("Direction") or "both", frange)
        # the result goes into this segment: another one selected meanwhile must not receive it
        self.propagationSegmentId = self.scriptedEffect.parameterSetNode().GetSelectedSegmentID()
        self.progressBar.setRange(0, 0)
        self.setStatus(f"Propagating along {axis} from {len(prompts)} slice(s)...")
        self.updateButtons()

    def onCancel(self):
        if self.controller is not None:
            self.controller.cancel_propagation()

    def onClearAll(self):
        if self.controller is not None:
            self.controller.cancel_all(forget=True)
            self.controller.new_object()  # the next prompts are another object (its own fitted window)
        self.prompts.clear()
        if self.previewLayer is not None:
            self.previewLayer.clear()
        self.redrawAll()
        self.updateButtons()
        self.setStatus("Cleared.")

    # ------------------------------------------------------------------------------------------- results

    def onPoll(self):
        if self.controller is None or self.polling:
            return
        self.polling = True
        try:
            for event in self.controller.poll():
                try:
                    self.handleEvent(event)
                except Exception as exc:  # never let the timer die with a traceback
                    logging.exception("Segment Anything: handling %s failed", event.kind)
                    self.setStatus(f"{type(exc).__name__}: {exc}", error=True)
            self.updateButtons()
        finally:
            self.polling = False
        # Dialogs run a nested event loop in which this timer keeps firing: open them only after the tick, one at
        # a time (messages arriving meanwhile wait for the open one to close).
        if self.showingDialog:
            return
        self.showingDialog = True
        try:
            while self.pendingDialogs:
                slicer.util.errorDisplay(self.pendingDialogs.pop(0), windowTitle="Segment Anything")
        finally:
            self.showingDialog = False

    def handleEvent(self, event):
        if event.kind == "status":
            self.setStatus(event.message)
        elif event.kind in ("preview", "outcome"):
            if self.geometry is not None:
                self.ensurePreview().set_slice(event.axis, event.index, event.mask)
            if event.kind == "preview":
                self.setStatus(f"Slice {event.index} ({event.axis}): predicted IoU {event.score:.2f}. "
                               f"Enter applies, p propagates.")
        elif event.kind == "progress":
            self.progressBar.setRange(0, max(event.total, 1))
            self.progressBar.setValue(event.done)
        elif event.kind == "propagated":
            result = event.result
            slices = [(result.axis, i, o.mask) for i, o in sorted(result.outcomes.items())]
            target = self.propagationSegmentId
            if target and target != self.scriptedEffect.parameterSetNode().GetSelectedSegmentID():
                self.setStatus(f"Propagated along {result.axis} over {len(slices)} slices for another segment than "
                               "the selected one: the result stays in the preview (select that segment and press "
                               "Enter to write it, or Clear all).", error=True)
                return
            self.writeSlices(slices, f"Propagated along {result.axis} over {len(slices)} slices")
        elif event.kind == "cancelled":
            kept = len(self.previewLayer) if self.previewLayer is not None else 0
            self.setStatus(f"Propagation cancelled; {kept} slice(s) are in the preview: Apply (Enter) keeps them, "
                           f"Clear all discards them.")
        elif event.kind == "error":
            self.setStatus(event.message, error=True)
            if event.job in ("propagate", "load", "engine"):
                self.pendingDialogs.append(event.message)
                if event.job in ("load", "engine"):
                    self.modelReady = False  # the next action starts (or restarts) the engine

    def onApply(self):
        if self.previewLayer is None or len(self.previewLayer) == 0:
            self.setStatus("Nothing to apply: add prompts on a slice first.")
            return
        if self.controller is not None and self.controller.propagating:
            self.setStatus("Wait for the propagation to finish, or cancel it.", error=True)
            return
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return
        if not self.ensureVolume() or self.previewLayer is None:  # the volume changed: the preview is gone
            return
        self.writeSlices(self.previewLayer.slices(), "Applied")

    def writeSlices(self, slices, what):
        """Write (axis, index, mask) slices into the selected segment as one undo step; clear them from the preview."""
        mode = self.scriptedEffect.parameter("WriteMode") or "replace"
        try:
            with slicer.util.WaitCursor():  # restored before any error dialog
                result = write_slices(EffectEditor(self.scriptedEffect), self.geometry, slices, mode=mode)
        except Exception as exc:
            logging.exception("Segment Anything: writing the segment failed")
            message = str(exc) if isinstance(exc, BridgeError) else f"{type(exc).__name__}: {exc}"
            self.setStatus(f"Writing the segment failed: {message}", error=True)
            self.pendingDialogs.append(f"Writing the segment failed: {message}")  # shown after the tick (onPoll)
            return
        if self.previewLayer is not None:
            for axis, index, _ in slices:
                self.previewLayer.clear_slice(axis, index)
        self.setStatus(f"{what}: {result.added} voxels added, {result.removed} removed (before masking)."
                       if result.changed else f"{what}: the segment already matched.")
        self.updateButtons()
