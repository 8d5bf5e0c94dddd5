"""Labels carried onto another grid (``pipeline.imaging.grids``), as the segmenter wrappers, the reference labels
and the strip QC use it, on real label maps and masks; and the brain's intensity range the strip stage and the slices
share (``harmonize.percentiles`` is the head's)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.imaging.grids import labels_on_grid


def _box_of_canonical(labels: nib.Nifti1Image) -> tuple[nib.Nifti1Image, tuple[slice, ...]]:
    """The labels' RAS (reoriented) grid, cut to an off-centre box: the grid and where it lies on the RAS array."""
    canonical = nib.as_closest_canonical(labels)
    box = (slice(20, 200), slice(35, 230), slice(10, 190))
    offset = np.array([s.start for s in box] + [1])
    affine = canonical.affine.copy()
    affine[:3, 3] = (canonical.affine @ offset)[:3]
    shape = tuple(s.stop - s.start for s in box)
    return nib.Nifti1Image(np.zeros(shape, np.uint8), affine), box


def test_a_real_label_map_lands_on_a_reoriented_cropped_grid_exactly(label_maps: Path):
    """A FreeSurfer label map (LIA) onto a RAS grid cut out of it: every voxel takes its own label (the grids
    share their voxel centres), so the result is the reoriented labels' box; on its own grid, the labels as
    they are."""
    labels = nib.load(label_maps / "training_seg_01.nii.gz")
    grid, box = _box_of_canonical(labels)
    expected = np.asarray(nib.as_closest_canonical(labels).dataobj)[box]
    moved = labels_on_grid(labels, grid)
    assert moved.dtype == np.int64 and np.array_equal(moved, expected)
    assert np.array_equal(labels_on_grid(labels, (grid.shape, grid.affine)), expected)  # a shape and affine
    assert np.array_equal(labels_on_grid(labels, labels), np.asarray(labels.dataobj))


def test_labels_outside_their_field_of_view_are_background_and_a_half_voxel_shift_picks_a_neighbour(
        label_maps: Path):
    labels = nib.load(label_maps / "training_seg_02.nii.gz")
    data = np.rint(np.asarray(labels.dataobj)).astype(np.int64)
    shifted = labels.affine.copy()
    shifted[:3, 3] = (labels.affine @ np.array([-10.4, 0.0, 0.0, 1.0]))[:3]
    moved = labels_on_grid(labels, (labels.shape, shifted))  # 10.4 voxels before the first: 10 outside
    assert not moved[:10].any()
    assert np.array_equal(moved[10:], data[: data.shape[0] - 10])


def test_the_strip_qc_and_the_reference_labels_carry_real_masks_through_the_same_function(oasis: Path):
    """A manual brain mask against itself on a reoriented grid: Dice 1 (strip QC, world space); the manual
    tissues onto that grid are the reoriented tissues (reference labels)."""
    from pipeline.evaluation.references import on_grid, reference_tissues
    from pipeline.stages.strip_qc import dice_world

    manual = oasis / "derivatives" / "manual" / "sub-1000" / "anat"
    mask = nib.load(manual / "sub-1000_desc-brain_mask.nii.gz")
    canonical = nib.as_closest_canonical(mask)
    assert nib.aff2axcodes(mask.affine) != nib.aff2axcodes(canonical.affine)  # a real move
    assert dice_world(mask, canonical) == 1.0
    tissues = reference_tissues(manual / "sub-1000_dseg.nii.gz", oasis / "derivatives" / "manual", "table", "1000")
    on_canonical = on_grid(tissues, canonical)
    assert on_canonical.dtype == np.uint8
    assert np.array_equal(on_canonical, np.asarray(nib.as_closest_canonical(tissues).dataobj))


def test_the_stripped_brain_and_each_slice_clip_the_brains_own_range(oasis: Path):
    """``BRAIN_PERCENTILES`` is the brain's range: the strip stage's brain reaches 0 and 1 on that share of its
    voxels, and a slice of it 1 and 255 likewise."""
    from pipeline.imaging.preprocess import crop_to_brain
    from pipeline.imaging.slices import BRAIN_PERCENTILES, to_uint8

    image = nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz")
    mask = np.asarray(nib.load(oasis / "derivatives" / "manual" / "sub-1000" / "anat" /
                               "sub-1000_desc-brain_mask.nii.gz").dataobj) > 0
    low, high = BRAIN_PERCENTILES
    brain, cropped = crop_to_brain(image, mask, 4)
    data, inside = brain.get_fdata(dtype=np.float32), np.asarray(cropped.dataobj) > 0
    assert abs(np.mean(data[inside] == 0) * 100 - low) < 0.1
    assert abs(np.mean(data[inside] == 1) * 100 - (100 - high)) < 0.1
    for plane in range(inside.shape[2] // 3, inside.shape[2] * 2 // 3, 9):  # ties can make them larger
        grey = to_uint8(data[:, :, plane], inside[:, :, plane])[inside[:, :, plane]]
        assert np.mean(grey == 1) * 100 > low - 0.05, plane
        assert np.mean(grey == 255) * 100 > 100 - high - 0.05, plane
