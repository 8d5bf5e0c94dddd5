"""Models that segment real brains: a short study on real ds000011 heads (``bench cross-site`` on the session's
segmented study), its model scored on the whole head of a held-out subject it never saw and on another site's head
against manual labels. The prediction must cover the brain, stay inside it (real slices and synthetic ones follow
one path: pipeline.imaging.slices) and beat a trivial segmentation of the same head."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.io import read_tsv
from pipeline.core.labels import WM
from pipeline.evaluation.dice import dice_per_tissue

from .conftest import TINY_SETTINGS, UPSTREAM_SUBJECTS, copy_study, venv_env

pytestmark = pytest.mark.slow

COMBO = "hmrf-deepbet"
# A CI-sized version of the default CPU profile: the same network at the default batch, a fraction of its iterations.
PROFILE = {"epochs": 10, "iterations_per_epoch": 20, "val_iterations_per_epoch": 2, "batch_size": 2,
           "base_features": 16}
CONDITIONS = ["clean", "coronal-3mm", "coronal-1.5mm-grid"]
# the session's study was made with tiny_study's settings: the same ones, so that DVC takes its stages as done
TINY_OVERRIDES = [arg for key, value in TINY_SETTINGS.items() for arg in ("-S", f"{key}={value}")]
VOXEL_MM = TINY_SETTINGS["harmonize.voxel_size_mm"]


@pytest.fixture(scope="module")
def cross_site(tmp_path_factory, upstream_study: Path, ds000011: Path, oasis: Path) -> dict:
    """``bench cross-site`` in a copy of the session's study (tests/conftest.py: ds000011 sub-01 and sub-02, one
    held out, segmented): DVC takes its stages up to segmentation as done, so only synthesis, a longer training and
    evaluation run; then its model scores an oasis-manual head against its manual labels, clean and with 3 mm
    coronal slices, and on 1.5 mm coronal slices of its own grid. One study serves every test here (the other
    degradations: tests/test_bench_cross_site.py)."""
    workdir = copy_study(upstream_study, tmp_path_factory.mktemp("real-brains") / "study")
    result = subprocess.run([sys.executable, "-m", "pipeline", "bench", "cross-site", "--train-root", str(ds000011),
                             "--train-subjects", *UPSTREAM_SUBJECTS, "--train-test-fraction", "0.5",
                             "--test-root", str(oasis), "--test-subjects", "1000", "--conditions", *CONDITIONS,
                             "--device", "cpu", "--workdir", str(workdir), "-S", "synth.n_train=40",
                             "-S", "synth.n_test=4", *TINY_OVERRIDES, "-S", "train.profile=ci",
                             "-S", f"train.profiles.ci={json.dumps(PROFILE)}"],
                            env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    log = (workdir / "bench-real.log").read_text()
    assert "Running stage 'segment@" not in log and "Running stage 'synthesize@" in log, log[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def study(cross_site: dict) -> Path:
    return Path(cross_site["workdir"])


def held_out(study: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(brain mask, segmenter's labels, the model's whole-head prediction) of the held-out subject."""
    subject = next(row["participant_id"] for row in read_tsv(study / "data/raw/participants.tsv")
                   if row["split"] == "test")

    def volume(folder: str, suffix: str) -> np.ndarray:
        return np.asarray(nib.load(study / folder / subject / "anat" / f"{subject}_{suffix}.nii.gz").dataobj)

    return (volume("data/stripped/deepbet", "desc-brain_mask") > 0, volume(f"data/segmented/{COMBO}", "dseg"),
            volume(f"data/evaluation/{COMBO}/volumes", "dseg"))


def test_the_study_scores_the_whole_head_of_a_held_out_subject(study: Path):
    metrics = json.loads((study / "data" / "evaluation" / COMBO / "evaluation.json").read_text())
    assert metrics["n_real"] == 1 and metrics["train_test_share_subject"] is False
    assert metrics["scored"] == "whole brain, 3D"


def test_every_plane_of_the_brain_has_tissue_and_the_tissue_lies_inside_the_mask(study: Path):
    """Each real slice is 0 outside the brain mask (pipeline.imaging.slices.to_uint8); nnU-Net's prediction, before any
    masking, labels tissue in every axial plane the mask covers and puts at least 99 % of it inside the mask."""
    mask, _, predicted = held_out(study)
    planes = np.any(mask, axis=(0, 1))
    assert planes.sum() * VOXEL_MM > 100  # a whole brain: more than 10 cm of it
    assert np.all(np.any(predicted > 0, axis=(0, 1))[planes]), np.flatnonzero(planes & ~np.any(predicted, (0, 1)))
    tissue = predicted > 0
    assert (tissue & mask).sum() >= 0.99 * tissue.sum(), (tissue & mask).sum() / tissue.sum()


def test_whole_head_dice_clearly_beats_labelling_the_whole_brain_white_matter(study: Path):
    mask, labels, predicted = held_out(study)
    model = dice_per_tissue(labels, predicted)
    trivial = dice_per_tissue(labels, np.where(mask, WM, 0).astype(np.uint8))
    model_mean = np.mean([model[t] for t in ("GM", "WM", "CSF")])
    trivial_mean = np.mean([np.nan_to_num(trivial[t]) for t in ("GM", "WM", "CSF")])
    assert model_mean > trivial_mean + 0.25, (model_mean, trivial_mean)
    assert model["GM"] > 0.6 and model["WM"] > 0.7, model


