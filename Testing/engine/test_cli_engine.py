"""``samsegment segment --engine URL`` against a real ``samsegment serve`` process gives exactly the labelmap that
the in-process run gives, on every shared case (LiteMedSAM, one box on the largest slice, propagated both ways over
a few slices); and ``serve`` refuses to listen beyond loopback without a token."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cases import CASES, one_box_prompts
from shared_data import shared_case

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "SAMSegmentLib.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def engine_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    token = secrets.token_urlsafe(24)
    (folder / "tokens").write_text(f"# test token\n{token}\n")
    ready = folder / "ready.json"
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "SAMSegmentLib.cli", "serve", "--port", "0", "--token-file",
                             str(folder / "tokens"), "--ready-file", str(ready), "--device", "cpu"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            log.close()
            proc.kill()
            pytest.fail("samsegment serve did not start: " + (folder / "serve.log").read_text()[-2000:])
        time.sleep(0.1)
    info = json.loads(ready.read_text())
    yield info["url"], token
    proc.terminate()
    proc.wait(10)
    log.close()


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_engine_and_in_process_labelmaps_are_identical(engine_server, case, tmp_path):
    url, token = engine_server
    folder, image, label, value, axis = CASES[case]
    image_path = shared_case(folder, image)
    ref = np.rint(sitk.GetArrayFromImage(sitk.ReadImage(str(shared_case(folder, label))))) == value
    prompts = one_box_prompts(ref, axis)
    seed = prompts["prompts"][0]["slice"]
    n = ref.shape[{"K": 0, "J": 1, "I": 2}[axis]]
    prompts["range"] = [max(0, seed - 3), min(n - 1, seed + 3)]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    local = cli("segment", str(image_path), "--prompts", str(tmp_path / "prompts.json"), "-o",
                str(tmp_path / "local.nrrd"), "--device", "cpu", "--no-progress")
    assert local.returncode == 0, local.stderr
    env = dict(os.environ, SAMSEGMENT_TOKEN=token)
    remote = cli("segment", str(image_path), "--prompts", str(tmp_path / "prompts.json"), "-o",
                 str(tmp_path / "remote.nrrd"), "--engine", url, "--no-progress", env=env)
    assert remote.returncode == 0, remote.stderr
    a = sitk.ReadImage(str(tmp_path / "local.nrrd"))
    b = sitk.ReadImage(str(tmp_path / "remote.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing()
    assert sitk.GetArrayFromImage(a).sum() > 0


def test_engine_errors_are_one_line(engine_server, tmp_path):
    url, _ = engine_server
    image = shared_case("ct_lung_tumor_pyradiomics", "lung2_crop_ct.nrrd")
    (tmp_path / "p.json").write_text(json.dumps({"axis": "K", "prompts": [{"slice": 17, "box": [80, 90, 130, 140]}]}))
    env = {k: v for k, v in os.environ.items() if k != "SAMSEGMENT_TOKEN"}
    out = cli("segment", str(image), "--prompts", str(tmp_path / "p.json"), "-o", str(tmp_path / "o.nrrd"),
              "--engine", url, env=env, timeout=120)
    assert out.returncode == 1 and "needs an access token" in out.stderr and "Traceback" not in out.stderr
    out = cli("segment", str(image), "--prompts", str(tmp_path / "p.json"), "-o", str(tmp_path / "o.nrrd"),
              "--engine", "http://127.0.0.1:9", env=env, timeout=120)
    assert out.returncode == 1 and "cannot be reached" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "o.nrrd").exists()


def test_serve_refuses_other_interfaces_without_a_token():
    env = {k: v for k, v in os.environ.items() if k != "SAMSEGMENT_TOKEN"}
    out = cli("serve", "--host", "0.0.0.0", "--port", "0", env=env, timeout=60)
    assert out.returncode != 0 and "without an access token" in out.stderr
