"""nnU-Net trainers with the schedule of a ``train.profiles`` entry.

nnU-Net finds them through the ``nnUNet_extTrainer`` environment variable, which
``pipeline.nnunet.runner`` sets to this folder. The profile's schedule and the training seed are in the
plans (``configurations.2d.pipeline``, written by ``pipeline.nnunet.runner.adapt_plans``), which nnU-Net copies
into the model folder: the folder records how it was trained, and nnU-Net's own command lines work on it.

- ``nnUNetTrainerPipeline``: nnU-Net's own data augmentation, with the brain kept upright: rotations within
  ``UPRIGHT_ROTATION_DEG`` and no mirroring. For a square 2D patch nnU-Net rotates a fifth of the samples by up
  to 180 degrees and mirrors each axis of half of them, as for images that have no up; every slice here is a
  brain in its view's fixed orientation (RAS), and the synthesis already flips its samples left-right. Measured
  on real brains at ``quick``: a little closer to manual labels, no worse at another site (docs/benchmarks.md).
- ``nnUNetTrainerPipelineSynthAug`` (``train.augmentation: synthesis``): nnU-Net's ``nnUNetTrainerNoDA``, none
  beyond cropping the patch. The synthetic samples are already drawn with random affine and elastic deformation,
  left-right flips, bias field, gamma and blur (``pipeline.synth``), fresh for every sample; repeating that on
  the CPU per batch costs more than the network's forward and backward pass at these sizes. At test time
  (``train.predict_tta``) it mirrors left-right only: a brain seen upside down is not a brain.
- Each optimizes as the profile names (``optimizer``: nnU-Net's SGD, or its AdamW; ``learning_rate``: where None,
  nnU-Net's for that optimizer).
- Each trains in mixed precision where ``train.precision`` asks for it (``auto``: where the device computes it
  natively): nnU-Net's float16 on a GPU, and bfloat16 on a CPU, which nnU-Net leaves in float32 (its
  ``train_step`` autocasts a GPU only). The plans beside the model record the arithmetic that ran.
- ``...Online`` of each (``train.online_synthesis: true``): every training case nnU-Net loads is a fresh
  synthetic sample of that case (``pipeline.synth.online``), drawn from the label maps the plans name
  (``pipeline.online``, written by ``pipeline.nnunet.runner.adapt_plans``). Validation keeps the exported set's cases.
"""

import contextlib
import inspect
import math
import time
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.logging.nnunet_logger import MetaLogger
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA
from nnunetv2.training.nnUNetTrainer.variants.optimizer.nnUNetTrainerAdam import nnUNetTrainerAdam

from pipeline.core.bids import Folders
from pipeline.core.config import SynthConfig
from pipeline.runtime.devices import training_mixed_precision
from pipeline.synth.online import OnlineSampler
from pipeline.synth.subject import case_of

LEFT_RIGHT = (0,)  # axis 0 of a slice: rows, left -> right (pipeline.imaging.slices)
UPRIGHT_ROTATION_DEG = 15.0  # nnU-Net's own bound for 2D patches it considers oriented (elongated ones)
NNUNET_SCALING = (0.85, 1.25)  # the scale range nnU-Net sizes its initial patch for (nnUNetTrainer's literal)
PROGRESS_PLOT_INTERVAL_S = 60.0  # progress.png redrawn at most this often, and after the last epoch


# The training schedule ``runner.adapt_plans`` writes into the plans (``config.SCHEDULE_KEYS``: how a stage runs).
PLAN_SCHEDULE_KEYS = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "seed", "precision", "optimizer",
                      "learning_rate", "online")
ADAM_LEARNING_RATE = 1e-3  # nnU-Net's nnUNetTrainerAdam1en3's
FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")  # where the fused optimizer was measured and tested
FUSED_KERNEL = {"foreach": None, "fused": True}  # an optimizer's (or group's) choice of torch's fused kernel


def fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer, settings and parameter groups, stepping all its tensors in one fused kernel: the same
    arithmetic up to float rounding (docs/benchmarks.md). A state it loads (a checkpoint resumed, even one saved
    unfused) keeps the fused kernel: torch would otherwise restore the saved groups' choice with the rest."""
    kind = type(optimizer)
    accepted = inspect.signature(kind).parameters
    settings = {name: value for name, value in optimizer.defaults.items() if name in accepted}
    rebuilt = kind([group | FUSED_KERNEL for group in optimizer.param_groups], **settings | FUSED_KERNEL)
    rebuilt.register_load_state_dict_pre_hook(
        lambda _, state: state | {"param_groups": [group | FUSED_KERNEL for group in state["param_groups"]]})
    return rebuilt


