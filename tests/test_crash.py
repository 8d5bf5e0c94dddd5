"""SIGKILL in the middle of a long stage: nothing partial is taken as done, the rerun completes
and its outputs equal an uninterrupted run's (byte for byte where the stage is deterministic)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from .conftest import copy_outputs, copy_project, set_params, tiny_study, venv_env

pytestmark = pytest.mark.slow


def run_stage(project: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", *args], cwd=project, env=venv_env(),
                            capture_output=True, text=True)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout + result.stderr


def kill_when(project: Path, pattern: str, *args: str) -> str:
    """Run a stage and SIGKILL it (and its children) once its log matches ``pattern``."""
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], cwd=project, env=venv_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.search(pattern, line):
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the stage ended before it could be killed:\n" + "".join(seen)
    return "".join(seen)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory, ds000011: Path, upstream_study: Path) -> Path:
    """A study up to segmentation on two real subjects: the session's (tests/conftest.py; each stage ran two heads at
    a time, params.yaml's workers: 2), its outputs copied."""
    project = copy_project(tmp_path_factory.mktemp("crash") / "study")
    tiny_study(project, ds000011, ["01", "02"], test_fraction=0.5)
    set_params(project, synth={"n_train": 6, "n_test": 3})
    copy_outputs(upstream_study, project)
    return project


def clone(project: Path, destination: Path) -> Path:
    shutil.copytree(project, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def test_killed_strip_leaves_nothing_complete_and_rerun_matches(segmented: Path, tmp_path: Path):
    project = clone(segmented, tmp_path / "killed")
    reference = segmented / "data" / "stripped" / "deepbet"
    shutil.rmtree(project / "data" / "stripped" / "deepbet")
    kill_when(project, r"strip deepbet \[1/2\] sub-\d+ done", "strip", "--stripper", "deepbet")
    assert not (project / "data" / "stripped" / "deepbet").exists()
    run_stage(project, "strip", "--stripper", "deepbet")
    for subject in ("01", "02"):
        for suffix in ("desc-brain_mask", "desc-brain_T1w"):
            name = f"sub-{subject}/anat/sub-{subject}_{suffix}.nii.gz"
            rerun = nib.load(project / "data" / "stripped" / "deepbet" / name)
            assert np.array_equal(rerun.get_fdata(), nib.load(reference / name).get_fdata())


def test_killed_segment_leaves_nothing_complete_and_rerun_matches(segmented: Path, tmp_path: Path):
    project = clone(segmented, tmp_path / "killed")
    reference = segmented / "data" / "segmented" / "hmrf-deepbet"
    shutil.rmtree(project / "data" / "segmented" / "hmrf-deepbet")
    kill_when(project, r"segment hmrf-deepbet \[1/2\] sub-\d+ done", "segment", "--segmenter", "hmrf",
              "--stripper", "deepbet")
    assert not (project / "data" / "segmented" / "hmrf-deepbet").exists()  # the half-done stage is not done
    run_stage(project, "segment", "--segmenter", "hmrf", "--stripper", "deepbet")
    for subject in ("01", "02"):
        name = f"sub-{subject}/anat/sub-{subject}_dseg.nii.gz"
        rerun = nib.load(project / "data" / "segmented" / "hmrf-deepbet" / name)
        assert np.array_equal(rerun.get_fdata(), nib.load(reference / name).get_fdata())
    assert not list((project / "data" / "segmented").glob(".*")), "temporary folders left behind"


def test_segment_on_one_core_equals_two_subjects_at_once(segmented: Path, tmp_path: Path):
    """The core budget changes how subjects are scheduled, never the labels."""
    project = clone(segmented, tmp_path / "serial")
    set_params(project, workers=1)
    shutil.rmtree(project / "data" / "segmented" / "hmrf-deepbet")
    log = run_stage(project, "segment", "--segmenter", "hmrf", "--stripper", "deepbet")
    assert "2 subject(s), 1 at a time with 1 thread(s) each" in log
    parallel = segmented / "data" / "segmented" / "hmrf-deepbet"
    for subject in ("01", "02"):
        name = f"sub-{subject}/anat/sub-{subject}_dseg.nii.gz"
        serial = np.asarray(nib.load(project / "data" / "segmented" / "hmrf-deepbet" / name).dataobj)
        assert np.array_equal(serial, np.asarray(nib.load(parallel / name).dataobj))


def test_killed_synthesize_reruns_to_byte_identical_pngs(segmented: Path, tmp_path: Path):
    clean = clone(segmented, tmp_path / "clean")
    run_stage(clean, "synthesize", "--segmenter", "hmrf", "--stripper", "deepbet")
    project = clone(segmented, tmp_path / "killed")
    kill_when(project, r"synthesize hmrf-deepbet \[1/2\] sub-\d+ done", "synthesize", "--segmenter", "hmrf",
              "--stripper", "deepbet")
    assert not (project / "data" / "synthetic" / "hmrf-deepbet").exists()
    run_stage(project, "synthesize", "--segmenter", "hmrf", "--stripper", "deepbet")
    expected = sorted((clean / "data" / "synthetic" / "hmrf-deepbet").rglob("*.png"))
    produced = sorted((project / "data" / "synthetic" / "hmrf-deepbet").rglob("*.png"))
    assert [p.relative_to(project) for p in produced] == [p.relative_to(clean) for p in expected]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(produced, expected, strict=True))


