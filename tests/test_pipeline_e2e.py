"""The real DVC pipeline, end to end, on real subjects from ds000011 with a tiny profile."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.core.io import read_tsv

from .conftest import TINY_SETTINGS, copy_study, first_and_last_rates, venv_env

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


@pytest.fixture
def study(full_study: Path) -> Path:
    """The session's finished tiny study (tests/conftest.py: ``dvc repro`` to the end on two real heads), to read."""
    return full_study


@pytest.fixture
def project(full_study: Path, tmp_path: Path) -> Path:
    """A copy of the session's finished study, for a test that runs DVC in it or changes it."""
    return copy_study(full_study, tmp_path / "study")


def test_repro_writes_metrics_with_dice_in_range(study: Path):
    from pipeline.evaluation.metrics import read_metrics

    compared = read_metrics(study / "metrics" / "hmrf-deepbet.json")  # what dvc exp show lists: a few columns
    assert set(compared.dice) == set(compared.ci95) == {"real"} and compared.n_subjects == 1 and compared.train_s > 0
    metrics = json.loads((study / "data" / "evaluation" / "hmrf-deepbet" / "evaluation.json").read_text())
    tissues = {"GM", "WM", "CSF", "mean"}
    for kind in ("synthetic", "real"):
        dice = metrics["dice"][kind]
        assert set(dice) == tissues | {"ci95", "sd_over_seeds", "n"}
        assert all(0.0 <= dice[key] <= 1.0 for key in tissues if dice[key] is not None)
        assert dice["mean"] is not None
    # one test subject and one seed: the interval is that subject's mean, and there is no spread over seeds
    real = metrics["dice"]["real"]
    assert real["ci95"] == {"low": round(real["mean"], 4), "high": round(real["mean"], 4)}
    assert real["sd_over_seeds"] is None and compared.dice["real"].mean == real["mean"]
    assert (metrics["n_subjects"], metrics["n_seeds"]) == (1, 1)
    assert metrics["n_train"] == 8 and metrics["n_test"] == 4  # 1 train subject, 1 test subject
    assert metrics["n_real"] == 1
    assert metrics["train_test_share_subject"] is False
    assert metrics["scored"] == "whole brain, 3D" and set(metrics["dice_band"]) == {"real"}
    assert [len(values) for values in metrics["dice_by_height"]["real"].values()] == [5, 5, 5]


def test_evaluate_predicts_the_whole_test_head_and_draws_it(study: Path):
    import nibabel as nib
    import numpy as np

    split = {row["participant_id"]: row["split"] for row in read_tsv(study / "data/raw/participants.tsv")}
    subject = next(pid for pid, kind in split.items() if kind == "test")
    evaluation = study / "data/evaluation/hmrf-deepbet"
    labels = nib.load(evaluation / "volumes" / subject / "anat" / f"{subject}_dseg.nii.gz")
    mask = nib.load(study / "data/stripped/deepbet" / subject / "anat" / f"{subject}_desc-brain_mask.nii.gz")
    assert labels.shape == mask.shape and np.allclose(labels.affine, mask.affine)  # on the stripped brain's grid
    predicted = np.any(np.asarray(labels.dataobj) > 0, axis=(0, 1))
    brain = np.any(np.asarray(mask.dataobj) > 0, axis=(0, 1))
    assert predicted.sum() > 0.5 * brain.sum()  # planes all over the brain, not one slab (a 10-iteration model)
    volumes = read_tsv(evaluation / "tissue_volumes.tsv")
    assert [row["participant_id"] for row in volumes] == [subject]
    assert 500 < sum(float(volumes[0][f"teacher_{t}_ml"]) for t in ("GM", "WM", "CSF")) < 2500  # a whole brain
    panel = study / "data/report/panels/hmrf-deepbet" / f"{subject}.png"  # the report draws it, not evaluate
    assert panel.is_file() and f'alt="{subject}"' in (study / "data/report/index.html").read_text()


def test_dvc_status_is_clean_and_second_repro_runs_nothing(project: Path):
    assert "up to date" in _run(["dvc", "status"], project)
    second = _run(["dvc", "repro"], project)
    assert "Running stage" not in second


