import numpy as np

from pipeline.apps.predict import plane_on_grid
from pipeline.core.labels import one_hot
from pipeline.imaging.grids import scores_on_grid


def test_a_single_1mm_plane_reaches_a_thicker_flipped_input_grid():
    labels = np.zeros((40, 50, 60), np.uint8)
    labels[5:35, 5:45, 30] = 2
    ras_1mm = np.array([[1.0, 0, 0, -20], [0, 1, 0, -25], [0, 0, 1, -30], [0, 0, 0, 1]])
    las_thick = np.array([[-1.0, 0, 0, 20], [0, 4 / 3, 0, -25], [0, 0, 4 / 3, -29.5], [0, 0, 0, 1]])
    out = plane_on_grid(labels, ras_1mm, 30, (40, 38, 45), las_thick)
    planes = np.nonzero(out.any(axis=(0, 1)))[0]
    # target slice 22 is centred at z = -29.5 + 22 * 4/3 = -0.17 mm and 1.33 mm thick: the labelled
    # plane z = 0 lies inside it, and inside no other.
    assert planes.tolist() == [22]
    assert (out == 2).sum() == 30 * len(range(4, 34))  # x flipped, y resampled at 4/3 mm


def test_scores_reach_the_inputs_own_grid_unchanged_from_a_reoriented_brain_grid(oasis):
    """A real OASIS head's manual tissues as a model's scores on the RAS grid the pipeline predicts on: carried back
    to the head's own LAS grid, every voxel keeps its label."""
    import nibabel as nib

    image = nib.load(oasis / "derivatives/manual/sub-1000/anat/sub-1000_dseg.nii.gz")
    labels = np.asarray(image.dataobj).astype(np.uint8)
    ras = nib.as_closest_canonical(nib.Nifti1Image(labels, image.affine))
    assert not np.allclose(ras.affine, image.affine)  # a flip: the test moves labels between grids
    out = scores_on_grid(one_hot(np.asarray(ras.dataobj)), ras.affine, labels.shape, image.affine)
    assert np.array_equal(out, labels)


def test_a_thick_input_slice_takes_the_tissue_that_fills_it_most_not_the_one_at_its_centre():
    """1 mm planes alternating WM, GM, WM along y, predicted on a 1 mm grid; the input's slices are 3 mm thick,
    each centred on a GM plane. Nearest-neighbour would call every slice GM; two thirds of each is WM."""
    labels = np.broadcast_to(np.array([2, 1, 2], np.uint8)[np.arange(60) % 3][None, :, None], (20, 60, 20)).copy()
    thick = np.diag([1.0, 3.0, 1.0, 1.0])
    thick[1, 3] = 1.0  # slice k centred on plane 3k + 1: a GM plane
    out = scores_on_grid(one_hot(labels), np.eye(4), (20, 19, 20), thick)
    assert np.all(out[:, 1:-1] == 2)  # away from the field of view's edge
    assert np.array_equal(scores_on_grid(one_hot(labels), np.eye(4), (20, 20, 20), np.diag([1.0, 3.0, 1.0, 1.0])),
                          labels[:, ::3])  # slices centred on WM planes: WM either way


def test_a_command_error_is_one_message_naming_the_file_and_debug_shows_the_traceback(tmp_path, capsys):
    import pytest

    from pipeline.__main__ import main
    from pipeline.core.io import InputError

    missing = tmp_path / "no-model"
    assert main(["predict", "--model", str(missing), "--input", str(tmp_path), "--output", str(tmp_path)]) == 2
    message = capsys.readouterr().err
    assert f"error: {missing}: not a trained model folder (no training.json)" in message
    assert "Traceback" not in message and "--debug" in message
    with pytest.raises(InputError, match="not a trained model folder"):
        main(["--debug", "predict", "--model", str(missing), "--input", str(tmp_path), "--output", str(tmp_path)])


def test_bench_overrides_name_a_wrong_key(tmp_path, capsys):
    from pipeline.__main__ import main

    (tmp_path / "params.yaml").write_text("seed: 1\n")
    assert main(["bench", "train", "--study", str(tmp_path), "-S", "nosuch.key=1"]) == 2
    assert "params.yaml has no section 'nosuch'" in capsys.readouterr().err


def test_outputs_are_named_by_the_inputs_bids_entities():
    from pathlib import Path

    from pipeline.apps.predict import case_name

    assert case_name(Path("sub-01_T1w.mgz")) == "sub-01"
    assert case_name(Path("/x/sub-01_ses-2_run-1_T1w.nii.gz")) == "sub-01_ses-2_run-1"
    assert case_name(Path("head scan.nii")) == "head scan"
    assert case_name(Path("brain.mgh")) == "brain"


