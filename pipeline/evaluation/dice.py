"""Dice per tissue, per case and summarized."""

from __future__ import annotations

import math

import numpy as np

from pipeline.core.labels import TISSUES


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