def test_editing_a_module_only_evaluate_runs_makes_evaluate_stale_and_nothing_upstream(project: Path):
    module = project / "pipeline" / "evaluation" / "references.py"
    original = module.read_text()
    module.write_text(original + "\n# an edit\n")
    try:
        status = _run(["dvc", "status", "--json"], project)
    finally:
        module.write_text(original)
    stale = set(json.loads(status.strip().splitlines()[-1]))
    assert "evaluate@hmrf-deepbet" in stale
    assert stale <= {"evaluate@hmrf-deepbet", "report"}, stale  # downstream of evaluate only
    assert "up to date" in _run(["dvc", "status"], project)


def test_acquired_subjects_follow_the_split(study: Path):
    rows = (study / "data" / "raw" / "participants.tsv").read_text().splitlines()[1:]
    splits = sorted(row.split("\t")[-1] for row in rows)
    assert splits == ["test", "train"]


def test_every_derivative_folder_is_a_bids_derivative_dataset(study: Path):
    for folder in ("data/harmonized", "data/stripped/deepbet", "data/segmented/hmrf-deepbet"):
        description = json.loads((study / folder / "dataset_description.json").read_text())
        assert description["DatasetType"] == "derivative", folder
        assert description["GeneratedBy"][0]["Name"] == "synthseg-pipeline" and description["BIDSVersion"]
    assert (study / "data/segmented/hmrf-deepbet/dseg.tsv").read_text().splitlines()[1:] == [
        "0\tbackground", "1\tGM", "2\tWM", "3\tCSF"]
    columns = json.loads((study / "data/raw/participants.json").read_text())
    assert set(columns) == {"split"} and set(columns["split"]["Levels"]) == {"train", "test", "both"}
    for row in read_tsv(study / "data/raw/participants.tsv"):  # each head's source, in its subject's scans table
        scans = read_tsv(study / "data/raw" / row["participant_id"] / f"{row['participant_id']}_scans.tsv")
        assert [scan["filename"] for scan in scans] == [f"anat/{row['participant_id']}_T1w.nii.gz"]
        assert Path(scans[0]["source"]).is_file()


def test_every_stage_records_the_package_versions_that_made_it(study: Path):
    import torch

    for folder in ("data/harmonized", "data/stripped/deepbet", "data/synthetic/hmrf-deepbet", "models/hmrf-deepbet"):
        versions = json.loads((study / folder / "versions.json").read_text())
        assert versions["packages"]["torch"] == torch.__version__.split("+")[0], folder
    training = json.loads((study / "models/hmrf-deepbet/training.json").read_text())
    assert training["versions"]["packages"]["nnunetv2"]
    # the arithmetic it trained in: train.precision auto, resolved by the trainer, in the plans beside the model
    from pipeline.runtime.devices import native_bfloat16_cpu

    plans = json.loads(next((study / "models/hmrf-deepbet").glob("Dataset*/*__2d/plans.json")).read_text())
    schedule = plans["configurations"]["2d"]["pipeline"]
    assert (schedule["precision"], schedule["mixed_precision"]) == ("auto", native_bfloat16_cpu())
    assert training["mixed_precision"] is native_bfloat16_cpu()
    # the ci profile's optimizer and rate (as quick's): nnU-Net's AdamW from 0.002
    assert (schedule["optimizer"], schedule["learning_rate"]) == ("adam", 0.002)
    assert first_and_last_rates(study / "models/hmrf-deepbet", "Dataset*", "amsgrad")[0] == 2e-3


def test_metrics_and_plots_are_readable_by_dvc(project: Path):
    shown = _run(["dvc", "metrics", "show", "--json"], project)
    assert "hmrf-deepbet.json" in shown
    _run(["dvc", "plots", "show", "-o", str(project / "plots")], project)
    assert (project / "plots" / "index.html").is_file()
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], project).strip().splitlines()[-1])["data"]
    assert set(plots) == {f"metrics/hmrf-deepbet-{name}.csv" for name in ("training", "cases", "by-height")}
    by_height = plots["metrics/hmrf-deepbet-by-height.csv"][0]["content"]["data"]["values"]
    assert {row["part"] for row in by_height} == {"1", "2", "3", "4", "5"}  # fifths of the height, bottom first


