"""Scoring whole heads in 3D (pipeline.evaluation), checked against Dice computed by hand on small made-up volumes."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.config import EvaluateConfig
from pipeline.core.labels import CSF, GM, WM
from pipeline.evaluation.heads import HeldOutHead, height_parts, score_head, score_teacher, volumes_row
from pipeline.evaluation.references import Reference
from pipeline.imaging.preprocess import crop, uncrop
from pipeline.nnunet.inference import brain_planes, predict_planes

HEAD = np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, -5.0], [0, 0, 0, -6.0], [0, 0, 0, -7.0], [0, 0, 0, 0]])


def made_up_head(reference: np.ndarray | None) -> HeldOutHead:
    """A 10 x 12 x 14 head grid; the brain box is voxels [2:8, 3:9, 4:12] of it. On the box: GM in the lower half,
    WM in the upper half, a CSF column in its middle; the reference level at world z = 0 (plane 7 of the head)."""
    box = (slice(2, 8), slice(3, 9), slice(4, 12))
    teacher = np.zeros((6, 6, 8), np.uint8)
    teacher[:, :, :4], teacher[:, :, 4:] = GM, WM
    teacher[2:4, 2:4, :] = CSF
    brain_data, brain_affine = crop(np.ones((10, 12, 14), np.float32), HEAD, box)
    grid = nib.Nifti1Image(np.zeros((10, 12, 14), np.float32), HEAD)
    native = None if reference is None else Reference(nib.Nifti1Image(reference.astype(np.uint8), HEAD), None)
    return HeldOutHead("01", nib.Nifti1Image(brain_data, brain_affine), np.ones(teacher.shape, bool), teacher, grid,
                       0.0, native)


def test_crop_and_uncrop_put_a_box_back_where_it_was():
    head = np.arange(10 * 12 * 14).reshape(10, 12, 14)
    box = (slice(2, 8), slice(3, 9), slice(4, 12))
    data, affine = crop(head, HEAD, box)
    back = uncrop(data, affine, nib.Nifti1Image(np.zeros(head.shape, np.float32), HEAD))
    assert np.array_equal(back[box], head[box]) and back.sum() == head[box].sum()


def test_the_3d_score_of_a_prediction_equals_dice_computed_by_hand():
    reference = np.zeros((10, 12, 14), np.uint8)
    reference[2:8, 3:9, 4:8], reference[2:8, 3:9, 8:12] = GM, WM  # the teacher's tissues, but no CSF ...
    reference[2:8, 3:9, 12] = GM  # ... and a plane of GM the stripper cut off, outside the brain box
    head = made_up_head(reference)
    prediction = head.teacher.copy()
    prediction[:, :, 3][prediction[:, :, 3] == GM] = WM  # one plane of the teacher's GM called WM
    rows = {row["kind"]: row for row in score_head(head, prediction, EvaluateConfig(band_mm=1.0, step_mm=1.0))
            if "part" not in row}
    # against the teacher: GM 3 of its 4 planes (36 voxels a plane, less 4 CSF), WM 4 planes plus the wrong one
    gm_teacher, gm_predicted = 4 * 32, 3 * 32
    assert rows["real"]["GM"] == pytest.approx(2 * gm_predicted / (gm_teacher + gm_predicted))
    assert rows["real"]["WM"] == pytest.approx(2 * 4 * 32 / (4 * 32 + 5 * 32))
    assert rows["real"]["CSF"] == 1.0
    # against the reference: its GM has 4 planes of 36 in the box and one of 36 outside it, counted as missed
    assert rows["external"]["GM"] == pytest.approx(2 * (3 * 32) / (5 * 36 + 3 * 32))
    assert rows["external"]["WM"] == pytest.approx(2 * (4 * 32) / (4 * 36 + 5 * 32))
    assert rows["external"]["CSF"] == 0.0  # the model's CSF, absent from the reference
    # the band: world z in [-1, 1], head planes 6 to 8 (box planes 2 to 4): GM at 6 and 7, WM at 8
    assert rows["real_band"]["GM"] == pytest.approx(2 * 32 / (2 * 32 + 32))
    assert rows["real_band"]["WM"] == pytest.approx(2 * 32 / (32 + 2 * 32))
    teacher = {row["kind"]: row for row in score_teacher(head, EvaluateConfig()) if "part" not in row}
    assert teacher["teacher"]["GM"] == pytest.approx(2 * 4 * 32 / (5 * 36 + 4 * 32))


def test_height_parts_cut_the_brains_extent_into_fifths_bottom_first():
    tissue = np.zeros((4, 4, 30), np.uint8)
    tissue[:, :, 5:25] = 1
    parts = height_parts(tissue)
    assert [(part.start, part.stop) for part in parts] == [(5, 9), (9, 13), (13, 17), (17, 21), (21, 25)]
    head = made_up_head(None)
    rows = [row for row in score_head(head, head.teacher, EvaluateConfig()) if row["kind"] == "real_height"]
    assert [row["part"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(row["GM"] in (1.0,) or np.isnan(row["GM"]) for row in rows)  # a perfect prediction, part by part
    assert score_teacher(head, EvaluateConfig()) == []  # no reference, no teacher score


def test_tissue_volumes_of_model_and_teacher_in_ml():
    head = made_up_head(None)
    row = volumes_row(head, np.full(head.teacher.shape, WM, np.uint8))
    assert row["model_WM_ml"] == pytest.approx(6 * 6 * 8 / 1000, abs=0.05) and row["model_GM_ml"] == 0.0
    assert row["teacher_GM_ml"] == pytest.approx(4 * 32 / 1000, abs=0.05)


def test_every_plane_of_the_brain_is_predicted_and_stacked_in_place():
    brain = np.zeros((20, 30, 12), np.float32)
    mask = np.zeros(brain.shape, bool)
    mask[5:15, 8:20, 2:10] = True
    brain[mask] = np.linspace(0.1, 1.0, mask.sum())
    assert brain_planes(mask) == list(range(2, 10))
    seen = []

    def segment(canvases: np.ndarray) -> np.ndarray:
        seen.extend(canvas.shape for canvas in canvases)
        return (canvases > 0).astype(np.uint8) * 2  # WM wherever the slice shows brain

    labels = predict_planes(segment, brain, mask, 64)
    assert seen == [(64, 64)] * 8  # one canvas per plane with brain
    assert np.array_equal(labels > 0, mask) and set(np.unique(labels)) == {0, 2}


def test_views_are_predicted_in_their_own_planes_and_fused_by_summed_probabilities():
    from pipeline.nnunet.inference import view_scores

    brain = np.zeros((20, 24, 16), np.float32)
    mask = np.zeros(brain.shape, bool)
    mask[4:16, 5:19, 3:13] = True
    brain[mask] = 1.0
    seen: list[tuple[int, int]] = []

    def probabilities(canvases: np.ndarray) -> np.ndarray:
        axial = not seen  # the axial planes come first, in one call
        seen.extend(canvas.shape for canvas in canvases)
        inside = canvases > 0
        scores = np.zeros((len(canvases), 4, *canvases.shape[1:]), np.float32)
        scores[:, 0][~inside] = 1.0
        scores[:, GM][inside], scores[:, WM][inside] = 0.6 if axial else 0.3, 0.4  # axial planes say GM
        return scores

    fused = np.argmax(view_scores(lambda view: probabilities, brain, mask, 32, ["axial", "coronal"]), axis=-1)
    assert len(seen) == 10 + 14  # every axial plane with brain, then every coronal one
    assert np.array_equal(fused > 0, mask)
    # summed: GM 0.6 + 0.3 beats WM 0.4 + 0.4, though the coronal view alone says WM
    assert set(np.unique(fused[mask])) == {GM}
    empty = view_scores(lambda view: probabilities, brain, np.zeros(brain.shape, bool), 32, ["axial", "coronal"])
    assert empty.shape == (*brain.shape, 4) and not empty.any()  # class scores still: predict takes them anywhere


def test_test_time_mirroring_is_left_right_only_so_sagittal_slices_are_never_mirrored():
    """Rows run left-right in axial and coronal slices and front-back in sagittal ones (pipeline.imaging.slices): a
    mirrored sagittal slice would face backwards, so the model's mirroring is off for that view only."""
    from types import SimpleNamespace

    from pipeline.imaging.slices import rows_left_right
    from pipeline.nnunet.predictor import SlicePredictor

    assert [rows_left_right(view) for view in ("axial", "coronal", "sagittal")] == [True, True, False]
    model = SlicePredictor(SimpleNamespace(use_mirroring=True))
    for view in ("axial", "coronal", "sagittal"):
        assert model.probabilities_in(view).__self__.predictor.use_mirroring is rows_left_right(view)
    assert model.predictor.use_mirroring  # the model itself keeps its mirroring


