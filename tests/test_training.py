"""Training and scoring can tell a model that learned from one that did not: nnU-Net (the export and
train stages, a small profile) on a trivially learnable task made from real label maps reaches a high
Dice, and the same predictions scored against a wrong reference get a low one."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import luigi
import nibabel as nib
import numpy as np
import pytest
import yaml

from pipeline.core.config import load_config
from pipeline.core.io import load_png, save_png
from pipeline.core.labels import GM, WM, remap
from pipeline.evaluation.dice import dice_per_tissue, summarize
from pipeline.imaging.slices import center_pad
from pipeline.nnunet import runner
from pipeline.nnunet.models import nnunet_dataset
from pipeline.nnunet.predictor import SlicePredictor
from pipeline.runtime.devices import native_bfloat16_cpu
from pipeline.stages.train import Train

from .conftest import first_and_last_rates

pytestmark = pytest.mark.slow

SIZE = 128  # the middle of the brain: a small patch trains quickly on CPU
INTENSITY = np.array([0, 150, 220, 90], dtype=np.float32)  # background, GM, WM, CSF: a T1's order


def tissue_slices(path: Path, count: int) -> list[np.ndarray]:
    """``count`` axial tissue slices around the white matter's centre in a real label map."""
    labels = remap(np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj))
    middle = int(np.argwhere(labels == WM)[:, 2].mean())
    return [center_pad(labels[:, :, z], SIZE) for z in range(middle - 2 * count, middle + 2 * count, 4)]


def write_cases(maps: list[Path], count: int, folder: Path, rng: np.random.Generator) -> None:
    for path in maps:
        for number, labels in enumerate(tissue_slices(path, count)):
            case = f"{path.name.split('.')[0]}_{number:02d}"
            image = INTENSITY[labels] + rng.normal(0, 6, labels.shape)
            save_png(np.clip(image, 0, 255).astype(np.uint8), folder / "images" / f"{case}.png")
            save_png(labels.astype(np.uint8), folder / "labels" / f"{case}.png")


def swap_grey_and_white(labels: Path, out: Path) -> None:
    for path in sorted(labels.glob("*.png")):
        reference = load_png(path)
        swapped = reference.copy()
        swapped[reference == GM], swapped[reference == WM] = WM, GM
        save_png(swapped, out / path.name)