CI_PROFILE = {"ci": {"epochs": 4, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "batch_size": 2,
                      "base_features": 4}}
PARTIAL = Path("models") / ".hmrf-deepbet.partial"


@pytest.fixture(scope="module")
def crashed_training(segmented: Path, tmp_path_factory) -> Path:
    """A study whose training was killed at its third epoch, its checkpoint left in the work folder."""
    project = clone(segmented, tmp_path_factory.mktemp("train") / "study")
    set_params(project, train={"profile": "ci", "profiles": CI_PROFILE})
    run_stage(project, "export", "--segmenter", "hmrf", "--stripper", "deepbet")
    kill_when(project, r"Epoch 2\b", "train", "--segmenter", "hmrf", "--stripper", "deepbet")
    assert not (project / "models" / "hmrf-deepbet").exists()
    assert list((project / PARTIAL).rglob("checkpoint_latest.pth")), "no checkpoint survived the crash"
    return project


def test_killed_training_resumes_from_its_checkpoint_when_nothing_it_reads_changed(crashed_training: Path,
                                                                                   tmp_path: Path):
    project = clone(crashed_training, tmp_path / "resumed")
    # how it runs and what another stage reads: neither is the training's business
    set_params(project, workers=1, evaluate={"band_mm": 5.0})
    resumed = run_stage(project, "train", "--segmenter", "hmrf", "--stripper", "deepbet")
    assert "resuming the interrupted run's work" in resumed
    assert "Epoch 0" not in resumed and "Epoch 3" in resumed  # continued, not restarted
    assert list((project / "models" / "hmrf-deepbet").rglob("checkpoint_final.pth"))
    assert not (project / PARTIAL).exists()


def test_killed_training_starts_afresh_when_one_input_file_changed(crashed_training: Path, tmp_path: Path):
    """A new synthetic set under the same parameters (one image altered): the old set's checkpoint is not resumed,
    and the log names the file."""
    from pipeline.core.io import load_png, save_png

    project = clone(crashed_training, tmp_path / "altered")
    image = sorted((project / "data" / "nnunet_raw" / "hmrf-deepbet").rglob("imagesTr/*.png"))[0]
    pixels = load_png(image).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    save_png(pixels, image)
    restarted = kill_when(project, r"Epoch 0\b", "train", "--segmenter", "hmrf", "--stripper", "deepbet")
    assert f"input {image.relative_to(project)} changed" in restarted
    assert "starting afresh" in restarted and "resuming the interrupted run's work" not in restarted
