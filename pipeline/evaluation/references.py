"""Reference labels a user supplies for evaluation: a BIDS derivative of the input heads.

Layout: ``<root>/sub-X[/ses-Y]/anat/sub-X[_ses-Y][_...]_dseg.nii.gz`` on the subject's raw head (any grid:
predictions are carried onto it in world space), and a label table: ``<file>.tsv`` beside the image or
``<root>/dseg.tsv`` (BIDS columns ``index`` and ``name``). ``evaluate.reference_scheme`` says how labels become tissues:

- ``table``: by name; GM, WM, CSF and background (with the usual spellings, e.g. fMRIPrep's dseg), and labels
  that are no one tissue, left out of the scoring as MRBrainS leaves them out (``NOT_SCORED_NAMES``);
- ``freesurfer``: the numbers are FreeSurfer lookup-table labels (aseg, SynthSeg, FastSurfer output),
  mapped by ``pipeline.core.labels`` (the table is then optional).
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np

from pipeline.core.bids import case_dir, entities, run_entities
from pipeline.core.io import HEAD_SUFFIXES, InputError, load_nifti, read_tsv
from pipeline.core.labels import BACKGROUND, CSF, GM, WM, UnknownLabel, remap, voxel_volume_ml
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.imaging.grids import foreground_on_grid, labels_on_grid

log = logging.getLogger("pipeline")


def name_key(name: str) -> str:
    """A label's name as the table of tissue names holds it: lower case, words joined by one space
    ("Gray-Matter", "gray_matter" and "Gray matter" are one name)."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


# the usual spellings of tissue names in label tables (fMRIPrep's dseg, ITK-SNAP, MRBrainS, raters' own), mapped
# as the pipeline's tissues define them and as pipeline.core.labels maps FreeSurfer's: deep grey matter (basal
# ganglia) and cerebellar cortex are GM; cerebellar WM, brainstem and WM lesions are WM; ventricles are CSF
# (docs/explanation/tissue-definitions.md). A mixed label ("cerebellum") is left out of the scoring
# (``NOT_SCORED_NAMES``); a structure's name is not here.
TISSUE_NAMES: dict[str, int] = {name_key(name): tissue for names, tissue in (
    (("background", "bg", "unknown", "none", "outside", "unlabeled", "unlabelled", "clear label"), BACKGROUND),
    (("gm", "grey matter", "gray matter", "grey", "gray", "cortical grey matter", "cortical gray matter", "cgm",
      "cortical gm", "cortex", "cerebral cortex", "deep grey matter", "deep gray matter", "deep gm", "dgm",
      "subcortical grey matter", "subcortical gray matter", "subcortical gm", "basal ganglia",
      "cerebellar grey matter", "cerebellar gray matter", "cerebellar cortex", "cerebellum cortex"), GM),
    (("wm", "white matter", "white", "cerebral white matter", "cerebellar white matter", "cerebellum white matter",
      "brainstem", "brain stem", "white matter lesions", "white matter lesion", "wm lesions", "wmh",
      "white matter hyperintensities"), WM),
    (("csf", "cerebrospinal fluid", "ventricles", "ventricle", "lateral ventricles", "lateral ventricle",
      "extra cerebral csf", "cerebrospinal fluid in the extracerebral space",
      "external csf", "sulcal csf"), CSF),
) for name in names}
# Labels that are no one tissue, left out of the scoring: a model's tissue there counts neither way, as MRBrainS18
# scores its "infarction" and "other" labels and MRBrainS13's three tissues its "cerebellum" (GM and WM in one
# label). Its "brain stem" is WM here, as FreeSurfer's is mapped ("ignore" in a table leaves it out too).
NOT_SCORED_NAMES = {name_key(name) for name in (
    "cerebellum", "infarction", "infarctions", "infarct", "other", "others", "ignore", "ignored", "exclude",
    "excluded", "not scored", "unscored", "undetermined")}
