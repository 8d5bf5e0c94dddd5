"""Reference labels a user supplies (a BIDS derivative): found per subject, read through their label
table or as FreeSurfer labels, and carried onto the pipeline's grids in world space."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.io import InputError, save_nifti, write_tsv
from pipeline.core.labels import CSF, GM, WM, remap
from pipeline.evaluation.references import on_grid, reference_file, reference_tissues
from pipeline.imaging.preprocess import crop, to_ras_isotropic


def derivative(root: Path, subject: str, labels: np.ndarray, affine: np.ndarray, table: dict[int, str] | None,
               name: str = "dseg") -> Path:
    path = root / f"sub-{subject}" / "anat" / f"sub-{subject}_{name}.nii.gz"
    save_nifti(labels, affine, path)
    if table is not None:
        write_tsv([{"index": index, "name": label} for index, label in table.items()], root / "dseg.tsv")
    return path


def blocks() -> np.ndarray:
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8], labels[8:14], labels[14:18] = 5, 6, 7
    return labels


def test_an_fmriprep_style_table_maps_names_to_tissues(tmp_path: Path):
    path = derivative(tmp_path, "01", blocks(), np.eye(4), {0: "Background", 5: "GM", 6: "White matter", 7: "CSF"})
    tissues = np.asarray(reference_tissues(path, tmp_path, "table", "01").dataobj)
    assert np.array_equal(np.unique(tissues[2:8]), [GM]) and np.array_equal(np.unique(tissues[8:14]), [WM])
    assert np.array_equal(np.unique(tissues[14:18]), [CSF]) and not tissues[18:].any()


def test_a_table_beside_the_image_wins_over_the_root_table(tmp_path: Path):
    path = derivative(tmp_path, "01", blocks(), np.eye(4), {5: "GM", 6: "WM", 7: "CSF"})
    write_tsv([{"index": 5, "name": "CSF"}, {"index": 6, "name": "WM"}, {"index": 7, "name": "GM"}],
              path.with_name("sub-01_dseg.tsv"))
    tissues = np.asarray(reference_tissues(path, tmp_path, "table", "01").dataobj)
    assert tissues[3, 0, 0] == CSF and tissues[15, 0, 0] == GM


def test_a_name_that_is_not_a_tissue_is_an_error_naming_table_and_label(tmp_path: Path):
    path = derivative(tmp_path, "01", blocks(), np.eye(4), {5: "GM", 6: "WM", 7: "Left-Hippocampus"})
    with pytest.raises(InputError, match=r"dseg.tsv: labels \['Left-Hippocampus'\] are not GM, WM, CSF"):
        reference_tissues(path, tmp_path, "table", "01")


def test_labels_missing_from_the_table_or_no_table_are_errors(tmp_path: Path):
    path = derivative(tmp_path, "01", blocks(), np.eye(4), None)
    with pytest.raises(InputError, match="no label table"):
        reference_tissues(path, tmp_path, "table", "01")
    write_tsv([{"index": 5, "name": "GM"}, {"index": 6, "name": "WM"}], tmp_path / "dseg.tsv")
    with pytest.raises(InputError, match=r"labels \[7\] are not in"):
        reference_tissues(path, tmp_path, "table", "01")


def test_freesurfer_labels_of_a_real_synthseg_map_map_like_the_segmenters(tmp_path: Path, label_maps: Path):
    source = sorted(label_maps.glob("*.nii.gz"))[0]
    image = nib.load(source)
    path = derivative(tmp_path, "07", np.asarray(image.dataobj), image.affine, None)
    tissues = np.asarray(reference_tissues(path, tmp_path, "freesurfer", "07").dataobj)
    assert np.array_equal(tissues, remap(np.asarray(image.dataobj)))
    assert {GM, WM, CSF} <= set(np.unique(tissues).tolist())


def test_the_reference_without_desc_is_chosen_and_two_plain_ones_are_refused(tmp_path: Path):
    derivative(tmp_path, "01", blocks(), np.eye(4), None, name="desc-aseg_dseg")
    plain = derivative(tmp_path, "01", blocks(), np.eye(4), None)
    assert reference_file(tmp_path, "01") == plain
    assert reference_file(tmp_path, "02") is None
    derivative(tmp_path, "01", blocks(), np.eye(4), None, name="run-2_dseg")
    with pytest.raises(InputError, match="several reference label maps"):
        reference_file(tmp_path, "01")


def test_a_reference_on_the_raw_head_lands_where_it_was_on_the_cropped_ras_grid(ds000011: Path, tmp_path: Path):
    head = nib.load(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz")  # LAS, 1 x 1.33 x 1.33 mm
    labels = np.zeros(head.shape[:3], np.uint8)
    labels[80:90, 100:110, 90:100] = 2  # a WM block at a known place on the raw grid
    path = derivative(tmp_path, "01", labels, head.affine, {0: "background", 2: "WM"})
    ras = to_ras_isotropic(head, 1.0)
    box = tuple(slice(20, n - 20) for n in ras.shape)  # a crop, as the strip stage makes
    cropped, affine = crop(ras.get_fdata(dtype=np.float32), ras.affine, box)
    moved = on_grid(reference_tissues(path, tmp_path, "table", "01"), nib.Nifti1Image(cropped, affine))
    assert moved.shape == cropped.shape and set(np.unique(moved).tolist()) == {0, WM}
    expected = nib.affines.apply_affine(head.affine, [[84.5, 104.5, 94.5]])[0]
    found = nib.affines.apply_affine(affine, np.argwhere(moved == WM).mean(axis=0))
    assert np.linalg.norm(found - expected) < 1.0  # mm
    assert abs((moved == WM).sum() - 10 * 10 * 10 * np.prod(head.header.get_zooms()[:3])) < 120  # 1 mm voxels