def test_predict_on_a_real_head_returns_whole_brain_labels_on_the_input_grid(study: Path, ds000011: Path,
                                                                             tmp_path: Path):
    import nibabel as nib
    import numpy as np

    split = {row["participant_id"]: row["split"] for row in read_tsv(study / "data/raw/participants.tsv")}
    test_subject = next(subject for subject, kind in split.items() if kind == "test")
    real = nib.load(ds000011 / test_subject / "anat" / f"{test_subject}_T1w.nii.gz")
    head = tmp_path / "in" / f"{test_subject}_T1w.mgz"  # a FreeSurfer volume, as researchers have them
    head.parent.mkdir()
    nib.save(nib.MGHImage(np.asarray(real.dataobj).astype(np.float32), real.affine), head)
    out = tmp_path / "out"
    log = _run(["python", "-m", "pipeline", "predict", "--model", "models/hmrf-deepbet", "--input", str(head.parent),
                "--output", str(out), "--window", "plane"], study)  # each slice whole (faster on a CPU)
    assert f"predict [1/1] {head.name}:" in log  # a progress line per head
    labels, original = nib.load(out / f"{test_subject}_dseg.nii.gz"), nib.load(head)  # BIDS: entities + _dseg
    assert labels.shape == original.shape and np.allclose(labels.affine, original.affine)
    data = np.asarray(labels.dataobj)
    assert set(np.unique(data)) <= {0, 1, 2, 3}
    labelled_planes = np.nonzero(data.reshape(-1, data.shape[2]).any(axis=0))[0]
    assert len(labelled_planes) > 50  # the whole brain, not one slice
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["TrainingRecord"]["segmenter"] == "hmrf"
    from pipeline.runtime.devices import native_bfloat16_cpu  # the arithmetic the labels came from

    assert description["GeneratedBy"][0]["Precision"] == "auto"
    assert description["GeneratedBy"][0]["MixedPrecision"] is native_bfloat16_cpu()
    assert description["GeneratedBy"][0]["Window"] == "plane"
    assert (out / "dseg.tsv").read_text().splitlines()[1:] == ["0\tbackground", "1\tGM", "2\tWM", "3\tCSF"]
    row = read_tsv(out / "tissue_volumes.tsv")[0]
    assert list(row)[:7] == ["case", "source", "slices", "planes", "GM_ml", "WM_ml", "CSF_ml"]
    assert row["case"] == test_subject and row["slices"] == "brain" and row["qc_flags"] == "none"
    assert 500.0 < float(row["GM_ml"]) + float(row["WM_ml"]) + float(row["CSF_ml"]) < 2500.0  # a whole brain
    assert (out / f"{test_subject}_dseg.png").is_file()

    one = tmp_path / "one"  # the seed's protocol: the plane at the reference level only
    _run(["python", "-m", "pipeline", "predict", "--model", "models/hmrf-deepbet", "--input", str(head),
          "--output", str(one), "--slices", "reference"], study)
    data = np.asarray(nib.load(one / f"{test_subject}_dseg.nii.gz").dataobj)
    # one plane of the harmonized grid, on the input's (axial) planes: one slab no thicker than that plane
    labelled, spacing = np.nonzero(data.reshape(-1, data.shape[2]).any(axis=0))[0], original.header.get_zooms()[2]
    plane_mm = TINY_SETTINGS["harmonize.voxel_size_mm"]
    assert len(labelled) >= 1 and np.all(np.diff(labelled) == 1), labelled  # one slab
    assert len(labelled) * spacing <= plane_mm + spacing, labelled  # no thicker than the plane
    row = read_tsv(one / "tissue_volumes.tsv")[0]
    assert row["slices"] == "reference" and row["planes"] == "1"
    assert 1.0 < float(row["GM_ml"]) + float(row["WM_ml"]) + float(row["CSF_ml"]) < 25.0  # one thin axial slab