def test_auto_precision_is_mixed_on_a_gpu_and_on_a_cpu_only_where_it_computes_bfloat16_natively(monkeypatch):
    """``train.predict_precision: auto`` runs the network in mixed precision where the device computes it in
    hardware (a GPU; a CPU with AVX-512 BF16 or AMX, read here from the kernel's CPU flags) and in float32 elsewhere,
    where torch would emulate bfloat16 more slowly, or where oneDNN is held below it (``ONEDNN_MAX_CPU_ISA``);
    float32 and mixed are what they say on any device, the sagittal view's unmirrored copy of a model keeps its
    precision, and a misspelt one is refused."""
    import os
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    from pipeline.nnunet.predictor import SlicePredictor
    from pipeline.runtime.devices import native_bfloat16_cpu

    def model(device: str, precision: str) -> SlicePredictor:
        return SlicePredictor(SimpleNamespace(device=torch.device(device), use_mirroring=True), precision=precision)

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file() and "ONEDNN_MAX_CPU_ISA" not in os.environ:
        flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
                 for flag in line.split(":", 1)[1].split()}
        assert native_bfloat16_cpu() is bool(flags & {"avx512_bf16", "amx_tile"})
    assert model("cpu", "auto").mixed_precision is native_bfloat16_cpu()
    assert model("cuda", "auto").mixed_precision
    assert not model("cuda", "float32").mixed_precision and model("cpu", "mixed").mixed_precision
    assert model("cpu", "float32").probabilities_in("sagittal").__self__.precision == "float32"
    with pytest.raises(ValueError, match="fp32"):
        model("cpu", "fp32")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    native_bfloat16_cpu.cache_clear()
    try:
        assert not native_bfloat16_cpu() and not model("cpu", "auto").mixed_precision
    finally:
        native_bfloat16_cpu.cache_clear()  # the next caller reads the real environment


