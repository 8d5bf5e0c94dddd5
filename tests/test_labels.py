"""The one label scheme: every label a real map or tool holds is decided on purpose."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.labels import (
    BACKGROUND,
    CSF,
    FREESURFER_TO_TISSUE,
    GM,
    NON_BRAIN,
    WM,
    UnknownLabel,
    classes_to_tissues,
    present_labels,
    remap,
    unmapped_labels,
)


def test_tissue_table_and_non_brain_list_are_disjoint_and_use_the_scheme():
    assert not set(FREESURFER_TO_TISSUE) & set(NON_BRAIN)
    assert set(FREESURFER_TO_TISSUE.values()) == {GM, WM, CSF}
    assert BACKGROUND not in FREESURFER_TO_TISSUE


@pytest.mark.parametrize("number", [1, 2, 3, 4, 5])
def test_every_label_of_the_real_synthseg_maps_is_decided(label_maps: Path, number: int):
    labels = np.asarray(nib.load(label_maps / f"training_seg_0{number}.nii.gz").dataobj).astype(np.int64)
    assert unmapped_labels(labels) == []
    tissues = remap(labels)
    brain = tissues > 0
    # Whole-head maps: the extra-cerebral 5xx labels (most of the head) become background...
    assert set(present_labels(labels[~brain])) <= {0, *NON_BRAIN}
    # ...and the brain keeps a plausible tissue balance.
    shares = {tissue: float((tissues[brain] == tissue).mean()) for tissue in (GM, WM, CSF)}
    assert 0.3 < shares[GM] < 0.6 and 0.2 < shares[WM] < 0.5 and 0.05 < shares[CSF] < 0.5, shares


def test_samseg_atlas_labels_are_all_decided():
    """Every label SAMSEG's atlas can put in seg.mgz (its compression lookup table)."""
    samseg = pytest.importorskip("samseg")
    table = Path(samseg.SAMSEGDIR, "atlas", "20Subjects_smoothing2_down2_smoothingForAffine2",
                 "compressionLookupTable.txt")
    atlas_labels = np.array([int(line.split()[0]) for line in table.read_text().splitlines() if line.strip()])
    assert len(atlas_labels) > 40
    assert unmapped_labels(atlas_labels) == []


def test_remap_follows_the_scheme_for_key_structures():
    source = np.array([2, 41, 3, 42, 4, 24, 16, 13, 28, 31, 63, 10, 1003, 2035, 165, 258, 0])
    expected = [WM, WM, GM, GM, CSF, CSF, WM, GM, GM, CSF, CSF, GM, GM, GM, 0, 0, 0]  # pallidum (13), ventral DC (28)
    assert remap(source).tolist() == expected


def test_remap_refuses_an_undecided_label():
    with pytest.raises(UnknownLabel, match=r"\[999\]"):
        remap(np.array([0, 2, 999]))
    with pytest.raises(ValueError, match="negative"):
        remap(np.array([-1, 2]))


@pytest.mark.parametrize("numbering", [(1, 2, 3), (3, 1, 2), (2, 3, 1)])
def test_classes_are_named_by_mean_intensity_not_by_number(numbering):
    truth = np.repeat([CSF, GM, WM], 10).reshape(3, 10)
    image = np.choose(truth - 1, [0.6, 0.9, 0.3])  # GM 0.6, WM 0.9, CSF 0.3
    classes = np.choose(truth - 1, numbering)
    mask = np.ones_like(truth, dtype=bool)
    assert (classes_to_tissues(classes, image, mask) == truth).all()