def test_a_trivially_learnable_task_scores_high_and_a_wrong_reference_low(tmp_path: Path, label_maps: Path,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    maps = sorted(label_maps.glob("*.nii.gz"))
    rng = np.random.default_rng(0)
    synthetic = tmp_path / "data" / "synthetic" / "hmrf-deepbet"  # what the export stage reads
    write_cases(maps[:3], 6, synthetic / "train", rng)
    write_cases(maps[3:], 3, synthetic / "test", rng)
    profile = {"epochs": 12, "iterations_per_epoch": 25, "val_iterations_per_epoch": 2, "batch_size": 4,
               "base_features": 8}  # no optimizer named: nnU-Net's own SGD
    params = {"workers": 2, "train": {"profile": "ci", "profiles": {"ci": profile}}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    for upstream in ("data/segmented/hmrf-deepbet", "data/stripped/deepbet", "data/harmonized", "data/qc/hmrf-deepbet",
                     "metrics"):
        Path(upstream).mkdir(parents=True)  # what online synthesis would draw from: done, as far as Luigi sees
    for metrics in ("segment-hmrf-deepbet", "qc-hmrf-deepbet"):
        Path(f"metrics/{metrics}.json").write_text("{}")
    assert luigi.build([Train(segmenter="hmrf", stripper="deepbet")], local_scheduler=True, log_level="WARNING")

    config = load_config()
    raw, models = Path("data/nnunet_raw/hmrf-deepbet"), Path("models/hmrf-deepbet")
    dataset = nnunet_dataset("hmrf", "deepbet")
    assert (dataset.id, dataset.name) == (100, "Dataset100_hmrf_deepbet")
    # nnU-Net copies the plans into the model folder: the schedule and the seed travel with the model
    plans = json.loads(next(models.glob(f"{dataset.name}/*/plans.json")).read_text())
    # ... and the arithmetic, as the trainer resolved train.precision (auto) on this CPU
    assert plans["configurations"]["2d"]["pipeline"] == {**{k: profile[k] for k in (
        "epochs", "iterations_per_epoch", "val_iterations_per_epoch")}, "seed": 42, "precision": "auto",
        "optimizer": "sgd", "learning_rate": None, "mixed_precision": native_bfloat16_cpu(), "online": None}
    # a profile that names no optimizer nor rate trains with nnU-Net's own: SGD (Nesterov) from 0.01, decayed
    first, last = first_and_last_rates(models, dataset.name, "nesterov")
    assert first == 1e-2 and last < first / 5
    assert list(models.glob(f"{dataset.name}/*/fold_all/progress.png"))  # drawn after the last epoch
    segment = SlicePredictor.from_folder(models, dataset.id, runner.trainer_name(config.train, "cpu"), "all", "cpu",
                                         False)
    predictions = {path.stem: segment(load_png(raw / dataset.name / "imagesTs" / f"{path.stem}_0000.png")[None])[0]
                   for path in sorted((raw / dataset.name / "labelsTs").glob("*.png"))}

    def scored(references: Path) -> dict:
        return summarize([dice_per_tissue(load_png(references / f"{case}.png"), labels)
                          for case, labels in predictions.items()])

    right = scored(raw / dataset.name / "labelsTs")
    swap_grey_and_white(raw / dataset.name / "labelsTs", tmp_path / "wrong")
    wrong = scored(tmp_path / "wrong")

    assert right["mean"] > 0.8, right
    assert right["GM"] > 0.7 and right["WM"] > 0.7 and right["CSF"] > 0.5, right
    assert wrong["GM"] < 0.3 and wrong["WM"] < 0.3, wrong  # the metric fails a wrong reference
    assert wrong["mean"] < right["mean"] - 0.4



def test_planning_with_forked_pools_writes_what_nnunets_own_command_writes(tmp_path: Path, label_maps: Path,
                                                                          monkeypatch):
    """``runner.plan_and_preprocess`` (nnU-Net's entry point, its pools forked) and ``nnUNetv2_plan_and_preprocess``
    itself on the same real cases: the same fingerprint, plans and preprocessed arrays; and the pools nnU-Net asks
    for with spawn are the ones forked."""
    import inspect
    import multiprocessing
    import subprocess

    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    from pipeline.nnunet.plan_and_preprocess import forking
    from pipeline.stages.export import Export

    from .conftest import venv_env

    # what the speed-up hangs on: nnU-Net asks the multiprocessing module for spawn when it starts each pool
    for pool_starter in (verify_dataset_integrity, DatasetFingerprintExtractor.run, DefaultPreprocessor.run):
        assert 'multiprocessing.get_context("spawn")' in inspect.getsource(pool_starter), pool_starter
    assert forking(multiprocessing.get_context)("spawn").get_start_method() == "fork"

    monkeypatch.chdir(tmp_path)
    maps = sorted(label_maps.glob("*.nii.gz"))
    write_cases(maps[:2], 2, tmp_path / "data" / "synthetic" / "hmrf-deepbet" / "train", np.random.default_rng(3))
    write_cases(maps[2:3], 1, tmp_path / "data" / "synthetic" / "hmrf-deepbet" / "test", np.random.default_rng(4))
    Path("params.yaml").write_text(yaml.safe_dump({"workers": 2}))
    assert luigi.build([Export(segmenter="hmrf", stripper="deepbet")], local_scheduler=True, log_level="WARNING")
    dataset = nnunet_dataset("hmrf", "deepbet")
    raw = tmp_path / "data" / "nnunet_raw" / "hmrf-deepbet"
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    runner.plan_and_preprocess(dataset.id, runner.environment(raw, ours, tmp_path / "results", 2), 2)
    env = venv_env() | runner.environment(raw, theirs, tmp_path / "results", 2) | {"nnUNet_n_proc_DA": "2"}
    result = subprocess.run([runner.command("nnUNetv2_plan_and_preprocess"), "-d", str(dataset.id), "-c", "2d",
                             "-np", "2", "-npfp", "2", "--verify_dataset_integrity"], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("dataset_fingerprint.json", "nnUNetPlans.json"):
        assert json.loads((ours / dataset.name / name).read_text()) == json.loads((theirs / dataset.name / name)
                                                                                   .read_text()), name
    folders = [folder / dataset.name / "nnUNetPlans_2d" for folder in (ours, theirs)]
    identifiers = sorted(path.name.removesuffix("_0000.png") for path in (raw / dataset.name / "imagesTr").glob("*"))
    assert len(identifiers) == 4  # two slices of two maps
    cases = [infer_dataset_class(str(folder))(str(folder), identifiers) for folder in folders]
    for identifier in identifiers:
        (data, seg, _, properties), (expected_data, expected_seg, _, expected_properties) = (
            dataset_cases.load_case(identifier) for dataset_cases in cases)
        assert np.array_equal(np.asarray(data), np.asarray(expected_data)), identifier
        assert np.array_equal(np.asarray(seg), np.asarray(expected_seg)), identifier
        assert properties["shape_before_cropping"] == expected_properties["shape_before_cropping"]


def test_an_online_case_is_what_nnunet_would_have_read_from_its_png(tmp_path: Path, label_maps: Path,
                                                                     monkeypatch):
    """Online synthesis hands nnU-Net's data loader a sample through nnU-Net's own preprocessing of a PNG case:
    the same arrays as nnU-Net's preprocessor makes from the PNG files, and as it stored for training."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pipeline.nnunet.trainers.nnUNetTrainerPipeline import OnlineCases
    from pipeline.stages.export import Export

    monkeypatch.chdir(tmp_path)
    maps = sorted(label_maps.glob("*.nii.gz"))
    synthetic = tmp_path / "data" / "synthetic" / "hmrf-deepbet"
    write_cases(maps[:2], 2, synthetic / "train", np.random.default_rng(1))
    write_cases(maps[2:3], 1, synthetic / "test", np.random.default_rng(2))
    Path("params.yaml").write_text(yaml.safe_dump({"workers": 1}))
    assert luigi.build([Export(segmenter="hmrf", stripper="deepbet")], local_scheduler=True, log_level="WARNING")
    dataset = nnunet_dataset("hmrf", "deepbet")
    raw = Path("data/nnunet_raw/hmrf-deepbet") / dataset.name
    preprocessed = tmp_path / "preprocessed"
    runner.plan_and_preprocess(dataset.id, runner.environment(raw.parent, preprocessed, tmp_path / "results", 1), 1)
    plans = PlansManager(str(preprocessed / dataset.name / "nnUNetPlans.json"))
    configuration, dataset_json = plans.get_configuration("2d"), load_json(str(raw / "dataset.json"))

    identifier = sorted(path.name.removesuffix("_0000.png") for path in (raw / "imagesTr").glob("*.png"))[0]
    image = load_png(raw / "imagesTr" / f"{identifier}_0000.png")
    labels = load_png(raw / "labelsTr" / f"{identifier}.png")
    sampler = SimpleNamespace(draw=lambda case, rng: (image, labels))  # the sample: this PNG's arrays
    trainer = SimpleNamespace(plans_manager=plans, configuration_manager=configuration, dataset_json=dataset_json)
    data, seg, previous, properties = OnlineCases(SimpleNamespace(identifiers=[identifier]), sampler,
                                                  trainer).load_case(identifier)
    assert configuration.preprocessor_class is DefaultPreprocessor  # what OnlineCases takes from the plans
    from_files = DefaultPreprocessor(verbose=False).run_case(
        [str(raw / "imagesTr" / f"{identifier}_0000.png")], str(raw / "labelsTr" / f"{identifier}.png"), plans,
        configuration, dataset_json)
    assert previous is None and np.array_equal(data, from_files[0]) and np.array_equal(seg, from_files[1])
    folder = preprocessed / dataset.name / configuration.data_identifier
    stored = infer_dataset_class(str(folder))(str(folder), [identifier]).load_case(identifier)
    assert np.allclose(data, np.asarray(stored[0])) and np.array_equal(seg, np.asarray(stored[1]))
    assert {tuple(map(int, v)) for v in properties["class_locations"][2][:5]} <= {tuple(map(int, v)) for v in
                                                                                  stored[3]["class_locations"][2]}


def test_progress_png_is_drawn_after_the_last_epoch_and_at_most_once_an_interval(tmp_path: Path):
    """nnU-Net redraws progress.png after every epoch (1.3 s of a core); the pipeline's trainers at most once an
    interval and always after the last epoch, so the finished model's figure shows every epoch."""
    from nnunetv2.training.logging.nnunet_logger import MetaLogger

    from pipeline.nnunet.trainers.nnUNetTrainerPipeline import SparseProgressLogger

    def drawn_after_each_epoch(epochs: int, interval_s: float) -> list[bool]:
        logger = SparseProgressLogger(MetaLogger(str(tmp_path), False), epochs - 1, interval_s)
        png, drawn = tmp_path / "progress.png", []
        for epoch in range(epochs):
            for key, value in {"epoch_start_timestamps": epoch, "train_losses": 1 / (epoch + 1), "val_losses": 1.0,
                               "lrs": 0.01, "dice_per_class_or_region": [0.5, 0.6, 0.4], "mean_fg_dice": 0.5,
                               "epoch_end_timestamps": epoch + 1}.items():
                logger.log(key, value, epoch)
            png.unlink(missing_ok=True)
            logger.plot_progress_png(str(tmp_path))
            drawn.append(png.is_file())
        return drawn

    assert drawn_after_each_epoch(3, interval_s=3600) == [False, False, True]
    assert drawn_after_each_epoch(2, interval_s=0) == [True, True]


def configured_augmentation(trainer_class: type):
    """A ``trainer_class`` holding only what its augmentation's configuration reads (the planned patch), and that
    configuration: rotation range, dummy 2D, the patch loaded for the spatial transform, mirrored axes."""
    trainer = object.__new__(trainer_class)
    trainer.configuration_manager = SimpleNamespace(patch_size=(SIZE, SIZE))
    trainer.print_to_log_file = lambda *args, **kwargs: None
    return trainer, trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()


def marker_quadrants(trainer_class: type, draws: int) -> set[tuple[bool, bool]]:
    """The quadrants (before the centre along axis 0?, along axis 1?) where a marker placed between a patch's centre
    and its first corner lands in ``draws`` training samples augmented as ``trainer_class`` configures nnU-Net's
    augmentation."""
    import torch

    trainer, (rotation, dummy_2d, initial, mirror_axes) = configured_augmentation(trainer_class)
    transforms = trainer.get_training_transforms((SIZE, SIZE), rotation, None, mirror_axes, dummy_2d, [False],
                                                 foreground_labels=[1, 2, 3])
    centre = [n // 2 for n in initial]
    labels = torch.zeros((1, *initial), dtype=torch.int16)
    labels[0, centre[0] - 40:centre[0] - 20, centre[1] - 40:centre[1] - 20] = GM
    torch.manual_seed(0)
    np.random.seed(0)
    quadrants = set()
    for _ in range(draws):
        out = transforms(image=labels.float() * 100, segmentation=labels.clone())["segmentation"][0]
        rows, columns = np.argwhere(out.numpy() == GM).mean(axis=0)
        quadrants.add((bool(rows < SIZE / 2), bool(columns < SIZE / 2)))
    return quadrants


def test_nnunet_augmentation_keeps_every_brain_slice_upright():
    """nnU-Net rotates a square 2D patch by up to 180 degrees and mirrors both its axes; the pipeline's trainer
    keeps a slice's anatomy where it is (rotations within 15 degrees, no mirroring), so a structure in one quadrant of
    the patch stays there in every augmented sample, while nnU-Net's own trainer moves it about. The
    no-augmentation trainer (``train.augmentation: synthesis``) still crops the planned patch, unrotated."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from pipeline.nnunet.trainers.nnUNetTrainerPipeline import (
        LEFT_RIGHT,
        nnUNetTrainerPipeline,
        nnUNetTrainerPipelineSynthAug,
    )

    assert marker_quadrants(nnUNetTrainerPipeline, 30) == {(True, True)}
    assert len(marker_quadrants(nnUNetTrainer, 30)) > 1
    trainer, (_, _, initial, mirror_axes) = configured_augmentation(nnUNetTrainerPipelineSynthAug)
    assert tuple(initial) == (SIZE, SIZE) and mirror_axes is None
    assert trainer.inference_allowed_mirroring_axes == LEFT_RIGHT


def test_a_fused_optimizer_keeps_nnunets_settings_steps_as_its_loop_and_stays_fused_when_resumed():
    """``fused`` rebuilds nnU-Net's AdamW (AMSGrad) and SGD (Nesterov momentum) in torch's fused kernel: every
    setting and parameter group kept, and after steps on a convolution's real gradients the weights equal the
    per-tensor loop's to float rounding (the two differ only in the order of their arithmetic). A checkpoint's
    optimizer state saved unfused (a training interrupted before the change, resumed with ``--c``) loads into it
    without switching the fused kernel off."""
    import copy

    import torch

    from pipeline.nnunet.trainers.nnUNetTrainerPipeline import FUSED_KERNEL, fused

    torch.manual_seed(0)
    image, target = torch.rand(2, 1, 16, 16), torch.rand(2, 4, 14, 14)

    def groups(net: torch.nn.Conv2d) -> list[dict]:  # the bias without weight decay: a group of its own settings
        return [{"params": [net.weight]}, {"params": [net.bias], "weight_decay": 0.0}]

    for kind, settings in [(torch.optim.AdamW, {"lr": 2e-3, "weight_decay": 3e-5, "amsgrad": True}),
                           (torch.optim.SGD, {"lr": 1e-2, "weight_decay": 3e-5, "momentum": 0.99, "nesterov": True})]:
        looped_net, fused_net = torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(1, 4, 3)
        fused_net.load_state_dict(looped_net.state_dict())
        start = looped_net.weight.detach().clone()
        looped, rebuilt = kind(groups(looped_net), **settings), fused(kind(groups(fused_net), **settings))
        assert all(group["fused"] for group in rebuilt.param_groups)
        assert [group["weight_decay"] for group in rebuilt.param_groups] == [3e-5, 0.0]
        assert {key: value for key, value in rebuilt.defaults.items() if key not in FUSED_KERNEL} == \
            {key: value for key, value in looped.defaults.items() if key not in FUSED_KERNEL}, kind
        for step in range(5):
            if step == 3:  # resumed from the per-tensor loop's state, as from an old checkpoint (a copy, as on disk)
                rebuilt.load_state_dict(copy.deepcopy(looped.state_dict()))
                fused_net.load_state_dict(looped_net.state_dict())
                assert all(group["fused"] for group in rebuilt.param_groups), kind
            for net, optimizer in [(looped_net, looped), (fused_net, rebuilt)]:
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(net(image), target).backward()
                optimizer.step()
        assert (looped_net.weight - start).abs().max() > 1e-4  # the steps moved the weights
        for looped_weights, fused_weights in zip(looped_net.parameters(), fused_net.parameters(), strict=True):
            torch.testing.assert_close(looped_weights, fused_weights, rtol=1e-6, atol=1e-7)
