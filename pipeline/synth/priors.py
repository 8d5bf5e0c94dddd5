"""Priors of the GMM: where each generation class's mean and standard deviation are drawn from.

As SynthSeg's ``prior_distributions``, ``prior_means`` and ``prior_stds``: per class c, its mean is drawn
from D(means[0, c], means[1, c]) and its standard deviation from D(stds[0, c], stds[1, c]), D being
uniform (low, high) or normal (mean, sd; truncated at 0). Intensities are in lab2im's units (0..255-ish,
clipped at 300 before min-max normalisation). ``synth.priors`` chooses one of three:

- ``uniform``: lab2im's and SynthSeg's default, U(prior_means) and U(prior_stds) for every class: any
  contrast (domain randomisation), so a model must learn shape, which takes long training.
- ``t1``: SynthSeg's T1 priors (``data/labels_classes_priors/prior_means_t1.npy`` and ``prior_stds_t1.npy``,
  estimated on real T1 scans; tutorial 5): white matter around 160, cortex 96, CSF 44, each with the spread
  found across scans. The contrast of a T1, varied as much as T1 scans vary.
- ``subject``: Gaussian priors centred on each class's own mean and standard deviation in the subject's
  image (the stripped brain the labels were made from, rescaled to 0..255), ``synth.subject_prior_spread``
  of the range wide for the means, a quarter of each class's own spread for the standard deviations: the
  contrast of this very scan, varied around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.core.config import SynthConfig
from pipeline.core.labels import BACKGROUND, CSF, GM, WM

INTENSITY_RANGE = 255.0  # the subject's [0, 1] image in lab2im's units
STD_SPREAD = 0.25  # subject priors: sd of a class's std draw, as a share of that std

# SynthSeg's T1 priors, by tissue (its classes: 0 background, 1 CSF, 2 cerebral WM, 3 cortex), as
# (mean of the class mean, its sd) and (mean of the class std, its sd).
T1_PRIORS: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {
    BACKGROUND: ((7.0, 1.75), (5.0, 2.5)),
    CSF: ((44.44, 11.21), (25.57, 9.84)),
    WM: ((160.29, 21.66), (15.63, 5.48)),
    GM: ((96.30, 12.18), (18.92, 6.31)),
}


@dataclass(frozen=True, eq=False)
class IntensityPriors:
    distribution: Literal["uniform", "normal"]
    means: np.ndarray  # (2, n_classes): low/high, or mean/sd, of each class's mean
    stds: np.ndarray  # (2, n_classes): the same for each class's standard deviation

    def draw(self, mean_stream: np.random.Generator, std_stream: np.random.Generator,
             n_labels: int) -> tuple[np.ndarray, np.ndarray]:
        """One sample's (means, stds) for labels 0..n_labels-1 (classes beyond the priors: class 0's)."""
        means, stds = (_columns(table, n_labels) for table in (self.means, self.stds))
        if self.distribution == "uniform":
            return mean_stream.uniform(means[0], means[1]), std_stream.uniform(stds[0], stds[1])
        draw_means = np.maximum(mean_stream.normal(means[0], means[1]), 0.0)
        return draw_means, np.maximum(std_stream.normal(stds[0], stds[1]), 0.0)


def _columns(table: np.ndarray, n: int) -> np.ndarray:
    if table.shape[1] >= n:
        return table[:, :n]
    return np.concatenate([table, np.repeat(table[:, :1], n - table.shape[1], axis=1)], axis=1)


def t1_priors(tissue_of_class: np.ndarray) -> IntensityPriors:
    """SynthSeg's T1 prior of each class's tissue (``tissue_of_class[c]``: 0..3)."""
    means = np.array([T1_PRIORS[int(t)][0] for t in tissue_of_class]).T
    stds = np.array([T1_PRIORS[int(t)][1] for t in tissue_of_class]).T
    return IntensityPriors("normal", means, stds)


def subject_priors(image: np.ndarray, classes: np.ndarray, n_classes: int, spread: float) -> IntensityPriors:
    """Gaussian priors around each class's mean and std in ``image`` ([0, 1], on the labels' grid).

    Background (class 0) and classes absent from the image keep SynthSeg's T1 background prior.
    """
    values = np.asarray(image, dtype=np.float64).ravel() * INTENSITY_RANGE
    flat = np.asarray(classes).ravel().astype(np.int64)
    count = np.bincount(flat, minlength=n_classes)[:n_classes].astype(np.float64)
    total = np.bincount(flat, weights=values, minlength=n_classes)[:n_classes]
    squares = np.bincount(flat, weights=values**2, minlength=n_classes)[:n_classes]
    background = t1_priors(np.zeros(n_classes, dtype=np.int64))
    means, stds = background.means.copy(), background.stds.copy()
    present = count > 0
    present[0] = False
    mean = total[present] / count[present]
    std = np.sqrt(np.maximum(squares[present] / count[present] - mean**2, 0.0))
    means[:, present] = [mean, np.full(mean.shape, spread * INTENSITY_RANGE)]
    stds[:, present] = [std, STD_SPREAD * std]
    return IntensityPriors("normal", means, stds)


def priors_for(cfg: SynthConfig, image: np.ndarray | None, classes: np.ndarray,
               tissue_of_class: np.ndarray) -> IntensityPriors | None:
    """The priors ``cfg.priors`` asks for (None: lab2im's uniform ones, as ``draw_parameters`` has them)."""
    if cfg.priors == "uniform":
        return None
    if cfg.priors == "t1":
        return t1_priors(tissue_of_class)
    if image is None:
        raise ValueError("synth.priors: subject needs the subject's image")
    return subject_priors(image, classes, len(tissue_of_class), cfg.subject_prior_spread)