def test_a_heads_sparse_reference_scores_the_model_and_the_teacher_on_its_planes_only():
    reference = np.zeros((10, 12, 14), np.uint8)
    reference[2:8, 3:9, 4:8], reference[2:8, 3:9, 8:12] = GM, WM
    scored = np.zeros(reference.shape, bool)
    scored[:, :, 5] = scored[:, :, 9] = True  # a rater drew planes 5 and 9 of the head
    drawn = np.where(scored, reference, 0).astype(np.uint8)
    head = dataclasses.replace(made_up_head(drawn), native=Reference(nib.Nifti1Image(drawn, HEAD),
                                                                     nib.Nifti1Image(scored.astype(np.uint8), HEAD)))
    prediction = head.teacher.copy()
    prediction[:, :, 3][prediction[:, :, 3] == GM] = WM  # head plane 7 wrong: undrawn, so it does not count
    rows = {row["kind"]: row for row in score_head(head, prediction, EvaluateConfig()) if "part" not in row}
    # on planes 5 and 9: GM 32 of 36 voxels in both (the CSF column), WM the same
    assert rows["external"]["GM"] == pytest.approx(2 * 32 / (36 + 32))
    assert rows["external"]["WM"] == pytest.approx(2 * 32 / (36 + 32))
    assert rows["real"]["GM"] < 1.0  # against the teacher, every plane still counts
    teacher = {row["kind"]: row for row in score_teacher(head, EvaluateConfig()) if "part" not in row}
    assert teacher["teacher"]["GM"] == rows["external"]["GM"]
    volumes = volumes_row(head, prediction)  # the drawn planes' volume is not the reference's whole-brain volume
    assert volumes["reference_GM_ml"] is None and volumes["model_GM_ml"] > 0
    whole = dataclasses.replace(head, native=head.native._replace(drawn=None))
    assert volumes_row(whole, prediction)["reference_GM_ml"] is not None


def test_a_references_left_out_labels_count_for_neither_side_and_leave_its_volumes_unknown():
    """A reference with a label left out of the scoring (MRBrainS' "cerebellum"): the model's and the teacher's
    labels there count neither way; the reference's whole-brain volumes are n/a; it is not a sparse reference."""
    reference = np.zeros((10, 12, 14), np.uint8)
    reference[2:8, 3:9, 4:8], reference[2:8, 3:9, 8:12] = GM, WM
    left_out = np.zeros(reference.shape, bool)
    left_out[:, :, 7] = True  # head plane 7, where the prediction below is wrong
    head = dataclasses.replace(made_up_head(reference), native=Reference(
        nib.Nifti1Image(np.where(left_out, 0, reference).astype(np.uint8), HEAD), None, left_out))
    prediction = head.teacher.copy()
    prediction[:, :, 3][prediction[:, :, 3] == GM] = WM
    rows = {row["kind"]: row for row in score_head(head, prediction, EvaluateConfig()) if "part" not in row}
    # GM on planes 4-6 (32 of 36 voxels each: the CSF column), WM on planes 8-11 the same
    assert rows["external"]["GM"] == pytest.approx(2 * 3 * 32 / (3 * 36 + 3 * 32))
    assert rows["external"]["WM"] == pytest.approx(2 * 4 * 32 / (4 * 36 + 4 * 32))
    scored_all = dataclasses.replace(head, native=Reference(head.native.tissues, None))
    assert {row["kind"]: row for row in score_head(scored_all, prediction, EvaluateConfig())
            if "part" not in row}["external"]["WM"] < rows["external"]["WM"]  # plane 7's WM counted against it
    assert not head.native.whole and volumes_row(head, prediction)["reference_GM_ml"] is None
    assert volumes_row(scored_all, prediction)["reference_GM_ml"] is not None
    from pipeline.stages.report import panel_layers

    assert [name for name, _ in panel_layers(head, prediction)] == ["teacher", "model", "reference (blank: not scored)"]
    assert panel_layers(scored_all, prediction)[-1][0] == "reference"