NOT_SCORED = 255  # ``reference_tissues``' value for those labels' voxels
SPARSE_MIN_RUNS = 3  # a reference drawn every k-th plane: at least this many runs of drawn planes along an axis ...
SPARSE_MAX_COVER = 2 / 3  # ... covering at most this share of their span (a stray voxel or an erased plane: no)
# The share of a reference's GM and WM on its head (the T1w's non-zero voxels), and inside its brain mask (world
# space). In deepbet's masks: 0.998-0.999 for oasis-manual's maps; shifted 4 mm 0.97, 8 mm 0.92, 25 mm 0.72-0.74.
# Saved with a voxel-index affine, a map lies off its head (0). A brain is a large target, so the lines are loose.
ON_HEAD_MIN = 0.5  # on the head, below: not on this head's grid (an error)
ON_HEAD_WARN = 0.95  # in the brain mask, below: misregistered, or the mask cut brain away (a warning)
# A map flipped left-right against its head (a header that disagrees with the T1w's on the x axis) lies on the head
# as well as the right one: it is told by how labels made on the head agree with it as it is and mirrored. A brain
# is not symmetric in its folds: oasis-manual's 10 maps against Atropos's labels (the mean of GM and WM Dice) 0.85-0.91
# as they are, 0.61-0.69 mirrored, each map 0.20-0.24 apart; flipped under their header, the reverse.
LEFT_RIGHT_MARGIN = 0.1  # mirrored, agreeing better by more than this: flipped (an error)


NATIVE_SPACES = {"orig", "T1w", "scanner", "individual", "native"}  # space- labels of a map on the head's own grid


def reference_file(root: Path, case: str, source: Path | None = None) -> Path | None:
    """The case's label map (``pipeline.core.bids``: a subject, a session, or one head of it), None when absent:

    - of the session's maps, those of the head the case was copied from (``source``, else the case label), by
      their acq-, ce-, rec-, run-... entities (``of_head``): named with the same ones, or the most of them, or none
      (the session's own map);
    - of several left, the one without a ``desc-`` entity;
    - a map named for another head of the session, or in a template space (``space-MNI...``), is not this head's.
    """
    anat = case_dir(root, case) / "anat"
    session = "_".join(case_dir(Path(), case).parts)  # sub-01, sub-01_ses-A: every map of the session
    found = of_head(in_native_space(dseg_images(anat, session)),
                    run_entities(source.name if source else f"sub-{case}"))
    if len(found) > 1:
        plain = [path for path in found if "_desc-" not in path.name]
        if len(plain) != 1:
            names = ", ".join(path.name for path in found)
            raise InputError(f"sub-{case}: several reference label maps ({names}) under {root}; keep one")
        found = plain
    return found[0] if found else None


def in_native_space(found: list[Path]) -> list[Path]:
    """The label maps on the head's own grid: a template space's are left out, and said."""
    native = [path for path in found if entities(path.name).get("space", "orig") in NATIVE_SPACES]
    for path in sorted(set(found) - set(native)):
        warn_template_space(path)
    return native


@functools.cache
def warn_template_space(path: Path) -> None:
    log.warning("reference labels: %s is in a template space, not on the head: not used", path)


def of_head(found: list[Path], wanted: dict[str, str]) -> list[Path]:
    """The label maps of the head whose acq-/ce-/rec-/run-... entities are ``wanted``: of those named with some of
    them and no other, the most specific (the session's own map names none). A head named without a run is its
    session's run 1 (BIDS leaves out the run of a single one)."""
    def normal(given: dict[str, str]) -> set[tuple[str, str]]:
        return {(key, value.lstrip("0") if key == "run" else value) for key, value in given.items()}

    known = normal({"run": "1"} | wanted)
    named = {path: normal(run_entities(path.name)) for path in found}
    within_head = [path for path, given in named.items() if given <= known]
    most = max((len(named[path]) for path in within_head), default=0)
    return [path for path in within_head if len(named[path]) == most]


def dseg_images(anat: Path, prefix: str) -> list[Path]:
    """The label map images (NIfTI or FreeSurfer's .mgz/.mgh) in ``anat`` whose names start with ``prefix``_."""
    return sorted(path for suffix in HEAD_SUFFIXES for path in anat.glob(f"{prefix}_*dseg{suffix}"))


def table_beside(image: Path) -> Path:
    """The label table BIDS puts beside a label map: its name with ``.tsv`` for the image's extension."""
    return image.with_name(image.name.split(".", 1)[0] + ".tsv")


def label_table(image: Path, root: Path) -> Path | None:
    return next((path for path in (table_beside(image), root / "dseg.tsv") if path.is_file()), None)


def tissue_of(name: str) -> int | None:
    """The tissue a label table's name says (``NOT_SCORED`` for a label left out of the scoring), whichever
    hemisphere it names ("Left-Cerebral-White-Matter" is WM); None for a name that is no tissue."""
    key = name_key(name)
    key = key if key in TISSUE_NAMES or key in NOT_SCORED_NAMES else re.sub(r"^(left|right|lh|rh) ", "", key)
    return NOT_SCORED if key in NOT_SCORED_NAMES else TISSUE_NAMES.get(key)


