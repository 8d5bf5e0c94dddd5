"""Dice per tissue, per case and summarized."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.io import load_png
from pipeline.labels import TISSUES
from pipeline.slices import SLICE_SUFFIX


def dice(reference: np.ndarray, prediction: np.ndarray, label: int) -> float:
    """Dice of one label; NaN when the label is absent from both (nothing to score)."""
    ref, pred = reference == label, prediction == label
    total = int(ref.sum()) + int(pred.sum())
    if total == 0:
        return math.nan
    return 2.0 * int((ref & pred).sum()) / total


def dice_per_tissue(reference: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    if reference.shape != prediction.shape:
        raise ValueError(f"reference {reference.shape} and prediction {prediction.shape} differ in shape")
    return {name: dice(reference, prediction, label) for label, name in TISSUES.items()}


def summarize(cases: list[dict[str, float]]) -> dict[str, float | None]:
    """Mean over cases of each tissue's Dice (cases where it is absent skipped), and their mean."""
    summary: dict[str, float | None] = {}
    for name in TISSUES.values():
        values = [case[name] for case in cases if not math.isnan(case[name])]
        summary[name] = float(np.mean(values)) if values else None
    present = [value for value in summary.values() if value is not None]
    summary["mean"] = float(np.mean(present)) if present else None
    return summary


def score_folder(references: Path, predictions: Path, kind: str) -> list[dict]:
    """Dice of every case (PNG) in ``references`` against its prediction."""
    rows = []
    for reference in sorted(references.glob("*.png")):
        rows.append({"kind": kind, "case": reference.stem,
                     **dice_per_tissue(load_png(reference), load_png(prediction_of(reference, predictions)))})
    return rows


def prediction_of(reference: Path, predictions: Path) -> Path:
    predicted = predictions / reference.name
    if not predicted.is_file():
        raise FileNotFoundError(f"nnU-Net wrote no prediction for {reference.name} in {predictions}")
    return predicted


def score_subjects(references: Path, predictions: Path, kind: str) -> list[dict]:
    """Dice of every subject over all its slices at once (``slice_name``): one row per subject, each voxel
    of the band counting once, so a subject weighs the same whatever its number of slices."""
    by_subject: dict[str, list[Path]] = {}
    for reference in sorted(references.glob("*.png")):
        by_subject.setdefault(reference.stem.split(SLICE_SUFFIX)[0], []).append(reference)
    rows = []
    for subject, slices in by_subject.items():
        truth = np.stack([load_png(path) for path in slices])
        predicted = np.stack([load_png(prediction_of(path, predictions)) for path in slices])
        rows.append({"kind": kind, "case": subject, "slices": len(slices), **dice_per_tissue(truth, predicted)})
    return rows
