"""The one tissue label scheme, and the tables that map each tool's labels to it.

Tissues: 0 background, 1 grey matter (GM), 2 white matter (WM), 3 CSF.
"""

from __future__ import annotations

import numpy as np

BACKGROUND, GM, WM, CSF = 0, 1, 2, 3
TISSUES: dict[int, str] = {GM: "GM", WM: "WM", CSF: "CSF"}
LABEL_NAMES: dict[int, str] = {BACKGROUND: "background", **TISSUES}

# FreeSurfer lookup-table labels (FreeSurferColorLUT.txt) -> tissue.
# Labels not listed are non-brain (skull 165, soft tissue 258, eye fluid 259, ...)
# and become background; `unmapped_labels` lists which ones a map actually holds.
FREESURFER_TO_TISSUE: dict[int, int] = {
    # grey matter: cerebral and cerebellar cortex, deep nuclei, hippocampus, amygdala
    3: GM, 42: GM,  # cerebral cortex
    8: GM, 47: GM,  # cerebellar cortex
    10: GM, 49: GM,  # thalamus
    11: GM, 50: GM,  # caudate
    12: GM, 51: GM,  # putamen
    13: GM, 52: GM,  # pallidum
    17: GM, 53: GM,  # hippocampus
    18: GM, 54: GM,  # amygdala
    26: GM, 58: GM,  # accumbens
    27: GM, 59: GM,  # substantia nigra
    28: GM, 60: GM,  # ventral diencephalon: mostly hypothalamic grey, as SynthSeg's GM merges do
    # white matter
    2: WM, 41: WM,  # cerebral white matter
    7: WM, 46: WM,  # cerebellar white matter
    77: WM, 78: WM, 79: WM,  # white-matter hypointensities
    85: WM,  # optic chiasm
    251: WM, 252: WM, 253: WM, 254: WM, 255: WM,  # corpus callosum
    # The brainstem is mostly white-matter tracts and appears WM-bright on T1; FAST-style
    # 3-class segmenters label it WM, so it is WM here too.
    16: WM,
    # CSF: ventricles, extra-cerebral CSF, vessels in sulci appear CSF-dark on T1
    4: CSF, 43: CSF,  # lateral ventricles
    5: CSF, 44: CSF,  # inferior lateral ventricles
    14: CSF, 15: CSF,  # 3rd and 4th ventricle
    24: CSF,  # extra-cerebral CSF
    72: CSF,  # 5th ventricle
    # Choroid plexus sits inside the ventricles and is mostly CSF-dark on T1 at 1 mm,
    # so 3-class segmenters assign it to CSF; we do the same.
    31: CSF, 63: CSF,
    30: CSF, 62: CSF,  # vessels
}


def remap(labels: np.ndarray, table: dict[int, int]) -> np.ndarray:
    """Map every label through ``table``; labels not in it become background."""
    labels = np.asarray(labels).astype(np.int64)
    if labels.size == 0:
        return labels.astype(np.uint8)
    lookup = np.zeros(max(int(labels.max()), max(table)) + 1, dtype=np.uint8)
    for source, tissue in table.items():
        lookup[source] = tissue
    if labels.min() < 0:
        raise ValueError(f"negative label {labels.min()} in a label map")
    return lookup[labels]


def remap_freesurfer_to_tissue(labels: np.ndarray) -> np.ndarray:
    return remap(labels, FREESURFER_TO_TISSUE)


def unmapped_labels(labels: np.ndarray, table: dict[int, int] = FREESURFER_TO_TISSUE) -> list[int]:
    """Non-zero labels present in ``labels`` that the table sends to background."""
    present = np.unique(np.asarray(labels))
    return [int(value) for value in present if value != 0 and int(value) not in table]