def tissues_by_name(table: Path) -> dict[int, int]:
    """index -> tissue (or ``NOT_SCORED``) from a BIDS label table; a name that is not a tissue is an error, not
    background."""
    rows = read_tsv(table)
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise InputError(f"{table}: a label table needs the columns 'index' and 'name'")
    unknown = [row["name"] for row in rows if tissue_of(row["name"]) is None]
    if unknown:
        raise InputError(f"{table}: labels {unknown} are not GM, WM, CSF or background; rename them to their "
                         "tissue, or to 'ignore' to leave them out of the scoring, or set "
                         "evaluate.reference_scheme: freesurfer if the numbers are FreeSurfer labels")
    return {label_index(row["index"], table): tissue_of(row["name"]) for row in rows}


def label_index(text: str, table: Path) -> int:
    """A label table's index ("3", or "3.0" as a spreadsheet writes it)."""
    try:
        number = float(text)
    except ValueError:
        raise InputError(f"{table}: index {text!r} is not a whole number") from None
    if not number.is_integer():
        raise InputError(f"{table}: index {text!r} is not a whole number")
    return int(number)


def reference_tissues(path: Path, root: Path, scheme: str, subject: str) -> nib.Nifti1Image:
    """The reference as tissues {0 bg, 1 GM, 2 WM, 3 CSF; ``NOT_SCORED``: a table's label left out of the
    scoring}, on its own grid. ``read_reference`` is what scores it: it takes those voxels out."""
    image = load_nifti(path, subject)
    labels = np.rint(np.asarray(image.dataobj)).astype(np.int64)
    if scheme == "freesurfer":
        try:
            tissues = remap(labels)
        except UnknownLabel as error:
            raise InputError(f"subject {subject}, file {path}: {error}") from None
    else:
        table = label_table(path, root)
        if table is None:
            raise InputError(f"subject {subject}, file {path}: no label table ({table_beside(path).name} beside it "
                             f"or {root / 'dseg.tsv'})")
        lookup = tissues_by_name(table)
        missing = sorted(set(np.unique(labels).tolist()) - set(lookup) - {0})
        if missing:
            raise InputError(f"subject {subject}, file {path}: labels {missing} are not in {table}")
        tissues = np.zeros(labels.shape, np.uint8)
        for index, tissue in lookup.items():
            tissues[labels == index] = tissue
    return nib.Nifti1Image(tissues.astype(np.uint8), image.affine)


def check_references(root: Path, sources: dict[str, Path], scheme: str) -> list[str]:
    """Each case's reference (case -> the file its head is copied from) read as tissues, so that a table with a name
    that is not a tissue stops a benchmark before it trains (the evaluation reads each as it scores it); the cases
    without a reference."""
    if not root.is_dir():
        raise InputError(f"reference labels: {root} is not a folder")
    found = {case: reference_file(root, case, source) for case, source in sources.items()}
    for case, path in found.items():
        if path is not None:
            reference_tissues(path, root, scheme, case)
    return [case for case, path in found.items() if path is None]


class Reference(NamedTuple):
    """A case's reference tissues on their own grid (the raters'), and where they are scored."""

    tissues: nib.Nifti1Image  # {0 bg, 1 GM, 2 WM, 3 CSF}; a label left out of the scoring is 0 here
    drawn: nib.Nifti1Image | None  # a sparse reference's drawn planes (``drawn_planes``; None: every voxel)
    left_out: np.ndarray | None = None  # the voxels of labels left out of the scoring (None: none)

    @property
    def scored(self) -> np.ndarray | None:
        """Where the tissues are scored on their own grid (None: everywhere)."""
        scored = None if self.drawn is None else np.asarray(self.drawn.dataobj) > 0
        if self.left_out is not None:
            scored = ~self.left_out if scored is None else scored & ~self.left_out
        return scored

    @property
    def whole(self) -> bool:
        """Every voxel scored: its tissue volumes are the whole brain's."""
        return self.drawn is None and self.left_out is None

    def on_grid(self, grid: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray | None]:
        """The tissues on another grid (nearest neighbour), and where they are scored there: a sparse
        reference's drawn planes, less its labels left out of the scoring (None: everywhere)."""
        if self.whole:
            return on_grid(self.tissues, grid), None
        scored = np.ones(grid.shape[:3], bool) if self.drawn is None else on_grid(self.drawn, grid) > 0
        if self.left_out is not None:
            scored &= on_grid(nib.Nifti1Image(self.left_out.astype(np.uint8), self.tissues.affine), grid) == 0
        return on_grid(self.tissues, grid), scored


