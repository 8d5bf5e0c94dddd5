"""Each atlas-based segmenter's labels become the tissues manual raters draw (docs/explanation/tissue-definitions.md):
a real FreeSurfer-labelled head (../shared/data/synthseg-label-maps) is what the tool returns, and it goes through
the segmenter's own wrapper (pipeline/tools/<method>.py, its output read and remapped) to the segment stage's
tissues. SynthSeg and FastSurfer are stand-in executables (they cannot be installed here, tests/standins.py);
SAMSEG's command is replaced, as in test_segment_standins.py."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.config import parse_config
from pipeline.core.labels import CSF, GM, WM, remap
from pipeline.core.labels import DEEP_GREY as DEEP_GREY_LABELS
from pipeline.stages.segment import Segmentation, segmentation
from pipeline.tools import samseg
from pipeline.tools.segmentation import SegmentJob, tool_image

from .standins import write_standin

THREADS = 2
DEEP_GREY = {"thalamus": (10, 49), "caudate": (11, 50), "putamen": (12, 51), "pallidum": (13, 52),
             "hippocampus": (17, 53), "amygdala": (18, 54), "accumbens": (26, 58), "ventral DC": (28, 60)}
OTHERS = {"cerebral cortex": ((3, 42), GM), "cerebellar cortex": ((8, 47), GM), "cerebral WM": ((2, 41), WM),
          "cerebellar WM": ((7, 46), WM), "brainstem": ((16,), WM),
          "lateral ventricles": ((4, 43), CSF)}
# FastSurfer's aparc.DKTatlas+aseg has the cortex as DKT parcels: one per hemisphere stands for them all.
FASTSURFER_CORTEX = "labels = np.where(labels == 3, 1028, np.where(labels == 42, 2003, labels))\n"


@pytest.fixture(scope="module")
def head(label_maps: Path, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A real FreeSurfer label map (every other voxel: the same structures, an eighth of the work), saved."""
    image = nib.load(label_maps / "training_seg_01.nii.gz")
    labels = np.ascontiguousarray(np.asarray(image.dataobj)[::2, ::2, ::2]).astype(np.int32)
    affine = image.affine @ np.diag([2, 2, 2, 1])
    path = tmp_path_factory.mktemp("freesurfer") / "labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    return path, labels


def job_on(path: Path, labels: np.ndarray, workdir: Path) -> SegmentJob:
    """A segment job on the label map's grid: a T1-like image of its tissues, the brain as its mask."""
    tissues = remap(labels)
    image = nib.Nifti1Image(np.array([0.0, 0.5, 0.8, 0.2], np.float32)[tissues], nib.load(path).affine)
    workdir.mkdir()
    return SegmentJob(tool_image(image, tissues > 0), tissues > 0, workdir, THREADS)


def standin_writing(bin_dir: Path, program: str, expected: list[str], source: Path, target: str,
                    convert: str = "") -> None:
    """``program`` on PATH, writing the real label map (through ``convert``) where the tool writes its output."""
    body = (f"image = nib.load({str(source)!r})\nlabels = np.asarray(image.dataobj)\n{convert}"
            f"target = {target}\nos.makedirs(os.path.dirname(target), exist_ok=True)\n"
            "nib.MGHImage(labels.astype(np.int32), image.affine).to_filename(target)\n")
    write_standin(bin_dir, program, expected, body)


def run_segmenter(method: str, head: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch) -> Segmentation:
    path, labels = head
    job = job_on(path, labels, tmp_path / "work")
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if method == "synthseg":
        expected = ["--i", str(job.workdir / "t1.nii.gz"), "--o", str(job.workdir / "synthseg.mgz"),
                    "--threads", str(THREADS), "--cpu"]
        standin_writing(bin_dir, "mri_synthseg", expected, path, "sys.argv[4]")
    elif method == "fastsurfer":
        expected = ["--t1", str(job.workdir / "t1.nii.gz"), "--sid", "subject", "--sd",
                    str(job.workdir / "fastsurfer"), "--seg_only", "--device", "cpu", "--threads", str(THREADS)]
        standin_writing(bin_dir, "run_fastsurfer.sh", expected, path,
                        "os.path.join(sys.argv[6], sys.argv[4], 'mri', 'aparc.DKTatlas+aseg.deep.mgz')",
                        FASTSURFER_CORTEX)
    else:
        def write_seg(args: list, tool: str, progress=None) -> None:
            (job.workdir / "samseg").mkdir()
            nib.MGHImage(labels, nib.load(path).affine).to_filename(job.workdir / "samseg" / "seg.mgz")

        monkeypatch.setattr(samseg, "run_command", write_seg)
    section = {"device": "cpu"} if method == "fastsurfer" else {}
    config = parse_config({"segment": {"methods": [method], method: section}}).segment
    return segmentation(method, job, config)


@pytest.mark.parametrize("method", ["samseg", "synthseg", "fastsurfer"])
def test_deep_grey_matter_lands_in_grey_matter_for_every_atlas_segmenter(method, head, tmp_path, monkeypatch):
    result = run_segmenter(method, head, tmp_path, monkeypatch)
    tissues, labels = result.tissues, head[1]
    # the structures are kept as the tool named them (the anatomy consensus reads its deep grey ones)
    brain = remap(labels) > 0
    assert np.array_equal(np.isin(result.structures, DEEP_GREY_LABELS), np.isin(labels, DEEP_GREY_LABELS) & brain)
    for name, numbers in DEEP_GREY.items():
        inside = np.isin(labels, numbers)
        assert inside.sum() > 100, name  # the structure is in the real map
        assert (tissues[inside] == GM).all(), f"{method}: {name} is not all GM"
    for name, (numbers, tissue) in OTHERS.items():
        inside = np.isin(labels, numbers)
        assert inside.sum() > 100 and (tissues[inside] == tissue).all(), f"{method}: {name}"
    assert not tissues[labels >= 500].any()  # the map's extra-cerebral tissues are not brain
    # deep GM is a real share of all GM: a mapping that lost it would fail here too
    deep = np.isin(labels, [number for numbers in DEEP_GREY.values() for number in numbers])
    assert 0.05 < deep.sum() / (tissues == GM).sum() < 0.3
