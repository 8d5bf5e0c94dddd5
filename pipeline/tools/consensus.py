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
- ``anatomy``: each segmenter where it is reliable. An intensity segmenter (HMRF, Atropos, FAST) places the
  boundaries between tissues where the image has them, but has no anatomy: it calls the WM-bright deep grey nuclei
  (pallidum, much of the thalamus) WM. An atlas-based one (SAMSEG, SynthSeg, FastSurfer) knows those structures, and
  raters draw them GM (docs/explanation/tissue-definitions.md). So: the intensity segmenters' majority vote (all the
  fused ones' if none is an intensity one), and GM in the deep grey structures (``DEEP_GREY``) at least half the
  atlas-based ones name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.labels import DEEP_GREY, GM, LABEL_NAMES

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


def by_anatomy(maps: Sequence[np.ndarray], structures: Sequence[np.ndarray | None]) -> np.ndarray:
    """The ``anatomy`` fusion of tissue ``maps``; ``structures[i]``: map i's segmenter's FreeSurfer structure labels,
    None for an intensity segmenter."""
    maps = _checked(maps)
    if len(structures) != len(maps):
        raise ValueError(f"{len(maps)} tissue maps but {len(structures)} entries of structures")
    atlases = [labels for labels in structures if labels is not None]
    if not atlases:
        raise ValueError("the anatomy fusion needs the structures of at least one atlas-based segmenter")
    intensity = [tissues for tissues, labels in zip(maps, structures, strict=True) if labels is None] or maps
    base = intensity[0] if len(intensity) == 1 else majority_vote(intensity)
    deep = np.mean([np.isin(labels, DEEP_GREY) for labels in atlases], axis=0) >= 0.5
    return np.where(deep, GM, base).astype(np.uint8)


def fuse(maps: Sequence[np.ndarray], fusion: str, threads: int = 1,
         structures: Sequence[np.ndarray | None] = ()) -> np.ndarray:
    """``maps`` fused as ``segment.consensus.fusion`` says (``structures``: ``by_anatomy``'s, for ``anatomy``)."""
    if fusion == "anatomy":
        return by_anatomy(maps, structures)
    return staple(maps, threads) if fusion == "staple" else majority_vote(maps)
