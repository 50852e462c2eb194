"""Extension packaging: what the Extensions Index build installs, and the extension's metadata.

The Slicer build copies only the files that SAMSegment/CMakeLists.txt names, so a module missing there works from a
source checkout but is absent from the installed extension. These checks read the CMake files as text (no CMake or
Slicer needed).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "SAMSegment"
ENGINE_DIR = ROOT / "SAMSegmentLib"
REQUIRED_METADATA = ["HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"]


def _strip_comments(text: str) -> str:
    """CMake text without # comments (a # inside a quoted string is kept)."""
    out = []
    for line in text.splitlines():
        quoted = False
        for n, char in enumerate(line):
            if char == '"':
                quoted = not quoted
            elif char == "#" and not quoted:
                line = line[:n]
                break
        out.append(line)
    return "\n".join(out)


def cmake_sets(path: Path) -> dict[str, list[str]]:
    """``set(NAME values...)`` of a CMake file, quoted strings kept whole, ${VAR} substituted from earlier sets."""
    text = _strip_comments(path.read_text())
    values: dict[str, list[str]] = {}
    for name, body in re.findall(r"\bset\(\s*([A-Za-z_][A-Za-z0-9_]*)\s+(.*?)\)\s*$", text, flags=re.S | re.M):
        items = [a or b for a, b in re.findall(r'"([^"]*)"|([^\s"]+)', body)]

        def expand(item: str) -> str:
            return re.sub(r"\$\{(\w+)\}", lambda m: " ".join(values.get(m.group(1), [m.group(0)])), item)

        values[name] = [expand(item) for item in items]
    return values


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.fixture(scope="module")
def module_cmake() -> dict[str, list[str]]:
    return cmake_sets(MODULE_DIR / "CMakeLists.txt")


@pytest.fixture(scope="module")
def root_cmake() -> dict[str, list[str]]:
    return cmake_sets(ROOT / "CMakeLists.txt")


def test_every_slicer_layer_file_is_installed(module_cmake):
    listed = set(module_cmake["MODULE_PYTHON_SCRIPTS"])
    present = {p.relative_to(MODULE_DIR).as_posix() for p in python_files(MODULE_DIR)}
    assert present - listed == set(), "add these to MODULE_PYTHON_SCRIPTS in SAMSegment/CMakeLists.txt"
    assert listed - present == set(), "SAMSegment/CMakeLists.txt names files that do not exist"


def test_every_engine_file_is_installed(module_cmake):
    listed = module_cmake["ENGINE_PYTHON_SCRIPTS"]
    present = {p.relative_to(ROOT).as_posix() for p in python_files(ENGINE_DIR)}
    missing = sorted(present - set(listed))
    assert not missing, (
        "add these to ENGINE_PYTHON_SCRIPTS in SAMSegment/CMakeLists.txt (list: git ls-files -o -c "
        f"--exclude-standard 'SAMSegmentLib/*.py'): {missing}"
    )
    assert set(listed) - present == set(), "SAMSegment/CMakeLists.txt names engine files that do not exist"
    assert len(listed) == len(set(listed)), "a file is listed twice"


def test_every_basename_appears_in_a_cmakelists():
    """The repository's before-stop hook: each SAMSegment/ and SAMSegmentLib/ .py basename is in some CMakeLists."""
    text = "\n".join(p.read_text() for p in ROOT.rglob("CMakeLists.txt") if ".venv" not in p.parts)
    for path in python_files(MODULE_DIR) + python_files(ENGINE_DIR):
        assert path.name in text, f"{path.relative_to(ROOT)} is not named in any CMakeLists.txt"


def test_only_the_module_sits_at_the_top_of_the_module_folder():
    """Slicer loads every top-level .py of a scripted-module folder as a module (error if it has no module class)."""
    top = sorted(p.name for p in MODULE_DIR.glob("*.py"))
    assert top == ["SAMSegment.py"], f"move helpers into a package folder: {top}"
    assert re.search(r"^class SAMSegment\(ScriptedLoadableModule\)", (MODULE_DIR / "SAMSegment.py").read_text(),
                     flags=re.M)


