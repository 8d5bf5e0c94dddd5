"""Reference labels a user supplies for evaluation: a BIDS derivative of the input heads.

Layout: ``<root>/sub-X[/ses-Y]/anat/sub-X[_ses-Y][_...]_dseg.nii.gz`` on the subject's raw head (any grid: it is
resampled in world space), and a label table: ``<file>.tsv`` beside the image or ``<root>/dseg.tsv``
(BIDS columns ``index`` and ``name``). ``evaluate.reference_scheme`` says how labels become tissues:

- ``table``: by name; GM, WM, CSF and background (with the usual spellings, e.g. fMRIPrep's dseg);
- ``freesurfer``: the numbers are FreeSurfer lookup-table labels (aseg, SynthSeg, FastSurfer output),
  mapped by ``pipeline.core.labels`` (the table is then optional).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.bids import case_dir, entities
from pipeline.core.io import InputError, load_nifti, read_tsv
from pipeline.core.labels import BACKGROUND, CSF, GM, WM, UnknownLabel, remap
from pipeline.imaging.grids import labels_on_grid

TISSUE_NAMES: dict[str, int] = {
    **dict.fromkeys(("background", "bg", "unknown", "none", "outside"), BACKGROUND),
    **dict.fromkeys(("gm", "grey matter", "gray matter", "grey", "gray", "cortical grey matter",
                     "cortical gray matter", "cgm"), GM),
    **dict.fromkeys(("wm", "white matter", "white"), WM),
    **dict.fromkeys(("csf", "cerebrospinal fluid"), CSF),
}


def reference_file(root: Path, case: str) -> Path | None:
    """The case's dseg image (``pipeline.core.bids``: a subject, or its session): the only one, or the one without a
    ``desc-`` entity; for one of several runs, the session's own when there is none for the run; None when
    absent."""
    anat = case_dir(root, case) / "anat"
    found = sorted(anat.glob(f"sub-{case}_*dseg.nii*"))
    if not found and "run" in entities(f"sub-{case}"):
        session = case_dir(Path(), case)
        found = sorted(anat.glob(f"{'_'.join(session.parts)}_*dseg.nii*"))
    if len(found) > 1:
        plain = [path for path in found if "_desc-" not in path.name]
        if len(plain) != 1:
            names = ", ".join(path.name for path in found)
            raise InputError(f"sub-{case}: several reference label maps ({names}) under {root}; keep one")
        found = plain
    return found[0] if found else None


def label_table(image: Path, root: Path) -> Path | None:
    beside = image.with_name(image.name.removesuffix(".gz").removesuffix(".nii") + ".tsv")
    return next((path for path in (beside, root / "dseg.tsv") if path.is_file()), None)


def tissues_by_name(table: Path) -> dict[int, int]:
    """index -> tissue from a BIDS label table; a name that is not a tissue is an error, not background."""
    rows = read_tsv(table)
    if not rows or not {"index", "name"} <= set(rows[0]):
        raise InputError(f"{table}: a label table needs the columns 'index' and 'name'")
    unknown = [row["name"] for row in rows if row["name"].strip().lower() not in TISSUE_NAMES]
    if unknown:
        raise InputError(f"{table}: labels {unknown} are not GM, WM, CSF or background; rename them, or set "
                         "evaluate.reference_scheme: freesurfer if the numbers are FreeSurfer labels")
    return {int(row["index"]): TISSUE_NAMES[row["name"].strip().lower()] for row in rows}


def reference_tissues(path: Path, root: Path, scheme: str, subject: str) -> nib.Nifti1Image:
    """The reference as tissues {0 bg, 1 GM, 2 WM, 3 CSF}, on its own grid."""
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
            raise InputError(f"subject {subject}, file {path}: no label table ({path.name[:-7]}.tsv beside it "
                             f"or {root / 'dseg.tsv'})")
        lookup = tissues_by_name(table)
        missing = sorted(set(np.unique(labels).tolist()) - set(lookup) - {0})
        if missing:
            raise InputError(f"subject {subject}, file {path}: labels {missing} are not in {table}")
        tissues = np.zeros(labels.shape, np.uint8)
        for index, tissue in lookup.items():
            tissues[labels == index] = tissue
    return nib.Nifti1Image(tissues.astype(np.uint8), image.affine)


def on_grid(tissues: nib.Nifti1Image, reference_grid: nib.Nifti1Image) -> np.ndarray:
    """Tissues carried onto another image's grid in world space (nearest neighbour; 0 outside)."""
    return labels_on_grid(tissues, reference_grid).astype(np.uint8)
