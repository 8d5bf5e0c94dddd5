"""Models that segment real brains: a short study on real ds000011 heads, its model scored on real slices of
a held-out subject it never saw. The predictions must stay inside the brain (real slices and synthetic ones
follow one path: pipeline.slices) and beat a trivial segmentation of the same slices."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.io import load_png
from pipeline.labels import WM
from pipeline.metrics import dice_per_tissue, summarize

from .conftest import copy_project, set_params, venv_env

pytestmark = pytest.mark.slow

COMBO = "hmrf-deepbet"
# A CI-sized version of the default CPU profile: the same network, under a third of its iterations, at batch 8
# (the batch this test was sized at: 99.5 % of the tissue inside the mask after 150 iterations).
PROFILE = {"epochs": 15, "iterations_per_epoch": 10, "val_iterations_per_epoch": 2, "batch_size": 8,
           "base_features": 16}


@pytest.fixture(scope="module")
def study(tmp_path_factory, ds000011: Path) -> Path:
    project = copy_project(tmp_path_factory.mktemp("real-brains"))
    set_params(project, acquire={"source": "bids", "bids_root": str(ds000011), "subjects": ["01", "02", "03"],
                                 "test_fraction": 0.34},
               synth={"n_train": 40, "n_test": 4}, train={"profile": "ci", "profiles": {"ci": PROFILE}})
    result = subprocess.run(["python", "-m", "pipeline", "run", "evaluate", "--segmenter", "hmrf", "--stripper",
                             "deepbet"], cwd=project, env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    return project


def real_slices(study: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, segmenter's labels, nnU-Net's raw prediction) of every real test slice."""
    real = study / "data" / "evaluation" / COMBO / "real"
    return [(load_png(real / "images" / f"{labels.stem}_0000.png"), load_png(labels),
             load_png(real / "predictions" / labels.name)) for labels in sorted((real / "labels").glob("*.png"))]


def test_the_study_scores_many_real_slices_of_a_held_out_subject(study: Path):
    metrics = json.loads((study / "metrics" / f"{COMBO}.json").read_text())
    assert metrics["n_real"] == 1 and metrics["train_test_share_subject"] is False
    assert len(real_slices(study)) == metrics["real_slices_per_subject"] > 5


def test_predicted_tissue_lies_inside_the_brain_mask(study: Path):
    """The real slice is 0 outside the brain mask (pipeline.slices.to_uint8); nnU-Net's prediction, before
    any masking, puts at least 99 % of its tissue inside it."""
    tissue = inside = 0
    for image, _, predicted in real_slices(study):
        tissue += int((predicted > 0).sum())
        inside += int(((predicted > 0) & (image > 0)).sum())
    assert tissue > 10_000  # brain-sized predictions, not empty ones
    assert inside >= 0.99 * tissue, inside / tissue


def test_real_slice_dice_clearly_beats_labelling_the_whole_brain_white_matter(study: Path):
    model, trivial = [], []
    for image, labels, predicted in real_slices(study):
        model.append(dice_per_tissue(labels, predicted))
        trivial.append(dice_per_tissue(labels, np.where(image > 0, WM, 0).astype(np.uint8)))
    model_mean = np.nanmean([[row[t] for t in ("GM", "WM", "CSF")] for row in model])
    trivial_mean = np.nanmean([[np.nan_to_num(row[t]) for t in ("GM", "WM", "CSF")] for row in trivial])
    assert model_mean > trivial_mean + 0.25, (model_mean, trivial_mean)
    assert summarize(model)["GM"] > 0.6 and summarize(model)["WM"] > 0.7, summarize(model)
