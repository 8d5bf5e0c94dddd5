"""A model applied to a whole head: every axial plane of the brain segmented as the 2D slice every model sees
(``pipeline.slices.slice_canvas``), the planes stacked into a label volume on the brain's grid. Used alike by the
evaluate stage, ``predict`` and ``bench train``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np

from pipeline.slices import slice_canvas, uncenter

log = logging.getLogger("pipeline")

Segmenter = Callable[[np.ndarray], np.ndarray]  # a (size, size) uint8 slice -> its labels


def brain_planes(mask: np.ndarray) -> list[int]:
    """The axial planes (last axis) that hold brain."""
    return np.flatnonzero(np.any(mask, axis=(0, 1))).tolist()


def predict_planes(segment: Segmenter, brain: np.ndarray, mask: np.ndarray, size: int,
                   planes: Iterable[int] | None = None, label: str = "") -> np.ndarray:
    """Labels (uint8, the brain's shape) of ``planes`` (default: every plane with brain), 0 elsewhere; a progress
    line every quarter of the planes when ``label`` names what is predicted."""
    planes = brain_planes(mask) if planes is None else list(planes)
    labels = np.zeros(brain.shape, np.uint8)
    start, reported = time.monotonic(), 0
    for done, k in enumerate(planes, start=1):
        labels[:, :, k] = uncenter(segment(slice_canvas(brain[:, :, k], mask[:, :, k], size)), brain.shape[:2])
        if label and len(planes) > 8 and done * 4 // len(planes) > reported:
            reported = done * 4 // len(planes)
            log.info("%s: %d/%d planes, %.0f s", label, done, len(planes), time.monotonic() - start)
    return labels
