"""SAMSegment: Segment Anything models (LiteMedSAM, SAM, MedSAM, SAM 2.1, MedSAM2) in Slicer's Segment Editor.

This scripted module
- registers the "Segment Anything" Segment Editor effect when Slicer has started,
- keeps the user's settings (model, device, embedding cache budget, weights folder) in Slicer's settings,
- installs what a model needs on first use, on the main thread: PyTorch through the PyTorch extension
  (PyTorchUtils), the other Python packages with slicer.util.pip_install after one confirmation listing them, and
  the weights with a progress dialog whose Cancel stops the download (it resumes next time),
- owns the engine the effect talks to: a local engine child process started on first use with Slicer's own Python
  (PythonSlicer, which has torch from the PyTorch extension) on 127.0.0.1, a free port and a fresh random token,
  stopped when Slicer exits and restarted on the next action after a crash; or, when the settings say so, a remote
  engine server (a department GPU machine running ``samsegment serve``) with its URL and token,
- shows a small settings panel.

No model code runs in Slicer's interpreter, and no Python thread either: Slicer's main thread holds the GIL while
it idles, which starves Python threads (see DESIGN.md). The engine is another process; the weights download runs
in a child process too.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

import qt
import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

EFFECT_NAME = "Segment Anything"
SETTINGS_PREFIX = "SAMSegment/"
_LAUNCH_WEIGHTS_DIR = os.environ.get("SAMSEGMENT_WEIGHTS_DIR", "")
DEVICES = [("auto", "Automatic (CUDA, then Apple MPS, then CPU)"), ("cpu", "CPU"), ("cuda", "NVIDIA GPU (CUDA)"),
           ("mps", "Apple GPU (MPS)")]


# --------------------------------------------------------------------------------------------------- settings


class SAMSegmentSettings:
    """User preferences in Slicer's settings (qt.QSettings), shared by the module panel and the effect."""

    DEFAULTS = {"Model": "litemedsam", "Device": "auto", "CacheMB": 512, "WeightsDir": "", "Backend": "auto",
                "Precision": "auto", "EngineMode": "local", "EngineURL": "", "EngineToken": ""}

    @staticmethod
    def get(key: str):
        default = SAMSegmentSettings.DEFAULTS[key]
        value = qt.QSettings().value(SETTINGS_PREFIX + key, default)
        if isinstance(default, int):
            try:
                return int(value)
            except (TypeError, ValueError):
                return default
        return str(value) if value is not None else default

    @staticmethod
    def set(key: str, value) -> None:
        qt.QSettings().setValue(SETTINGS_PREFIX + key, value)
        if key == "WeightsDir":
            SAMSegmentSettings.applyWeightsDir()

    @staticmethod
    def applyWeightsDir() -> None:
        """The engine reads the weights folder from SAMSEGMENT_WEIGHTS_DIR: the setting wins; when it is empty,
        the value Slicer was started with (if any) applies, else the engine's default cache folder."""
        folder = SAMSegmentSettings.get("WeightsDir")
        if folder:
            os.environ["SAMSEGMENT_WEIGHTS_DIR"] = folder
        elif _LAUNCH_WEIGHTS_DIR:
            os.environ["SAMSEGMENT_WEIGHTS_DIR"] = _LAUNCH_WEIGHTS_DIR
        else:
            os.environ.pop("SAMSEGMENT_WEIGHTS_DIR", None)


# --------------------------------------------------------------------------------------------------- module


def _effectRegistered() -> bool:
    factory = slicer.qSlicerSegmentEditorEffectFactory.instance()
    return any(effect.name == EFFECT_NAME for effect in factory.registeredEffects())


def registerEditorEffect() -> bool:
    """Register the Segment Anything effect with the Segment Editor; True when this call registered it, False when
    it already was (the Python ``register()`` wrapper returns None either way, so ask the factory)."""
    import qSlicerSegmentationsEditorEffectsPythonQt as effects

    if _effectRegistered():
        return False
    path = os.path.join(os.path.dirname(__file__), "SegmentEditorSegmentAnythingLib", "SegmentEditorEffect.py")
    instance = effects.qSlicerSegmentEditorScriptedEffect(None)
    instance.setPythonSource(path.replace("\\", "/"))
    instance.self().register()
    return _effectRegistered()


