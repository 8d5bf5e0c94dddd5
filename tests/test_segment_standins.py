"""Our command lines and output reading for the segmenters not installed here (FSL FAST, SynthSeg,
FastSurfer), through stand-in executables put on PATH: each checks its argv exactly and writes its
output in the real tool's format and grid, from a phantom whose true tissues we know."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

from pipeline.__main__ import main
from pipeline.core.config import parse_config
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.stages.segment import segmentation
from pipeline.tools import samseg
from pipeline.tools.base import ToolFailed, ToolMissing
from pipeline.tools.segmentation import SegmentJob, tool_image

from .phantom import phantom
from .standins import write_standin

THREADS = 2

# Shared by the stand-ins: sample the input at the points of the tool's own grid (nearest voxel) and
# class it by intensity, like a segmenter that works on its own 1 mm grid.
SAMPLE_ON_GRID = """
def classes_on(grid_affine, shape, source):
    image = nib.load(source)
    ijk = np.indices(shape).reshape(3, -1).T
    world = nib.affines.apply_affine(grid_affine, ijk)
    src = np.rint(nib.affines.apply_affine(np.linalg.inv(image.affine), world)).astype(int)
    inside = np.all((src >= 0) & (src < image.shape), axis=1)
    values = np.zeros(len(ijk))
    values[inside] = image.get_fdata()[tuple(src[inside].T)]
    classes = np.select([values > 0.7, values > 0.4, values > 0], [3, 2, 1], 0)  # WM 3, GM 2, CSF 1
    return classes.reshape(shape), world.reshape(*shape, 3)
"""

FAST_BODY = """
assert os.environ.get("FSLOUTPUTTYPE") == "NIFTI_GZ", "FSLOUTPUTTYPE not pinned"
source, base = sys.argv[-1], sys.argv[-2]
image = nib.load(source)
classes, _ = classes_on(image.affine, image.shape, source)
permuted = np.choose(classes, [0, 2, 3, 1])  # CSF -> 2, GM -> 3, WM -> 1: FAST's numbering is not ours
nib.save(nib.Nifti1Image(permuted.astype(np.uint8), image.affine), base + "_seg.nii.gz")
"""

# FreeSurfer labels by class and hemisphere (x < 0 left): CSF, GM, WM.
SYNTHSEG_BODY = """
source, target = sys.argv[2], sys.argv[4]
image = nib.load(source)
corner_ijk = np.array(np.meshgrid(*[[0, n - 1] for n in image.shape])).reshape(3, -1).T
corners = nib.affines.apply_affine(image.affine, corner_ijk)
low, high = corners.min(axis=0), corners.max(axis=0)
shape = tuple(int(n) for n in np.ceil(high - low) + 1)
affine = np.eye(4)
affine[:3, 3] = low  # SynthSeg's output: 1 mm, its own grid
classes, world = classes_on(affine, shape, source)
left = world[..., 0] < 0
labels = np.select([classes == 1, (classes == 2) & left, classes == 2, (classes == 3) & left, classes == 3],
                   [24, 3, 42, 2, 41], 0)
nib.MGHImage(labels.astype(np.int32), affine).to_filename(target)
"""

FASTSURFER_BODY = """
source, subjects_dir, subject = sys.argv[2], sys.argv[6], sys.argv[4]
image = nib.load(source)
centre = nib.affines.apply_affine(image.affine, (np.array(image.shape) - 1) / 2)
rotation = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]])  # conformed: 1 mm, LIA
affine = nib.affines.from_matvec(rotation, centre - rotation @ np.full(3, 31.5))
classes, world = classes_on(affine, (64, 64, 64), source)
left = world[..., 0] < 0
# Cortex as DKT parcels (left 1000s, right 2000s), as aparc.DKTatlas+aseg.deep.mgz has it.
labels = np.select([classes == 1, (classes == 2) & left, classes == 2, (classes == 3) & left, classes == 3],
                   [24, 1028, 2003, 2, 41], 0)
