"""Comparing strategies with their uncertainty (pipeline.evaluation.compare): paired bootstrap over test subjects and
seeds, on per-subject Dice of real manually labelled OASIS brains."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.evaluation.compare import mean_ci95, paired_difference, subjects_needed
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.evaluation.references import tissues_by_name

from .conftest import SHARED_DATA

OASIS = SHARED_DATA / "oasis-manual"


@pytest.fixture(scope="module")
def references() -> dict[str, np.ndarray]:
    """Each OASIS subject's manual tissues {0, 1 GM, 2 WM, 3 CSF}, the 11 axial planes around its middle."""
    if not OASIS.is_dir():
        pytest.skip(f"real test data not found at {OASIS}")
    lookup = tissues_by_name(OASIS / "derivatives" / "manual" / "dseg.tsv")
    table = np.zeros(max(lookup) + 1, np.uint8)
    for index, tissue in lookup.items():
        table[index] = tissue
    out = {}
    for path in sorted((OASIS / "derivatives" / "manual").glob("sub-*/anat/*_dseg.nii.gz")):
        labels = table[np.rint(np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)).astype(int)]
        middle = int(np.argwhere(labels > 0)[:, 2].mean())
        out[path.name.split("_")[0]] = labels[:, :, middle - 10 : middle + 11 : 2]
    return out


