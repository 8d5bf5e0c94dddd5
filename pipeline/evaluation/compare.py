"""How sure a comparison of strategies is: bootstrap confidence intervals over test subjects and training seeds.

Scores come per (subject, seed): a strategy's mean Dice on one real test subject, from the model trained
with one seed. Subjects are what the answer must generalise over and seeds are the training's own noise, so
a resample draws subjects with replacement and, within each, seeds with replacement. Every strategy is
scored on the same subjects: a comparison is paired, the difference taken subject by subject. The bootstrap
is seeded (``BOOTSTRAP_SEED``, or the caller's): the same scores always give the same interval.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.bids import subject_of
from pipeline.evaluation.metrics import Kind, Scope, row_kind

BOOTSTRAP_SEED = 20261201
RESAMPLES = 4000
Z_95 = 1.959964

Scores = dict[str, list[float]]  # subject -> one score per training seed


def scores_by_subject(rows: list[dict], score: str = "mean") -> Scores:
    """Evaluation rows (``case``: a subject or one of its sessions, ``seed``, and ``score``: its mean Dice, or a
    tissue's) as Scores: per subject, one score per seed, the mean over its sessions (they are not independent
    subjects, and a subject weighs the same whatever its number of sessions); rows without a score left out."""
    by_seed: dict[str, dict[object, list[float]]] = {}
    for row in rows:
        if row[score] is not None:
            by_seed.setdefault(subject_of(row["case"]), {}).setdefault(row.get("seed"), []).append(float(row[score]))
    return {subject: [float(np.mean(means)) for means in seeds.values()] for subject, seeds in by_seed.items()}


MISSING = ("n/a", "nan", "")  # how the cases table writes a Dice that has no value (no tissue, no score)


CasesTable = list[dict[str, str]]  # evaluate's cases table (``metrics/<combo>-cases.csv``) as read: a row per case


def read_cases(path: Path) -> CasesTable:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def cases_scores(cases: CasesTable, kind: Kind, score: str = "mean") -> Scores:
    """The Scores of one kind of whole-head Dice in a cases table: ``score`` is its ``mean`` over tissues, or one
    tissue's column (``GM``, ``WM``, ``CSF``)."""
    rows = [row | {score: None if row[score] in MISSING else row[score]} for row in cases
            if row["kind"] == row_kind(kind, Scope.WHOLE)]
    return scores_by_subject(rows, score)


@dataclass(frozen=True)
class Difference:
    """Strategy ``a`` minus strategy ``b``: mean over the common subjects and seeds, with its 95 % CI."""

    a: str
    b: str
    mean: float
    ci95: tuple[float, float]
    n_subjects: int
    n_seeds: int
    subjects_needed: int | None  # to tell the observed difference from 0 at this spread (None: it already is)
    measure: str = "mean Dice"  # what was compared: the mean over tissues, or one tissue's Dice ("GM Dice")

    @property
    def detected(self) -> bool:
        return self.ci95[0] > 0 or self.ci95[1] < 0

    @property
    def winner(self) -> str | None:
        return (self.a if self.mean > 0 else self.b) if self.detected else None

    def verdict(self) -> str:
        subjects, seeds = counted(self.n_subjects, "subject"), counted(self.n_seeds, "seed")
        if self.detected:
            # the winner's lead and its interval, both positive, whichever of a and b won
            sign, loser = (1, self.b) if self.winner == self.a else (-1, self.a)
            low, high = sorted(sign * bound for bound in self.ci95)
            return (f"{self.winner} beats {loser} by {abs(self.mean):.3f} {self.measure} "
                    f"(95 % CI {low:+.3f} to {high:+.3f}; {subjects}, {seeds})")
        needed = f"; about {self.subjects_needed} test subjects would tell it" if self.subjects_needed else ""
        return (f"no detectable difference between {self.a} and {self.b} with {subjects} and {seeds} "
                f"({self.a} - {self.b} {self.mean:+.3f}, 95 % CI {self.ci95[0]:+.3f} to {self.ci95[1]:+.3f}){needed}")


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _matrix(scores: Scores, subjects: list[str]) -> np.ndarray:
    """(subjects, seeds) array; a subject with fewer seeds than another is an error."""
    rows = [scores[subject] for subject in subjects]
    if len({len(row) for row in rows}) > 1:
        raise ValueError("every subject needs a score from every seed")
    return np.asarray(rows, dtype=np.float64)


def _resampled_means(matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of a (subjects, seeds) matrix: subjects, then seeds within each, with replacement."""
    n_subjects, n_seeds = matrix.shape
    subjects = rng.integers(0, n_subjects, (RESAMPLES, n_subjects))
    seeds = rng.integers(0, n_seeds, (RESAMPLES, n_subjects, n_seeds))
    return matrix[subjects[..., None], seeds].mean(axis=(1, 2))


def mean_ci95(scores: Scores, seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """95 % percentile-bootstrap interval of a strategy's mean over subjects and seeds (None: no scores)."""
    if not scores:
        return None
    means = _resampled_means(_matrix(scores, sorted(scores)), np.random.default_rng(seed))
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def paired_difference(a: str, scores_a: Scores, b: str, scores_b: Scores, seed: int = BOOTSTRAP_SEED,
                      measure: str = "mean Dice") -> Difference:
    """``a`` minus ``b`` (``measure``: what the scores are) over the subjects both were scored on; seeds resampled
    within each strategy."""
    subjects = sorted(set(scores_a) & set(scores_b))
    if not subjects:
        raise ValueError(f"{a} and {b} share no scored test subject")
    first, second = _matrix(scores_a, subjects), _matrix(scores_b, subjects)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(subjects), (RESAMPLES, len(subjects)))
    seeds_a = rng.integers(0, first.shape[1], (RESAMPLES, len(subjects), first.shape[1]))
    seeds_b = rng.integers(0, second.shape[1], (RESAMPLES, len(subjects), second.shape[1]))
    differences = (first[draws[..., None], seeds_a].mean(axis=2)
                   - second[draws[..., None], seeds_b].mean(axis=2)).mean(axis=1)
    low, high = np.percentile(differences, [2.5, 97.5])
    per_subject = first.mean(axis=1) - second.mean(axis=1)
    mean = float(per_subject.mean())
    result = Difference(a, b, mean, (float(low), float(high)), len(subjects), min(first.shape[1], second.shape[1]),
                        None, measure)
    if result.detected:
        return result
    return Difference(**{**result.__dict__, "subjects_needed": subjects_needed(per_subject)})


def subjects_needed(per_subject: np.ndarray) -> int | None:
    """Test subjects for a 95 % interval of half-width |observed mean difference| at the observed spread
    (None when the difference is 0 or there is no spread to go on)."""
    if len(per_subject) < 2:
        return None
    mean, sd = abs(float(per_subject.mean())), float(per_subject.std(ddof=1))
    if mean == 0 or sd == 0:
        return None
    return max(len(per_subject) + 1, math.ceil((Z_95 * sd / mean) ** 2))
