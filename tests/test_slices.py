from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.imaging.slices import center_pad, level_index, reference_level_mm, to_uint8, uncenter

from .conftest import SHARED_DATA

OASIS = SHARED_DATA / "oasis-manual"


def test_center_pad_and_uncenter_round_trip_smaller_and_larger_axes():
    rng = np.random.default_rng(0)
    for shape in [(100, 120), (300, 90), (256, 256), (257, 301)]:
        array = rng.integers(1, 4, shape).astype(np.uint8)
        canvas = center_pad(array, 256)
        assert canvas.shape == (256, 256)
        back = uncenter(canvas, shape)
        kept = min(shape[0], 256), min(shape[1], 256)
        assert (back > 0).sum() == kept[0] * kept[1]  # only cropped margins are lost
        assert np.array_equal(back[back > 0], array[back > 0])


def test_center_pad_centres():
    canvas = center_pad(np.ones((2, 4), np.uint8), 8)
    rows, cols = np.nonzero(canvas)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (3, 4, 2, 5)


def test_to_uint8_scales_and_clips():
    assert to_uint8(np.array([-1.0, 0.0, 0.5, 1.0, 2.0])).tolist() == [0, 0, 128, 255, 255]


def test_to_uint8_with_a_brain_mask_keeps_the_darkest_brain_voxel_off_the_background():
    image = np.zeros((8, 8), np.float32)
    image[2:6, 2:6] = np.linspace(0.0, 1.0, 16).reshape(4, 4)  # the darkest brain voxel is 0, as background
    brain = image > -1
    brain[:2], brain[6:], brain[:, :2], brain[:, 6:] = False, False, False, False
    grey = to_uint8(image, brain)
    assert not grey[~brain].any()
    assert grey[brain].min() == 1 and grey[brain].max() == 255
    assert np.array_equal(np.argsort(grey[brain], kind="stable"), np.argsort(image[brain], kind="stable"))


# --- the reference level: one anatomy for every strategy, found before any stripper ----------------------
@pytest.fixture(scope="module")
def oasis() -> Path:
    if not OASIS.is_dir():
        pytest.skip(f"real test data not found at {OASIS}")
    return OASIS


def canonical(path: Path) -> nib.Nifti1Image:
    image = nib.as_closest_canonical(nib.load(path))
    return nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine)


def test_the_reference_level_crosses_the_lateral_ventricles_of_every_manually_labelled_brain(oasis: Path):
    """OASIS brains: the manual CSF label is the ventricles only. At the reference level the plane crosses
    them (the bodies of the lateral ventricles), and it lies in the middle third of the brain's height."""
    for brain_path in sorted(oasis.glob("sub-*/anat/*_T1w.nii.gz")):
        subject = brain_path.name.split("_")[0]
        brain = canonical(brain_path)
        labels = canonical(oasis / "derivatives/manual" / subject / "anat" / f"{subject}_dseg.nii.gz")
        k = level_index(brain, reference_level_mm(brain))
        tissue = np.rint(labels.get_fdata()).astype(int)
        heights = np.nonzero(tissue.any(axis=(0, 1)))[0]
        assert heights.min() + len(heights) / 3 < k < heights.max() - len(heights) / 3, subject
        ventricles = int((tissue[:, :, k] == 1).sum())  # dseg.tsv: 1 CSF (ventricles)
        assert ventricles > 300, (subject, ventricles)


def test_the_reference_level_is_the_same_with_and_without_skull(ds000011: Path):
    """Real heads with skull against the same heads skull-stripped by deepbet: the same level within 4 mm,
    so the level does not hang on what a stripper keeps (measured: 1-3.5 mm lower with skull)."""
    from pipeline.core.config import StripConfig
    from pipeline.tools.registry import brain_mask

    for path in sorted(ds000011.glob("sub-0[1-3]/anat/*_T1w.nii.gz")):
        head = canonical(path)
        mask = brain_mask("deepbet", head, StripConfig())
        brain = nib.Nifti1Image(np.where(mask, head.get_fdata(dtype=np.float32), 0), head.affine)
        with_skull, without = reference_level_mm(head), reference_level_mm(brain)
        assert abs(with_skull - without) < 4.0, (path.name, with_skull, without)
        k = level_index(head, with_skull)
        heights = np.nonzero(mask.any(axis=(0, 1)))[0]
        assert heights.min() + len(heights) / 3 < k < heights.max() - len(heights) / 3, path.name


def test_level_index_is_the_plane_at_that_height_in_any_crop():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-80.0, -100.0, -60.0]
    image = nib.Nifti1Image(np.zeros((50, 60, 70), np.float32), affine)
    assert level_index(image, -60.0) == 0 and level_index(image, -20.2) == 40
    cropped = nib.Nifti1Image(np.zeros((50, 60, 30), np.float32), affine @ np.array(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 25], [0, 0, 0, 1]], dtype=float))
    assert level_index(cropped, -20.2) == 15  # the same plane in world space
    assert level_index(cropped, 500.0) == 29  # kept inside the image