def imperfect(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible segmentation: the reference moved by up to a voxel and with some boundary voxels wrong."""
    shift = rng.integers(-1, 2, 2)
    moved = np.roll(labels, tuple(shift), axis=(0, 1))
    boundary = moved != ndimage.grey_erosion(moved, size=(3, 3, 1))
    flip = boundary & (rng.uniform(size=labels.shape) < 0.3)
    return np.where(flip, labels, moved)


def swapped(labels: np.ndarray) -> np.ndarray:
    out = labels.copy()
    out[labels == 1], out[labels == 2] = 2, 1
    return out


def scores(references: dict[str, np.ndarray], predictions: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Mean Dice over tissues per subject (one seed)."""
    return {subject: [float(np.nanmean(list(dice_per_tissue(reference, predictions[subject]).values())))]
            for subject, reference in references.items()}


def predicted(references: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {subject: imperfect(labels, rng) for subject, labels in references.items()}


def test_a_model_beats_the_same_model_with_grey_and_white_matter_swapped(references):
    good = predicted(references, 0)
    model = scores(references, good)
    worse = scores(references, {subject: swapped(labels) for subject, labels in good.items()})
    difference = paired_difference("model", model, "swapped", worse)
    assert difference.detected and difference.winner == "model"
    assert difference.ci95[0] > 0.2 and difference.n_subjects == len(references) == 10
    assert "model beats swapped" in difference.verdict()
    again = paired_difference("swapped", worse, "model", model)  # order does not change the answer
    assert again.winner == "model" and again.ci95[1] < -0.2
    # the winner's lead and its interval, whichever side won: "by 0.3 (95 % CI +0.2 to +0.4)", never negative
    assert again.verdict() == difference.verdict()
    assert f"(95 % CI {difference.ci95[0]:+.3f} to {difference.ci95[1]:+.3f}; 10 subjects, 1 seed)" in again.verdict()


def test_two_identical_strategies_name_no_winner(references):
    first = scores(references, predicted(references, 1))
    second = scores(references, predicted(references, 2))  # the same method, other noise
    difference = paired_difference("first", first, "second", second)
    assert difference.ci95[0] < 0 < difference.ci95[1]
    assert difference.winner is None and "no detectable difference" in difference.verdict()
    assert "with 10 subjects and 1 seed " in difference.verdict()
    itself = paired_difference("first", first, "copy", first)
    assert itself.ci95 == (0.0, 0.0) and itself.winner is None


def test_the_bootstrap_is_seeded_and_reproducible(references):
    model = scores(references, predicted(references, 3))
    assert mean_ci95(model) == mean_ci95(model)
    assert mean_ci95(model, seed=1) != mean_ci95(model, seed=2)
    low, high = mean_ci95(model)
    values = [v[0] for v in model.values()]
    assert min(values) <= low < np.mean(values) < high <= max(values)
    other = {subject: [value[0] - 0.01] for subject, value in model.items()}
    assert paired_difference("a", model, "b", other).__dict__ == paired_difference("a", model, "b", other).__dict__


def test_seeds_are_resampled_within_subjects_and_the_needed_subjects_follow_the_spread():
    rng = np.random.default_rng(4)
    noisy = {f"s{i}": list(0.8 + rng.normal(0, 0.05, 3)) for i in range(6)}  # three seeds each
    steady = {subject: [np.mean(values)] * 3 for subject, values in noisy.items()}
    wide, narrow = mean_ci95(noisy), mean_ci95(steady)
    assert wide[1] - wide[0] > narrow[1] - narrow[0]  # the seeds' spread widens the interval
    with pytest.raises(ValueError, match="every seed"):
        mean_ci95({"a": [0.5, 0.6], "b": [0.5]})
    assert subjects_needed(np.array([0.01, -0.005, 0.02, 0.0])) > 4
    assert subjects_needed(np.array([0.1, 0.1])) is None  # no spread to go on


def test_cases_tables_round_trip_into_scores_per_subject_and_seed(tmp_path):
    """evaluate's rows (one per subject and seed, a subject without a score as n/a) written as the cases CSV,
    read back by the report: the same Scores, and the metrics' interval and SD over seeds from them."""
    from pipeline.core.io import write_csv
    from pipeline.evaluation.compare import cases_scores, read_cases
    from pipeline.evaluation.metrics import Kind
    from pipeline.stages.evaluate import kind_summary

    rows = [{"seed": seed, "kind": "real", "case": subject, "GM": gm, "WM": gm, "CSF": gm, "mean": gm}
            for seed, shift in ((42, 0.0), (7, 0.1))
            for subject, gm in (("sub-01", 0.5 + shift), ("sub-02", 0.7 + shift))]
    rows.append({"seed": 42, "kind": "real", "case": "sub-03", "GM": np.nan, "WM": np.nan, "CSF": np.nan, "mean": None})
    write_csv(rows, tmp_path / "hmrf-deepbet-cases.csv")
    scores = cases_scores(read_cases(tmp_path / "hmrf-deepbet-cases.csv"), Kind.REAL)
    assert sorted(scores) == ["sub-01", "sub-02"]  # sub-03 has no score
    assert scores["sub-01"] == pytest.approx([0.5, 0.6]) and scores["sub-02"] == pytest.approx([0.7, 0.8])
    summary = kind_summary(rows, Kind.REAL)
    assert summary.sd_over_seeds == pytest.approx(np.std([0.6, 0.7], ddof=1), abs=1e-4)
    assert 0.5 <= summary.ci95.low < summary.ci95.high <= 0.8 and summary.n == 3


def test_the_report_compares_tissue_by_tissue_when_one_tissue_decides_the_mean(references, tmp_path):
    """Two strategies whose labels differ only in CSF (the reference's ventricles partly lost): the mean over tissues
    names a winner, and the per-tissue comparisons say it is CSF's doing (GM and WM: no difference)."""
    from pipeline.core.io import write_csv
    from pipeline.core.labels import CSF
    from pipeline.evaluation.compare import read_cases
    from pipeline.evaluation.metrics import Kind, Scope, row_kind
    from pipeline.stages.report import pairwise, tissue_difference_rows

    good = predicted(references, 5)
    rng = np.random.default_rng(6)
    worse_csf = {subject: np.where((labels == CSF) & (rng.uniform(size=labels.shape) < 0.5), 0, labels)
                 for subject, labels in good.items()}
    for combo, predictions in (("hmrf-deepbet", good), ("hmrf-robex", worse_csf)):
        rows = []
        for subject, reference in references.items():
            dice = dice_per_tissue(reference, predictions[subject])
            rows.append({"seed": 42, "kind": row_kind(Kind.REAL, Scope.WHOLE), "case": subject, **dice,
                         "mean": float(np.mean(list(dice.values())))})
        write_csv(rows, tmp_path / f"{combo}-cases.csv")
    cases = {combo: read_cases(tmp_path / f"{combo}-cases.csv") for combo in ("hmrf-deepbet", "hmrf-robex")}
    [mean] = pairwise(cases, Kind.REAL)
    assert mean.winner == "hmrf-deepbet"
    by_tissue = {row["tissue"]: row for row in tissue_difference_rows(cases, Kind.REAL)}
    assert list(by_tissue) == ["GM", "WM", "CSF"]
    assert by_tissue["CSF"]["verdict"].startswith("hmrf-deepbet beats hmrf-robex by")
    assert " CSF Dice (95 % CI +" in by_tissue["CSF"]["verdict"]
    for tissue in ("GM", "WM"):
        assert by_tissue[tissue]["a - b"] == 0 and "no detectable difference" in by_tissue[tissue]["verdict"]
    assert by_tissue["CSF"]["a - b"] > mean.mean > 0  # the mean's lead is CSF's, shared over three tissues
