"""A model applied to a whole head: every plane of the brain segmented as the 2D slice every model sees
(``pipeline.imaging.slices.slice_canvas``), the planes stacked into a volume of class probabilities on the brain's
grid. A model trained on several views (``synth.views``) segments the head in each, and the views are fused by
summing their class probabilities (as multi-view segmenters such as FastSurfer aggregate theirs): ``view_scores``,
whose argmax is the labels. Used alike by the evaluate stage, ``predict`` and the benches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from pipeline.core.labels import LABEL_NAMES
from pipeline.imaging.slices import from_view, in_view, slice_canvas, uncenter

log = logging.getLogger("pipeline")

Segmenter = Callable[[np.ndarray], np.ndarray]  # (N, size, size) uint8 slices -> their labels, or class probabilities
PLANES_PER_CALL = 64  # planes handed to a segmenter at once: its batches fill a GPU, the canvases stay small


def brain_planes(mask: np.ndarray) -> list[int]:
    """The planes (last axis) that hold brain."""
    return np.flatnonzero(np.any(mask, axis=(0, 1))).tolist()


def predict_planes(segment: Segmenter, brain: np.ndarray, mask: np.ndarray, size: int,
                   planes: Iterable[int] | None = None, label: str = "") -> np.ndarray:
    """``segment``'s output for ``planes`` (default: every plane with brain) stacked on the brain's grid: labels
    (uint8, the brain's shape), or with a segmenter of probabilities ((N, C, size, size)), the brain's shape x C
    (float32); 0 elsewhere. The planes go to ``segment`` ``PLANES_PER_CALL`` at a time; a progress line every
    quarter of the planes when ``label`` names what is predicted."""
    planes = brain_planes(mask) if planes is None else list(planes)
    out, start, reported = None, time.monotonic(), 0
    for first in range(0, len(planes), PLANES_PER_CALL):
        chosen = planes[first:first + PLANES_PER_CALL]
        results = segment(np.stack([slice_canvas(brain[:, :, k], mask[:, :, k], size) for k in chosen]))
        for k, result in zip(chosen, results, strict=True):
            if result.ndim == 2:
                plane = uncenter(result, brain.shape[:2])
            else:  # a map per class
                plane = np.stack([uncenter(channel, brain.shape[:2]) for channel in result], axis=-1)
            if out is None:
                out = np.zeros(brain.shape + plane.shape[2:], plane.dtype)
            out[:, :, k] = plane
        done = first + len(chosen)
        if label and len(planes) > 8 and done * 4 // len(planes) > reported:
            reported = done * 4 // len(planes)
            log.info("%s: %d/%d planes, %.0f s", label, done, len(planes), time.monotonic() - start)
    return np.zeros(brain.shape, np.uint8) if out is None else out


def view_scores(probabilities: Callable[[str], Segmenter], brain: np.ndarray, mask: np.ndarray, size: int,
                views: Sequence[str], label: str = "") -> np.ndarray:
    """The class probabilities of every plane of the brain in each of ``views``, summed: the brain's RAS grid x
    classes (float32; 0 on planes without brain, and everywhere for a mask without brain). Their argmax is the
    fused labels; ``pipeline.imaging.grids.scores_on_grid`` takes them to another grid."""
    if not mask.any():  # no plane to predict: no class scores from the model, so none from here
        return np.zeros((*brain.shape, len(LABEL_NAMES)), np.float32)
    total = None
    for view in views:
        scores = from_view(predict_planes(probabilities(view), in_view(brain, view), in_view(mask, view), size,
                                          label=f"{label} {view}".strip()), view)
        total = scores if total is None else total + scores
    return total
