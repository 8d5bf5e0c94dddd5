"""Stage 8 — evaluate: Dice for GM, WM and CSF of each model, on synthetic slices and on whole real heads.

- ``synthetic``: the held-out synthetic test samples (the seed project's protocol);
- ``real``, ``external``, ``teacher``: each real test head predicted over the whole brain and scored in 3D
  (``pipeline.evaluation``): against the segmenter's labels, against reference labels the user supplies
  (``evaluate.reference_labels``), and the segmenter's own labels against that reference. Also within the band
  around each head's reference level (``dice_band``) and per fifth of the brain's height (``dice_by_height``).

Writes ``metrics/<combo>.json`` (DVC metrics: what strategies are compared by), two DVC plots files,
``metrics/<combo>-cases.csv`` (every case's Dice) and ``metrics/<combo>-by-height.csv`` (every case's Dice per fifth
of the brain's height), and under ``data/evaluation/<combo>/``: ``evaluation.json`` (every summary; both JSON files
typed in ``pipeline.evaluation.metrics``), the predicted label volumes (``volumes/``), the synthetic predictions and
``tissue_volumes.tsv`` (mL per head: model, teacher, reference). The report draws each test head's picture from the
volumes: no picture code runs here, so an edit to ``pipeline/imaging/overlays.py`` leaves every evaluation up to date.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pipeline.core.bids import Folders, subject_file, subject_of
from pipeline.core.config import Config, EvaluateConfig, TrainConfig
from pipeline.core.io import load_png, save_nifti, save_png, write_csv, write_tsv
from pipeline.core.labels import TISSUES
from pipeline.evaluation.compare import mean_ci95, scores_by_subject
from pipeline.evaluation.dice import dice_per_tissue, summarize
from pipeline.evaluation.heads import (
    HEIGHT_PARTS,
    as_labels,
    held_out_cases,
    load_held_out_head,
    predict_head,
    score_head,
    score_teacher,
    volumes_row,
)
from pipeline.evaluation.metrics import (
    WHOLE_HEAD,
    Evaluation,
    Interval,
    Kind,
    KindSummary,
    Scope,
    TissueDice,
    parse_row_kind,
    row_kind,
    write_evaluation,
)
from pipeline.nnunet.models import TrainingRecord, nnunet_dataset, trained_seeds
from pipeline.nnunet.predictor import SlicePredictor
from pipeline.runtime.devices import torch_device
from pipeline.runtime.executors import run_job
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import ComboStage, Stage
from pipeline.stages.export import Export
from pipeline.stages.harmonize import Harmonize
from pipeline.stages.segment_qc import SegmentQC
from pipeline.stages.strip import Strip
from pipeline.stages.train import Train

log = logging.getLogger("pipeline")

def with_seed(rows: list[dict], seed: int) -> list[dict]:
    return [{"seed": seed, **row} for row in rows]


def with_mean(rows: list[dict]) -> list[dict]:
    """Each row with its mean over tissues (the number a subject is compared by)."""
    return [row | {"mean": summarize([row])["mean"]} for row in rows]


def of_kind(rows: list[dict], kind: Kind, scope: Scope = Scope.WHOLE) -> list[dict]:
    return [row for row in rows if row["kind"] == row_kind(kind, scope)]


def tissue_dice(rows: list[dict]) -> TissueDice:
    return TissueDice(**summarize(rows))


def kind_summary(rows: list[dict], kind: Kind) -> KindSummary:
    """Mean Dice per tissue over the (case, seed) rows of one kind; for the whole-head kinds, the 95 % bootstrap
    interval of their mean over tissues, resampling subjects and seeds (``pipeline.evaluation.compare``), and the
    SD over seeds of that mean (None with one seed); the number of cases."""
    by_seed: dict[int | None, list[float]] = {}
    for row in rows:
        if row["mean"] is not None:
            by_seed.setdefault(row.get("seed"), []).append(row["mean"])
    ci = mean_ci95(scores_by_subject(rows)) if kind in WHOLE_HEAD else None
    seed_means = [float(np.mean(means)) for means in by_seed.values()]
    return KindSummary(**summarize(rows), ci95=None if ci is None else Interval(low=round(ci[0], 4),
                                                                               high=round(ci[1], 4)),
                       sd_over_seeds=round(float(np.std(seed_means, ddof=1)), 4) if len(seed_means) > 1 else None,
                       n=len({row["case"] for row in rows}))


def by_height(rows: list[dict], kind: Kind) -> dict[str, list[float | None]]:
    """Mean Dice per tissue in each height part (bottom first) over the kind's height rows."""
    height = of_kind(rows, kind, Scope.HEIGHT)
    parts = [summarize([row for row in height if row["part"] == part]) for part in range(1, HEIGHT_PARTS + 1)]
    return {tissue: [None if part[tissue] is None else round(part[tissue], 4) for part in parts]
            for tissue in TISSUES.values()}


