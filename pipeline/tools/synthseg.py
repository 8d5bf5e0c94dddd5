"""FreeSurfer's mri_synthseg (Billot et al. 2023): contrast-agnostic CNN segmentation, output at 1 mm."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.config import SegmentConfig, SynthSegConfig
from pipeline.imaging.grids import labels_on_grid
from pipeline.tools.base import Tool, run_command
from pipeline.tools.freesurfer import FREESURFER_HINT
from pipeline.tools.segmentation import Segmenter, SegmentJob, write_input

TOOL = Tool("synthseg", FREESURFER_HINT, executables=("mri_synthseg",), search_dirs_env=("FREESURFER_HOME",))


def command(executable: str, source: Path, target: Path, threads: int, config: SynthSegConfig) -> list[str]:
    args = [executable, "--i", str(source), "--o", str(target)]
    if config.robust:
        args.append("--robust")
    args += ["--threads", str(threads)]
    if config.cpu:
        args.append("--cpu")
    return args


def segment(job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    source = write_input(job)
    target = job.workdir / "synthseg.mgz"
    executable = str(TOOL.find_executable("mri_synthseg"))
    run_command(command(executable, source, target, job.threads, config.synthseg), "mri_synthseg")
    # SynthSeg segments at 1 mm whatever the input: bring its labels back to the stripped image's grid.
    return labels_on_grid(nib.load(target), job.image)


SEGMENTER = Segmenter(TOOL, segment, anatomical=True)
