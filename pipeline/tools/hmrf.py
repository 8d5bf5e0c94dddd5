"""dipy's HMRF-EM tissue classifier: the hidden-Markov-random-field EM algorithm FSL FAST implements."""

from __future__ import annotations

import numpy as np

from pipeline.config import HmrfConfig
from pipeline.labels import CSF, GM, WM
from pipeline.tools.base import Tool

TOOL = Tool("hmrf", "pip install dipy", modules=("dipy",))


def segment(brain: np.ndarray, mask: np.ndarray, config: HmrfConfig) -> np.ndarray:
    """Tissue labels {0,1 GM,2 WM,3 CSF} of a skull-stripped T1 inside ``mask``."""
    from dipy.segment.tissue import TissueClassifierHMRF

    image = np.where(mask, brain, 0).astype(np.float64)
    classifier = TissueClassifierHMRF(verbose=False)
    _, classes, _ = classifier.classify(
        image, nclasses=3, beta=config.beta, tolerance=config.tolerance, max_iter=config.max_iterations
    )
    return classes_to_tissues(classes, image, mask)


def classes_to_tissues(classes: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Name three intensity classes by their mean T1 inside the mask: CSF < GM < WM.

    Never trusts a tool's class numbering: the order of mean intensities decides.
    """
    ids = [c for c in np.unique(classes[mask]) if c != 0]
    if len(ids) != 3:
        raise ValueError(f"expected 3 tissue classes inside the brain mask, found {len(ids)}")
    by_brightness = sorted(ids, key=lambda c: float(image[mask & (classes == c)].mean()))
    tissues = np.zeros(classes.shape, dtype=np.uint8)
    for class_id, tissue in zip(by_brightness, (CSF, GM, WM), strict=True):
        tissues[mask & (classes == class_id)] = tissue
    return tissues
