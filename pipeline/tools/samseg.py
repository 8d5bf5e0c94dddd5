"""SAMSEG (Puonti et al. 2016): atlas-based Bayesian whole-brain segmentation, from its PyPI package.

Run as ``python -m samseg.cli.run_samseg`` (the ``run_samseg`` entry point) with the interpreter
the pipeline runs in, so it is found whether or not the virtualenv's bin folder is on PATH.
"""

from __future__ import annotations

import re
import sys

import nibabel as nib
import numpy as np

from pipeline.core.config import SegmentConfig
from pipeline.core.io import write_json
from pipeline.imaging.grids import labels_on_grid
from pipeline.tools.base import Tool, run_command
from pipeline.tools.segmentation import Segmenter, SegmentJob, write_input

TOOL = Tool("samseg", "pip install samseg", modules=("samseg",))
PROGRESS = re.compile(r"Read mesh collection")  # a line per fitting phase in the log; the rest at DEBUG

# SAMSEG fits its atlas mesh at 2 mm and then at 1 mm. Giving one level keeps the first (2 mm,
# atlas_level1) and drops the second: run_samseg's --options merges a shorter list level by level.
FAST_OPTIONS = {
    "optimizationOptions": {"multiResolutionSpecification": [{"targetDownsampledVoxelSpacing": 2.0}]}
}


def segment(job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    source = write_input(job)
    out = job.workdir / "samseg"
    args = [sys.executable, "-m", "samseg.cli.run_samseg", "-i", source, "-o", out, "--threads", job.threads]
    if config.samseg.fast:
        options = job.workdir / "samseg_fast.json"
        write_json(FAST_OPTIONS, options)
        args += ["--options", options]
    run_command(args, "samseg", progress=PROGRESS)
    return labels_on_grid(nib.load(out / "seg.mgz"), job.image)


SEGMENTER = Segmenter(TOOL, segment, anatomical=True)
