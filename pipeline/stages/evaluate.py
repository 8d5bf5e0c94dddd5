"""Stage 8 — evaluate: Dice for GM, WM and CSF of each model, on synthetic and on real slices.

- ``synthetic``: the held-out synthetic test samples (the seed project's protocol);
- ``real``: the real axial slice of each test subject at its reference level (``pipeline.slices``: the
  same anatomy for every strategy), after the same preprocessing, against that segmenter's labels on that
  subject;
- ``external``: the same predictions against reference labels the user supplies
  (``evaluate.reference_labels``, a BIDS derivative: ``pipeline.references``). Unlike ``real``, one
  reference for every combo: the number that compares segmenters as well as strippers;
- ``teacher``: the segmenter's own labels of those slices against that reference: what the model, which
  learned from them, can reach at best.

Writes ``metrics/<combo>.json`` (DVC metrics), ``metrics/<combo>-cases.csv`` (every
case's Dice, DVC plots) and the predictions under ``data/evaluation/<combo>/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline import nnunet
from pipeline.config import Config, EvaluateConfig
from pipeline.devices import torch_device
from pipeline.io import InputError, load_nifti, load_png, save_png, write_csv, write_json
from pipeline.metrics import dice_per_tissue, summarize
from pipeline.references import on_grid, reference_file, reference_tissues
from pipeline.slices import center_pad, level_index, to_uint8
from pipeline.stages.acquire import Acquire, read_participants, subject_file
from pipeline.stages.base import ComboStage, Stage
from pipeline.stages.export import DATASET_ID, DATASET_NAME, Export
from pipeline.stages.harmonize import Harmonize, reference_level
from pipeline.stages.segment import Segment
from pipeline.stages.strip import Strip
from pipeline.stages.train import Train
from pipeline.subjects import failed_ids

log = logging.getLogger("pipeline")


def score_folder(references: Path, predictions: Path, kind: str) -> list[dict]:
    rows = []
    for reference in sorted(references.glob("*.png")):
        predicted = predictions / reference.name
        if not predicted.is_file():
            raise FileNotFoundError(f"nnU-Net wrote no prediction for {reference.name} in {predictions}")
        rows.append({"kind": kind, "case": reference.stem,
                     **dice_per_tissue(load_png(reference), load_png(predicted))})
    return rows


def write_external_slices(levels: dict[str, float], stripped: Path, config: EvaluateConfig, out: Path,
                          size: int) -> list[str]:
    """Each test subject's reference tissues on its real slice (at ``levels[subject]``), named like the real
    labels; returns the subjects that have a reference. Carried in world space onto the stripped grid, so a
    brain the stripper cut off counts against the strategy."""
    root = Path(config.reference_labels).expanduser()
    if not root.is_dir():
        raise InputError(f"evaluate.reference_labels: {root} is not a folder")
    scored = []
    for subject, level in levels.items():
        path = reference_file(root, subject)
        if path is None:
            log.warning("evaluate: sub-%s has no reference labels under %s", subject, root)
            continue
        brain = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
        tissues = on_grid(reference_tissues(path, root, config.reference_scheme, subject), brain)
        save_png(center_pad(tissues[:, :, level_index(brain, level)], size), out / f"sub-{subject}.png")
        scored.append(subject)
    return scored


def write_real_slices(levels: dict[str, float], stripped: Path, segmented: Path, out: Path, size: int) -> None:
    """Each subject's real axial slice at its reference level, and its segmenter's labels there, laid out and
    grey-levelled like the synthetic ones (``pipeline.slices``): 0 outside the brain mask."""
    for subject, level in levels.items():
        brain = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
        mask = np.asarray(load_nifti(subject_file(stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
        labels = np.asarray(load_nifti(subject_file(segmented, subject, "dseg"), subject).dataobj, dtype=np.uint8)
        k = level_index(brain, level)
        image = to_uint8(brain.get_fdata(dtype=np.float32)[:, :, k], mask[:, :, k])
        save_png(center_pad(image, size), out / "images" / f"sub-{subject}_0000.png")
        save_png(center_pad(labels[:, :, k], size), out / "labels" / f"sub-{subject}.png")


class Evaluate(ComboStage):
    name = "evaluate"
    out_template = "data/evaluation/{segmenter}-{stripper}"
    param_keys = ("seed", "train", "evaluate")
    metrics_template = "metrics/{segmenter}-{stripper}.json"
    plots_template = "metrics/{segmenter}-{stripper}-cases.csv"
    plot_axes = {"x": "mean", "y": "case", "template": "bar_horizontal_sorted"}

    def requires(self) -> list[Stage]:
        combo = self.combo()
        return [Train(**combo), Export(**combo), Acquire(), Strip(stripper=self.stripper), Segment(**combo),
                Harmonize()]

    def build(self, out: Path, config: Config) -> None:
        models, raw, acquired, stripped, segmented, harmonized = (self.input_dir(i) for i in range(6))
        dataset = raw / DATASET_NAME
        device = torch_device(config.train.device)
        env = nnunet.environment(raw, out / "preprocessed", models, config.train, config.seed, config.workers)

        def predict(images: Path, predictions: Path) -> None:
            nnunet.predict(images, predictions, DATASET_ID, str(config.train.fold), device, env,
                           config.train.predict_tta, nnunet.trainer_name(config.train))

        log.info("evaluate %s-%s: synthetic test slices", self.segmenter, self.stripper)
        predict(dataset / "imagesTs", out / "synthetic")
        synthetic = score_folder(dataset / "labelsTs", out / "synthetic", "synthetic")

        lost = failed_ids(segmented)  # keep_going: subjects without labels cannot be scored
        test_subjects = [p.subject for p in read_participants(acquired) if p.in_test and f"sub-{p.subject}" not in lost]
        log.info("evaluate %s-%s: real central slices of %d test subject(s)", self.segmenter, self.stripper,
                 len(test_subjects))
        levels = {subject: reference_level(harmonized, subject) for subject in test_subjects}
        real, external, teacher = [], [], []
        if test_subjects:
            write_real_slices(levels, stripped, segmented, out / "real", config.synth.size)
            predict(out / "real" / "images", out / "real" / "predictions")
            real = score_folder(out / "real" / "labels", out / "real" / "predictions", "real")
        else:
            log.warning("evaluate %s-%s: no test subject left (keep_going): no real-slice Dice", self.segmenter,
                        self.stripper)
        if config.evaluate.reference_labels and test_subjects:
            if write_external_slices(levels, stripped, config.evaluate, out / "external", config.synth.size):
                external = score_folder(out / "external", out / "real" / "predictions", "external")
                # the labels the model learned from, against the same reference: what it could reach at best
                teacher = score_folder(out / "external", out / "real" / "labels", "teacher")
            else:
                log.warning("evaluate: no test subject has reference labels: no dice.external")

        for row in synthetic + real + external + teacher:
            row["mean"] = summarize([row])["mean"]
        write_csv(synthetic + real + external + teacher, self.plots_path())
        write_json(self.metrics(config, models, dataset, acquired, synthetic, real, external, teacher),
                   self.metrics_path())

    def metrics(self, config: Config, models: Path, dataset: Path, acquired: Path, synthetic: list[dict],
                real: list[dict], external: list[dict], teacher: list[dict]) -> dict:
        training = json.loads((models / "training.json").read_text())
        description = json.loads((acquired / "dataset_description.json").read_text())
        metrics = {
            "dice": {"synthetic": summarize(synthetic), "real": summarize(real)}
            | ({"external": summarize(external), "teacher": summarize(teacher)} if external else {}),
            "n_train": json.loads((dataset / "dataset.json").read_text())["numTraining"],
            "n_test": len(synthetic),
            "n_real": len(real),
            "n_external": len(external),
            "train_test_share_subject": description["TrainTestShareSubject"],
            "profile": training["profile"],
            "device": training["device"],
            "train_wall_s": training["wall_s"],
        }
        log.info("evaluate %s-%s: Dice %s", self.segmenter, self.stripper, json.dumps(metrics["dice"]))
        return metrics
