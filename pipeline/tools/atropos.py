"""ANTs Atropos (Avants et al. 2011, antspyx): a Gaussian finite-mixture model of the tissues with a Markov random
field prior, fitted by EM: the tissue classifier of ANTs' cortical-thickness pipeline, and the closest installable
peer of FSL FAST (which keeps its own wrapper, ``fast``).

Its settings are those of ANTs' own brain-tissue scripts (antsAtroposN4.sh, antsCorticalThickness.sh) without
priors: k-means initialization of three classes, a Gaussian likelihood, the Socrates posterior, MRF smoothing 0.1 on
a 1x1x1 neighbourhood, 5 iterations (``segment.atropos``). ANTs alternates Atropos with N4; here the harmonize stage
has already run N4, so Atropos runs alone. A fixed random seed makes the same image give the same labels.
"""

from __future__ import annotations

import tempfile

import numpy as np

from pipeline.core.config import SegmentConfig
from pipeline.core.labels import classes_to_tissues
from pipeline.tools.base import Tool
from pipeline.tools.segmentation import Segmenter, SegmentJob

TOOL = Tool("atropos", "pip install antspyx", modules=("ants",))
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # nibabel's world axes to ITK's


def to_ants(data: np.ndarray, affine: np.ndarray):
    """An ANTsImage of ``data`` on the grid ``affine`` describes (nibabel's RAS affine as ITK's LPS geometry)."""
    import ants

    linear = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           origin=tuple(RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)[:3, 3]),
                           spacing=tuple(spacing), direction=RAS_TO_LPS @ (linear / spacing))


def segment(job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    """Tissue labels {0,1 GM,2 WM,3 CSF} of a skull-stripped T1 inside ``job.mask``."""
    import ants

    settings = config.atropos
    image = job.image.get_fdata(dtype=np.float32)
    # antspyx writes Atropos' posteriors under tempfile's folder and leaves them: point it at the job's scratch
    default, tempfile.tempdir = tempfile.tempdir, str(job.workdir)
    try:
        result = ants.atropos(a=to_ants(image, job.image.affine), x=to_ants(job.mask, job.image.affine),
                              i=f"{settings.initialization}[3]", m=f"[{settings.mrf_smoothing},1x1x1]",
                              c=f"[{settings.iterations},0]", k="Gaussian", p="Socrates[1]", r=0)
    finally:
        tempfile.tempdir = default
    classes = np.rint(result["segmentation"].numpy()).astype(np.int64)
    return classes_to_tissues(classes, image, job.mask)  # by mean intensity, never by the tool's numbering


SEGMENTER = Segmenter(TOOL, segment)