def test_predict_on_png_slices_writes_label_pngs(study: Path, tmp_path: Path):
    from PIL import Image

    images = next((study / "data/nnunet_raw/hmrf-deepbet").glob("Dataset*/imagesTs"))
    _run(["python", "-m", "pipeline", "predict", "--model", "models/hmrf-deepbet", "--input", str(images),
          "--output", str(tmp_path)], study)
    outputs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in outputs] == [p.name for p in sorted(images.glob("*.png"))]
    assert Image.open(outputs[0]).size == (256, 256)


def test_nnunets_own_command_line_predicts_each_plane_as_the_pipeline_does(study: Path, tmp_path: Path):
    """A user's nnUNetv2_predict_from_modelfolder, with nothing but nnUNet_extTrainer pointing at the pipeline's
    trainers, on the test head's planes as every model sees them, gives the very labels the pipeline's in-process
    predictor gives each plane (evaluate and predict then fuse the views)."""
    import numpy as np
    from PIL import Image

    from pipeline.core.io import save_png
    from pipeline.nnunet.models import TrainingRecord
    from pipeline.nnunet.predictor import SlicePredictor

    models = study / "models/hmrf-deepbet"
    model = next(models.glob("Dataset*/nnUNetTrainerPipeline__nnUNetPlans__2d"))
    fold = next(model.glob("fold_*")).name.removeprefix("fold_")  # the one the study trained (train.fold)
    canvases = held_out_slices(study, every=15)  # every 15th plane of the brain: bottom to top
    for k, canvas in enumerate(canvases):
        save_png(canvas, tmp_path / "in" / f"plane-{k:03d}_0000.png")
    env = {key: value for key, value in venv_env().items() if not key.startswith("nnUNet_")}
    env |= {"nnUNet_extTrainer": str(study / "pipeline/nnunet/trainers"), "OMP_NUM_THREADS": "2"}
    command = ["nnUNetv2_predict_from_modelfolder", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
               "-m", str(model), "-f", fold, "--disable_tta", "-device", "cpu", "-npp", "1", "-nps", "1"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    record = TrainingRecord.read(models)
    ours = SlicePredictor.from_folder(models, record.dataset_id, record.trainer, fold, "cpu", False,
                                      precision="float32")  # nnU-Net's CPU arithmetic
    assert len(canvases) > 5
    for k, labels in enumerate(ours(canvases)):
        assert np.array_equal(labels, np.asarray(Image.open(tmp_path / "out" / f"plane-{k:03d}.png"))), k


def held_out_slices(study: Path, every: int):
    """Every ``every``-th plane with brain of the study's first test head, as the slices every model sees."""
    import nibabel as nib
    import numpy as np

    from pipeline.imaging.slices import slice_canvas

    split = {row["participant_id"]: row["split"] for row in read_tsv(study / "data/raw/participants.tsv")}
    subject = next(pid for pid, kind in split.items() if kind == "test")
    stripped = study / "data/stripped/deepbet" / subject / "anat"
    brain = nib.load(stripped / f"{subject}_desc-brain_T1w.nii.gz").get_fdata(dtype=np.float32)
    mask = np.asarray(nib.load(stripped / f"{subject}_desc-brain_mask.nii.gz").dataobj) > 0
    planes = np.flatnonzero(mask.any(axis=(0, 1)))[::every]
    return np.stack([slice_canvas(brain[:, :, k], mask[:, :, k], 256) for k in planes])


def test_batched_inference_gives_each_planes_labels_as_nnunet_gives_them_one_by_one(study: Path):
    """The planes of a real test head through the network many tiles at a time give, plane for plane, the labels
    nnU-Net's own single-image prediction gives: bit for bit one tile a call, and in batches the same labels but
    where its two likeliest classes tie to the last bits a batched convolution changes."""
    import numpy as np

    from pipeline.nnunet.models import TrainingRecord
    from pipeline.nnunet.predictor import SlicePredictor

    models = study / "models/hmrf-deepbet"
    record = TrainingRecord.read(models)
    canvases = held_out_slices(study, every=4)
    one_by_one = SlicePredictor.from_folder(models, record.dataset_id, record.trainer, str(record.fold), "cpu", False,
                                            precision="float32")  # nnU-Net's CPU arithmetic
    nnunet = one_by_one.predictor
    expected = [nnunet.predict_single_npy_array(canvas[None, None].astype(np.float32), {"spacing": [999, 1, 1]},
                                                save_or_return_probabilities=True) for canvas in canvases]
    labels = np.stack([labels[0] for labels, _ in expected])
    probabilities = np.stack([p[:, 0] for _, p in expected])
    one_at_a_time = SlicePredictor(nnunet, 1, "float32")
    assert np.array_equal(one_at_a_time(canvases), labels)  # nnU-Net's own arithmetic, bit for bit
    assert np.array_equal(one_at_a_time.probabilities(canvases), probabilities)
    top_two = np.sort(probabilities, axis=1)[:, -2:]
    for batch_size in (7, 64):  # a convolution over a batch sums in another order: the last bits differ
        model = SlicePredictor(nnunet, batch_size, "float32")
        assert np.abs(model.probabilities(canvases) - probabilities).max() < 2e-3, batch_size
        flipped = model(canvases) != labels  # only where nnU-Net's two likeliest classes all but tie
        assert not flipped.any() or (top_two[:, 1] - top_two[:, 0])[flipped].max() < 4e-3, batch_size


def test_the_plane_window_puts_each_plane_through_the_network_whole_once(study: Path):
    """``train.predict_window: plane``: each of a real test head's planes goes through the network once, as one tile
    of its own padded shape (at least the patch, a multiple of the network's stride), where nnU-Net's sliding
    window sends more, patch-sized tiles; a plane that fits one patch gets the same probabilities either way (one
    tile each: only the Gaussian weight's half-precision rounding differs)."""
    import numpy as np

    from pipeline.nnunet.models import TrainingRecord
    from pipeline.nnunet.predictor import SlicePredictor

    models = study / "models/hmrf-deepbet"
    record = TrainingRecord.read(models)
    canvases = held_out_slices(study, every=4)
    sliding = SlicePredictor.from_folder(models, record.dataset_id, record.trainer, str(record.fold), "cpu", False,
                                         precision="float32")
    plane = SlicePredictor(sliding.predictor, None, "float32", "plane")
    patch = tuple(sliding.predictor.configuration_manager.patch_size)
    tiles = []
    hook = sliding.predictor.network.register_forward_hook(lambda _, inputs, __: tiles.extend(
        [tuple(inputs[0].shape[2:])] * inputs[0].shape[0]))
    try:
        plane(canvases)
        whole, tiles[:] = list(tiles), []
        sliding(canvases)
    finally:
        hook.remove()
    assert len(whole) == len(canvases) and len(tiles) > len(canvases) and set(tiles) == {patch}
    stride = np.prod(sliding.predictor.configuration_manager.pool_op_kernel_sizes, axis=0)  # its poolings
    assert len(set(whole)) > 1 and all(size >= edge and size % step == 0 for shape in whole
                                       for size, edge, step in zip(shape, patch, stride, strict=True))
    boxes = [np.ptp(np.argwhere(canvas > 0), axis=0) + 1 for canvas in canvases]
    fits = np.array([all(box <= patch) for box in boxes])
    assert 0 < fits.sum() < len(canvases)
    assert np.abs(plane.probabilities(canvases[fits]) - sliding.probabilities(canvases[fits])).max() < 5e-3


def test_mixed_precision_moves_a_real_heads_labels_only_where_two_classes_all_but_tie(study: Path):
    """The network in mixed precision (bfloat16 on a CPU: ``train.predict_precision``, by default where the CPU
    computes it natively) on a real test head's planes: its probabilities within 0.1 of float32's, and a label
    changed only where float32's two likeliest classes were within 0.1 of each other (the tests' two-epoch model
    has many such pixels; the default model on an oasis-manual head changed 0.04 % of its voxels, Dice unchanged)."""
    import numpy as np

    from pipeline.nnunet.models import TrainingRecord
    from pipeline.nnunet.predictor import SlicePredictor

    models = study / "models/hmrf-deepbet"
    record = TrainingRecord.read(models)
    canvases = held_out_slices(study, every=10)  # emulated bfloat16 (a CPU without it) is slow
    float32 = SlicePredictor.from_folder(models, record.dataset_id, record.trainer, str(record.fold), "cpu", False,
                                         precision="float32")
    mixed = SlicePredictor(float32.predictor, None, "mixed")
    assert mixed.mixed_precision and not float32.mixed_precision
    exact, reduced = float32.probabilities(canvases), mixed.probabilities(canvases)
    assert 0 < np.abs(reduced - exact).max() < 0.1  # another arithmetic, the same model
    labels, mixed_labels = exact.argmax(axis=1), reduced.argmax(axis=1)
    top_two = np.sort(exact, axis=1)[:, -2:]
    flipped = labels != mixed_labels
    assert not flipped.any() or (top_two[:, 1] - top_two[:, 0])[flipped].max() < 0.1


def test_reference_labels_add_dice_external_and_rerun_only_evaluation(project: Path, tmp_path: Path):
    """A derivative holding, on the raw head's grid, the very labels dice.real is scored against: the
    two Dice then differ only by the two nearest-neighbour resamplings between the grids."""
    import nibabel as nib
    import numpy as np
    from nibabel.processing import resample_from_to

    from pipeline.core.io import save_nifti, write_tsv

    split = {row["participant_id"]: row["split"] for row in read_tsv(project / "data/raw/participants.tsv")}
    subject = next(pid for pid, kind in split.items() if kind == "test")
    head = nib.load(project / "data" / "raw" / subject / "anat" / f"{subject}_T1w.nii.gz")
    labels = nib.load(project / "data" / "segmented" / "hmrf-deepbet" / subject / "anat" / f"{subject}_dseg.nii.gz")
    native = resample_from_to(labels, (head.shape[:3], head.affine), order=0, mode="constant", cval=0)
    root = tmp_path / "reference"
    save_nifti(np.asarray(native.dataobj).astype(np.uint8), head.affine,
               root / subject / "anat" / f"{subject}_dseg.nii.gz")
    write_tsv([{"index": 1, "name": "GM"}, {"index": 2, "name": "WM"}, {"index": 3, "name": "CSF"}],
              root / "dseg.tsv")

    ran = _run(["dvc", "exp", "run", "-S", f"evaluate.reference_labels={root}"], project)
    assert "Running stage 'evaluate@" in ran and "Running stage 'train@" not in ran
    metrics = json.loads((project / "data" / "evaluation" / "hmrf-deepbet" / "evaluation.json").read_text())
    assert metrics["n_external"] == 1 and metrics["n_external_sparse"] == metrics["n_external_left_out"] == 0
    for tissue in ("GM", "WM", "CSF", "mean"):
        real, external = metrics["dice"]["real"][tissue], metrics["dice"]["external"][tissue]
        assert (real is None) == (external is None)
        assert real is None or abs(real - external) < 0.1, (tissue, real, external)
    assert "against your reference labels" in (project / "data" / "report" / "index.html").read_text()


def test_bench_train_times_every_iteration_and_scores_the_real_test_heads_each_epoch(project: Path):
    result = subprocess.run(["python", "-m", "pipeline", "bench", "train", "--eval-every", "1"], cwd=project,
                            env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout)  # stdout is the JSON alone: progress goes to stderr
    assert report["combo"] == "hmrf-deepbet"  # no --combo: the study's first strategy (its params.yaml lists hmrf)
    assert report["iterations"] == 2 * 5  # the ci profile: 2 epochs of 5 iterations
    assert report["data_and_augmentation_s"] > 0 and report["forward_backward_s"] > 0
    assert report["iteration_s"] >= max(report["data_and_augmentation_s"], report["forward_backward_s"])
    assert [point["epoch"] for point in report["time_to_dice"]] == [1, 2]
    assert report["time_to_dice"][0]["training_minutes"] < report["time_to_dice"][1]["training_minutes"]
    assert set(report["time_to_dice"][0]["dice_real"]) == {"GM", "WM", "CSF", "mean"}  # whole heads, as evaluate
    assert report["peak_rss_mb"] > 100 and report["patch_size"] and report["augmentation"] == "nnunet"


def _real_rows(project: Path) -> list[dict]:
    import csv

    with open(project / "metrics" / "hmrf-deepbet-cases.csv") as handle:
        return [row for row in csv.DictReader(handle) if row["kind"] == "real"]


def test_train_seeds_trains_and_scores_each_strategy_once_per_seed_on_the_same_data(project: Path):
    import nibabel as nib
    import numpy as np

    baseline = _real_rows(project)
    ran = _run(["dvc", "exp", "run", "-S", "train.seeds=[42,7]"], project)
    assert "Running stage 'train@" in ran and "Running stage 'synthesize" not in ran
    metrics = json.loads((project / "data" / "evaluation" / "hmrf-deepbet" / "evaluation.json").read_text())
    assert (metrics["n_seeds"], metrics["n_subjects"]) == (2, 1)
    rows = _real_rows(project)
    assert sorted(row["seed"] for row in rows) == ["42", "7"]
    # deterministic CPU training: the seed-42 model, trained again, is the study's single-seed one
    assert [row["mean"] for row in rows if row["seed"] == "42"] == [row["mean"] for row in baseline]
    record = json.loads((project / "models" / "hmrf-deepbet" / "seed-7" / "training.json").read_text())
    assert (record["seed"], record["seeds"]) == (7, [42, 7])
    evaluation = project / "data" / "evaluation" / "hmrf-deepbet"
    first, other = (np.stack([np.asarray(nib.load(path).dataobj) for path in sorted(folder.rglob("*_dseg.nii.gz"))])
                    for folder in (evaluation / "volumes", evaluation / "seed-7" / "volumes"))
    assert first.shape == other.shape and (first != other).any()  # another seed, another model
    assert metrics["dice"]["real"]["sd_over_seeds"] is not None


def test_bench_device_measures_synthesis_prediction_and_training_on_this_machines_device(project: Path, capsys):
    """``bench device`` at a tiny size on the CPU: one JSON with every part measured, the training (``bench
    train``'s, timed per iteration) stopped by its time limit and scored on the real test head."""
    import os

    from pipeline.__main__ import main

    def nnunet_variables() -> dict[str, str]:  # (libraries set variables of their own when they load)
        return {name: value for name, value in os.environ.items() if name.startswith("nnUNet_")}

    before = nnunet_variables()
    assert main(["bench", "device", "--study", str(project), "--seconds", "2", "-S", "train.profile=ci"]) == 0
    # the in-process training's nnU-Net variables are gone: commands started later get the caller's environment
    assert nnunet_variables() == before
    figures = json.loads(capsys.readouterr().out)
    assert figures["machine"]["device"] == "cpu" and figures["machine"]["gpu"] is None
    assert figures["synthesis"]["n"] >= 8 and figures["synthesis"]["slices_per_s"] > 0
    prediction = figures["prediction"]
    assert prediction["heads"] == 1 and prediction["planes_per_s"] > 0 and prediction["tiles_per_call"] == 16
    training = figures["training"]  # bench train's figures (bench device runs its benchmark, time-limited)
    assert training["profile"] == "ci" and training["iterations"] >= 5 and training["gpu_busy"] is None
    assert training["data_and_augmentation_s"] > 0 and training["forward_backward_s"] > 0
    assert training["iteration_s"] >= max(training["data_and_augmentation_s"], training["forward_backward_s"])
    assert training["peak_rss_mb"] > 100 and training["patch_size"] and training["augmentation"] == "nnunet"
    scored = training["time_to_dice"][-1]  # the last epoch's model, on the whole real test head, as evaluate scores
    assert scored["training_minutes"] > 0 and set(scored["dice_real"]) == {"GM", "WM", "CSF", "mean"}
    assert 0 < scored["dice_real"]["mean"] <= 1


def test_an_experiment_with_another_segmenter_shows_in_metrics_diff(project: Path):
    _run(["dvc", "exp", "run", "-S", "segment.methods=[atropos]", "-S", "train.seeds=[]"], project)
    diff = json.loads(_run(["dvc", "metrics", "diff", "--all", "--json"], project).strip().splitlines()[-1])
    assert "metrics/hmrf-deepbet.json" in diff and "metrics/atropos-deepbet.json" in diff
    new = diff["metrics/atropos-deepbet.json"]["dice.real.mean"]["new"]
    assert 0.0 <= new <= 1.0
    shown = _run(["dvc", "exp", "show", "--json"], project)
    assert "atropos" in shown
