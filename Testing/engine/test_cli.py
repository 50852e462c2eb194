"""`samsegment` command line: bad input gives exit code 2 and one line, never a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from SAMSegmentLib.cli import ProgressBar, build_parser, main, progress_enabled
from SAMSegmentLib.prompts import PromptError
from SAMSegmentLib.request import read_prompts_json, request_from_dict


@pytest.fixture
def image3d(tmp_path):
    arr = np.zeros((6, 20, 24), dtype=np.int16)
    arr[2:4, 5:15, 6:18] = 500  # a bright block; the box of GOOD encloses it
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    return path


def write_prompts(tmp_path, data, name="p.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


GOOD = {"axis": "K", "propagate": "none", "prompts": [{"slice": 2, "box": [6, 5, 17, 14]}]}


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "not found"),
        ("2d", "2D image"),
        ("4d", "4D image"),
        ("outside", "outside the slice"),
        ("slice-outside", "outside the volume"),
        ("unknown-model", "unknown model"),
        ("bad-json", "not valid JSON"),
        ("only-exclude", "only exclude points"),
    ],
)
def test_bad_input_exit_2_one_line(case, expect, tmp_path, image3d, capsys):
    image = image3d
    prompts = write_prompts(tmp_path, GOOD)
    extra = []
    if case == "missing":
        image = tmp_path / "nope.nrrd"
    elif case == "2d":
        image = tmp_path / "flat.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 10), np.int16)), str(image))
    elif case == "4d":
        image = tmp_path / "time.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 10, 10), np.int16), isVector=False), str(image))
    elif case == "outside":
        prompts = write_prompts(tmp_path, {**GOOD, "prompts": [{"slice": 2, "box": [6, 5, 40, 14]}]})
    elif case == "slice-outside":
        prompts = write_prompts(tmp_path, {**GOOD, "prompts": [{"slice": 9, "box": [6, 5, 17, 14]}]})
    elif case == "unknown-model":
        extra = ["--model", "sam_vit_z"]
    elif case == "bad-json":
        prompts = tmp_path / "bad.json"
        prompts.write_text("{'axis': K")
    elif case == "only-exclude":
        prompts = write_prompts(tmp_path, {**GOOD, "prompts": [{"slice": 2, "points": [[8, 8, 0]]}]})
    code, out, err = run_cli(["segment", str(image), "--prompts", str(prompts), "-o", str(tmp_path / "o.nii.gz"), *extra],
                             capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and expect in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()


def test_console_script_module_reports_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "SAMSegmentLib.cli", "segment", str(tmp_path / "x.nrrd"),
                           "--prompts", str(tmp_path / "p.json"), "-o", str(tmp_path / "o.nrrd")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr and "Traceback" not in proc.stderr


def test_prompts_contract_parsing():
    req = request_from_dict({"axis": "j", "propagate": "both", "range": [0, 40], "prompts": [
        {"slice": 15, "box": [10, 4, 2, 9]}, {"slice": 15, "points": [[3, 4, 1], [5, 6, 0]]}, {"slice": 20, "points": [[1, 2, 1]]}]})
    assert req.axis == "J" and req.propagate == "both" and req.range == (0, 40)
    p = req.prompts[15]
    np.testing.assert_array_equal(p.box, [2, 4, 10, 9])  # corners normalised
    np.testing.assert_array_equal(p.points, [[3, 4], [5, 6]])
    np.testing.assert_array_equal(p.labels, [1, 0])
    assert req.prompts[20].box is None
    for bad in ({"prompts": []}, {"prompts": [{"box": [1, 2, 3, 4]}]}, {"prompts": [{"slice": 1.5, "box": [1, 2, 3, 4]}]},
                {"prompts": [{"slice": 1, "box": [1, 2, 3]}]}, {"range": [1], "prompts": [{"slice": 1, "box": [1, 2, 3, 4]}]},
                {"prompts": [{"slice": 1, "points": [[1, 2, 7]]}]}):
        with pytest.raises(PromptError):
            request_from_dict(bad)


def test_segment_end_to_end_with_real_model(tmp_path, image3d, capsys):
    prompts = write_prompts(tmp_path, GOOD)
    out = tmp_path / "out.seg.nrrd"
    code, stdout, err = run_cli(["segment", str(image3d), "--prompts", str(prompts), "-o", str(out), "--no-progress",
                                 "--device", "cpu"], capsys)
    assert code == 0, err
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
    ref = np.zeros((20, 24), bool)
    ref[5:15, 6:18] = True
    dice = 2 * (mask[2] & ref).sum() / (mask[2].sum() + ref.sum())
    assert dice > 0.75, dice  # a 10 x 12 voxel block is tiny for a 256 px model; real-data accuracy is tested elsewhere
    assert not mask[[0, 1, 3, 4, 5]].any()  # propagate none: only the prompted slice
    assert read_prompts_json(prompts).propagate == "none"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("enabled, terminal, drawn", [(None, False, False), (None, True, True), (True, False, True),
                                                      (False, True, False)])
def test_progress_bar_is_quiet_off_a_terminal_unless_asked(enabled, terminal, drawn, monkeypatch, capsys):
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = ProgressBar("segment (x)", enabled=enabled)
    for done in range(6):
        bar(done, 5)
    text = stream.getvalue()
    assert ("segment (x)" in text and "5/5" in text) is drawn
    assert text == "" or drawn
    bytes_stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", bytes_stream)
    download = ProgressBar("download", unit="B")
    download(3 * 1024 * 1024, 4 * 1024 * 1024)
    download(4 * 1024 * 1024, 4 * 1024 * 1024)
    assert "4.00M/4.00M" in bytes_stream.getvalue()


def test_progress_options(capsys):
    parser = build_parser()
    base = ["segment", "x.nrrd", "--prompts", "p.json", "-o", "o.nii.gz"]
    assert progress_enabled(parser.parse_args(base)) is None
    assert progress_enabled(parser.parse_args([*base, "--progress"])) is True
    assert progress_enabled(parser.parse_args([*base, "--no-progress"])) is False
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--progress", "--no-progress"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_segment_draws_no_bar_when_stderr_is_not_a_terminal(tmp_path, image3d, capsys):
    prompts = write_prompts(tmp_path, GOOD)
    args = ["segment", str(image3d), "--prompts", str(prompts), "-o", str(tmp_path / "o.nii.gz"), "--device", "cpu"]
    code, _, err = run_cli(args, capsys)  # pytest's captured stderr is not a terminal
    assert code == 0 and "segment (litemedsam)" not in err
    code, _, err = run_cli([*args, "--progress"], capsys)
    assert code == 0 and "segment (litemedsam)" in err and "1/1" in err
