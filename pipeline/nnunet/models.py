"""Trained models: each combo's nnU-Net dataset, and the model folders a train stage writes with their training
record. Applying a model is ``pipeline.nnunet.predictor``'s: the train stage does not import it, so a change to how a
model is applied re-scores it without retraining it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, get_args

from pydantic import ValidationError

from pipeline.core.config import (
    HarmonizeConfig,
    SegmentMethod,
    Strict,
    StripConfig,
    StripMethod,
    TrainProfile,
    View,
)
from pipeline.core.io import InputError, write_json


@dataclass(frozen=True)
class NnunetDataset:
    """A combo's nnU-Net dataset: its own ID and name, stable across studies (``Dataset1SK_<seg>_<strip>``: S
    and K the methods' places in ``config.SegmentMethod`` and ``config.StripMethod``)."""

    id: int
    name: str


def nnunet_dataset(segmenter: str, stripper: str) -> NnunetDataset:
    dataset_id = 100 + 10 * get_args(SegmentMethod).index(segmenter) + get_args(StripMethod).index(stripper)
    return NnunetDataset(dataset_id, f"Dataset{dataset_id:03d}_{segmenter}_{stripper}")


def model_folder(models: Path, dataset_id: int, trainer: str) -> Path:
    """nnU-Net's folder of a trained 2D model under a results root: ``Dataset<id>_*/<trainer>__nnUNetPlans__2d``."""
    found = sorted(models.glob(f"Dataset{dataset_id:03d}_*/{trainer}__nnUNetPlans__2d"))
    if len(found) != 1:
        raise FileNotFoundError(f"{models}: expected one model folder of dataset {dataset_id} and trainer {trainer}, "
                                f"found {len(found)}")
    return found[0]


def trained_mixed_precision(results: Path, dataset_id: int, trainer: str) -> bool:
    """The arithmetic a training ran in, as its trainer recorded it in the plans beside the model."""
    plans = json.loads((model_folder(results, dataset_id, trainer) / "plans.json").read_text())
    return bool(plans["configurations"]["2d"]["pipeline"]["mixed_precision"])


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
    # whether it trained in mixed precision, as the trainer resolved train.precision on the machine that trained
    # (None: a record from before it was kept)
    mixed_precision: bool | None = None
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