def test_the_model_scores_another_sites_heads_against_manual_labels_clean_and_degraded(cross_site: dict,
                                                                                          oasis: Path):
    assert cross_site["n_test_heads"] == 1 and list(cross_site["strategies"]) == [COMBO]
    strategy = cross_site["strategies"][COMBO]
    assert strategy["training_site"]["n_real"] == 1 and 0 < strategy["training_site"]["real"]["GM"] <= 1
    site = strategy["test_site"]
    assert list(site) == CONDITIONS
    for condition in CONDITIONS:
        for tissue in ("GM", "WM"):
            figure = site[condition][tissue]
            low, high = figure["ci95"]
            assert site[condition]["n"] == 1 and 0 <= low <= figure["mean"] <= high <= 1, (condition, tissue)
            if condition != "clean":
                assert figure["minus_clean"] == pytest.approx(figure["mean"] - site["clean"][tissue]["mean"], abs=2e-4)
    work = Path(cross_site["workdir"]) / "cross-site"
    rows = read_tsv(work / f"{COMBO}-cases.tsv")
    assert {(row["case"], row["condition"]) for row in rows} == {("1000", k) for k in CONDITIONS}
    assert len({row["GM"] for row in rows}) > 1  # the degradations change the labels
    # each prediction is on its test head's own grid, scored there
    clean = nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz")
    labels = nib.load(work / COMBO / "coronal-3mm" / "sub-1000_dseg.nii.gz")
    assert labels.shape == clean.shape and np.allclose(labels.affine, clean.affine, atol=1e-4)
    thick = nib.load(work / COMBO / "coronal-1.5mm-grid" / "sub-1000_dseg.nii.gz")  # a grid of its own
    axis = int(np.argmax(np.abs(clean.affine[1, :3])))  # the voxel axis along anterior-posterior
    assert thick.shape[axis] == int(np.ceil(clean.shape[axis] / 1.5))
    assert np.isclose(np.linalg.norm(thick.affine[:3, axis]), 1.5)


def test_the_plane_window_segments_another_sites_head_as_the_sliding_window_does(cross_site: dict, study: Path,
                                                                                 oasis: Path, tmp_path: Path):
    """The module's model on the oasis-manual head with each slice through the network whole
    (``train.predict_window: plane``): labels on the same grid, agreeing with the sliding window's (bench
    cross-site's clean run) on nearly every voxel of the brain but not all, and Dice against the manual labels within
    0.02 of theirs."""
    from pipeline.apps.bench_cross_site import score_site, site_heads

    heads = site_heads(oasis, oasis / "derivatives" / "manual", "table", ["1000"])
    [row] = score_site(study / "models" / COMBO, heads, ["clean"], tmp_path, "cpu", "auto", window="plane")
    sliding = cross_site["strategies"][COMBO]["test_site"]["clean"]
    assert all(row[tissue] == pytest.approx(sliding[tissue]["mean"], abs=0.02) for tissue in ("GM", "WM")), row
    whole, tiled = (np.asarray(nib.load(folder / COMBO / "clean" / "sub-1000_dseg.nii.gz").dataobj)
                    for folder in (tmp_path, Path(cross_site["workdir"]) / "cross-site"))
    brain = (whole > 0) | (tiled > 0)
    print(f"plane window: {row}, sliding {sliding}, agreement {(whole == tiled)[brain].mean():.4f}")
    assert 0.9 < (whole == tiled)[brain].mean() < 1


def test_a_test_sites_reference_flipped_left_right_stops_its_scoring(study: Path, oasis: Path, tmp_path: Path):
    """The module's model segments an oasis-manual head whose manual map was saved with its voxels flipped
    left-right under the same header (on the head still, so the check before training lets it pass): scoring it
    stops, naming the subject and the map, rather than report the flip as a poor model."""
    from pipeline.apps.bench_cross_site import score_site, site_heads
    from pipeline.core.io import InputError, save_nifti

    manual, flipped = oasis / "derivatives" / "manual", tmp_path / "flipped"
    source = nib.load(manual / "sub-1000/anat/sub-1000_dseg.nii.gz")
    left_right = int(np.argmax(np.abs(source.affine[0, :3])))
    save_nifti(np.flip(np.asarray(source.dataobj), left_right), source.affine,
               flipped / "sub-1000/anat/sub-1000_dseg.nii.gz")
    (flipped / "dseg.tsv").write_text((manual / "dseg.tsv").read_text())
    heads = site_heads(oasis, flipped, "table", ["1000"])
    with pytest.raises(InputError, match=r"sub-1000: its reference labels .*flipped/sub-1000/anat/sub-1000_dseg\.nii"
                                         r"\.gz agree with the model's labels of .* better mirrored left-right"):
        score_site(study / "models" / COMBO, heads, ["clean"], tmp_path / "cross-site", "cpu", "auto")
