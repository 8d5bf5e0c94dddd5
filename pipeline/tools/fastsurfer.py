"""FastSurfer (Henschel et al. 2020): FastSurferCNN whole-brain segmentation, ``--seg_only``."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.config import SegmentConfig
from pipeline.imaging.grids import labels_on_grid
from pipeline.runtime.devices import torch_device
from pipeline.tools.base import Tool, run_command
from pipeline.tools.segmentation import Segmenter, SegmentJob, write_input

TOOL = Tool("fastsurfer", "install FastSurfer (https://github.com/Deep-MI/FastSurfer) and put the folder "
            "holding run_fastsurfer.sh on PATH", executables=("run_fastsurfer.sh",))
SUBJECT = "subject"  # FastSurfer's subject id inside our scratch folder
OUTPUT = Path("mri", "aparc.DKTatlas+aseg.deep.mgz")


def command(executable: str, source: Path, subjects_dir: Path, device: str, threads: int) -> list[str]:
    return [executable, "--t1", str(source), "--sid", SUBJECT, "--sd", str(subjects_dir), "--seg_only",
            "--device", device, "--threads", str(threads)]


def segment(job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    source = write_input(job)
    subjects_dir = job.workdir / "fastsurfer"
    device = torch_device(config.fastsurfer.device)
    executable = str(TOOL.find_executable("run_fastsurfer.sh"))
    run_command(command(executable, source, subjects_dir, device, job.threads), "fastsurfer")
    # FastSurfer conforms to 1 mm (LIA); its cortex comes as DKT parcels (1000s/2000s, GM in the table).
    return labels_on_grid(nib.load(subjects_dir / SUBJECT / OUTPUT), job.image)


SEGMENTER = Segmenter(TOOL, segment, anatomical=True)
