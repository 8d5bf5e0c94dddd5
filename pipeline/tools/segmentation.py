"""What every segmenter is given and returns, and the file handling the command-line ones share.

A segmenter is a Tool plus a run function ``run(job, config) -> labels`` on the grid of ``job.image``: tissue labels
{0 background, 1 GM, 2 WM, 3 CSF} (``pipeline.core.labels``), or for an atlas-based segmenter (``anatomical``) the
anatomical structures it names, as FreeSurfer lookup-table labels, which the segment stage maps to tissues and keeps
beside them (``pipeline.core.bids.STRUCTURES``: the ``anatomy`` consensus reads them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.config import SegmentConfig
from pipeline.core.io import save_nifti
from pipeline.tools.base import Tool

# Tools read 0 as "outside the head", but the strip stage's percentile normalization sets the darkest
# 0.5 % of the brain (CSF) to exactly 0: lift the brain off zero so those voxels get a class too.
BRAIN_FLOOR = 0.01


@dataclass(frozen=True)
class SegmentJob:
    image: nib.Nifti1Image  # skull-stripped T1 (see ``tool_image``), 0 outside the mask
    mask: np.ndarray  # bool brain mask on the image's grid
    workdir: Path  # an empty scratch folder for the tool's files
    threads: int


@dataclass(frozen=True)
class Segmenter:
    tool: Tool
    run: Callable[[SegmentJob, SegmentConfig], np.ndarray]
    anatomical: bool = False  # ``run`` returns FreeSurfer structure labels, not tissues


def tool_image(image: nib.Nifti1Image, mask: np.ndarray) -> nib.Nifti1Image:
    data = image.get_fdata(dtype=np.float32)
    return nib.Nifti1Image(np.where(mask, data + BRAIN_FLOOR, 0).astype(np.float32), image.affine)


def write_input(job: SegmentJob, name: str = "t1.nii.gz") -> Path:
    path = job.workdir / name
    save_nifti(job.image.get_fdata(dtype=np.float32), job.image.affine, path)
    return path


def cost(seconds: dict[str, float], threads: int) -> dict:
    """What a segmenter costs: its seconds per head (participant_id -> wall seconds, ``threads`` threads each)."""
    return {"seconds_per_head": seconds, "mean_seconds_per_head": round(float(np.mean(list(seconds.values()))), 2)
            if seconds else None, "threads_per_head": threads}
