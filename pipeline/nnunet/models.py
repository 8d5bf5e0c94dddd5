"""Trained models: each combo's nnU-Net dataset, the model folders a train stage writes with their training
record, and a model applied in this process (``SlicePredictor``)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, get_args
from unittest import mock

import numpy as np
from pydantic import ValidationError

from pipeline.config import HarmonizeConfig, SegmentMethod, Strict, StripConfig, StripMethod, TrainProfile, View
from pipeline.io import InputError, write_json
from pipeline.nnunet.runner import TRAINER_DIR
from pipeline.slices import rows_left_right


@dataclass(frozen=True)
class NnunetDataset:
    """A combo's nnU-Net dataset: its own ID and name, stable across studies (``Dataset1SK_<seg>_<strip>``: S
    and K the methods' places in ``config.SegmentMethod`` and ``config.StripMethod``)."""

    id: int
    name: str


def nnunet_dataset(segmenter: str, stripper: str) -> NnunetDataset:
    dataset_id = 100 + 10 * get_args(SegmentMethod).index(segmenter) + get_args(StripMethod).index(stripper)
    return NnunetDataset(dataset_id, f"Dataset{dataset_id:03d}_{segmenter}_{stripper}")


def seed_folders(models: Path, seeds: list[int]) -> list[tuple[int, Path]]:
    """Where each seed's model lives: the first seed's in the model folder itself (what ``predict`` uses),
    every other one in ``seed-<seed>/`` inside it."""
    return [(seed, models if index == 0 else models / f"seed-{seed}") for index, seed in enumerate(seeds)]


class TrainingRecord(Strict):
    """``training.json`` beside a trained model: how it was trained, and what a new head must go through
    before it sees it (written by the train stage; read by evaluate and ``predict``)."""

    RECORD: ClassVar[str] = "training.json"

    profile: str
    schedule: TrainProfile
    fold: int | str
    device: str
    deterministic: bool
    seed: int
    seeds: list[int]  # every seed the train stage trained: the first one's model holds this record
    wall_s: float
    trainer: str
    dataset_id: int
    segmenter: str
    stripper: str
    harmonize: HarmonizeConfig  # what predict does to a new head: the same harmonization ...
    strip: StripConfig  # ... and brain mask
    size: int  # the slice canvas
    levels: Literal["brain", "reference"]  # which planes of a head the model was trained on (synth.levels)
    views: list[View]  # ... and in which views (synth.views): predict segments a head in each, and fuses them
    versions: dict

    @classmethod
    def read(cls, folder: Path) -> TrainingRecord:
        path = folder / cls.RECORD
        if not path.is_file():
            raise InputError(f"{folder}: not a trained model folder (no {cls.RECORD})")
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as error:
            raise InputError(f"{path}: not a training record of this version of the pipeline "
                             f"({error.error_count()} problem(s), first: {error.errors()[0]['loc']}); "
                             "retrain the model") from None

    def write(self, folder: Path) -> None:
        write_json(self.model_dump(mode="json"), folder / self.RECORD)


def trained_seeds(models: Path) -> list[tuple[int, Path]]:
    """The (seed, folder) of every model a train stage wrote, from its training record."""
    return seed_folders(models, TrainingRecord.read(models).seeds)


def model_folder(models: Path, dataset_id: int, trainer: str) -> Path:
    """nnU-Net's folder of a trained 2D model under a results root: ``Dataset<id>_*/<trainer>__nnUNetPlans__2d``."""
    found = sorted(models.glob(f"Dataset{dataset_id:03d}_*/{trainer}__nnUNetPlans__2d"))
    if len(found) != 1:
        raise FileNotFoundError(f"{models}: expected one model folder of dataset {dataset_id} and trainer {trainer}, "
                                f"found {len(found)}")
    return found[0]


class SlicePredictor:
    """A trained network in this process, segmenting 8-bit slices exactly as ``nnUNetv2_predict`` segments the
    same slices read from PNGs (``NaturalImage2DIO``'s layout and spacing, nnU-Net's own preprocessing, sliding
    window and export), without a process and a file per slice."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor  # an initialised nnUNetPredictor

    @classmethod
    def from_folder(cls, models: Path, dataset_id: int, trainer: str, fold: str, device: str, tta: bool
                    ) -> SlicePredictor:
        """The model a train stage wrote under ``models`` (nnU-Net's results root)."""
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(use_mirroring=tta, perform_everything_on_device=device == "cuda",
                                    device=torch.device(device), verbose=False, allow_tqdm=False)
        # nnU-Net looks the trainer class up by name, in the folders nnUNet_extTrainer names (and prints where)
        with mock.patch.dict(os.environ, {"nnUNet_extTrainer": str(TRAINER_DIR)}), \
                contextlib.redirect_stdout(io.StringIO()):
            predictor.initialize_from_trained_model_folder(str(model_folder(models, dataset_id, trainer)), (fold,))
        return cls(predictor)

    @classmethod
    def from_trainer(cls, trainer) -> SlicePredictor:
        """A trainer's network as it is now (deep supervision off: call while it is set so)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=trainer.device.type == "cuda",
                                    device=trainer.device, verbose=False, allow_tqdm=False)
        network = getattr(trainer.network, "_orig_mod", trainer.network)  # torch.compile's wrapper, if any
        predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                        [network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                        trainer.inference_allowed_mirroring_axes)
        return cls(predictor)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The labels (uint8, the image's shape) of one 2D uint8 image."""
        labels = self.predictor.predict_single_npy_array(image[None, None].astype(np.float32), {"spacing": [999, 1, 1]})
        return np.asarray(labels[0], dtype=np.uint8)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """The class probabilities (float32, classes x the image's shape) of one 2D uint8 image."""
        _, probabilities = self.predictor.predict_single_npy_array(
            image[None, None].astype(np.float32), {"spacing": [999, 1, 1]}, save_or_return_probabilities=True)
        return np.asarray(probabilities[:, 0], dtype=np.float32)

    def probabilities_in(self, view: str) -> Callable[[np.ndarray], np.ndarray]:
        """``probabilities`` for ``view``'s slices: test-time mirroring (left-right) only where rows run left-right
        (a sagittal slice mirrored would face backwards)."""
        if rows_left_right(view) or not self.predictor.use_mirroring:
            return self.probabilities
        predictor = copy.copy(self.predictor)  # the same network, mirroring off
        predictor.use_mirroring = False
        return SlicePredictor(predictor).probabilities
