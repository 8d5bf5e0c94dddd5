"""Our command lines for FreeSurfer's mri_synthstrip and mri_synthsr, and for nipreps-synthstrip, through
stand-in executables put on PATH: each checks its argv exactly and writes its output like the real tool
(a mask from a threshold, on the input grid), which our wrappers then read."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.core.config import HarmonizeConfig, StripConfig, parse_config
from pipeline.core.io import save_nifti
from pipeline.imaging.preprocess import harmonize_synthsr
from pipeline.tools import registry
from pipeline.tools.base import ToolFailed, ToolMissing
from pipeline.tools.registry import brain_mask

from . import standins

# Our wrappers work in a fresh temporary folder: "{tmp}" in an expected argv stands for it.
SYNTHSTRIP_ARGS = ["-i", "{tmp}/t1.nii.gz", "-o", "{tmp}/brain.nii.gz", "-m", "{tmp}/mask.nii.gz"]

SYNTHSTRIP_BODY = """
image = nib.load(sys.argv[2])
mask = image.get_fdata() > 0.5
nib.save(nib.Nifti1Image(np.where(mask, image.get_fdata(), 0).astype(np.float32), image.affine), sys.argv[4])
nib.save(nib.Nifti1Image(mask.astype(np.uint8), image.affine @ SHIFT), sys.argv[6])
"""

SYNTHSR_BODY = """
image = nib.load(sys.argv[2])  # SynthSR's output: an MPRAGE-like image of the same head
nib.save(nib.Nifti1Image(image.get_fdata().astype(np.float32) * 3.0, image.affine), sys.argv[4])
"""


def write_standin(folder: Path, name: str, expected: list[str], body: str, shift_mm: float = 0.0) -> Path:
    """A stand-in whose outputs may be shifted by ``shift_mm`` (SHIFT): a tool writing on the wrong grid."""
    return standins.write_standin(folder, name, expected, body, f"SHIFT = np.eye(4)\nSHIFT[0, 3] = {shift_mm}")


def head() -> tuple[nib.Nifti1Image, np.ndarray]:
    """A bright ball (a brighter white-matter core in a grey rim) in a dim shell, on an oblique LAS-like grid:
    (image, what a threshold keeps)."""
    shape = (40, 44, 36)
    angle = np.radians(12)
    rotation = np.array([[-np.cos(angle), -np.sin(angle), 0], [-np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = nib.affines.from_matvec(rotation @ np.diag([1.2, 1.1, 1.3]), [30.0, -20.0, -25.0])
    index = np.indices(shape).reshape(3, -1).T
    distance = np.linalg.norm(index - (np.array(shape) - 1) / 2, axis=1).reshape(shape)
    rng = np.random.default_rng(3)
    brain = np.where(distance < 7, 0.85, 0.6) + 0.1 * rng.random(shape)
    data = np.where(distance < 12, brain, np.where(distance < 16, 0.3, 0.0))
    return nib.Nifti1Image(data.astype(np.float32), affine), data > 0.5


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    return folder


def strip_config(**synthstrip) -> StripConfig:
    return parse_config({"strip": {"methods": ["synthstrip"], "synthstrip": synthstrip}}).strip


def test_standin_mri_synthstrip_command_and_mask_on_the_input_grid(bin_dir: Path):
    write_standin(bin_dir, "mri_synthstrip", [*SYNTHSTRIP_ARGS, "-b", "1"], SYNTHSTRIP_BODY)
    image, expected = head()
    assert np.array_equal(brain_mask("synthstrip", image, StripConfig()), expected)


def test_standin_mri_synthstrip_under_freesurfer_home_with_a_border(tmp_path: Path, monkeypatch):
    freesurfer_bin = tmp_path / "freesurfer" / "bin"
    write_standin(freesurfer_bin, "mri_synthstrip", [*SYNTHSTRIP_ARGS, "-b", "3"], SYNTHSTRIP_BODY)
    monkeypatch.setenv("FREESURFER_HOME", str(tmp_path / "freesurfer"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    image, expected = head()
    assert np.array_equal(brain_mask("synthstrip", image, strip_config(border_mm=3)), expected)


def test_standin_mri_synthstrip_on_the_gpu_when_there_is_one(bin_dir: Path, monkeypatch):
    write_standin(bin_dir, "mri_synthstrip", [*SYNTHSTRIP_ARGS, "-b", "1", "-g"], SYNTHSTRIP_BODY)
    monkeypatch.setattr(registry, "torch_device", lambda: "cuda")
    image, expected = head()
    assert np.array_equal(brain_mask("synthstrip", image, StripConfig()), expected)


def test_standin_nipreps_synthstrip_with_a_model_file(bin_dir: Path, tmp_path: Path):
    model = tmp_path / "synthstrip.1.pt"
    model.write_bytes(b"weights")
    write_standin(bin_dir, "nipreps-synthstrip", [*SYNTHSTRIP_ARGS, "-b", "1", "--model", str(model)],
                  SYNTHSTRIP_BODY)
    image, expected = head()
    assert np.array_equal(brain_mask("synthstrip", image, strip_config(model=str(model))), expected)


def test_standin_mask_on_another_grid_is_refused(bin_dir: Path):
    write_standin(bin_dir, "mri_synthstrip", [*SYNTHSTRIP_ARGS, "-b", "1"], SYNTHSTRIP_BODY, shift_mm=2.0)
    with pytest.raises(ToolFailed, match="another grid"):
        brain_mask("synthstrip", head()[0], StripConfig())


def test_standin_unexpected_command_line_fails(bin_dir: Path):
    write_standin(bin_dir, "mri_synthstrip", [*SYNTHSTRIP_ARGS, "-b", "1"], SYNTHSTRIP_BODY)
    with pytest.raises(ToolFailed, match="'-b', '2'"):
        brain_mask("synthstrip", head()[0], strip_config(border_mm=2))


def test_missing_synthstrip_stops_with_what_to_install(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    message = r"synthstrip was requested but is missing \(not found: mri_synthstrip; install FreeSurfer"
    with pytest.raises(ToolMissing, match=message + ".*nipreps-synthstrip"):
        brain_mask("synthstrip", head()[0], StripConfig())
    with pytest.raises(ToolMissing, match=r"model file .*nowhere.pt not found \(strip.synthstrip.model\)"):
        brain_mask("synthstrip", head()[0], strip_config(model=str(tmp_path / "nowhere.pt")))


def test_doctor_tells_which_synthstrip_params_yaml_asks_for(bin_dir: Path, tmp_path: Path, monkeypatch,
                                                            capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["doctor"]) == 0  # no params.yaml: the defaults, mri_synthstrip
    assert "strip      synthstrip   missing    not found: mri_synthstrip" in capsys.readouterr().out
    model = tmp_path / "synthstrip.1.pt"
    (tmp_path / "params.yaml").write_text(f"strip:\n  synthstrip:\n    model: {model}\n")
    assert main(["doctor"]) == 0
    assert f"model file {model} not found" in capsys.readouterr().out
    model.write_bytes(b"weights")
    write_standin(bin_dir, "nipreps-synthstrip", [], "")
    assert main(["doctor"]) == 0
    assert f"strip      synthstrip   available  {bin_dir / 'nipreps-synthstrip'}" in capsys.readouterr().out


def test_standin_mri_synthsr_command_and_harmonized_output(bin_dir: Path, tmp_path: Path):
    image, _ = head()
    source, target = tmp_path / "raw" / "sub-01_T1w.nii.gz", tmp_path / "out" / "sub-01_T1w.nii.gz"
    save_nifti(image.get_fdata(dtype=np.float32) * 1000, image.affine, source)
    write_standin(bin_dir, "mri_synthsr", ["--i", str(source), "--o", str(target), "--threads", "2", "--cpu"],
                  SYNTHSR_BODY)
    harmonized, record = harmonize_synthsr(source, target, HarmonizeConfig(method="synthsr"), threads=2)
    assert record["Method"] == "synthsr"
    assert nib.aff2axcodes(harmonized.affine) == ("R", "A", "S")
    data = harmonized.get_fdata()
    assert data.min() == 0.0 and data.max() == 1.0
    centre = nib.affines.apply_affine(image.affine, (np.array(image.shape) - 1) / 2)
    brightest = nib.affines.apply_affine(harmonized.affine, np.argwhere(data > 0.5).mean(axis=0))
    assert np.linalg.norm(brightest - centre) < 1.5  # the same head, where it was in world space


def test_predict_preprocesses_a_head_with_standin_mri_synthsr_when_the_model_was_trained_so(bin_dir: Path,
                                                                                           tmp_path: Path):
    from pipeline.apps.predict import prepare_head
    from pipeline.core.config import TrainProfile
    from pipeline.nnunet.models import TrainingRecord

    small, small_kept = head()
    pad = 30  # a field of view a head fits in: predict runs the study's acquisition QC
    affine = small.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(small.affine, [-pad] * 3)
    image, kept = nib.Nifti1Image(np.pad(small.get_fdata(dtype=np.float32), pad), affine), np.pad(small_kept, pad)
    source = tmp_path / "new-head.nii.gz"
    save_nifti(image.get_fdata(dtype=np.float32) * 1000, image.affine, source)
    synthsr_out = tmp_path / "work" / "synthsr" / "new-head.nii.gz"
    threads = str(len(os.sched_getaffinity(0)))
    write_standin(bin_dir, "mri_synthsr", ["--i", str(source), "--o", str(synthsr_out), "--threads", threads, "--cpu"],
                  SYNTHSR_BODY)
    write_standin(bin_dir, "mri_synthstrip", [*SYNTHSTRIP_ARGS, "-b", "1"], SYNTHSTRIP_BODY)
    record = TrainingRecord(profile="ci", schedule=TrainProfile(epochs=1, iterations_per_epoch=1,
                                                                val_iterations_per_epoch=1),
                            fold="all", device="cpu", deterministic=True, seed=42, seeds=[42], wall_s=1.0,
                            trainer="nnUNetTrainerPipeline", dataset_id=103, segmenter="hmrf", stripper="synthstrip",
                            harmonize=HarmonizeConfig(method="synthsr"), strip=strip_config(), size=64,
                            levels="brain", views=["axial"], versions={})
    prepared = prepare_head(source, record, tmp_path / "work")
    original, brain = prepared.original, prepared.brain
    assert synthsr_out.is_file()  # the model's own harmonization ran, not the built-in one
    assert original.shape == image.shape and np.allclose(original.affine, image.affine)
    assert nib.aff2axcodes(brain.affine) == ("R", "A", "S")
    centre = nib.affines.apply_affine(image.affine, np.argwhere(kept).mean(axis=0))
    found = nib.affines.apply_affine(brain.affine, np.argwhere(brain.get_fdata() > 0).mean(axis=0))
    assert np.linalg.norm(found - centre) < 1.5  # the cropped brain sits where the ball was
