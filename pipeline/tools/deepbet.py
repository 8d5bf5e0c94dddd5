"""deepbet (Fisch et al. 2024): skull stripping with the weights its PyPI package ships."""

from __future__ import annotations

from functools import cache

import nibabel as nib
import numpy as np

from pipeline.config import DeepbetConfig
from pipeline.tools.base import Tool

TOOL = Tool("deepbet", "pip install deepbet", modules=("deepbet",))


@cache
def _extractor(use_gpu: bool):
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=not use_gpu)


def strip(image: nib.Nifti1Image, config: DeepbetConfig, device: str) -> np.ndarray:
    """Brain mask (bool) on ``image``'s grid. deepbet works in RAS and returns the input orientation."""
    _, mask, _ = _extractor(device == "cuda").run(image, threshold=config.threshold, n_dilate=config.n_dilate)
    return np.asarray(mask.dataobj) > 0
