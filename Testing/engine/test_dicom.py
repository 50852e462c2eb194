"""DICOM in and DICOM SEG out: a shared case written as a DICOM series by SimpleITK's writer reads back voxel-exactly
(folders with several series ask which), and a SEG written from a mask on it lands, read back with highdicom, on
the right source slices, voxel-exact against the labelmap, with the segment's label and colour."""

from __future__ import annotations

import json
import locale
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import shared_case

from SAMSegmentLib.cli import main
from SAMSegmentLib.io import DicomSeries, read_image, read_labelmap, read_volume, select_dicom_series, write_labelmap
from SAMSegmentLib.volume import VolumeError

hd = pytest.importorskip("highdicom", reason="highdicom is not installed (pip install 'samsegment[test]')")
pydicom = pytest.importorskip("pydicom")
from pydicom.uid import generate_uid  # noqa: E402

LUNG = ("ct_lung_tumor_pyradiomics", "lung2_crop_ct.nrrd")
LUNG_LABEL = ("ct_lung_tumor_pyradiomics", "lung2_crop_label.nrrd")
T2 = ("mr_spinal_cord_sct", "t2.nii.gz")


def write_dicom_series(image: sitk.Image, folder: Path, description: str, modality: str = "CT",
                       prefix: str = "slice") -> str:
    """Write a 3D image as a DICOM series with SimpleITK's writer (one file per slice); returns its UID.

    File names run against the slice order (slice k is file ``n-1-k``), so only sorting by position reads it right.
    GDCM's writer leaves the process's C locale at "C" (ASCII text files afterwards); it is restored here.
    """
    saved_locale = locale.setlocale(locale.LC_CTYPE)
    try:
        return _write_series(image, folder, description, modality, prefix)
    finally:
        locale.setlocale(locale.LC_CTYPE, saved_locale)


def _write_series(image: sitk.Image, folder: Path, description: str, modality: str, prefix: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    n = image.GetDepth()
    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}[modality]
    for k in range(n):
        slice_k = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {"0008|0016": sop_class, "0008|0018": generate_uid(), "0008|0060": modality, "0008|103e": description,
                "0010|0010": "Test^Case", "0010|0020": "SAMSEG-TEST", "0020|000d": study, "0020|000e": series,
                "0020|0052": frame, "0020|0011": "7", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.10g}" for v in position), "0020|0037": orientation,
                "0018|0050": f"{image.GetSpacing()[2]:.10g}"}
        for key, value in tags.items():
            slice_k.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{prefix}{n - 1 - k:03d}.dcm"))
        writer.Execute(slice_k)
    return series