out = os.path.join(subjects_dir, subject, "mri", "aparc.DKTatlas+aseg.deep.mgz")
os.makedirs(os.path.dirname(out))
nib.MGHImage(labels.astype(np.int32), affine).to_filename(out)
"""


@pytest.fixture
def job(tmp_path: Path) -> SegmentJob:
    image, mask, _ = phantom()
    workdir = tmp_path / "work"
    workdir.mkdir()
    return SegmentJob(tool_image(image, mask), mask, workdir, THREADS)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return folder


def assert_matches_truth(labels: np.ndarray) -> None:
    _, mask, truth = phantom()
    assert labels.shape == truth.shape and labels.dtype == np.uint8
    assert not labels[~mask].any()
    dice = dice_per_tissue(truth, labels)
    assert min(dice.values()) > 0.9, dice


def segment_config(method: str, **section) -> object:
    return parse_config({"segment": {"methods": [method], method: section}}).segment


def test_standin_fast_command_and_permuted_classes(job: SegmentJob, bin_dir: Path):
    expected = ["-t", "1", "-n", "3", "-H", "0.1", "-I", "4", "-o", str(job.workdir / "fast"),
                str(job.workdir / "t1.nii.gz")]
    write_standin(bin_dir, "fast", expected, FAST_BODY, SAMPLE_ON_GRID)
    assert_matches_truth(segmentation("fast", job, segment_config("fast")).tissues)


def test_standin_fast_found_under_fsldir_without_bias_correction(job: SegmentJob, tmp_path: Path,
                                                                  monkeypatch):
    expected = ["-t", "1", "-n", "3", "-H", "0.2", "-I", "4", "-N", "-o", str(job.workdir / "fast"),
                str(job.workdir / "t1.nii.gz")]
    write_standin(tmp_path / "fsl" / "bin", "fast", expected, FAST_BODY, SAMPLE_ON_GRID)
    monkeypatch.setenv("FSLDIR", str(tmp_path / "fsl"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    config = segment_config("fast", mrf_beta=0.2, bias_correction=False)
    assert_matches_truth(segmentation("fast", job, config).tissues)


def test_standin_synthseg_command_and_1mm_output_resampled(job: SegmentJob, bin_dir: Path):
    expected = ["--i", str(job.workdir / "t1.nii.gz"), "--o", str(job.workdir / "synthseg.mgz"),
                "--threads", str(THREADS), "--cpu"]
    write_standin(bin_dir, "mri_synthseg", expected, SYNTHSEG_BODY, SAMPLE_ON_GRID)
    assert_matches_truth(segmentation("synthseg", job, segment_config("synthseg")).tissues)


def test_standin_synthseg_rejects_an_unexpected_command_line(job: SegmentJob, bin_dir: Path):
    expected = ["--i", str(job.workdir / "t1.nii.gz"), "--o", str(job.workdir / "synthseg.mgz"),
                "--threads", str(THREADS), "--cpu"]
    write_standin(bin_dir, "mri_synthseg", expected, SYNTHSEG_BODY, SAMPLE_ON_GRID)
    with pytest.raises(ToolFailed, match="--robust"):
        segmentation("synthseg", job, segment_config("synthseg", robust=True))


def test_standin_fastsurfer_command_and_parcellated_lia_output(job: SegmentJob, bin_dir: Path):
    expected = ["--t1", str(job.workdir / "t1.nii.gz"), "--sid", "subject",
                "--sd", str(job.workdir / "fastsurfer"), "--seg_only",
                "--device", "cpu", "--threads", str(THREADS)]
    write_standin(bin_dir, "run_fastsurfer.sh", expected, FASTSURFER_BODY, SAMPLE_ON_GRID)
    assert_matches_truth(segmentation("fastsurfer", job, segment_config("fastsurfer", device="cpu")).tissues)


def test_standin_samseg_fast_options_and_output_on_another_grid(job: SegmentJob, monkeypatch):
    """SAMSEG itself runs in test_segment.py; here its command line, options file and a seg.mgz whose
    grid differs from the input's (a 1 mm RAS grid) go through our wrapper."""
    calls = []

    def fake_run(args: list, tool: str, progress=None) -> None:
        calls.append([str(arg) for arg in args])
        options = json.loads(Path(args[args.index("--options") + 1]).read_text())
        levels = options["optimizationOptions"]["multiResolutionSpecification"]
        assert levels == [{"targetDownsampledVoxelSpacing": 2.0}]
        image, _, truth = phantom()
        grid = nib.affines.from_matvec(np.eye(3), image.affine[:3, 3] - 2)
        freesurfer = nib.Nifti1Image(np.choose(truth, [0, 3, 41, 24]).astype(np.int32), image.affine)
        seg = resample_from_to(freesurfer, ((52, 54, 54), grid), order=0)
        out = job.workdir / "samseg"
        out.mkdir()
        nib.MGHImage(np.asarray(seg.dataobj, dtype=np.int32), grid).to_filename(out / "seg.mgz")

    monkeypatch.setattr(samseg, "run_command", fake_run)
    labels = segmentation("samseg", job, segment_config("samseg", fast=True)).tissues
    assert calls[0][1:] == ["-m", "samseg.cli.run_samseg", "-i", str(job.workdir / "t1.nii.gz"),
                            "-o", str(job.workdir / "samseg"), "--threads", str(THREADS),
                            "--options", str(job.workdir / "samseg_fast.json")]
    assert_matches_truth(labels)


@pytest.mark.parametrize(("method", "program", "hint"), [
    ("fast", "fast", "install FSL"),
    ("synthseg", "mri_synthseg", "install FreeSurfer"),
    ("fastsurfer", "run_fastsurfer.sh", "install FastSurfer"),
])
def test_missing_tool_stops_with_what_to_install(job: SegmentJob, tmp_path: Path, monkeypatch,
                                                 method: str, program: str, hint: str):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for variable in ("FSLDIR", "FREESURFER_HOME"):
        monkeypatch.delenv(variable, raising=False)
    message = rf"{method} was requested but is missing \(not found: {program}; {hint}"
    with pytest.raises(ToolMissing, match=message):
        segmentation(method, job, segment_config(method))
    assert list(job.workdir.iterdir()) == []  # nothing ran, nothing substituted


def test_doctor_lists_every_segmenter(capsys, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("FSLDIR", raising=False)
    assert main(["doctor"]) == 0
    lines = {tuple(line.split()[:3]) for line in capsys.readouterr().out.splitlines()}
    assert ("segment", "hmrf", "available") in lines
    assert ("segment", "samseg", "available") in lines
    for method in ("fast", "synthseg", "fastsurfer"):
        assert ("segment", method, "missing") in lines
