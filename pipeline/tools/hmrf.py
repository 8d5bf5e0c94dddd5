"""dipy's HMRF-EM tissue classifier: the hidden-Markov-random-field EM algorithm FSL FAST implements."""

from __future__ import annotations

import functools

import numpy as np

from pipeline.core.config import SegmentConfig
from pipeline.core.labels import classes_to_tissues
from pipeline.tools.base import Tool
from pipeline.tools.segmentation import Segmenter, SegmentJob

TOOL = Tool("hmrf", "pip install dipy", modules=("dipy",))


def segment(job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    """Tissue labels {0,1 GM,2 WM,3 CSF} of a skull-stripped T1 inside ``job.mask``."""
    from dipy.segment import tissue
    from dipy.segment.tissue import TissueClassifierHMRF

    image = job.image.get_fdata(dtype=np.float64)
    hmrf = config.hmrf
    classifier = TissueClassifierHMRF(verbose=False)
    # dipy fills zero voxels with noise from a fresh, unseeded generator (dipy.sims add_noise): hand it a
    # seeded one for the call, so the same image always gives the same labels.
    unseeded = tissue.add_noise
    tissue.add_noise = functools.partial(unseeded, rng=np.random.default_rng(0))
    try:
        _, classes, _ = classifier.classify(
            image, nclasses=3, beta=hmrf.beta, tolerance=hmrf.tolerance, max_iter=hmrf.max_iterations
        )
    finally:
        tissue.add_noise = unseeded
    return classes_to_tissues(classes, image, job.mask)


SEGMENTER = Segmenter(TOOL, segment)
