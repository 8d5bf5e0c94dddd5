"""Stage 8 — evaluate: Dice for GM, WM and CSF of each model on its held-out synthetic slices.

Writes ``metrics/<combo>.json`` (a DVC metrics file) and, beside the predictions,
``data/evaluation/<combo>/cases.tsv`` with every case's Dice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import luigi

from pipeline import nnunet
from pipeline.config import Config
from pipeline.devices import torch_device
from pipeline.io import load_png, write_json, write_tsv
from pipeline.metrics import dice_per_tissue, summarize
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import Stage
from pipeline.stages.export import DATASET_ID, DATASET_NAME, Export
from pipeline.stages.train import Train

log = logging.getLogger("pipeline")


def score_folder(references: Path, predictions: Path) -> list[dict]:
    rows = []
    for reference in sorted(references.glob("*.png")):
        predicted = predictions / reference.name
        if not predicted.is_file():
            raise FileNotFoundError(f"nnU-Net wrote no prediction for {reference.name} in {predictions}")
        rows.append({"case": reference.stem, **dice_per_tissue(load_png(reference), load_png(predicted))})
    return rows


class Evaluate(Stage):
    name = "evaluate"
    segmenter = luigi.Parameter()
    stripper = luigi.Parameter()
    matrix = {"segmenter": "segment.methods", "stripper": "strip.methods"}
    out_template = "data/evaluation/{segmenter}-{stripper}"
    param_keys = ("seed", "train")
    metrics_template = "metrics/{segmenter}-{stripper}.json"

    def requires(self) -> list[Stage]:
        return [Train(segmenter=self.segmenter, stripper=self.stripper),
                Export(segmenter=self.segmenter, stripper=self.stripper), Acquire()]

    def build(self, out: Path, config: Config) -> None:
        models, raw = self.input_dir(0), self.input_dir(1)
        dataset = raw / DATASET_NAME
        device = torch_device(config.train.device)
        env = nnunet.environment(raw, out / "preprocessed", models, config.train, config.seed)
        log.info("evaluate %s-%s: predicting the synthetic test slices", self.segmenter, self.stripper)
        nnunet.predict(dataset / "imagesTs", out / "synthetic", DATASET_ID, str(config.train.fold), device, env,
                       config.train.predict_tta)
        cases = score_folder(dataset / "labelsTs", out / "synthetic")
        write_tsv(cases, out / "cases.tsv")
        training = json.loads((models / "training.json").read_text())
        acquired = json.loads((self.input_dir(2) / "dataset_description.json").read_text())
        metrics = {
            "dice": {"synthetic": summarize(cases)},
            "n_train": json.loads((dataset / "dataset.json").read_text())["numTraining"],
            "n_test": len(cases),
            "train_test_share_subject": acquired["TrainTestShareSubject"],
            "profile": training["profile"],
            "device": training["device"],
            "train_wall_s": training["wall_s"],
        }
        write_json(metrics, self.metrics_path())
        log.info("evaluate %s-%s: Dice %s", self.segmenter, self.stripper, metrics["dice"]["synthetic"])
