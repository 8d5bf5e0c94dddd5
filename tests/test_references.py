"""Reference labels a user supplies (a BIDS derivative): found per subject, read through their label
table or as FreeSurfer labels, and carried onto the pipeline's grids in world space."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.io import InputError, read_tsv, save_nifti, write_tsv
from pipeline.core.labels import CSF, GM, WM, remap
from pipeline.evaluation.references import on_grid, read_reference, reference_file, reference_tissues
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
    legacy = np.asarray(image.dataobj).copy()  # the thalamus as older FreeSurfer versions and CMA number it
    assert (legacy == 10).any() and (legacy == 49).any()
    legacy[legacy == 10], legacy[legacy == 49] = 9, 48
    assert np.array_equal(remap(legacy), tissues)


def test_the_reference_without_desc_is_chosen_and_two_plain_ones_are_refused(tmp_path: Path):
    derivative(tmp_path, "01", blocks(), np.eye(4), None, name="desc-aseg_dseg")
    plain = derivative(tmp_path, "01", blocks(), np.eye(4), None)
    assert reference_file(tmp_path, "01") == plain
    assert reference_file(tmp_path, "02") is None
    derivative(tmp_path, "02", blocks(), np.eye(4), None, name="desc-rater1_dseg")
    derivative(tmp_path, "02", blocks(), np.eye(4), None, name="desc-rater2_dseg")
    with pytest.raises(InputError, match="several reference label maps"):
        reference_file(tmp_path, "02")


def test_of_a_sessions_several_maps_the_one_named_like_the_heads_t1_is_chosen(tmp_path: Path):
    """Raters who labelled each T1w of a session (acq-, run- entities): the case's map is the one named like the file
    its head was copied from, or like the case itself (acquire.runs: all); the session's own map serves a head that
    has none; a map named for another head or in a template space is never this head's."""
    mprage = derivative(tmp_path, "01", blocks(), np.eye(4), None, name="acq-mprage_dseg")
    spgr = derivative(tmp_path, "01", blocks(), np.eye(4), None, name="acq-spgr_dseg")
    derivative(tmp_path, "01", blocks(), np.eye(4), None, name="space-MNI152NLin2009cAsym_dseg")
    source = Path("/bids/sub-01/anat")
    assert reference_file(tmp_path, "01", source / "sub-01_acq-spgr_T1w.nii.gz") == spgr  # acquire.runs: first
    assert reference_file(tmp_path, "01_acq-mprage") == mprage  # acquire.runs: all
    assert reference_file(tmp_path, "01", source / "sub-01_acq-tse_T1w.nii.gz") is None  # none is this head's
    session = derivative(tmp_path, "01", blocks(), np.eye(4), None, name="space-orig_dseg")
    assert reference_file(tmp_path, "01", source / "sub-01_acq-tse_T1w.nii.gz") == session
    assert reference_file(tmp_path, "01_acq-tse_run-2") == session
    assert reference_file(tmp_path, "01", source / "sub-01_acq-mprage_run-1_T1w.nii.gz") == mprage
    assert reference_file(tmp_path, "01") == session
    run = derivative(tmp_path, "03", blocks(), np.eye(4), None, name="run-01_dseg")
    assert reference_file(tmp_path, "03", source / "sub-03_T1w.nii.gz") == run  # a session's only T1w, run-1
    derivative(tmp_path, "04", blocks(), np.eye(4), None, name="acq-fast_dseg")
    assert reference_file(tmp_path, "04", source / "sub-04_T1w.nii.gz") is None  # the session's other T1w's
    derivative(tmp_path, "01", blocks(), np.eye(4), None, name="acq-mprage_run-1_dseg")
    assert reference_file(tmp_path, "01", source / "sub-01_acq-mprage_run-1_T1w.nii.gz").name == \
        "sub-01_acq-mprage_run-1_dseg.nii.gz"


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


