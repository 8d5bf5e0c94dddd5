"""dipy's HMRF-EM tissue classifier: the hidden-Markov-random-field EM algorithm FSL FAST implements."""

from __future__ import annotations

import numpy as np

from pipeline.config import SegmentConfig
from pipeline.labels import classes_to_tissues
from pipeline.tools.base import Tool
from pipeline.tools.segmentation import Segmenter, SegmentJob

TOOL = Tool("hmrf", "pip install dipy", modules=("dipy",))


def segment(job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    """Tissue labels {0,1 GM,2 WM,3 CSF} of a skull-stripped T1 inside ``job.mask``."""
    from dipy.segment.tissue import TissueClassifierHMRF

    image = job.image.get_fdata(dtype=np.float64)
    hmrf = config.hmrf
    classifier = TissueClassifierHMRF(verbose=False)
    _, classes, _ = classifier.classify(
        image, nclasses=3, beta=hmrf.beta, tolerance=hmrf.tolerance, max_iter=hmrf.max_iterations
    )
    return classes_to_tissues(classes, image, job.mask)


SEGMENTER = Segmenter(TOOL, segment)
