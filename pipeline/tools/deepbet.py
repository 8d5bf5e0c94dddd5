"""deepbet (Fisch et al. 2024): skull stripping with the weights its PyPI package ships."""

from __future__ import annotations

from functools import cache

import nibabel as nib
import numpy as np

from pipeline.core.config import StripConfig
from pipeline.tools.stripping import PackagedTool, Stripper, always

# deepbet installs its weights in a top-level data/ folder beside the package.
TOOL = PackagedTool("deepbet", "pip install deepbet", modules=("deepbet",),
                   package_files=("../data/models/model.pt", "../data/models/bbox_model.pt"))


@cache
def _extractor(use_gpu: bool):
    from deepbet.bet import BrainExtraction

    return BrainExtraction(no_gpu=not use_gpu)


def strip(image: nib.Nifti1Image, config: StripConfig, device: str) -> np.ndarray:
    """Brain mask (bool) on ``image``'s grid. deepbet works in RAS and returns the input orientation."""
    settings = config.deepbet
    extractor = _extractor(device == "cuda")
    _, mask, _ = extractor.run(image, threshold=settings.threshold, n_dilate=settings.n_dilate)
    return np.asarray(mask.dataobj) > 0


STRIPPER = Stripper(always(TOOL), strip)
