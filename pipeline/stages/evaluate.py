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
from pipeline.bids import read_cases, reference_level, subject_file, subject_of
from pipeline.compare import mean_ci95, scores_by_subject
from pipeline.config import Config, EvaluateConfig
from pipeline.devices import torch_device
from pipeline.io import InputError, load_nifti, save_png, write_csv, write_json
from pipeline.metrics import score_folder, score_subjects, summarize
from pipeline.nnunet import nnunet_dataset, trained_seeds
from pipeline.references import on_grid, reference_file, reference_tissues
from pipeline.slices import center_pad, level_index, slice_name, to_uint8
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import ComboStage, Stage
from pipeline.stages.export import Export
from pipeline.stages.harmonize import Harmonize
from pipeline.stages.segment import Segment
from pipeline.stages.strip import Strip
from pipeline.stages.train import Train
from pipeline.subjects import failed_ids

log = logging.getLogger("pipeline")


def band_offsets(config: EvaluateConfig) -> list[float]:
    """Offsets (mm) of the scored slices from the reference level: every ``step_mm`` within ``band_mm``."""
    steps = int(config.band_mm // config.step_mm)
    return [step * config.step_mm for step in range(-steps, steps + 1)]


def write_external_slices(levels: dict[str, float], stripped: Path, config: EvaluateConfig, out: Path,
                          size: int) -> list[str]:
    """Each test subject's reference tissues on its real slices, named like the real labels; returns the
    subjects that have a reference. Carried in world space onto the stripped grid, so a brain the stripper
    cut off counts against the strategy."""
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
        for offset in band_offsets(config):
            k = level_index(brain, level + offset)
            save_png(center_pad(tissues[:, :, k], size), out / f"{slice_name(subject, offset)}.png")
        scored.append(subject)
    return scored


def write_real_slices(levels: dict[str, float], stripped: Path, segmented: Path, out: Path,
                      config: EvaluateConfig, size: int) -> None:
    """Each subject's real axial slices around its reference level (``band_offsets``: the same planes in
    world space for every strategy), and its segmenter's labels there, laid out and grey-levelled like the
    synthetic ones (``pipeline.slices``): 0 outside the brain mask."""
    for subject, level in levels.items():
        brain = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
        mask = np.asarray(load_nifti(subject_file(stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
        labels = np.asarray(load_nifti(subject_file(segmented, subject, "dseg"), subject).dataobj, dtype=np.uint8)
        data = brain.get_fdata(dtype=np.float32)
        for offset in band_offsets(config):
            k, name = level_index(brain, level + offset), slice_name(subject, offset)
            save_png(center_pad(to_uint8(data[:, :, k], mask[:, :, k]), size), out / "images" / f"{name}_0000.png")
            save_png(center_pad(labels[:, :, k], size), out / "labels" / f"{name}.png")


def with_seed(rows: list[dict], seed: int) -> list[dict]:
    return [{"seed": seed, **row} for row in rows]


def with_ci(rows: list[dict]) -> dict:
    """Mean Dice per tissue over the (subject, seed) rows; the 95 % bootstrap interval of their mean over
    tissues, resampling subjects and seeds (``pipeline.compare``); and the SD over seeds of that mean (None
    with one seed)."""
    by_seed: dict[int | None, list[float]] = {}
    for row in rows:
        if row["mean"] is not None:
            by_seed.setdefault(row.get("seed"), []).append(row["mean"])
    ci = mean_ci95(scores_by_subject(rows))
    seed_means = [float(np.mean(means)) for means in by_seed.values()]
    return summarize(rows) | {"mean_ci95": None if ci is None else [round(ci[0], 4), round(ci[1], 4)],
                              "sd_over_seeds": round(float(np.std(seed_means, ddof=1)), 4)
                              if len(seed_means) > 1 else None}


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
        nnunet_set = nnunet_dataset(self.segmenter, self.stripper)
        dataset = raw / nnunet_set.name
        device = torch_device(config.train.device)

        def predict(results: Path, images: Path, predictions: Path) -> None:
            env = nnunet.environment(raw, out / "preprocessed", results, config.workers)
            nnunet.predict(images, predictions, nnunet_set.id, str(config.train.fold), device, env,
                           config.train.predict_tta, nnunet.trainer_name(config.train))

        lost = failed_ids(segmented)  # keep_going: subjects without labels cannot be scored
        test_subjects = [case.label for case in read_cases(acquired)
                         if case.in_test and f"sub-{case.label}" not in lost]
        log.info("evaluate %s-%s: real slices of %d test subject(s)", self.segmenter, self.stripper,
                 len(test_subjects))
        levels = {subject: reference_level(harmonized, subject) for subject in test_subjects}
        if test_subjects:
            write_real_slices(levels, stripped, segmented, out / "real", config.evaluate, config.synth.size)
        else:
            log.warning("evaluate %s-%s: no test subject left (keep_going): no real-slice Dice", self.segmenter,
                        self.stripper)
        referenced = bool(config.evaluate.reference_labels and test_subjects
                          and write_external_slices(levels, stripped, config.evaluate, out / "external",
                                                    config.synth.size))
        if config.evaluate.reference_labels and test_subjects and not referenced:
            log.warning("evaluate: no test subject has reference labels: no dice.external")
        # the labels the model learned from, against the same reference: what it could reach at best
        teacher = score_subjects(out / "external", out / "real" / "labels", "teacher") if referenced else []

        synthetic, real, external = [], [], []
        for seed, results in trained_seeds(models):
            base = out if results == models else out / f"seed-{seed}"
            log.info("evaluate %s-%s: the model of seed %d", self.segmenter, self.stripper, seed)
            predict(results, dataset / "imagesTs", base / "synthetic")
            synthetic += with_seed(score_folder(dataset / "labelsTs", base / "synthetic", "synthetic"), seed)
            if test_subjects:
                predict(results, out / "real" / "images", base / "real" / "predictions")
                real += with_seed(score_subjects(out / "real" / "labels", base / "real" / "predictions", "real"), seed)
            if referenced:
                external += with_seed(score_subjects(out / "external", base / "real" / "predictions", "external"),
                                      seed)

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
            "dice": {"synthetic": summarize(synthetic), "real": with_ci(real)}
            | ({"external": with_ci(external), "teacher": with_ci(teacher)} if external else {}),
            "n_subjects": len({subject_of(row["case"]) for row in real}),
            "n_seeds": len(training.get("seeds", [training["seed"]])),
            "n_train": json.loads((dataset / "dataset.json").read_text())["numTraining"],
            "n_test": len({row["case"] for row in synthetic}),
            "n_real": len({row["case"] for row in real}),
            "real_slices_per_subject": len(band_offsets(config.evaluate)),
            "n_external": len({row["case"] for row in external}),
            "train_test_share_subject": description["TrainTestShareSubject"],
            "profile": training["profile"],
            "device": training["device"],
            "train_wall_s": training["wall_s"],
        }
        log.info("evaluate %s-%s: Dice %s", self.segmenter, self.stripper, json.dumps(metrics["dice"]))
        return metrics