@pytest.fixture(scope="module")
def lung_series(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("dicom") / "lung2"
    uid = write_dicom_series(sitk.ReadImage(str(shared_case(*LUNG))), folder, "lung2 chest CT")
    return folder, uid


@pytest.fixture(scope="module")
def two_series(tmp_path_factory) -> tuple[Path, str, str]:
    folder = tmp_path_factory.mktemp("dicom") / "two"
    ct = write_dicom_series(sitk.ReadImage(str(shared_case(*LUNG))), folder, "lung2 chest CT")
    mr = write_dicom_series(sitk.ReadImage(str(shared_case(*T2))), folder, "t2 spine", modality="MR", prefix="mr")
    return folder, ct, mr


def test_series_reads_like_the_original_volume(lung_series):
    folder, uid = lung_series
    volume, series = read_image(folder)
    original = read_volume(shared_case(*LUNG))
    assert isinstance(series, DicomSeries) and series.uid == uid and series.description == "lung2 chest CT"
    assert [f.name for f in series.files] == [f"slice{34 - k:03d}.dcm" for k in range(35)]  # sorted by position
    np.testing.assert_array_equal(volume.array, original.array, strict=True)
    np.testing.assert_allclose(volume.ijk_to_ras, original.ijk_to_ras, atol=1e-4)


def test_a_folder_with_several_series_asks_which(two_series):
    folder, ct, mr = two_series
    with pytest.raises(VolumeError) as info:
        read_volume(folder)
    message = str(info.value)
    assert "holds 2 DICOM series; choose one with --series UID" in message and "\n" not in message
    assert f"{ct} ('lung2 chest CT', 35 slices)" in message and f"{mr} ('t2 spine', 52 slices)" in message
    assert select_dicom_series(folder, mr).description == "t2 spine"
    # t2's directions are left-handed (det -1): sorted along the slice normal (row x column), its k runs backwards,
    # with a matrix that puts every voxel at the same physical point
    dicom, original = read_volume(folder, series=mr), read_volume(shared_case(*T2))
    np.testing.assert_array_equal(dicom.array, original.array[::-1], strict=True)
    n = original.array.shape[0]
    ijk = np.array([[3, 5, 0, 1], [40, 2, 7, 1], [0, 0, n - 1, 1]], dtype=float).T
    flipped = ijk.copy()
    flipped[2] = n - 1 - ijk[2]
    np.testing.assert_allclose(dicom.ijk_to_ras @ ijk, original.ijk_to_ras @ flipped, atol=1e-3)
    with pytest.raises(VolumeError, match=r"holds no DICOM series 1\.2\.3; it holds .*'t2 spine'"):
        read_volume(folder, series="1.2.3")


def test_not_a_series(tmp_path, lung_series):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no DICOM series found in the folder"):
        read_volume(tmp_path / "empty")
    with pytest.raises(VolumeError, match="is one DICOM slice; give the folder"):
        read_volume(lung_series[0] / "slice000.dcm")
    with pytest.raises(VolumeError, match="--series chooses among the DICOM series of a folder"):
        read_volume(shared_case(*LUNG), series="1.2.3")


def _frames_by_source_slice(seg, series: DicomSeries) -> dict[int, np.ndarray]:
    """SEG frame pixels keyed by the index k of the source slice each frame references (derivation UID), after
    checking that the frame's position is that slice's position."""
    index_of = {}
    positions = {}
    for k, f in enumerate(series.files):
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        index_of[ds.SOPInstanceUID] = k
        positions[k] = [float(v) for v in ds.ImagePositionPatient]
    frames = {}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    for n, group in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = index_of[source]
        np.testing.assert_allclose([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient],
                                   positions[k], atol=1e-3)
        assert k not in frames
        frames[k] = pixels[n].astype(bool)
    return frames


def test_seg_frames_land_on_the_source_slices_voxel_exactly(tmp_path, lung_series):
    folder, uid = lung_series
    volume, series = read_image(folder)
    labels, _ = read_labelmap(shared_case(*LUNG_LABEL))
    reference = labels == 1
    out = write_labelmap(reference, volume, tmp_path / "tumour.dcm", segment_name="tumour", color=(0.2, 0.8, 0.4),
                         dicom_source=series, model_name="litemedsam")
    assert not list(tmp_path.glob(".*partial"))
    seg = hd.seg.segread(str(out))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.FrameOfReferenceUID == pydicom.dcmread(str(series.files[0]), stop_before_pixels=True).FrameOfReferenceUID
    (segment,) = seg.SegmentSequence
    assert segment.SegmentLabel == "tumour" and segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    rgb = hd.color.CIELabColor.from_dicom_value(tuple(segment.RecommendedDisplayCIELabValue)).to_rgb()
    assert np.abs(np.array(rgb) - np.array([51, 204, 102])).max() <= 1
    frames = _frames_by_source_slice(seg, series)
    labelled = {int(k) for k in np.nonzero(reference.any(axis=(1, 2)))[0]}
    assert set(frames) == labelled and len(labelled) == 11  # one frame per labelled slice, none for empty ones
    for k, frame in frames.items():
        np.testing.assert_array_equal(frame, reference[k])
    # highdicom's own source-ordered reader agrees on the whole volume
    uids = [pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID for f in series.files]
    whole = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])[..., 0].astype(bool)
    np.testing.assert_array_equal(whole, reference)


def write_prompts(path: Path, slice_index: int, box, propagate: str = "none") -> Path:
    path.write_text(json.dumps({"axis": "K", "propagate": propagate,
                                "prompts": [{"slice": slice_index, "box": [int(v) for v in box]}]}))
    return path