def read_reference(path: Path, root: Path, scheme: str, case: str) -> Reference:
    """A case's reference tissues, where they are drawn (a sparse reference: said once), and the voxels of
    its labels left out of the scoring (said once)."""
    labelled = reference_tissues(path, root, scheme, case)
    labels = np.asarray(labelled.dataobj)
    left_out = labels == NOT_SCORED
    drawn = drawn_planes(labelled)
    if drawn is not None:
        warn_sparse(case, path)
    if not left_out.any():
        return Reference(labelled, drawn)
    warn_left_out(case, path, round(float(left_out.sum()) * voxel_volume_ml(labelled.affine), 1))
    return Reference(nib.Nifti1Image(np.where(left_out, 0, labels).astype(np.uint8), labelled.affine), drawn,
                     left_out)


def brain_inside(reference: Reference, region: np.ndarray) -> float | None:
    """The share of the reference's GM and WM voxels inside ``region`` (a mask on the reference's grid); None for
    a reference without GM or WM. Left-out labels are background in ``tissues``, and a sparse reference's GM and
    WM lie on its drawn planes: both count only where they are scored."""
    brain = np.isin(np.asarray(reference.tissues.dataobj), (GM, WM))
    total = int(np.count_nonzero(brain))
    return None if total == 0 else int(np.count_nonzero(brain & region)) / total


def check_on_head(case: str, path: Path, reference: Reference, head: nib.Nifti1Image,
                  mask: nib.Nifti1Image | None, mask_name: str) -> None:
    """Stop on reference labels off their head: under ``ON_HEAD_MIN`` of their GM and WM on the head's non-zero
    voxels (whatever a stripper did with it). Scored, they would give a Dice near 0 that reads as a bad model.
    Warn (once) where under ``ON_HEAD_WARN`` lie inside the brain mask ``mask_name``: labels misregistered, or a
    mask that cut brain away. A head that is a brain already is its own mask (``mask`` None)."""
    on_head = brain_inside(reference, foreground_on_grid(head, reference.tissues))
    if on_head is None:
        return
    if on_head < ON_HEAD_MIN:
        raise InputError(f"sub-{case}: only {on_head:.1%} of the GM and WM of its reference labels {path} lie on "
                         "the head: they are not on its grid. Compare the labels' affine with the T1w's (nib-ls "
                         "shows both), or register the labels to the T1w")
    in_mask = on_head if mask is None else brain_inside(reference, foreground_on_grid(mask, reference.tissues))
    if in_mask < ON_HEAD_WARN:
        warn_off_mask(case, path, mask_name, in_mask)


def brain_centre(labels: np.ndarray, axis: int) -> float | None:
    """Where the labels' GM and WM lie along a voxel axis, on average (None: none there)."""
    per_plane = np.isin(labels, (GM, WM)).sum(axis=tuple(other for other in range(labels.ndim) if other != axis))
    return float(np.average(np.arange(labels.shape[axis]), weights=per_plane)) if per_plane.any() else None


def mirrored(labels: np.ndarray, axis: int, twice_plane: int) -> np.ndarray:
    """Labels mirrored along a voxel axis about plane ``twice_plane / 2`` (plane x goes to ``twice_plane - x``); what
    is mirrored beyond the grid is lost, what comes in is background."""
    size = labels.shape[axis]
    shift = twice_plane - (size - 1)  # the flipped grid's plane j is plane size-1-j: moved by this
    source, target = [slice(None)] * labels.ndim, [slice(None)] * labels.ndim
    source[axis] = slice(max(0, -shift), size - max(0, shift))
    target[axis] = slice(max(0, shift), size - max(0, -shift))
    result = np.zeros_like(labels)
    result[tuple(target)] = np.flip(labels, axis)[tuple(source)]
    return result


