"""A model scored on real test heads, in 3D: each head predicted over the whole brain
(``pipeline.nnunet.inference``) and scored as one volume against

- ``real``: the segmenter's labels of that head (what the model learned to imitate), on the head's own grid (the
  harmonized head, 1 mm);
- ``external``: reference labels the user supplies (``evaluate.reference_labels``): one reference for every
  strategy, the number that compares segmenters as well as strippers. Scored on the reference's own grid, where
  its raters drew it: the model's class scores are carried there as ``predict`` carries them to an input's grid
  (``pipeline.imaging.grids.scores_on_grid``), so a reference drawn on 1.5 mm slices is met by the tissue that
  fills each of its voxels most; on a 1 mm reference drawn on the raw head, each voxel's own label;
- ``teacher`` (not a model): the segmenter's own labels against that reference, carried there the same way,
  what the model can reach at best.

Each also within the band of planes around the head's reference level (``*_band``: the per-slice protocol of
earlier studies, kept as a secondary figure) and per fifth of the brain's height (where a model falls short),
these on the head's grid, the reference carried there in world space (nearest neighbour). Brain the stripper cut
off counts against the strategy. Used by the evaluate stage and by ``bench train``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.bids import Folders, read_cases, reference_level, subject_file
from pipeline.core.config import EvaluateConfig
from pipeline.core.io import InputError, load_nifti
from pipeline.core.labels import TISSUES, one_hot, tissue_volumes, voxel_volume_ml
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.evaluation.references import (
    Reference,
    check_left_right,
    check_on_head,
    read_reference,
    reference_file,
    within,
)
from pipeline.imaging.grids import foreground, scores_on_grid
from pipeline.imaging.preprocess import box_of, uncrop
from pipeline.imaging.slices import level_index
from pipeline.nnunet.inference import view_scores
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
    grid: nib.Nifti1Image  # the harmonized head: the frame the model's labels are scored in
    level_mm: float  # the reference axial level (world z)
    native: Reference | None = None  # the reference on its own grid, where its whole-volume Dice is scored

    @functools.cached_property
    def _reference_on_head(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        return (None, None) if self.native is None else self.native.on_grid(self.grid)

    @property
    def reference(self) -> np.ndarray | None:
        """The reference tissues on the head's grid (nearest neighbour; None: no reference for this head)."""
        return self._reference_on_head[0]

    @property
    def scored(self) -> np.ndarray | None:
        """Where the reference is scored, on the head's grid (``Reference.scored``; None: every voxel)."""
        return self._reference_on_head[1]

    @functools.cached_property
    def teacher_on_head(self) -> np.ndarray:
        """The segmenter's labels on the head's grid (scored there, and checked against the reference)."""
        return self.on_head(self.teacher)

    def on_head(self, labels: np.ndarray) -> np.ndarray:
        """Labels on the brain's grid, put back on the head's."""
        return uncrop(labels, self.brain.affine, self.grid)

    def on_brain(self, labels: np.ndarray) -> np.ndarray:
        """Labels on the head's grid, cut to the brain's."""
        return labels[box_of(self.brain.affine, self.brain.shape, self.grid)]

    def on_reference(self, prediction: np.ndarray) -> np.ndarray:
        """A prediction on the brain's grid (labels, or class scores) on the reference's own grid: each class's
        score averaged over a reference voxel, then the likeliest (``scores_on_grid``), as ``predict`` brings its
        labels to the input's grid. On a 1 mm reference drawn on the raw head, each voxel's own label."""
        scores = prediction if prediction.ndim == 4 else one_hot(prediction)
        return scores_on_grid(scores, self.brain.affine, self.native.tissues.shape, self.native.tissues.affine)

    def band_planes(self, config: EvaluateConfig) -> np.ndarray:
        """The head grid's planes within ``config.band_mm`` of the reference level, every ``step_mm``."""
        steps = int(config.band_mm // config.step_mm)
        return np.unique([level_index(self.grid, self.level_mm + step * config.step_mm)
                          for step in range(-steps, steps + 1)])


def load_held_out_head(case: str, folders: Folders, config: EvaluateConfig) -> HeldOutHead:
    brain = load_nifti(subject_file(folders.stripped, case, "desc-brain_T1w"), case)
    mask_path = subject_file(folders.stripped, case, "desc-brain_mask")
    mask_image = load_nifti(mask_path, case)
    mask = foreground(mask_image)
    teacher_path = subject_file(folders.segmented, case, "dseg")
    teacher = np.asarray(load_nifti(teacher_path, case).dataobj, dtype=np.uint8)
    grid = load_nifti(subject_file(folders.harmonized, case, "desc-harmonized_T1w"), case)
    native = None
    if config.reference_labels:
        root = Path(config.reference_labels).expanduser()
        if not root.is_dir():
            raise InputError(f"evaluate.reference_labels: {root} is not a folder")
        path = reference_file(root, case, folders.source(case))
        if path is None:
            log.warning("evaluate: sub-%s has no reference labels under %s", case, root)
        else:
            native = read_reference(path, root, config.reference_scheme, case)
            check_on_head(case, path, native, grid, mask_image, str(mask_path))
    head = HeldOutHead(case, brain, mask, teacher, grid, reference_level(folders.harmonized, case), native)
    if native is not None:
        check_left_right(case, path, head.reference, head.teacher_on_head, grid.affine, head.scored,
                         f"the segmenter's labels {teacher_path}")
    return head


def predict_head(model: SlicePredictor, head: HeldOutHead, size: int, views: Sequence[str]) -> np.ndarray:
    """The model's class scores of every plane of the head's brain in each of ``views``, summed, on the brain's
    grid (x classes; ``as_labels``: the labels)."""
    return view_scores(model.probabilities_in, head.brain.get_fdata(dtype=np.float32), head.mask, size, views,
                       label=f"sub-{head.case}")


def as_labels(prediction: np.ndarray) -> np.ndarray:
    """Labels as they are, or the likeliest class of class scores."""
    return prediction if prediction.ndim == 3 else np.argmax(prediction, axis=-1).astype(np.uint8)


def height_parts(tissue: np.ndarray, parts: int = HEIGHT_PARTS) -> list[slice]:
    """The axial extent of ``tissue`` (non-zero voxels) cut into ``parts`` ranges of planes, bottom to top."""
    planes = np.flatnonzero(np.any(tissue > 0, axis=(0, 1)))
    if planes.size == 0:
        return []
    edges = np.linspace(planes[0], planes[-1] + 1, parts + 1).round().astype(int)
    return [slice(low, high) for low, high in zip(edges[:-1], edges[1:], strict=True)]


def scores(kind: str, case: str, truth: np.ndarray, labels: np.ndarray, band: np.ndarray,
           parts: list[slice]) -> list[dict]:
    """Dice of ``labels`` against ``truth`` (same grid) over the whole volume (``kind``), on the band's planes
    (``kind_band``) and per height part (``kind_height``, with ``part``: 1 the lowest)."""
    return [{"kind": kind, "case": case, **dice_per_tissue(truth, labels)},
            *part_scores(kind, case, truth, labels, band, parts)]


def part_scores(kind: str, case: str, truth: np.ndarray, labels: np.ndarray, band: np.ndarray,
                parts: list[slice]) -> list[dict]:
    """``scores`` on the band's planes and per height part only."""
    rows = [{"kind": f"{kind}_band", "case": case, **dice_per_tissue(truth[..., band], labels[..., band])}]
    rows += [{"kind": f"{kind}_height", "case": case, "part": number,
              **dice_per_tissue(truth[..., planes], labels[..., planes])}
             for number, planes in enumerate(parts, start=1)]
    return rows


def score_head(head: HeldOutHead, prediction: np.ndarray, config: EvaluateConfig) -> list[dict]:
    """A prediction on the brain's grid (labels, or the model's class scores) scored against the segmenter's
    labels and, where the head has one, the reference."""
    predicted, teacher = head.on_head(as_labels(prediction)), head.teacher_on_head
    band = head.band_planes(config)
    rows = scores("real", head.case, teacher, predicted, band, height_parts(teacher))
    if head.reference is not None:
        rows += against_reference("external", head, prediction, band)
    return rows


def score_teacher(head: HeldOutHead, config: EvaluateConfig) -> list[dict]:
    """The segmenter's own labels against the reference (none without one)."""
    if head.reference is None:
        return []
    return against_reference("teacher", head, head.teacher, head.band_planes(config))


def against_reference(kind: str, head: HeldOutHead, prediction: np.ndarray, band: np.ndarray) -> list[dict]:
    """A prediction on the brain's grid against the head's reference: the whole volume on the reference's own grid,
    where the raters drew it (a coarser grid than the model's takes each voxel's likeliest tissue); the band and
    the height parts on the head's grid (the reference carried there, nearest neighbour)."""
    tissues = np.asarray(head.native.tissues.dataobj)
    whole = {"kind": kind, "case": head.case,
             **dice_per_tissue(*within(head.native.scored, tissues, head.on_reference(prediction)))}
    on_head = within(head.scored, head.reference, head.on_head(as_labels(prediction)))
    return [whole, *part_scores(kind, head.case, *on_head, band, height_parts(head.reference))]


def volumes_row(head: HeldOutHead, labels: np.ndarray) -> dict:
    """Whole-brain tissue volumes (mL) of the model's labels beside the teacher's and the reference's (n/a for a
    reference drawn on some planes only, or with labels left out of the scoring: its whole-brain volumes are not
    known)."""
    voxel_ml = voxel_volume_ml(head.brain.affine)
    row = {"participant_id": f"sub-{head.case}"}
    sources = [("model", labels, voxel_ml), ("teacher", head.teacher, voxel_ml)]
    if head.native is not None:
        sources.append(("reference", np.asarray(head.native.tissues.dataobj) if head.native.whole else None,
                        voxel_volume_ml(head.native.tissues.affine)))
    for source, volume, ml in sources:
        volumes = None if volume is None else tissue_volumes(volume, ml)
        row |= {f"{source}_{name}_ml": volumes and round(volumes[f"{name}_ml"], 1) for name in TISSUES.values()}
    return row