def score_synthetic(segment: SlicePredictor, dataset: Path, predictions: Path) -> list[dict]:
    """The held-out synthetic samples (nnU-Net's imagesTs/labelsTs) against the labels they were drawn from."""
    truths = sorted((dataset / "labelsTs").glob("*.png"))
    if not truths:
        return []
    images = np.stack([load_png(dataset / "imagesTs" / f"{truth.stem}_0000.png") for truth in truths])
    rows = []
    for truth, labels in zip(truths, segment(images), strict=True):  # the samples through the network together
        save_png(labels, predictions / truth.name)
        rows.append({"kind": row_kind(Kind.SYNTHETIC, Scope.WHOLE), "case": truth.stem,
                     **dice_per_tissue(load_png(truth), labels)})
    return rows


def evaluate_model(results: Path, record: TrainingRecord, dataset: Path, cases: list[str], folders: Folders,
                   out: Path, with_volumes: bool, train: TrainConfig, evaluate: EvaluateConfig
                   ) -> tuple[list[dict], list[dict]]:
    """One trained model on the synthetic test samples and the real test heads: their Dice rows, and (with
    ``with_volumes``: the first seed's model) each head's tissue volumes. The predictions go under ``out``. Run where
    the model runs: here, or as a GPU job (``executor``)."""
    model = SlicePredictor.from_folder(results, record.dataset_id, record.trainer, str(train.fold),
                                       torch_device(train.device), train.predict_tta,
                                       precision=train.predict_precision, window=train.predict_window)
    rows, volumes = score_synthetic(model, dataset, out / "synthetic"), []
    for case in cases:
        head = load_held_out_head(case, folders, evaluate)
        prediction = predict_head(model, head, record.size, record.views)
        labels = as_labels(prediction)
        save_nifti(labels, head.brain.affine, subject_file(out / "volumes", case, "dseg"))
        rows += score_head(head, prediction, evaluate)
        if with_volumes:
            volumes.append(volumes_row(head, labels))
    return rows, volumes