def left_right_agreement(reference: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                         scored: np.ndarray | None) -> tuple[float, float] | None:
    """The mean of GM and WM Dice of ``labels`` against the reference (one grid, ``affine``), as it is and mirrored
    left-right (along the voxel axis nearest world x) onto the labels: about the plane half-way between the two
    brains' centres, which takes a map flipped about any plane back onto them; only where it is scored. None where
    either has no GM or WM."""
    def agreement(truth: np.ndarray) -> float:
        dice = dice_per_tissue(*within(scored, truth, labels))
        return float(np.nanmean([dice["GM"], dice["WM"]]))

    axis = int(np.argmax(np.abs(affine[0, :3])))
    centres = brain_centre(reference, axis), brain_centre(labels, axis)
    if None in centres:
        return None
    return agreement(reference), agreement(mirrored(reference, axis, int(round(sum(centres)))))


def check_left_right(case: str, path: Path, reference: np.ndarray, labels: np.ndarray, affine: np.ndarray,
                     scored: np.ndarray | None, labels_name: str) -> None:
    """Stop on reference labels that agree with labels made on the head (``labels_name``) better mirrored
    left-right than as they are, by ``LEFT_RIGHT_MARGIN``: one of the two is flipped, and the reference's Dice would
    read as a bad model."""
    agreement = left_right_agreement(reference, labels, affine, scored)
    if agreement is not None and agreement[1] > agreement[0] + LEFT_RIGHT_MARGIN:
        raise InputError(f"sub-{case}: its reference labels {path} agree with {labels_name} better mirrored "
                         f"left-right (GM and WM Dice {agreement[1]:.2f}) than as they are ({agreement[0]:.2f}): "
                         "one of them is flipped. Compare the labels' affine with the T1w's (nib-ls shows both)")


@functools.cache
def warn_off_mask(case: str, path: Path, mask_name: str, share: float) -> None:
    log.warning("reference labels: only %.1f%% of the GM and WM of sub-%s's %s lie inside its brain mask %s: the "
                "labels may be misregistered, or the mask cuts brain away (strip QC's page); its Dice counts the "
                "difference", 100 * share, case, path, mask_name)


@functools.cache
def warn_sparse(case: str, path: Path) -> None:
    """Said once a run, however often the head is loaded (per seed, for the teacher, for the report)."""
    log.warning("reference labels: sub-%s's %s are drawn on some planes only: its Dice is scored on those, and "
                "its tissue volumes are n/a", case, path)


@functools.cache
def warn_left_out(case: str, path: Path, ml: float) -> None:
    log.warning("reference labels: %s mL of sub-%s's %s carry labels left out of the scoring (no one tissue): "
                "the model's tissues there count neither way, and its reference volumes are n/a", ml, case, path)


def drawn_planes(tissues: nib.Nifti1Image) -> nib.Nifti1Image | None:
    """Where a reference is drawn on some of its planes only (every k-th slice, as raters who label sparsely do):
    those planes, on its own grid (1: scored). None for a reference of the whole volume, and for one with a stray
    voxel beyond the brain or an erased plane: sparse means ``SPARSE_MIN_RUNS`` or more runs of drawn planes along
    an axis, covering at most ``SPARSE_MAX_COVER`` of their span."""
    labelled = np.asarray(tissues.dataobj) > 0
    scored, sparse = np.ones(labelled.shape, bool), False
    for axis in range(labelled.ndim):
        others = tuple(other for other in range(labelled.ndim) if other != axis)
        drawn = labelled.any(axis=others)
        indices = np.flatnonzero(drawn)
        if indices.size == 0:
            continue
        runs = 1 + int(np.count_nonzero(np.diff(indices) > 1))
        if runs >= SPARSE_MIN_RUNS and indices.size <= SPARSE_MAX_COVER * (indices[-1] - indices[0] + 1):
            sparse = True
            scored &= np.expand_dims(drawn, others)
    return nib.Nifti1Image(scored.astype(np.uint8), tissues.affine) if sparse else None


def within(scored: np.ndarray | None, *maps: np.ndarray) -> tuple[np.ndarray, ...]:
    """``maps`` (labels on one grid) with every voxel outside ``scored`` made background: unscored voxels (planes
    not drawn, labels left out) count for no tissue, on either side of a Dice. None scores everything."""
    return maps if scored is None else tuple(np.where(scored, labels, 0) for labels in maps)


def on_grid(tissues: nib.Nifti1Image, reference_grid: nib.Nifti1Image) -> np.ndarray:
    """Tissues carried onto another image's grid in world space (nearest neighbour; 0 outside)."""
    return labels_on_grid(tissues, reference_grid).astype(np.uint8)
