"""FSL FAST: three-class HMRF-EM tissue segmentation with bias-field correction (not on PyPI)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.config import FastConfig, SegmentConfig
from pipeline.core.labels import classes_to_tissues
from pipeline.imaging.grids import labels_on_grid
from pipeline.tools.base import Tool, run_command
from pipeline.tools.segmentation import Segmenter, SegmentJob, write_input

TOOL = Tool("fast", "install FSL (https://fsl.fmrib.ox.ac.uk/fsl/docs/#/install) and set FSLDIR",
            executables=("fast",), search_dirs_env=("FSLDIR",))


def command(executable: str, source: Path, base: Path, config: FastConfig) -> list[str]:
    args = [executable, "-t", "1", "-n", "3", "-H", str(config.mrf_beta), "-I", str(config.iterations)]
    if not config.bias_correction:
        args.append("-N")
    return args + ["-o", str(base), str(source)]


def segment(job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    source = write_input(job)
    base = job.workdir / "fast"
    # FSLOUTPUTTYPE picks the output format; pin it so BASE_seg.nii.gz is what we read.
    env = {"FSLOUTPUTTYPE": "NIFTI_GZ"}
    run_command(command(str(TOOL.find_executable("fast")), source, base, config.fast), "fast", env=env)
    classes = labels_on_grid(nib.load(f"{base}_seg.nii.gz"), job.image)
    # FAST numbers its classes by its own initialisation: name them by mean intensity instead.
    return classes_to_tissues(classes, job.image.get_fdata(dtype=np.float32), job.mask)


SEGMENTER = Segmenter(TOOL, segment)