class Evaluate(ComboStage):
    name = "evaluate"
    out_template = "data/evaluation/{segmenter}-{stripper}"
    param_keys = ("seed", "train", "evaluate")
    metrics_template = "metrics/{segmenter}-{stripper}.json"
    # DVC plots files: a row per case, kind and seed; the same per fifth of the height (part 1: bottom)
    cases_template = "metrics/{segmenter}-{stripper}-cases.csv"
    by_height_template = "metrics/{segmenter}-{stripper}-by-height.csv"
    plots = {cases_template: {"x": "mean", "y": "case", "template": "bar_horizontal_sorted"},
             by_height_template: {"x": "part", "y": "mean", "template": "scatter"}}

    def requires(self) -> dict[str, Stage]:
        combo = self.combo()
        return {"models": Train(**combo), "nnunet_raw": Export(**combo), "raw": Acquire(),
                "stripped": Strip(stripper=self.stripper), "segmented": SegmentQC.labels(**combo),
                "qc": SegmentQC(**combo), "harmonized": Harmonize()}

    def build(self, out: Path, config: Config) -> None:
        models, segmented = self.input_dir("models"), self.input_dir("segmented")
        folders = Folders(segmented, self.input_dir("stripped"), self.input_dir("harmonized"), self.input_dir("raw"))
        dataset = self.input_dir("nnunet_raw") / nnunet_dataset(self.segmenter, self.stripper).name
        cases = held_out_cases(self.input_dir("raw"), segmented)
        if not cases:
            log.warning("evaluate %s-%s: no test subject left (keep_going): no real-head Dice", self.segmenter,
                        self.stripper)
        record = TrainingRecord.read(models)
        rows, volumes = [], []
        for number, (seed, results) in enumerate(trained_seeds(models)):
            label = f"evaluate {self.segmenter}-{self.stripper} seed {seed}"
            log.info("%s: %d synthetic test samples and %d real test heads", label,
                     len(list((dataset / "labelsTs").glob("*.png"))), len(cases))
            arguments = (results, record, dataset, cases, folders, out if number == 0 else out / f"seed-{seed}",
                         number == 0, config.train, config.evaluate)
            seed_rows, seed_volumes = run_job(config.executor, label, evaluate_model, *arguments)
            rows += with_seed(seed_rows, seed)
            volumes += seed_volumes
        references = []  # the test heads' references: how many are sparse, how many have labels left out
        for case in cases:
            head = load_held_out_head(case, folders, config.evaluate)
            rows += score_teacher(head, config.evaluate)
            references += [head.native] if head.native is not None else []
        rows = with_mean(rows)
        scopes = [parse_row_kind(row["kind"])[1] for row in rows]
        write_csv([row for row, scope in zip(rows, scopes, strict=True) if scope is not Scope.HEIGHT],
                  self.plot_path(self.cases_template))
        write_csv([row for row, scope in zip(rows, scopes, strict=True) if scope is Scope.HEIGHT],
                  self.plot_path(self.by_height_template))
        write_tsv(volumes, out / "tissue_volumes.tsv")
        shared = json.loads((self.input_dir("raw") / "dataset_description.json").read_text())["TrainTestShareSubject"]
        result = evaluation(rows, n_seeds=len(record.seeds),
                            n_external_sparse=sum(reference.drawn is not None for reference in references),
                            n_external_left_out=sum(reference.left_out is not None for reference in references),
                            n_train=json.loads((dataset / "dataset.json").read_text())["numTraining"],
                            band_mm=config.evaluate.band_mm, train_test_share_subject=shared, profile=record.profile,
                            device=record.device, train_wall_s=record.wall_s)
        write_evaluation(result, out, self.metrics_path())
        log.info("evaluate %s-%s: whole-brain Dice %s", self.segmenter, self.stripper,
                 {kind.value: round(scores.mean, 4) for kind, scores in result.dice.items() if scores.mean is not None})


def evaluation(rows: list[dict], *, n_seeds: int, n_train: int, band_mm: float, train_test_share_subject: bool,
               profile: str, device: str, train_wall_s: float | None, n_external_sparse: int = 0,
               n_external_left_out: int = 0) -> Evaluation:
    """Every Dice of one strategy, summarized from its scored rows (every seed's), with how its model was trained."""
    scored = [kind for kind in WHOLE_HEAD if of_kind(rows, kind)]
    real = of_kind(rows, Kind.REAL)
    return Evaluation(
        dice={Kind.SYNTHETIC: kind_summary(of_kind(rows, Kind.SYNTHETIC), Kind.SYNTHETIC)}
        | {kind: kind_summary(of_kind(rows, kind), kind) for kind in scored},
        dice_band={kind: tissue_dice(of_kind(rows, kind, Scope.BAND)) for kind in scored},
        dice_by_height={kind: by_height(rows, kind) for kind in scored},
        scored="whole brain, 3D",
        n_subjects=len({subject_of(row["case"]) for row in real}),
        n_test=len({row["case"] for row in of_kind(rows, Kind.SYNTHETIC)}),
        n_real=len({row["case"] for row in real}),
        n_external=len({row["case"] for row in of_kind(rows, Kind.EXTERNAL)}), n_external_sparse=n_external_sparse,
        n_external_left_out=n_external_left_out,
        n_seeds=n_seeds, n_train=n_train, band_mm=band_mm, train_test_share_subject=train_test_share_subject,
        profile=profile, device=device, train_wall_s=train_wall_s,
    )