def test_table_names_match_whatever_their_case_punctuation_or_usual_synonym(tmp_path: Path):
    """Tables as raters and spreadsheets write them: other spellings, a byte-order mark, indices as decimals."""
    labels = blocks()
    labels[18:], labels[1, 1], labels[1, 2], labels[1, 3] = 9, 10, 11, 12  # MRBrainS-style labels too
    path = derivative(tmp_path, "01", labels, np.eye(4), None)
    rows = ["index\tname", "0\tUnlabeled", "5.0\tGray-Matter", "6\tCerebral_White_Matter", "7\tVentricles",
            "9\tdeep grey matter", "10\tBasal ganglia", "11\tBrain stem", "12\tWhite matter lesions"]
    (tmp_path / "dseg.tsv").write_text("\ufeff" + "\n".join(rows) + "\n", encoding="utf-8")
    tissues = np.asarray(reference_tissues(path, tmp_path, "table", "01").dataobj)
    assert [int(tissues[k, 0, 0]) for k in (0, 3, 9, 15, 19)] == [0, GM, WM, CSF, GM]
    assert [int(tissues[1, j, 0]) for j in (1, 2, 3)] == [GM, WM, WM]  # basal ganglia, brainstem, WM lesions
    (tmp_path / "dseg.tsv").write_text("index\tname\n5.5\tGM\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"index '5.5' is not a whole number"):
        reference_tissues(path, tmp_path, "table", "01")


def test_a_freesurfer_mgz_reference_is_found_and_read(tmp_path: Path, label_maps: Path):
    image = nib.load(sorted(label_maps.glob("*.nii.gz"))[0])
    data = np.asarray(image.dataobj).astype(np.int32)
    path = tmp_path / "sub-07" / "anat" / "sub-07_dseg.mgz"
    path.parent.mkdir(parents=True)
    nib.save(nib.MGHImage(data, image.affine), path)
    assert reference_file(tmp_path, "07") == path
    assert np.array_equal(np.asarray(reference_tissues(path, tmp_path, "freesurfer", "07").dataobj), remap(data))


def test_the_reference_check_reads_every_table_and_lists_the_cases_without_a_map(tmp_path: Path):
    from pipeline.evaluation.references import check_references

    labels = tmp_path / "manual" / "sub-01" / "anat"  # the raw heads have sessions, these labels do not
    derivative(tmp_path / "manual", "01", blocks(), np.eye(4), {0: "background", 5: "GM", 6: "WM", 7: "CSF"})
    assert check_references(tmp_path / "manual", {"01_ses-A": None, "01_ses-B": None}, "table") == ["01_ses-A",
                                                                                                   "01_ses-B"]
    assert check_references(tmp_path / "manual", {"01": None, "02": None}, "table") == ["02"]
    write_tsv([{"index": 5, "name": "GM"}, {"index": 6, "name": "Left-Hippocampus"}], labels / "sub-01_dseg.tsv")
    with pytest.raises(InputError, match="Left-Hippocampus"):
        check_references(tmp_path / "manual", {"01": None}, "table")


def test_bench_real_refuses_a_reference_folder_without_the_datasets_label_maps_before_it_runs(oasis: Path,
                                                                                              tmp_path: Path):
    from pipeline.apps.bench_real import benchmark

    derivative(tmp_path / "manual", "01", blocks(), np.eye(4), {5: "GM", 6: "WM", 7: "CSF"})  # not oasis' subjects
    with pytest.raises(InputError, match=r"none of the 10 head\(s\) .* has a reference label map .*sub-1000_dseg"):
        benchmark(oasis, tmp_path / "manual", [], 0.4, tmp_path / "work", [])
    assert not (tmp_path / "work").exists()  # nothing prepared, nothing run


def test_a_reference_drawn_every_fourth_plane_is_scored_on_those_planes_only(oasis: Path, tmp_path: Path):
    """A rater who draws every fourth coronal plane of a real OASIS head: a prediction equal to the whole manual
    map scores 1 on the planes drawn, not the ~0.4 that counting the undrawn planes as background would give,
    also once carried onto the pipeline's cropped 1 mm RAS grid as evaluation carries it."""
    from pipeline.evaluation.dice import dice_per_tissue
    from pipeline.evaluation.references import drawn_planes, within

    root = oasis / "derivatives" / "manual"
    whole = reference_tissues(root / "sub-1000" / "anat" / "sub-1000_dseg.nii.gz", root, "table", "1000")
    full = np.asarray(whole.dataobj)
    assert drawn_planes(whole) is None  # a whole-volume reference: everything scored, as before
    stray = full.copy()
    stray[0, 0, 0] = stray[-1, -1, -1] = GM  # two stray clicks far from the brain ...
    stray[:, :, full.shape[2] // 2] = 0  # ... and an erased plane: still a whole-volume reference
    assert drawn_planes(nib.Nifti1Image(stray, whole.affine)) is None
    axis = int(np.argmax(np.abs(whole.affine[1, :3])))  # the voxel axis along anterior-posterior
    others = tuple(a for a in range(3) if a != axis)
    every_fourth = tuple(slice(None, None, 4) if a == axis else slice(None) for a in range(3))
    sparse = np.zeros_like(full)
    sparse[every_fourth] = full[every_fourth]
    scored = np.asarray(drawn_planes(nib.Nifti1Image(sparse, whole.affine)).dataobj) > 0
    assert np.array_equal(scored.any(axis=others), sparse.any(axis=others))  # the drawn planes, no others
    assert dice_per_tissue(sparse, full)["GM"] < 0.5
    assert dice_per_tissue(*within(scored, sparse, full))["GM"] == 1.0

    path = derivative(tmp_path, "1000", sparse, whole.affine, {0: "background", 1: "GM", 2: "WM", 3: "CSF"})
    ras = to_ras_isotropic(nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz"), 1.0)
    grid = nib.Nifti1Image(*crop(ras.get_fdata(dtype=np.float32), ras.affine,
                                 tuple(slice(10, n - 10) for n in ras.shape)))
    reference, scored_on_grid = read_reference(path, tmp_path, "table", "1000").on_grid(grid)
    truth = on_grid(whole, grid)
    assert dice_per_tissue(reference, truth)["GM"] < 0.5
    for tissue in ("GM", "WM"):
        assert dice_per_tissue(*within(scored_on_grid, reference, truth))[tissue] > 0.99


MRBRAINS18 = {0: "Background", 1: "Cortical gray matter", 2: "Basal ganglia", 3: "White matter",
              4: "White matter lesions", 5: "Cerebrospinal fluid in the extracerebral space", 6: "Ventricles",
              7: "Cerebellum", 8: "Brain stem", 9: "Infarction", 10: "Other"}


def test_mrbrains_labels_that_are_no_one_tissue_are_left_out_of_the_scoring(oasis: Path, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture):
    """A real OASIS manual map renumbered as MRBrainS18 labels its maps, with its lowest sixth of brain drawn as
    "Cerebellum" (GM and WM in one label) and a blob as "Other": a prediction wrong only there scores 1, on the
    raters' grid and carried to the pipeline's cropped 1 mm RAS grid; the same labels as background would not."""
    from pipeline.evaluation.dice import dice_per_tissue
    from pipeline.evaluation.references import within

    root = oasis / "derivatives" / "manual"
    whole = reference_tissues(root / "sub-1000" / "anat" / "sub-1000_dseg.nii.gz", root, "table", "1000")
    truth = np.asarray(whole.dataobj)
    renumbered = np.select([truth == GM, truth == WM, truth == CSF], [1, 3, 6], 0).astype(np.uint8)
    axis = int(np.argmax(np.abs(whole.affine[2, :3])))  # the voxel axis along inferior-superior
    heights = np.flatnonzero(truth.any(axis=tuple(a for a in range(3) if a != axis)))
    low = heights[0] + (heights[-1] - heights[0]) // 6
    lowest = np.zeros(truth.shape, bool)
    lowest[tuple(slice(None, low) if a == axis else slice(None) for a in range(3))] = True
    if whole.affine[2, axis] < 0:  # the axis runs downwards: its highest indices are the lowest planes
        lowest = np.flip(lowest, axis)
    cerebellum = lowest & (truth > 0)
    other = np.zeros(truth.shape, bool)
    centre = np.argwhere(truth == WM).mean(axis=0).astype(int)
    other[tuple(slice(c - 4, c + 4) for c in centre)] = True
    renumbered[cerebellum], renumbered[other] = 7, 10
    path = derivative(tmp_path, "1000", renumbered, whole.affine, MRBRAINS18)

    reference = read_reference(path, tmp_path, "table", "1000")
    assert "left out of the scoring" in caplog.text and "sub-1000" in caplog.text
    assert not reference.whole and reference.drawn is None
    assert np.array_equal(reference.left_out, cerebellum | other)
    wrong = np.where(cerebellum | other, GM, truth)  # the model's labels: right, but GM all over the left-out parts
    kept = np.asarray(reference.tissues.dataobj)
    assert dice_per_tissue(np.where(cerebellum | other, 0, truth), wrong)["GM"] < 0.98
    for tissue in ("GM", "WM"):
        assert dice_per_tissue(*within(reference.scored, kept, wrong))[tissue] == 1.0

    ras = to_ras_isotropic(nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz"), 1.0)
    grid = nib.Nifti1Image(*crop(ras.get_fdata(dtype=np.float32), ras.affine,
                                 tuple(slice(10, n - 10) for n in ras.shape)))
    on_head, scored = reference.on_grid(grid)
    wrong_on_head = on_grid(nib.Nifti1Image(wrong.astype(np.uint8), whole.affine), grid)
    assert dice_per_tissue(on_head, wrong_on_head)["GM"] < 0.98
    for tissue in ("GM", "WM"):
        assert dice_per_tissue(*within(scored, on_head, wrong_on_head))[tissue] > 0.99


def test_a_tables_hemisphere_names_map_to_their_tissue_and_a_structure_stays_an_error(tmp_path: Path):
    path = derivative(tmp_path, "01", blocks(), np.eye(4),
                      {5: "Left-Cerebral-Cortex", 6: "Right-Cerebral-White-Matter", 7: "Left-Lateral-Ventricle"})
    tissues = np.asarray(reference_tissues(path, tmp_path, "table", "01").dataobj)
    assert [int(tissues[k, 0, 0]) for k in (3, 9, 15)] == [GM, WM, CSF]
    derivative(tmp_path, "01", blocks(), np.eye(4), {5: "GM", 6: "WM", 7: "Left-Thalamus"})
    with pytest.raises(InputError, match=r"Left-Thalamus'\] are not GM, WM, CSF or background; rename them to their"
                                         r" tissue, or to 'ignore'"):
        reference_tissues(path, tmp_path, "table", "01")


def test_a_sparse_reference_with_left_out_labels_is_scored_on_its_drawn_planes_less_those_labels(tmp_path: Path):
    """Drawn every fourth plane, with a "Cerebellum" block: scored where drawn and not left out, on its own grid and
    on a larger one; beyond its field of view a reference with left-out labels is scored as a whole one is."""
    from pipeline.evaluation.references import check_references

    labels = np.zeros((20, 20, 20), np.uint8)
    labels[::4, 2:18, 2:18] = 5  # GM on planes 0, 4, 8, 12, 16
    labels[::4, 2:6, 2:18] = 7  # the "cerebellum" on those planes
    path = derivative(tmp_path, "01", labels, np.eye(4), {0: "Background", 5: "Cortical gray matter", 7: "Cerebellum"})
    assert check_references(tmp_path, {"01": None}, "table") == []  # the check before training accepts it
    reference = read_reference(path, tmp_path, "table", "01")
    expected = np.zeros(labels.shape, bool)
    expected[::4] = True
    expected[::4, 2:6, 2:18] = False
    assert reference.drawn is not None and np.array_equal(reference.scored, expected)
    grid = nib.Nifti1Image(np.zeros((24, 24, 24), np.float32), np.eye(4))  # 4 more voxels beyond each far face
    _, scored = reference.on_grid(grid)
    assert np.array_equal(scored[:20, :20, :20], expected) and not scored[20:].any()  # undrawn beyond: not scored

    labels[1::4] = labels[::4]  # every plane drawn: the same map is a whole one with a left-out block
    labels[2::4] = labels[::4]
    labels[3::4] = labels[::4]
    path = derivative(tmp_path, "02", labels, np.eye(4), None)
    whole = read_reference(path, tmp_path, "table", "02")
    assert whole.drawn is None and not whole.whole
    _, scored = whole.on_grid(grid)
    assert scored[20:, 20:, 20:].all() and not scored[:20, 2:6, 2:18].any() and scored[:20, 6:18, 2:18].all()


def test_reference_labels_off_their_head_stop_and_labels_partly_off_its_mask_are_warned(
        oasis: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """A real OASIS manual map against its head (the skull-stripped T1 on the pipeline's cropped 1 mm RAS grid,
    its non-zero voxels the brain mask): on its head it passes unsaid; saved with a voxel-index affine (as a map
    written from an array without its header lands) it stops, naming the subject and the file; shifted 25 mm, or
    in a mask that cut away most of the brain (a stripper's failure, not the map's), it is warned of."""
    from pipeline.evaluation.references import ON_HEAD_WARN, brain_inside, check_on_head
    from pipeline.imaging.grids import foreground_on_grid

    root = oasis / "derivatives" / "manual"
    source = root / "sub-1000" / "anat" / "sub-1000_dseg.nii.gz"
    ras = to_ras_isotropic(nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz"), 1.0)
    head = nib.Nifti1Image(*crop(ras.get_fdata(dtype=np.float32), ras.affine,
                                 tuple(slice(10, n - 10) for n in ras.shape)))

    on_head = read_reference(source, root, "table", "1000")
    assert brain_inside(on_head, foreground_on_grid(head, on_head.tissues)) > 0.98
    check_on_head("1000", source, on_head, head, head, "the head")
    assert "brain mask" not in caplog.text

    labels = np.asarray(nib.load(source).dataobj)
    table = {int(row["index"]): row["name"] for row in read_tsv(root / "dseg.tsv")}
    voxel_affine = derivative(tmp_path / "eye", "1000", labels, np.eye(4), table)
    with pytest.raises(InputError, match=r"sub-1000: only \d+\.\d% .*sub-1000_dseg\.nii\.gz.*affine"):
        check_on_head("1000", voxel_affine, read_reference(voxel_affine, tmp_path / "eye", "table", "1000"), head,
                      head, "the head")

    affine = nib.load(source).affine.copy()
    affine[0, 3] += 25.0
    shifted = derivative(tmp_path / "shifted", "1000", labels, affine, table)
    reference = read_reference(shifted, tmp_path / "shifted", "table", "1000")
    assert 0.5 < brain_inside(reference, foreground_on_grid(head, reference.tissues)) < ON_HEAD_WARN
    check_on_head("1000", shifted, reference, head, head, "the head")
    assert "sub-1000" in caplog.text and "misregistered" in caplog.text and "shifted" in caplog.text

    caplog.clear()
    data = np.asarray(head.dataobj).copy()
    data[..., : int(0.7 * data.shape[2])] = 0  # a mask that kept the top 30 % of the grid's planes
    check_on_head("1000", source, on_head, head, nib.Nifti1Image(data, head.affine), "a cut mask")
    assert "a cut mask" in caplog.text and "mask cuts brain away" in caplog.text


def test_the_evaluation_loads_a_head_whose_reference_is_on_it_and_stops_on_one_off_it_or_flipped(
        oasis: Path, tmp_path: Path):
    """``load_held_out_head``, as the evaluate stage, the report and ``bench train`` call it, on a real OASIS head
    laid out as a study keeps it (its manual map on the head's grid stands in for a segmenter's labels): the map loads
    as the head's reference; saved with a voxel-index affine, or with its voxels flipped left-right under the same
    header (a flip that leaves it on the head), it stops the evaluation, naming the subject and the file."""
    from pipeline.core.bids import Folders, sidecar, subject_file
    from pipeline.core.config import EvaluateConfig
    from pipeline.evaluation.heads import load_held_out_head

    ras = to_ras_isotropic(nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz"), 1.0)
    head, affine = crop(ras.get_fdata(dtype=np.float32), ras.affine, tuple(slice(10, n - 10) for n in ras.shape))
    root = oasis / "derivatives" / "manual"
    source = root / "sub-1000" / "anat" / "sub-1000_dseg.nii.gz"
    folders = Folders(tmp_path / "segmented", tmp_path / "stripped", tmp_path / "harmonized")
    harmonized = subject_file(folders.harmonized, "1000", "desc-harmonized_T1w")
    save_nifti(head, affine, harmonized)
    sidecar(harmonized).write_text('{"ReferenceLevelMM": 0.0}')
    save_nifti(head, affine, subject_file(folders.stripped, "1000", "desc-brain_T1w"))
    save_nifti((head > 0).astype(np.uint8), affine, subject_file(folders.stripped, "1000", "desc-brain_mask"))
    segmenter = read_reference(source, root, "table", "1000").on_grid(nib.Nifti1Image(head, affine))[0]
    save_nifti(segmenter, affine, subject_file(folders.segmented, "1000", "dseg"))

    loaded = load_held_out_head("1000", folders, EvaluateConfig(reference_labels=str(root)))
    assert loaded.native is not None and np.array_equal(loaded.reference, segmenter)

    labels = np.asarray(nib.load(source).dataobj)
    table = {int(row["index"]): row["name"] for row in read_tsv(root / "dseg.tsv")}
    derivative(tmp_path / "eye", "1000", labels, np.eye(4), table)
    with pytest.raises(InputError, match=r"sub-1000: only \d+\.\d% .*sub-1000_dseg\.nii\.gz"):
        load_held_out_head("1000", folders, EvaluateConfig(reference_labels=str(tmp_path / "eye")))

    left_right = int(np.argmax(np.abs(nib.load(source).affine[0, :3])))
    derivative(tmp_path / "flipped", "1000", np.flip(labels, left_right), nib.load(source).affine, table)
    with pytest.raises(InputError, match=r"sub-1000: its reference labels .*sub-1000_dseg\.nii\.gz agree with the "
                                         r"segmenter's labels .* better mirrored left-right \(GM and WM Dice 1\.00\)"):
        load_held_out_head("1000", folders, EvaluateConfig(reference_labels=str(tmp_path / "flipped")))


def test_left_right_agreement_tells_a_flipped_map_by_the_brains_folds(oasis: Path):
    """A real manual map against itself: agreement 1 as it is, and its mirror image about the brain's middle agrees
    as little as two brains' folds do (oasis-manual: 0.64-0.74 GM, 0.62-0.72 WM); flipped about its grid's middle
    (wherever the brain lies in it), the mirror takes it back."""
    from pipeline.evaluation.references import LEFT_RIGHT_MARGIN, left_right_agreement

    root = oasis / "derivatives" / "manual"
    image = nib.as_closest_canonical(nib.load(root / "sub-1003" / "anat" / "sub-1003_dseg.nii.gz"))  # the RAS grid
    tissues = read_reference(root / "sub-1003" / "anat" / "sub-1003_dseg.nii.gz", root, "table", "1003").on_grid(
        image)[0]
    as_is, mirrored = left_right_agreement(tissues, tissues, image.affine, None)
    assert as_is == 1.0 and 0.55 < mirrored < as_is - 2 * LEFT_RIGHT_MARGIN
    flipped = np.flip(tissues, 0)
    assert not np.array_equal(flipped, tissues)
    as_is, mirrored = left_right_agreement(flipped, tissues, image.affine, None)
    assert mirrored > 0.99 and as_is < mirrored - 2 * LEFT_RIGHT_MARGIN
    scored = np.zeros(tissues.shape, bool)
    scored[:, :, ::3] = True  # a map drawn on every third axial plane: agreement where it is scored
    assert left_right_agreement(tissues, tissues, image.affine, scored)[0] == 1.0
    ventricles = np.where(tissues == CSF, CSF, 0).astype(np.uint8)  # a map of the ventricles alone: nothing to tell
    assert left_right_agreement(ventricles, tissues, image.affine, None) is None