def _brain(oasis, subject: str):
    import nibabel as nib

    image = nib.load(oasis / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz")
    mask = nib.load(oasis / "derivatives/manual" / f"sub-{subject}" / "anat" / f"sub-{subject}_desc-brain_mask.nii.gz")
    return image.get_fdata(dtype=np.float32), np.asarray(mask.dataobj) > 0


def test_real_t1_brains_pass_the_contrast_check_and_inverted_ones_do_not(oasis):
    """Ten real T1 brains look T1-weighted; the same brains with their contrast inverted inside the mask (CSF
    brightest, white matter darkest, as on a T2) do not."""
    from pipeline.apps.predict import intensity_classes, t1_contrast

    for subject in [f"{n}" for n in range(1000, 1010)]:
        brain, mask = _brain(oasis, subject)
        dark, _, bright = intensity_classes(brain, mask)
        assert t1_contrast(brain, mask) is None and bright > dark, (subject, dark, bright)
        inverted = np.where(mask, brain.max() - brain, 0)
        assert "not T1-like" in t1_contrast(inverted, mask), subject


def test_predict_refuses_a_non_t1_head_naming_the_file_and_flags_thick_slices(oasis, tmp_path, monkeypatch):
    """The same acquisition QC as the study's harmonize stage, and the contrast check: a refusal names the file
    and the override; with the override, the head goes through flagged."""
    import nibabel as nib
    import pytest

    from pipeline.apps import predict
    from pipeline.core.config import HarmonizeConfig, StripConfig, TrainProfile
    from pipeline.core.io import InputError
    from pipeline.nnunet.models import TrainingRecord

    brain, mask = _brain(oasis, "1000")
    inverted = np.where(mask, brain.max() - brain, 0).astype(np.float32)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])  # 5 mm slices: a clinical scan
    path = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(nib.Nifti1Image(inverted[:, :, ::5], affine), path)
    monkeypatch.setattr(predict, "brain_mask", lambda method, image, config: np.asarray(image.dataobj) > 0)
    record = TrainingRecord(profile="ci", schedule=TrainProfile(epochs=1, iterations_per_epoch=1,
                                                                val_iterations_per_epoch=1),
                            fold="all", device="cpu", deterministic=True, seed=42, seeds=[42], wall_s=1.0,
                            trainer="nnUNetTrainerPipeline", dataset_id=100, segmenter="hmrf", stripper="deepbet",
                            harmonize=HarmonizeConfig(n4=False), strip=StripConfig(), size=256, levels="brain",
                            views=["axial"], versions={})
    with pytest.raises(InputError, match=rf"file {path}: the contrast is not T1-like.*--allow-non-t1"):
        predict.prepare_head(path, record, tmp_path / "work")
    prepared = predict.prepare_head(path, record, tmp_path / "work", allow_non_t1=True)
    assert any("voxels of 5.0 mm" in flag for flag in prepared.flags)  # the harmonize stage's own flag
    assert any("not T1-like" in flag for flag in prepared.flags)


def test_a_real_heads_tissues_on_3mm_slices_follow_each_slices_majority(oasis):
    """A real OASIS manual map as scores, carried onto 3 mm coronal slices that each cover three of its planes:
    the label of a slice agrees with the tissue that fills most of it more often than the label at its centre."""
    import nibabel as nib

    image = nib.load(oasis / "derivatives/manual/sub-1000/anat/sub-1000_dseg.nii.gz")
    labels = np.asarray(image.dataobj).astype(np.uint8)
    n = labels.shape[1] // 3
    blocks = labels[:, : 3 * n].reshape(labels.shape[0], n, 3, labels.shape[2])  # y: anterior-posterior
    counts = np.stack([(blocks == c).sum(axis=2) for c in range(4)], axis=-1)
    majority, centre = np.argmax(counts, axis=-1), blocks[:, :, 1]
    judged = ((majority > 0) | (centre > 0)) & (counts.max(axis=-1) >= 2)  # brain, with a two-of-three tissue
    thick = image.affine @ np.array([[1.0, 0, 0, 0], [0, 3, 0, 1], [0, 0, 1, 0], [0, 0, 0, 1]])
    out = scores_on_grid(one_hot(labels), image.affine, majority.shape, thick)
    agree, agree_centre = (out == majority)[judged].mean(), (centre == majority)[judged].mean()
    assert agree > 0.99 and agree > agree_centre + 0.005, (agree, agree_centre)