def test_resources_are_listed_and_exist(module_cmake):
    listed = set(module_cmake["MODULE_PYTHON_RESOURCES"])
    for item in listed:
        assert (MODULE_DIR / item).is_file(), f"resource {item} is missing"
    used = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    used |= {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.glob("*Lib/*") if p.suffix in (".png", ".ui")}
    assert used - listed == set(), "add these to MODULE_PYTHON_RESOURCES"
    # icons Slicer looks up by convention
    assert "Resources/Icons/SAMSegment.png" in listed
    assert "SegmentEditorSegmentAnythingLib/SegmentEditorEffect.png" in listed
    for icon in ("Resources/Icons/SAMSegment.png", "SegmentEditorSegmentAnythingLib/SegmentEditorEffect.png"):
        assert (MODULE_DIR / icon).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_effect_is_registered_from_the_installed_path():
    module = (MODULE_DIR / "SAMSegment.py").read_text()
    assert '"SegmentEditorSegmentAnythingLib", "SegmentEditorEffect.py"' in module
    assert 'slicer.app.connect("startupCompleted()", registerEditorEffect)' in module
    effect = (MODULE_DIR / "SegmentEditorSegmentAnythingLib" / "SegmentEditorEffect.py").read_text()
    assert re.search(r"^class SegmentEditorEffect\(AbstractScriptedSegmentEditorEffect\)", effect, flags=re.M)
    assert 'scriptedEffect.name = "Segment Anything"' in effect


def test_extension_metadata(root_cmake):
    for field in REQUIRED_METADATA:
        value = root_cmake.get(f"EXTENSION_{field}")
        assert value and all(v.strip() for v in value), f"EXTENSION_{field} is missing or empty"
    assert root_cmake["EXTENSION_CATEGORY"] == ["Segmentation"]
    assert root_cmake["EXTENSION_DEPENDS"] == ["PyTorch"]
    for field in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        assert root_cmake[f"EXTENSION_{field}"][0].startswith("https://")
    # the icon URL points at the icon in this repository
    icon = root_cmake["EXTENSION_ICONURL"][0].split("/raw/main/", 1)[1]
    assert (ROOT / icon).is_file(), icon
    assert len(" ".join(root_cmake["EXTENSION_DESCRIPTION"])) > 60


def test_root_cmake_builds_the_module_and_registers_the_self_test():
    text = _strip_comments((ROOT / "CMakeLists.txt").read_text())
    assert "add_subdirectory(SAMSegment)" in text
    assert re.search(r'VERSION_LESS\s+"5\.10"', text), "Slicer 5.10+ must be required"
    script = re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)", text)
    assert script and (ROOT / script.group(1)).is_file()
    assert "ScriptedLoadableModuleTest" in (ROOT / script.group(1)).read_text()


def test_extensions_index_entry(root_cmake):
    entry = json.loads((ROOT / "SAMSegment.json").read_text())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry["category"] == root_cmake["EXTENSION_CATEGORY"][0]
    assert entry["build_dependencies"] == ["PyTorch"]
    assert entry["scm_url"] == root_cmake["SAMSEGMENT_REPOSITORY"][0]
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "build_subdirectory", "enabled", "tier"}
    assert set(entry) <= allowed and 1 <= entry["tier"] <= 5


def test_engine_does_not_import_the_slicer_layer():
    pattern = re.compile(r"^\s*(import|from)\s+(slicer|qt|ctk|vtk|vtkmodules|SAMSegment|SAMSegmentEffectLib)\b",
                         flags=re.M)
    for path in python_files(ENGINE_DIR):
        assert not pattern.search(path.read_text()), f"{path.relative_to(ROOT)} imports the Slicer layer"
