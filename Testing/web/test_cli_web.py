"""`samsegment web` on the command line: a small lazy subparser (no VTK, Slicer or trame at import), one-line
errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "SAMSegmentLib.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_parser_knows_web_without_importing_the_front_end():
    script = (
        "import sys; import SAMSegmentLib.cli as c; p = c.build_parser(); a = p.parse_args(['web', 'x.nrrd', "
        "'--port', '9', '--host', '127.0.0.1']); assert a.command == 'web' and a.port == 9 and a.volumes == "
        "['x.nrrd']; bad = [m for m in ('vtk', 'vtkmodules', 'slicer', 'trame', 'trame_slicer', 'aiohttp', "
        "'torch', 'SAMSegmentWeb') if m in sys.modules]; assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_missing_volume_is_one_line_and_exit_code_2(tmp_path):
    out = run("web", str(tmp_path / "missing.nrrd"), "--port", "1")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "volume file not found" in lines[0] and "Traceback" not in out.stderr


def test_help_lists_the_options():
    out = run("web", "--help")
    assert out.returncode == 0
    for option in ("--host", "--port", "--model", "--demo", "--max-sessions"):
        assert option in out.stdout
    assert "--test-hooks" not in out.stdout