class SparseProgressLogger(MetaLogger):
    """nnU-Net's logger, drawing ``progress.png`` at most every ``interval_s`` seconds and after the last epoch.
    nnU-Net redraws it after every epoch: a 3000 x 5400 pixel figure, 1.3 s of a CPU core, as long as a
    ``quick`` profile's epoch on 2 cores. The final figure is the same."""

    def __init__(self, logger: MetaLogger, last_epoch: int, interval_s: float = PROGRESS_PLOT_INTERVAL_S) -> None:
        self.__dict__.update(vars(logger))  # its loggers (wandb where enabled), as nnU-Net configured them
        self.last_epoch, self.interval_s = last_epoch, interval_s
        self.drawn_at = time.monotonic()

    def plot_progress_png(self, output_folder: str) -> None:
        epoch = len(self.get_value("epoch_end_timestamps", step=None)) - 1  # the epoch just ended
        if epoch >= self.last_epoch or time.monotonic() - self.drawn_at >= self.interval_s:
            super().plot_progress_png(output_folder)
            self.drawn_at = time.monotonic()


def starting_rate(schedule: dict, sgd_rate: float) -> float:
    """The rate a schedule's optimizer starts from: the profile's ``learning_rate``, else nnU-Net's for that optimizer
    (AdamW: ``nnUNetTrainerAdam1en3``'s; SGD: ``sgd_rate``, its trainer's own)."""
    return schedule["learning_rate"] or (ADAM_LEARNING_RATE if schedule["optimizer"] == "adam" else sgd_rate)


def pipeline_schedule(plans: dict, configuration: str) -> dict:
    """The schedule ``pipeline.nnunet.runner.adapt_plans`` wrote into the plans: all of it, or a clear error (a plan
    without it would train nnU-Net's own 1000 epochs)."""
    schedule = plans["configurations"][configuration].get("pipeline")
    missing = [key for key in PLAN_SCHEDULE_KEYS if key not in (schedule or {})]
    if missing:
        raise RuntimeError(f"the plans' {configuration} configuration lacks the pipeline's schedule ({missing}): "
                           "train through the pipeline (python -m pipeline run train), which writes it")
    return schedule


