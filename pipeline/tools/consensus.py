"""The ``consensus`` segmenter: tissue labels no single tool made, fused voxel by voxel from the label maps of
the other configured segmenters (``segment.consensus``). Its inputs are those segmenters' outputs, so it runs in
the segment_qc stage, the one stage that reads every segmenter's labels (and depends on them, in Luigi and in
dvc.yaml).

- ``majority``: the label most segmenters give; a tie goes to the label of the first segmenter (in
  ``segment.consensus.of`` order) that gave one of the tied labels.
- ``staple``: STAPLE (Warfield et al. 2004, multi-label: Rohlfing et al. 2004; SimpleITK's
  MultiLabelSTAPLEImageFilter): each segmenter weighted by its estimated per-tissue agreement with the hidden
  truth, fitted by EM; voxels it leaves undecided get the majority vote. STAPLE assumes the segmenters err
  independently; two intensity classifiers (HMRF, Atropos) do not, so it tends to side with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.labels import LABEL_NAMES

LABELS = tuple(LABEL_NAMES)  # 0 background, 1 GM, 2 WM, 3 CSF
STAPLE_ITERATIONS = 50


def _checked(maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    maps = [np.asarray(labels) for labels in maps]
    if len(maps) < 2:
        raise ValueError("a consensus needs at least two label maps")
    if any(labels.shape != maps[0].shape for labels in maps):
        raise ValueError(f"label maps differ in shape: {[labels.shape for labels in maps]}")
    stray = np.setdiff1d(np.unique(np.concatenate([np.unique(labels) for labels in maps])), LABELS)
    if stray.size:
        raise ValueError(f"labels {stray.tolist()} are not tissues {list(LABELS)}")
    return maps


def majority_vote(maps: Sequence[np.ndarray]) -> np.ndarray:
    """The label most maps give each voxel; a tie goes to the first map (in order) that gave a tied label."""
    maps = _checked(maps)
    counts = np.stack([sum((labels == label).astype(np.uint8) for labels in maps) for label in LABELS])
    best = counts.max(axis=0)
    fused = np.zeros(maps[0].shape, np.uint8)
    decided = np.zeros(maps[0].shape, bool)
    for labels in maps:  # the first map whose label is among the winners decides
        wins = ~decided & (np.take_along_axis(counts, labels.astype(np.intp)[None], axis=0)[0] == best)
        fused[wins] = labels[wins]
        decided |= wins
    return fused


def staple(maps: Sequence[np.ndarray], threads: int = 1) -> np.ndarray:
    """Multi-label STAPLE of ``maps`` on the bounding box of their tissue (the background outside would swamp
    the label priors, which SimpleITK takes from the labels' frequencies); undecided voxels: the majority vote."""
    import SimpleITK as sitk

    maps = _checked(maps)
    fused = majority_vote(maps)
    tissue = np.any([labels > 0 for labels in maps], axis=0)
    if not tissue.any():
        return fused
    box = tuple(slice(max(int(axis.min()) - 1, 0), int(axis.max()) + 2) for axis in np.nonzero(tissue))
    undecided = max(LABELS) + 1
    stapler = sitk.MultiLabelSTAPLEImageFilter()
    stapler.SetNumberOfThreads(threads)
    stapler.SetLabelForUndecidedPixels(undecided)
    stapler.SetMaximumNumberOfIterations(STAPLE_ITERATIONS)
    # geometry plays no part: the images only need the same size
    result = sitk.GetArrayFromImage(stapler.Execute([sitk.GetImageFromArray(np.ascontiguousarray(
        labels[box], dtype=np.uint8)) for labels in maps]))
    fused[box] = np.where(result == undecided, fused[box], result)
    return fused


def fuse(maps: Sequence[np.ndarray], fusion: str, threads: int = 1) -> np.ndarray:
    """``maps`` fused as ``segment.consensus.fusion`` says."""
    return staple(maps, threads) if fusion == "staple" else majority_vote(maps)
