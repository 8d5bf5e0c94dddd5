"""A model scored on real test heads, in 3D: each head predicted over the whole brain
(``pipeline.nnunet.inference``) and scored as one volume, in the head's own frame (the harmonized grid), against

- ``real``: the segmenter's labels of that head (what the model learned to imitate);
- ``external``: reference labels the user supplies (``evaluate.reference_labels``): one reference for every
  strategy, the number that compares segmenters as well as strippers;
- ``teacher`` (not a model): the segmenter's own labels against that reference, what the model can reach at best.

Each also within the band of planes around the head's reference level (``*_band``: the per-slice protocol of
earlier studies, kept as a secondary figure) and per fifth of the brain's height (where a model falls short).
The reference is carried onto the head's grid in world space, so brain the stripper cut off counts against the
strategy. Used by the evaluate stage and by ``bench train``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.bids import Folders, read_cases, reference_level, subject_file
from pipeline.core.config import EvaluateConfig
from pipeline.core.io import InputError, load_nifti
from pipeline.core.labels import TISSUES, tissue_volumes, voxel_volume_ml
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.evaluation.references import reference_file, reference_on_grid, within
from pipeline.imaging.preprocess import box_of, uncrop
from pipeline.imaging.slices import level_index
from pipeline.nnunet.inference import predict_views
from pipeline.nnunet.predictor import SlicePredictor
from pipeline.runtime.subjects import not_failed

log = logging.getLogger("pipeline")

HEIGHT_PARTS = 5  # the brain's height cut into fifths, bottom to top


def held_out_cases(raw: Path, segmented: Path) -> list[str]:
    """The study's real test heads that have the segmenter's labels (``keep_going`` may have lost some)."""
    return not_failed([case.label for case in read_cases(raw) if case.in_test], segmented)


@dataclass(frozen=True, eq=False)
class HeldOutHead:
    """One real test head as the evaluation needs it: the model's input and what its output is scored against."""

    case: str
    brain: nib.Nifti1Image  # stripped, normalized, cropped: what the model segments
    mask: np.ndarray  # the stripper's mask, on the brain's grid
    teacher: np.ndarray  # the segmenter's labels, on the brain's grid
    grid: nib.Nifti1Image  # the harmonized head: the frame everything is scored in
    reference: np.ndarray | None  # reference tissues on the head's grid (None: no reference for this head)
    level_mm: float  # the reference axial level (world z)
    scored: np.ndarray | None = None  # a sparse reference's drawn planes on the head's grid (None: every voxel)

    def on_head(self, labels: np.ndarray) -> np.ndarray:
        """Labels on the brain's grid, put back on the head's."""
        return uncrop(labels, self.brain.affine, self.grid)

    def on_brain(self, labels: np.ndarray) -> np.ndarray:
        """Labels on the head's grid, cut to the brain's."""
        return labels[box_of(self.brain.affine, self.brain.shape, self.grid)]

    def band_planes(self, config: EvaluateConfig) -> np.ndarray:
        """The head grid's planes within ``config.band_mm`` of the reference level, every ``step_mm``."""
        steps = int(config.band_mm // config.step_mm)
        return np.unique([level_index(self.grid, self.level_mm + step * config.step_mm)
                          for step in range(-steps, steps + 1)])


def load_held_out_head(case: str, folders: Folders, config: EvaluateConfig) -> HeldOutHead:
    brain = load_nifti(subject_file(folders.stripped, case, "desc-brain_T1w"), case)
    mask = np.asarray(load_nifti(subject_file(folders.stripped, case, "desc-brain_mask"), case).dataobj) > 0
    teacher = np.asarray(load_nifti(subject_file(folders.segmented, case, "dseg"), case).dataobj, dtype=np.uint8)
    grid = load_nifti(subject_file(folders.harmonized, case, "desc-harmonized_T1w"), case)
    reference = scored = None
    if config.reference_labels:
        root = Path(config.reference_labels).expanduser()
        if not root.is_dir():
            raise InputError(f"evaluate.reference_labels: {root} is not a folder")
        path = reference_file(root, case, folders.source(case))
        if path is None:
            log.warning("evaluate: sub-%s has no reference labels under %s", case, root)
        else:
            reference, scored = reference_on_grid(path, root, config.reference_scheme, case, grid)
    return HeldOutHead(case, brain, mask, teacher, grid, reference, reference_level(folders.harmonized, case), scored)


def predict_head(model: SlicePredictor, head: HeldOutHead, size: int, views: Sequence[str]) -> np.ndarray:
    """The model's labels of every plane of the head's brain in each of ``views``, fused, on the brain's grid."""
    return predict_views(model, model.probabilities_in, head.brain.get_fdata(dtype=np.float32), head.mask, size, views,
                         label=f"sub-{head.case}")


def height_parts(tissue: np.ndarray, parts: int = HEIGHT_PARTS) -> list[slice]:
    """The axial extent of ``tissue`` (non-zero voxels) cut into ``parts`` ranges of planes, bottom to top."""
    planes = np.flatnonzero(np.any(tissue > 0, axis=(0, 1)))
    if planes.size == 0:
        return []
    edges = np.linspace(planes[0], planes[-1] + 1, parts + 1).round().astype(int)
    return [slice(low, high) for low, high in zip(edges[:-1], edges[1:], strict=True)]


def scores(kind: str, case: str, truth: np.ndarray, labels: np.ndarray, band: np.ndarray,
           parts: list[slice], scored: np.ndarray | None = None) -> list[dict]:
    """Dice of ``labels`` against ``truth`` (same grid) over the whole volume (``kind``), on the band's planes
    (``kind_band``) and per height part (``kind_height``, with ``part``: 1 the lowest); only within ``scored``
    where it is given."""
    truth, labels = within(scored, truth, labels)
    rows = [{"kind": kind, "case": case, **dice_per_tissue(truth, labels)},
            {"kind": f"{kind}_band", "case": case, **dice_per_tissue(truth[..., band], labels[..., band])}]
    rows += [{"kind": f"{kind}_height", "case": case, "part": number,
              **dice_per_tissue(truth[..., planes], labels[..., planes])}
             for number, planes in enumerate(parts, start=1)]
    return rows


def score_head(head: HeldOutHead, labels: np.ndarray, config: EvaluateConfig) -> list[dict]:
    """A prediction (on the brain's grid) scored against the segmenter's labels and, where the head has one,
    the reference."""
    predicted, teacher = head.on_head(labels), head.on_head(head.teacher)
    band = head.band_planes(config)
    rows = scores("real", head.case, teacher, predicted, band, height_parts(teacher))
    if head.reference is not None:
        rows += scores("external", head.case, head.reference, predicted, band, height_parts(head.reference),
                       head.scored)
    return rows


def score_teacher(head: HeldOutHead, config: EvaluateConfig) -> list[dict]:
    """The segmenter's own labels against the reference (none without one)."""
    if head.reference is None:
        return []
    return scores("teacher", head.case, head.reference, head.on_head(head.teacher), head.band_planes(config),
                  height_parts(head.reference), head.scored)


def volumes_row(head: HeldOutHead, labels: np.ndarray) -> dict:
    """Whole-brain tissue volumes (mL) of the model's labels beside the teacher's and the reference's (n/a for a
    reference drawn on some planes only: its whole-brain volume is not known)."""
    voxel_ml = voxel_volume_ml(head.brain.affine)
    row = {"participant_id": f"sub-{head.case}"}
    sources = [("model", labels, voxel_ml), ("teacher", head.teacher, voxel_ml)]
    if head.reference is not None:
        sources.append(("reference", None if head.scored is not None else head.reference,
                        voxel_volume_ml(head.grid.affine)))
    for source, volume, ml in sources:
        volumes = None if volume is None else tissue_volumes(volume, ml)
        row |= {f"{source}_{name}_ml": volumes and round(volumes[f"{name}_ml"], 1) for name in TISSUES.values()}
    return row
