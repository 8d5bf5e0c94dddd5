"""What the evaluate stage writes, typed: the one definition of the kinds of Dice, of a scored row's kind, and of
the two files read by the report, ``bench real`` and the tests.

- ``metrics/<combo>.json`` (``Metrics``, DVC metrics): only what strategies are compared by, so that
  ``dvc exp show`` and ``dvc metrics diff`` stay short: Dice per kind and tissue over whole heads, the 95 %
  interval of each model's mean, the number of test subjects, the training's seconds.
- ``data/evaluation/<combo>/evaluation.json`` (``Evaluation``): the full record: every kind with its interval,
  its SD over seeds and its count, the synthetic slices, the band around the reference level, Dice by height, the
  counts and how the model was trained.

Per case the Dice are in ``metrics/<combo>-cases.csv`` (DVC plots), per case and height part in
``metrics/<combo>-by-height.csv`` (DVC plots).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from pipeline.core.io import write_json


class Kind(StrEnum):
    """What a prediction is scored against (the order is the order they are shown in)."""

    EXTERNAL = "external"  # whole real heads against the reference labels the user supplies
    TEACHER = "teacher"  # not a model: the segmenter's own labels against that reference
    REAL = "real"  # whole real heads against the segmenter's labels
    SYNTHETIC = "synthetic"  # synthetic test slices against the labels they were drawn from


WHOLE_HEAD = (Kind.EXTERNAL, Kind.TEACHER, Kind.REAL)  # scored in 3D on whole real heads
MODELS = (Kind.EXTERNAL, Kind.REAL)  # the whole-head kinds that score a model (teacher scores labels)

NOTES = {
    Kind.EXTERNAL: "whole real test heads (3D) against the reference labels you supplied "
                   "(evaluate.reference_labels): one reference for every strategy",
    Kind.TEACHER: "not a model: the segmenter's own labels of the same heads against your reference labels, what a "
                  "model trained on them can reach at best",
    Kind.REAL: "whole real test heads (3D) against each segmenter's own labels: compares strippers for one segmenter",
    Kind.SYNTHETIC: "the labels the synthetic test images were generated from",
}


class Scope(StrEnum):
    """Which part of a head a row scores: the whole of it, the band around its reference level, a height part."""

    WHOLE = "whole"
    BAND = "band"
    HEIGHT = "height"


def row_kind(kind: Kind, scope: Scope) -> str:
    """The ``kind`` column of a scored row: ``real``, ``real_band``, ``real_height``."""
    return kind.value if scope is Scope.WHOLE else f"{kind.value}_{scope.value}"


def parse_row_kind(value: str) -> tuple[Kind, Scope]:
    """``real_height`` -> (real, height); the inverse of ``row_kind``."""
    kind, _, scope = value.partition("_")
    return Kind(kind), Scope(scope or Scope.WHOLE)


class Strict(BaseModel):
    """Every field required (a value may be null), none unknown: a file missing one is refused, named."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TissueDice(Strict):
    """Mean Dice per tissue over the cases (None: the tissue is absent from every case), and their mean."""

    GM: float | None
    WM: float | None
    CSF: float | None
    mean: float | None


class Interval(Strict):
    """95 % percentile-bootstrap interval of the mean over tissues, resampling subjects and seeds within them."""

    low: float
    high: float


class KindSummary(TissueDice):
    """One kind of Dice in full: its interval (None: synthetic, or no case), its SD over seeds (None with one
    seed), and the number of cases it is the mean of (test subjects' heads; synthetic: slices)."""

    ci95: Interval | None
    sd_over_seeds: float | None
    n: int


class Metrics(Strict):
    """``metrics/<combo>.json``: what experiments are compared by (DVC shows no null)."""

    dice: dict[Kind, TissueDice]  # the whole-head kinds
    ci95: dict[Kind, Interval]  # the model kinds that have one
    n_subjects: int  # real test subjects scored
    train_s: float | None  # the training's wall seconds (the first seed)


class Evaluation(Strict):
    """``data/evaluation/<combo>/evaluation.json``: everything evaluate measured of one strategy."""

    dice: dict[Kind, KindSummary]  # every kind scored: whole heads and synthetic slices
    dice_band: dict[Kind, TissueDice]  # whole-head kinds within band_mm of each head's reference level
    dice_by_height: dict[Kind, dict[str, list[float | None]]]  # per tissue, per fifth of the height (bottom first)
    scored: str
    n_subjects: int
    n_seeds: int
    n_train: int  # synthetic training samples
    n_test: int  # synthetic test samples
    n_real: int  # real test heads scored against the segmenter's labels
    n_external: int  # real test heads scored against the reference
    n_external_sparse: int = 0  # of those, references drawn on some planes only: scored on those planes
    n_external_left_out: int = 0  # of those, references with labels left out of the scoring (no one tissue)
    band_mm: float
    train_test_share_subject: bool
    profile: str
    device: str
    train_wall_s: float | None

    def metrics(self) -> Metrics:
        whole = [kind for kind in WHOLE_HEAD if kind in self.dice]
        return Metrics(dice={kind: TissueDice(**self.dice[kind].model_dump(include=set(TissueDice.model_fields)))
                             for kind in whole},
                       ci95={kind: self.dice[kind].ci95 for kind in MODELS
                             if kind in self.dice and self.dice[kind].ci95 is not None},
                       n_subjects=self.n_subjects, train_s=self.train_wall_s)


def evaluation_file(evaluation: Path) -> Path:
    """Where evaluate writes the full record, in its output folder ``data/evaluation/<combo>``."""
    return evaluation / "evaluation.json"


def write_evaluation(evaluation: Evaluation, folder: Path, metrics: Path) -> None:
    write_json(evaluation.model_dump(mode="json"), evaluation_file(folder))
    write_json(evaluation.metrics().model_dump(mode="json"), metrics)


def read_evaluation(folder: Path) -> Evaluation:
    return Evaluation.model_validate_json(evaluation_file(folder).read_text())


def read_metrics(path: Path) -> Metrics:
    return Metrics.model_validate_json(path.read_text())