class nnUNetTrainerPipeline(nnUNetTrainer):  # noqa: N801 - nnU-Net looks trainers up by this name
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):  # noqa: B008 - nnU-Net's signature
        schedule = pipeline_schedule(plans, configuration)
        if schedule["seed"] is not None:  # deterministic runs: same weights, same sampling
            torch.manual_seed(int(schedule["seed"]))
            np.random.seed(int(schedule["seed"]))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = schedule["epochs"]
        self.num_iterations_per_epoch = schedule["iterations_per_epoch"]
        self.num_val_iterations_per_epoch = schedule["val_iterations_per_epoch"]
        self.save_every = max(1, min(self.save_every, self.num_epochs // 2 or 1))
        self.optimizer_name = schedule["optimizer"]
        self.initial_lr = starting_rate(schedule, self.initial_lr)  # nnU-Net's trainer has set its SGD rate
        self.logger = SparseProgressLogger(self.logger, self.num_epochs - 1)
        self.mixed_precision = training_mixed_precision(schedule["precision"], self.device.type)
        # the plans.json nnU-Net saves beside the model records the arithmetic that ran (resolved on this machine)
        schedule["mixed_precision"] = self.mixed_precision

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802 - nnU-Net's name
        """nnU-Net's augmentation with the brain upright: rotations within ``UPRIGHT_ROTATION_DEG``, no mirroring in
        training, left-right mirroring at test time (``train.predict_tta``); the patch loaded for the rotation
        sized as nnU-Net sizes it."""
        _, dummy_2d, _, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        rotation = (-math.radians(UPRIGHT_ROTATION_DEG), math.radians(UPRIGHT_ROTATION_DEG))
        initial_patch_size = get_patch_size(self.configuration_manager.patch_size, rotation, rotation, rotation,
                                            NNUNET_SCALING)
        self.inference_allowed_mirroring_axes = LEFT_RIGHT
        return rotation, dummy_2d, initial_patch_size, None

    def configure_optimizers(self):
        """nnU-Net's own SGD, or for ``adam`` its ``nnUNetTrainerAdam``'s AdamW (AMSGrad): in the ``quick`` profile's
        1,000 iterations, about 0.01 more Dice against manual labels (docs/benchmarks.md). Either in torch's fused
        kernel on a CPU or a GPU: nnU-Net's builds step the network's tensors one by one, about a fifth of a
        ``quick`` iteration on 2 CPU cores."""
        if self.optimizer_name == "adam":
            optimizer, _ = nnUNetTrainerAdam.configure_optimizers(self)
        else:
            optimizer, _ = super().configure_optimizers()
        if self.device.type in FUSED_OPTIMIZER_DEVICES:
            optimizer = fused(optimizer)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)  # nnU-Net's, on the new one

    def cpu_autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on a CPU in mixed precision (nnU-Net autocasts only a GPU, in float16)."""
        enabled = self.mixed_precision and self.device.type == "cpu"
        return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()

    def train_step(self, batch: dict) -> dict:
        with self.cpu_autocast():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self.cpu_autocast():
            return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        # The pipeline's evaluate stage measures Dice on held-out synthetic slices and real heads;
        # nnU-Net's own sliding-window validation over the training fold would only cost time.
        self.print_to_log_file("validation skipped: the pipeline's evaluate stage measures Dice")


class nnUNetTrainerPipelineSynthAug(nnUNetTrainerPipeline, nnUNetTrainerNoDA):  # noqa: N801
    """nnU-Net's own no-augmentation trainer (``nnUNetTrainerNoDA``: patches cropped, nothing else), since every
    synthetic sample is already deformed, flipped and re-textured; mirrored left-right at test time only."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):  # noqa: N802 - nnU-Net's name
        # nnU-Net's no-augmentation setting (the patch as planned), not nnUNetTrainerPipeline's upright rotations
        rotation, dummy_2d, patch_size, _ = \
            nnUNetTrainerNoDA.configure_rotation_dummyDA_mirroring_and_inital_patch_size(self)
        self.inference_allowed_mirroring_axes = LEFT_RIGHT
        return rotation, dummy_2d, patch_size, None


class OnlineCases:
    """nnU-Net's training dataset, each ``load_case`` a fresh sample of the case through nnU-Net's own
    preprocessing of a PNG (``NaturalImage2DIO``'s layout and spacing)."""

    def __init__(self, cases, sampler: OnlineSampler, trainer: nnUNetTrainer) -> None:
        self.identifiers = cases.identifiers
        self.sampler, self.trainer = sampler, trainer
        self.preprocessor = trainer.configuration_manager.preprocessor_class(verbose=False)  # the plans' own

    def load_case(self, identifier: str):
        image, labels = self.sampler.draw(case_of(identifier), np.random)  # nnU-Net seeds np.random
        data, seg, properties = self.preprocessor.run_case_npy(
            # as NaturalImage2DIO reads a PNG: float32 (c, 1, x, y), the labels too (they take -1 outside the brain)
            image[None, None].astype(np.float32), labels[None, None].astype(np.float32), {"spacing": [999, 1, 1]},
            self.trainer.plans_manager, self.trainer.configuration_manager, self.trainer.dataset_json)
        return data, seg, None, properties


class OnlineSynthesis:
    """Mixin: the training dataset drawn online from the label maps the plans name."""

    def get_tr_and_val_datasets(self):
        training, validation = super().get_tr_and_val_datasets()
        online = self.configuration_manager.configuration["pipeline"]["online"]
        folders = Folders(**{name: Path(path) for name, path in online["folders"].items()})
        sampler = OnlineSampler(folders, SynthConfig.model_validate(online["synth"]), int(online["seed"]))
        self.print_to_log_file(f"online synthesis: {len(training.identifiers)} training cases from {folders}")
        return OnlineCases(training, sampler, self), validation


class nnUNetTrainerPipelineOnline(OnlineSynthesis, nnUNetTrainerPipeline):  # noqa: N801
    pass


class nnUNetTrainerPipelineSynthAugOnline(OnlineSynthesis, nnUNetTrainerPipelineSynthAug):  # noqa: N801
    pass