def test_cli_segment_dicom_series_to_dicom_seg(tmp_path, lung_series, capsys):
    """End to end with LiteMedSAM on one slice: the SEG holds that slice only, as the NIfTI output of the same run."""
    folder, uid = lung_series
    labels, _ = read_labelmap(shared_case(*LUNG_LABEL))
    k = int(np.argmax((labels == 1).sum(axis=(1, 2))))
    ys, xs = np.nonzero(labels[k] == 1)
    prompts = write_prompts(tmp_path / "p.json", k, (xs.min(), ys.min(), xs.max(), ys.max()))
    common = ["--prompts", str(prompts), "--no-progress", "--device", "cpu"]
    assert main(["segment", str(folder), "-o", str(tmp_path / "out.dcm"), "--segment-name", "lung tumour",
                 "--segment-color", "255,128,0", *common]) == 0, capsys.readouterr().err
    assert main(["segment", str(folder), "-o", str(tmp_path / "out.nii.gz"), *common]) == 0
    assert "wrote" in capsys.readouterr().out
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out.nii.gz"))) > 0
    seg = hd.seg.segread(str(tmp_path / "out.dcm"))
    assert seg.SegmentSequence[0].SegmentLabel == "lung tumour"
    rgb = hd.color.CIELabColor.from_dicom_value(tuple(seg.SegmentSequence[0].RecommendedDisplayCIELabValue)).to_rgb()
    assert np.abs(np.array(rgb) - np.array([255, 128, 0])).max() <= 1
    frames = _frames_by_source_slice(seg, read_image(folder)[1])
    assert set(frames) == {k} and nifti[k].sum() > 100
    np.testing.assert_array_equal(frames[k], nifti[k])
    dice = 2 * (frames[k] & (labels[k] == 1)).sum() / (frames[k].sum() + (labels[k] == 1).sum())
    assert dice > 0.7, dice


def test_cli_dicom_errors_are_one_line_and_early(tmp_path, two_series, lung_series, capsys, monkeypatch):
    folder, ct, _ = two_series
    prompts = write_prompts(tmp_path / "p.json", 5, (10, 10, 40, 40))

    def run(*args) -> tuple[int, str]:
        code = main(["segment", *args, "--prompts", str(prompts), "--no-progress"])
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        return code, err

    code, err = run(str(folder), "-o", str(tmp_path / "x.dcm"))
    assert code == 2 and "holds 2 DICOM series; choose one with --series UID" in err and ct in err
    code, err = run(str(shared_case(*LUNG)), "-o", str(tmp_path / "x.dcm"))
    assert code == 2 and "IMAGE must be a DICOM series folder" in err
    code, err = run(str(folder), "--series", ct, "-o", str(tmp_path / "x.nii.gz"), "--segment-color", "300,0,0")
    assert code == 2 and "--segment-color must be three numbers from 0 to 255" in err
    monkeypatch.setitem(sys.modules, "highdicom", None)  # as if not installed
    code, err = run(str(lung_series[0]), "-o", str(tmp_path / "x.dcm"))
    assert code == 2 and "needs the Python package 'highdicom'" in err and "pip install highdicom" in err
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.slow
def test_cli_evaluate_reads_a_dicom_series_like_the_nrrd(tmp_path, two_series, capsys, caplog):
    """box-per-slice with LiteMedSAM on the DICOM series (chosen by --series) and on the NRRD: the same Dice."""
    folder, ct, _ = two_series
    label = str(shared_case(*LUNG_LABEL))
    common = ["--protocol", "box-per-slice", "--no-progress", "--device", "cpu"]
    with caplog.at_level(logging.WARNING):
        assert main(["evaluate", str(folder), label, "--series", ct, "-o", str(tmp_path / "dcm"), *common]) == 0
        assert main(["evaluate", str(shared_case(*LUNG)), label, "-o", str(tmp_path / "nrrd"), *common]) == 0
    capsys.readouterr()
    dcm = json.loads((tmp_path / "dcm" / "report.json").read_text())["cases"][0]
    nrrd = json.loads((tmp_path / "nrrd" / "report.json").read_text())["cases"][0]
    assert dcm["case"] == "two" and dcm["dice"] > 0.6
    assert dcm["dice"] == nrrd["dice"] and dcm["hd95_mm"] == nrrd["hd95_mm"]
    assert not [r for r in caplog.records if "geometry differs" in r.getMessage()]