# --------------------------------------------------------------------------------------------------- engine


def pythonExecutable() -> str:
    """Slicer's own Python (PythonSlicer: the interpreter that has torch from the PyTorch extension)."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    candidate = os.path.join(os.path.dirname(sys.executable), "PythonSlicer" + (".exe" if os.name == "nt" else ""))
    return candidate if os.path.exists(candidate) else sys.executable


def engineLogPath() -> str:
    return os.path.join(slicer.app.temporaryPath, "SAMSegment", "engine.log")


def _makeEngine():
    """The engine the settings ask for: a remote server (URL + token) or a local child process."""
    if SAMSegmentSettings.get("EngineMode") == "remote":
        from SAMSegmentLib.engine.client import RemoteEngine

        url = SAMSegmentSettings.get("EngineURL").strip()
        if not url:
            from SAMSegmentLib.engine.api import EngineError

            raise EngineError("no engine server URL is set: enter it in the SAM Segment module's settings")
        return RemoteEngine(url, token=SAMSegmentSettings.get("EngineToken").strip() or None)
    from SAMSegmentLib.engine.child import LocalEngine

    SAMSegmentSettings.applyWeightsDir()
    return LocalEngine(python=pythonExecutable(), device=SAMSegmentSettings.get("Device"),
                       backend=SAMSegmentSettings.get("Backend"), precision=SAMSegmentSettings.get("Precision"),
                       log_path=engineLogPath())


_engineProvider = None


def engineProvider():
    """The one EngineProvider of this Slicer session (shared by every Segment Editor's effect)."""
    global _engineProvider
    if _engineProvider is None:
        from SAMSegmentEffectLib.controller import EngineProvider

        _engineProvider = EngineProvider(_makeEngine)
        slicer.app.connect("aboutToQuit()", shutdownEngine)
    return _engineProvider


def shutdownEngine() -> None:
    """Stop the engine (the local child process ends; a remote server keeps running)."""
    if _engineProvider is not None:
        _engineProvider.reset()


class SAMSegment(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SAM Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["SAMSegment developers"]
        self.parent.helpText = (
            "Segment Anything models (LiteMedSAM, SAM, MedSAM, SAM 2.1, MedSAM2) as a Segment Editor effect: "
            "click or draw a box on any slice view, see the mask at once, apply it, and propagate it through the "
            "volume in the background. Open the Segment Editor and choose <b>Segment Anything</b>. This panel holds "
            "the settings; the first use of a model installs what it needs (with your confirmation)."
        )
        self.parent.acknowledgementText = (
            "Models: Segment Anything and SAM 2 (Meta AI, Apache-2.0); MedSAM, LiteMedSAM and MedSAM2 (Bo Wang lab; "
            "MedSAM2 weights CC-BY-SA-4.0). Their licenses apply to their weights."
        )
        SAMSegmentSettings.applyWeightsDir()
        slicer.app.connect("startupCompleted()", registerEditorEffect)


# --------------------------------------------------------------------------------------------------- logic


class SAMSegmentLogic(ScriptedLoadableModuleLogic):
    """Installs packages and weights for a model. Main thread only (pip must run there; see DESIGN.md)."""

    _preparing = False  # one install at a time: a click during an install must not start a nested one

    def status(self, modelName: str):
        from SAMSegmentEffectLib.controller import model_status

        return model_status(modelName, backend=SAMSegmentSettings.get("Backend"),
                            device=SAMSegmentSettings.get("Device"))

    @property
    def preparing(self) -> bool:
        return SAMSegmentLogic._preparing

    def prepareModel(self, modelName: str, parent=None) -> bool:
        """Make ``modelName`` runnable: install its packages, then its weights. Returns True when ready; False at
        once while another preparation is still running (its dialogs keep the event loop going)."""
        if SAMSegmentLogic._preparing:
            slicer.util.showStatusMessage("SAMSegment: an installation is still running; wait for it to finish", 3000)
            return False
        SAMSegmentLogic._preparing = True
        try:
            return self._prepareModel(modelName, parent)
        finally:
            SAMSegmentLogic._preparing = False

    def _prepareModel(self, modelName: str, parent=None) -> bool:
        status = self.status(modelName)
        if status.state == "needs-package":
            if not self.installPackages(status, parent):
                return False
            status = self.status(modelName)
        if status.state == "manual":
            slicer.util.errorDisplay(
                f"The {modelName} weights cannot be downloaded automatically: {status.detail}.", parent=parent)
            return False
        if status.state == "download":
            if self.downloadWeights(modelName, parent) is None:
                return False
            status = self.status(modelName)
        return status.state == "ready"

    def installPackages(self, status, parent=None) -> bool:
        """PyTorch through the PyTorch extension, the rest with pip after one confirmation.

        ``status.packages`` are pip requirements with version bounds (SAMSegmentLib.requirements). Slicer 5.12+
        installs them with ``slicer.packaging`` (``pip_ensure``, which also offers a restart when an already imported
        package was upgraded); older Slicers with ``slicer.util.pip_install``.
        """
        from SAMSegmentLib.models.registry import get_spec
        from SAMSegmentLib.requirements import torch_specifier

        packages = list(status.packages)
        lines = (["PyTorch (installed by the PyTorch extension, which picks the build for your GPU)"]
                 if status.needs_torch else []) + packages
        if not lines:
            return True
        if not slicer.app.commandOptions().testingEnabled:
            text = (f"The model {status.name} needs these Python packages, which will be downloaded and installed "
                    f"into Slicer's Python now (this can take several minutes):\n\n- " + "\n- ".join(lines)
                    + "\n\nInstall them?")
            if not slicer.util.confirmOkCancelDisplay(text, windowTitle="SAMSegment: install packages",
                                                      parent=parent):
                return False
        family = get_spec(status.name).family
        try:
            import slicer.packaging as packaging  # Slicer 5.12+
        except ImportError:
            packaging = None
        try:
            with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
                if status.needs_torch:
                    try:
                        import PyTorchUtils
                    except ModuleNotFoundError:
                        slicer.util.errorDisplay(
                            "SAMSegment needs the PyTorch extension: install it from the Extensions Manager, "
                            "restart Slicer and try again.", parent=parent)
                        return False
                    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                        askConfirmation=False, torchVersionRequirement=torch_specifier(family))
                    if torch is None:
                        return False
                if packages:
                    # sam2 builds from source: skip its optional CUDA ops, build against the installed torch
                    options = ["--no-build-isolation"] if family == "sam2" else []
                    if family == "sam2":
                        os.environ["SAM2_BUILD_CUDA"] = "0"
                    constraints = self._torchConstraints()
                    try:
                        if packaging is None:
                            slicer.util.pip_install(packages + ["--constraint", constraints] + options)
                        elif options:  # pip_ensure passes no pip options
                            packaging.pip_install(packages + options, constraints=constraints, requester="SAMSegment",
                                                  parent=parent)
                        else:
                            packaging.pip_ensure(packages, constraints=constraints, prompt_install=False,
                                                 requester="SAMSegment", skip_in_testing=False)
                    finally:
                        os.remove(constraints)
        except Exception:  # already shown by tryWithErrorDisplay
            logging.exception("SAMSegment: package installation failed")
            return False
        return True

    @staticmethod
    def _torchConstraints() -> str:
        """A pip constraints file pinning the installed torch and torchvision, so that no package replaces the
        build the PyTorch extension chose (e.g. a CUDA build by a CPU wheel)."""
        from importlib.metadata import PackageNotFoundError, version

        lines = []
        for name in ("torch", "torchvision"):
            try:
                lines.append(f"{name}=={version(name)}")
            except PackageNotFoundError:
                pass
        handle, path = tempfile.mkstemp(prefix="samsegment-constraints-", suffix=".txt")
        with os.fdopen(handle, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return path

    def downloadWeights(self, modelName: str, parent=None):
        """Download and verify the weights with a progress dialog; returns their path, or None (cancel/failure).

        The download runs in a child process (PythonSlicer running ``samsegment models --download``), so no Python
        thread waits for the GIL here; a QTimer reads its progress while the dialog's local event loop keeps Slicer
        responsive. Cancel ends the process within a moment and keeps the partial file, which the next attempt
        resumes.
        """
        from SAMSegmentEffectLib.controller import models
        from SAMSegmentEffectLib.download import WeightsDownload

        spec = models()[modelName]
        SAMSegmentSettings.applyWeightsDir()
        download = WeightsDownload(modelName, python=pythonExecutable())
        dialog = qt.QProgressDialog(f"Downloading the {modelName} weights...", "Cancel", 0, 1000,
                                    parent or slicer.util.mainWindow())
        dialog.windowTitle = "SAMSegment"
        dialog.setWindowModality(qt.Qt.WindowModal)
        dialog.minimumDuration = 0
        dialog.value = 0
        loop = qt.QEventLoop()
        timer = qt.QTimer()
        timer.setInterval(100)
        result = {}

        def tick():
            if dialog.wasCanceled:
                download.cancel()
            state = download.poll()
            total = state.total or spec.size_bytes
            if state.state == "running":
                if total:
                    dialog.setValue(int(1000 * min(state.done, total) / total))
                    dialog.setLabelText(f"Downloading the {modelName} weights: {state.done / 1e6:,.0f} of "
                                        f"{total / 1e6:,.0f} MB")
                return
            result["state"] = state
            timer.stop()
            loop.quit()

        timer.connect("timeout()", tick)
        download.start()
        timer.start()
        loop.exec_()
        dialog.close()
        state = result.get("state")
        if state is None or state.state == "cancelled":
            return None
        if state.state == "failed":
            slicer.util.errorDisplay(state.message, windowTitle="SAMSegment: weights download failed", parent=parent)
            return None
        return state.path


# --------------------------------------------------------------------------------------------------- widget


class SAMSegmentWidget(ScriptedLoadableModuleWidget):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        import ctk

        self.logic = SAMSegmentLogic()
        box = ctk.ctkCollapsibleButton()
        box.text = "Settings"
        self.layout.addWidget(box)
        form = qt.QFormLayout(box)

        self.modelCombo = qt.QComboBox()
        self.modelCombo.toolTip = "Model used by the Segment Anything effect (status in brackets)."
        form.addRow("Model:", self.modelCombo)
        self.deviceCombo = qt.QComboBox()
        for key, text in DEVICES:
            self.deviceCombo.addItem(text, key)
        form.addRow("Device:", self.deviceCombo)
        self.cacheSpin = qt.QSpinBox()
        self.cacheSpin.setRange(64, 65536)
        self.cacheSpin.setSuffix(" MB")
        self.cacheSpin.toolTip = "Memory for cached slice embeddings (more = fewer recomputations when you go back)."
        form.addRow("Embedding cache:", self.cacheSpin)
        self.weightsDir = ctk.ctkPathLineEdit()
        self.weightsDir.filters = ctk.ctkPathLineEdit.Dirs
        self.weightsDir.toolTip = "Folder for downloaded weights (empty: the default cache folder)."
        form.addRow("Weights folder:", self.weightsDir)
        self.backendCombo = qt.QComboBox()
        for key, text in (("auto", "Automatic (OpenVINO on CPU when installed, else PyTorch)"), ("torch", "PyTorch"),
                          ("openvino", "OpenVINO (CPU)")):
            self.backendCombo.addItem(text, key)
        form.addRow("Backend:", self.backendCombo)
        self.precisionCombo = qt.QComboBox()
        for key, text in (("auto", "Automatic (LiteMedSAM: bf16 on CPUs that compute it natively; else fp32)"),
                          ("fp32", "fp32 (exact)"), ("bf16", "bf16 (faster on the CPU)")):
            self.precisionCombo.addItem(text, key)
        self.precisionCombo.toolTip = ("Automatic picks the fastest precision whose Dice stayed within 0.005 of fp32 "
                                       "on the development cases.")
        form.addRow("Precision:", self.precisionCombo)
        self.prepareButton = qt.QPushButton("Install / download for this model")
        form.addRow(self.prepareButton)
        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        form.addRow(self.statusLabel)

        engineBox = ctk.ctkCollapsibleButton()
        engineBox.text = "Engine"
        self.layout.addWidget(engineBox)
        engineForm = qt.QFormLayout(engineBox)
        self.engineModeCombo = qt.QComboBox()
        self.engineModeCombo.addItem("On this computer (a background process)", "local")
        self.engineModeCombo.addItem("On a server (samsegment serve)", "remote")
        self.engineModeCombo.toolTip = ("Where the models run. A server is a shared GPU machine running "
                                        "'samsegment serve --host 0.0.0.0 --token-file FILE'.")
        engineForm.addRow("Run models:", self.engineModeCombo)
        self.engineUrl = qt.QLineEdit()
        self.engineUrl.placeholderText = "https://gpu-server.example.org:8765"
        engineForm.addRow("Server URL:", self.engineUrl)
        self.engineToken = qt.QLineEdit()
        self.engineToken.echoMode = qt.QLineEdit.Password
        self.engineToken.toolTip = "The access token the server's administrator gave you."
        engineForm.addRow("Access token:", self.engineToken)
        self.restartButton = qt.QPushButton("Restart engine")
        self.restartButton.toolTip = "Stop the engine now; the next action in the effect starts it again."
        engineForm.addRow(self.restartButton)
        self.engineLabel = qt.QLabel()
        self.engineLabel.wordWrap = True
        self.engineLabel.textInteractionFlags = qt.Qt.TextSelectableByMouse
        engineForm.addRow(self.engineLabel)

        hint = qt.QLabel(
            "Use: Segment Editor > <b>Segment Anything</b>. Self-test: enable Developer mode and click "
            "<i>Reload and Test</i>, or run <tt>Slicer --no-main-window --python-script "
            "Testing/Python/SAMSegmentSelfTest.py</tt> from the source tree.")
        hint.wordWrap = True
        self.layout.addWidget(hint)
        self.layout.addStretch(1)

        self.refresh()
        self.modelCombo.connect("currentIndexChanged(int)", self.onModelChanged)
        self.deviceCombo.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.cacheSpin.connect("valueChanged(int)", lambda v: SAMSegmentSettings.set("CacheMB", int(v)))
        self.weightsDir.connect("currentPathChanged(QString)", self.onWeightsDirChanged)
        self.prepareButton.connect("clicked()", self.onPrepare)
        self.backendCombo.connect("currentIndexChanged(int)", self.onBackendChanged)
        self.precisionCombo.connect("currentIndexChanged(int)", self.onPrecisionChanged)
        self.engineModeCombo.connect("currentIndexChanged(int)", self.onEngineSettingsChanged)
        self.engineUrl.connect("editingFinished()", self.onEngineSettingsChanged)
        self.engineToken.connect("editingFinished()", self.onEngineSettingsChanged)
        self.restartButton.connect("clicked()", self.onRestartEngine)

    def refresh(self):
        from SAMSegmentEffectLib.controller import models

        current = SAMSegmentSettings.get("Model")
        widgets = (self.modelCombo, self.deviceCombo, self.cacheSpin, self.weightsDir, self.backendCombo,
                   self.precisionCombo, self.engineModeCombo, self.engineUrl, self.engineToken)
        blocked = [w.blockSignals(True) for w in widgets]
        self.modelCombo.clear()
        for name in models():
            self.modelCombo.addItem(self.logic.status(name).label, name)
        self.modelCombo.setCurrentIndex(max(0, self.modelCombo.findData(current)))
        self.deviceCombo.setCurrentIndex(max(0, self.deviceCombo.findData(SAMSegmentSettings.get("Device"))))
        self.cacheSpin.value = SAMSegmentSettings.get("CacheMB")
        self.weightsDir.currentPath = SAMSegmentSettings.get("WeightsDir")
        self.backendCombo.setCurrentIndex(max(0, self.backendCombo.findData(SAMSegmentSettings.get("Backend"))))
        self.precisionCombo.setCurrentIndex(max(0, self.precisionCombo.findData(SAMSegmentSettings.get("Precision"))))
        remote = SAMSegmentSettings.get("EngineMode") == "remote"
        self.engineModeCombo.setCurrentIndex(1 if remote else 0)
        self.engineUrl.text = SAMSegmentSettings.get("EngineURL")
        self.engineToken.text = SAMSegmentSettings.get("EngineToken")
        self.engineUrl.enabled = self.engineToken.enabled = remote
        for w, b in zip(widgets, blocked, strict=True):
            w.blockSignals(b)
        status = self.logic.status(current)
        self.statusLabel.text = f"{status.label}: {status.detail}" if status.detail else status.label
        provider = _engineProvider
        engine = provider.current if provider is not None else None
        if remote:
            where = f"Remote engine: {SAMSegmentSettings.get('EngineURL') or '(no URL set)'}"
        else:
            where = "Local engine process: " + (engine.description if engine is not None else "starts on first use")
            where += f". Log: {engineLogPath()}"
        crash = provider.last_crash if provider is not None else None
        self.engineLabel.text = where + (f"\nLast problem: {crash}" if crash else "")

    def onModelChanged(self, index):
        SAMSegmentSettings.set("Model", self.modelCombo.itemData(index))
        self.refresh()

    def onDeviceChanged(self, index):
        SAMSegmentSettings.set("Device", self.deviceCombo.itemData(index))
        shutdownEngine()  # the local engine starts with the new device on the next action

    def onBackendChanged(self, index):
        SAMSegmentSettings.set("Backend", self.backendCombo.itemData(index))
        shutdownEngine()

    def onPrecisionChanged(self, index):
        SAMSegmentSettings.set("Precision", self.precisionCombo.itemData(index))
        shutdownEngine()

    def onEngineSettingsChanged(self, *unused):
        mode = self.engineModeCombo.itemData(self.engineModeCombo.currentIndex)
        changed = (mode != SAMSegmentSettings.get("EngineMode") or self.engineUrl.text != SAMSegmentSettings.get("EngineURL")
                   or self.engineToken.text != SAMSegmentSettings.get("EngineToken"))
        SAMSegmentSettings.set("EngineMode", mode)
        SAMSegmentSettings.set("EngineURL", self.engineUrl.text.strip())
        SAMSegmentSettings.set("EngineToken", self.engineToken.text.strip())
        if changed:
            shutdownEngine()
        self.refresh()

    def onRestartEngine(self):
        shutdownEngine()
        self.refresh()

    def onWeightsDirChanged(self, path):
        SAMSegmentSettings.set("WeightsDir", path)
        self.refresh()

    def onPrepare(self):
        name = SAMSegmentSettings.get("Model")
        if self.logic.prepareModel(name, slicer.util.mainWindow()):
            slicer.util.showStatusMessage(f"{name} is ready", 3000)
        self.refresh()


# --------------------------------------------------------------------------------------------------- test


class SAMSegmentTest(ScriptedLoadableModuleTest):
    """Runs Testing/Python/SAMSegmentSelfTest.py (present in the source tree, not in installed packages)."""

    def runTest(self):
        import importlib
        import sys

        folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Testing", "Python")
        if not os.path.isfile(os.path.join(folder, "SAMSegmentSelfTest.py")):
            self.delayDisplay("SAMSegmentSelfTest.py is only in the source tree; nothing to run here")
            return
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module = importlib.import_module("SAMSegmentSelfTest")
        test = module.SAMSegmentSelfTest()
        test.runTest()
