"""The one tissue label scheme, and the tables that map each tool's labels to it.

Tissues: 0 background, 1 grey matter (GM), 2 white matter (WM), 3 CSF.

Principle: a structure gets the tissue manual raters give it (``docs/explanation/tissue-definitions.md``,
one table for every segmenter): the deep grey nuclei (thalamus, caudate, putamen, pallidum, accumbens), the
hippocampus, the amygdala and the ventral diencephalon are grey matter, whatever their brightness on T1, because the
reference labels people draw count them so and a model can only learn the definitions its teacher's labels show.
Structures that are fibre tracts (brainstem, optic chiasm) are white matter; CSF is the ventricles and the
extra-cerebral fluid. Intensity-based 3-class segmenters (hmrf, atropos, FSL FAST) have no anatomy and call the
WM-bright ones (pallidum, much of the thalamus, the ventral diencephalon) WM: only atlas-based ones (SAMSEG,
SynthSeg, FastSurfer) can follow these definitions.

Every label our segmenters emit or the SynthSeg training maps hold is in ``FREESURFER_TO_TISSUE`` or
in ``NON_BRAIN``; ``remap`` refuses any other label, so nothing becomes background by accident.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, GM, WM, CSF = 0, 1, 2, 3
TISSUES: dict[int, str] = {GM: "GM", WM: "WM", CSF: "CSF"}
LABEL_NAMES: dict[int, str] = {BACKGROUND: "background", **TISSUES}


def one_hot(labels: np.ndarray) -> np.ndarray:
    """Tissue labels as class scores (float32, the labels' shape x classes): 1 for the label's class."""
    return np.stack([labels == label for label in LABEL_NAMES], axis=-1).astype(np.float32)

# Display colours of the tissues (colour-blind safe: Okabe-Ito), by label: background, GM, WM, CSF.
TISSUE_RGB = np.array([[0, 0, 0], [230, 159, 0], [86, 180, 233], [0, 158, 115]], dtype=np.uint8)


# Cortical parcellations (aparc+aseg, aparc.DKTatlas+aseg: FastSurfer, FreeSurfer, SynthSeg --parc):
# 1000-1035 left and 2000-2035 right cortex, 1000/2000 being "unknown" cortex.
CORTICAL_PARCELS: dict[int, int] = {label: GM for label in [*range(1000, 1036), *range(2000, 2036)]}

# FreeSurfer lookup-table labels (FreeSurferColorLUT.txt) -> tissue.
FREESURFER_TO_TISSUE: dict[int, int] = {
    # grey matter: cerebral and cerebellar cortex, grey nuclei, hippocampus, amygdala
    3: GM, 42: GM,  # cerebral cortex
    8: GM, 47: GM,  # cerebellar cortex
    # Deep grey matter, as manual raters draw it. Thalamus: grey nuclei crossed by fibres; on T1 between GM and WM
    # (hmrf: ~60 % WM). Pallidum: myelinated and WM-bright on T1 (hmrf: 100 % WM), but a grey nucleus.
    10: GM, 49: GM,  # thalamus
    9: GM, 48: GM,  # thalamus as older FreeSurfer versions and CMA's manual labels number it ("Left-Thalamus")
    13: GM, 52: GM,  # pallidum
    11: GM, 50: GM,  # caudate
    12: GM, 51: GM,  # putamen
    17: GM, 53: GM,  # hippocampus
    18: GM, 54: GM,  # amygdala
    26: GM, 58: GM,  # accumbens
    27: GM, 59: GM,  # substantia nigra
    # Ventral diencephalon: the hypothalamus, subthalamic nucleus, red nucleus and substantia nigra among the
    # cerebral peduncles. WM-bright on T1 (hmrf: 98 % WM), but the manual labels count it GM: 82-95 % of SAMSEG's
    # ventral DC (its brainstem: 5-16 %) is GM in oasis-manual's (Neuromorphometrics) labels, head by head.
    28: GM, 60: GM,
    80: GM, 81: GM, 82: GM,  # non-WM hypointensities: spots inside grey matter
    **CORTICAL_PARCELS,
    # white matter
    2: WM, 41: WM,  # cerebral white matter
    7: WM, 46: WM,  # cerebellar white matter
    77: WM, 78: WM, 79: WM,  # WM hypointensities: lesions inside white matter keep the tissue they sit in
    # Lesions: SynthSeg's own output maps its training maps' lesion labels to WM (generation tutorial).
    25: WM, 57: WM,
    85: WM,  # optic chiasm
    251: WM, 252: WM, 253: WM, 254: WM, 255: WM,  # corpus callosum
    # Brainstem: mostly white-matter tracts, WM-bright on T1 (hmrf: 96 % WM); SAMSEG models it with
    # its global WM Gaussian and FAST-style 3-class segmenters label it WM.
    16: WM,
    # CSF: ventricles and extra-cerebral CSF
    4: CSF, 43: CSF,  # lateral ventricles
    5: CSF, 44: CSF,  # inferior lateral ventricles
    14: CSF, 15: CSF,  # 3rd and 4th ventricle
    24: CSF,  # extra-cerebral CSF
    72: CSF,  # 5th ventricle
    # Choroid plexus: sits inside the ventricles; on T1 between CSF and GM (hmrf splits it ~45/55
    # CSF/GM); SAMSEG models it with its "CSF_messy" Gaussian. CSF keeps the ventricles whole.
    31: CSF, 63: CSF,
    30: CSF, 62: CSF,  # vessels: small, dark; SAMSEG's "CSF_messy" Gaussian too
    # 136/137, 163/164 are "Caudate/Putamen" and "Subcortical-Gray-Matter" in the FreeSurfer LUT, but
    # SynthSeg's training label maps reuse them for intraventricular tissue (choroid plexus) in the
    # left/right lateral ventricles (136/163) and temporal horns (137/164): SynthSeg segments them as
    # ventricle (its segmentation_labels_2.0: 136->4, 137->5, 163->43, 164->44). No segmenter we run
    # emits them.
    136: CSF, 137: CSF, 163: CSF, 164: CSF,
}

# The deep grey structures (FreeSurfer labels): grey nuclei, hippocampus, amygdala and the ventral diencephalon. Raters
# draw them GM; intensity segmenters label them by brightness (the pallidum, much of the thalamus and the ventral
# diencephalon WM). The ``anatomy`` consensus takes an atlas segmenter's word inside them (pipeline/tools/consensus.py).
DEEP_GREY: tuple[int, ...] = (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 27, 59, 28, 60)

# Labels that are not brain: they become background, on purpose.
NON_BRAIN: dict[int, str] = {
    165: "Skull (SAMSEG)",
    258: "Soft_Nonbrain_Tissue (SAMSEG)",
    259: "Fluid_Inside_Eyes (SAMSEG)",
    # SynthSeg's training label maps: extra-cerebral tissues of the whole head (507 is "extra-cerebral
    # soft tissues" in its generation tutorial; SynthSeg segments all of them as background). In the
    # FreeSurfer LUT these numbers are hippocampal subfields, which no tool we run emits.
    **{label: "extra-cerebral (SynthSeg training maps)"
       for label in (502, 506, 507, 508, 509, 511, 512, 514, 515, 516, 530)},
}


class UnknownLabel(ValueError):
    """A label map holds labels the scheme has not decided on."""


def present_labels(labels: np.ndarray) -> list[int]:
    """The label values a map holds (a counting pass: far quicker than np.unique on whole heads)."""
    labels = np.asarray(labels).ravel().astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"negative label {labels.min()} in a label map")
    return np.flatnonzero(np.bincount(labels)).tolist()


def unmapped_labels(labels: np.ndarray, table: dict[int, int] = FREESURFER_TO_TISSUE) -> list[int]:
    """Non-zero labels present in ``labels`` that are neither in ``table`` nor in ``NON_BRAIN``."""
    return [value for value in present_labels(labels) if value != 0 and value not in table | NON_BRAIN]


def remap(labels: np.ndarray, table: dict[int, int] = FREESURFER_TO_TISSUE) -> np.ndarray:
    """Map every label through ``table`` (``NON_BRAIN`` labels become background).

    A label in neither raises UnknownLabel: decide on it in this module first.
    """
    labels = np.asarray(labels).astype(np.int64)
    unknown = unmapped_labels(labels, table)
    if unknown:
        raise UnknownLabel(f"labels {unknown} are not in pipeline/core/labels.py (neither a tissue nor non-brain)")
    lookup = np.zeros(max(int(labels.max(initial=0)), *table) + 1, dtype=np.uint8)
    for source, tissue in table.items():
        lookup[source] = tissue
    return lookup[labels]


def classes_to_tissues(classes: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Name three intensity classes by their mean T1 inside the mask: CSF < GM < WM.

    Never trusts a tool's class numbering: the order of mean intensities decides. Class 0 is background.
    """
    ids = [c for c in np.unique(classes[mask]) if c != 0]
    if len(ids) != 3:
        raise ValueError(f"expected 3 tissue classes inside the brain mask, found {len(ids)}")
    by_brightness = sorted(ids, key=lambda c: float(image[mask & (classes == c)].mean()))
    tissues = np.zeros(classes.shape, dtype=np.uint8)
    for class_id, tissue in zip(by_brightness, (CSF, GM, WM), strict=True):
        tissues[mask & (classes == class_id)] = tissue
    return tissues


def voxel_volume_ml(affine: np.ndarray) -> float:
    return float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0


def tissue_volumes(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """mL of GM, WM and CSF in a label map, and each one's share of the three."""
    volumes = {f"{name}_ml": float((labels == tissue).sum() * voxel_ml) for tissue, name in TISSUES.items()}
    brain = sum(volumes.values())
    fractions = {f"{name}_fraction": volumes[f"{name}_ml"] / brain if brain else 0.0
                 for name in TISSUES.values()}
    return volumes | fractions
