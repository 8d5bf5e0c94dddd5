"""Stage 4 — segment: tissue labels {0 background, 1 GM, 2 WM, 3 CSF} per segmenter x stripper.

Every tool's own labels are remapped to the one scheme in ``pipeline.labels``.
Per subject: ``sub-X_dseg.nii.gz`` on the stripped image's grid; per set: ``volumes.tsv``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import luigi
import numpy as np

from pipeline.config import Config, SegmentConfig
from pipeline.io import load_nifti, save_nifti, write_tsv
from pipeline.labels import TISSUES
from pipeline.stages.acquire import Acquire, read_participants, subject_file
from pipeline.stages.base import Stage
from pipeline.stages.strip import Strip
from pipeline.tools import SEGMENTERS, hmrf

log = logging.getLogger("pipeline")


def tissue_labels(method: str, brain: np.ndarray, mask: np.ndarray, config: SegmentConfig) -> np.ndarray:
    SEGMENTERS[method].require()
    if method == "hmrf":
        return hmrf.segment(brain, mask, config.hmrf)
    raise NotImplementedError(method)


def tissue_volumes(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    volumes = {f"{name}_ml": float((labels == tissue).sum() * voxel_ml) for tissue, name in TISSUES.items()}
    brain = sum(volumes.values())
    fractions = {f"{name}_fraction": volumes[f"{name}_ml"] / brain if brain else 0.0 for name in TISSUES.values()}
    return volumes | fractions


class Segment(Stage):
    name = "segment"
    segmenter = luigi.Parameter()
    stripper = luigi.Parameter()
    matrix = {"segmenter": "segment.methods", "stripper": "strip.methods"}
    param_keys = ("segment.{segmenter}",)
    out_template = "data/segmented/{segmenter}-{stripper}"

    def requires(self) -> list[Stage]:
        return [Strip(stripper=self.stripper), Acquire()]

    def build(self, out: Path, config: Config) -> None:
        stripped = self.input_dir(0)
        participants = read_participants(self.input_dir(1))
        rows = []
        for number, participant in enumerate(participants, 1):
            subject = participant.subject
            log.info("segment [%d/%d] sub-%s with %s on %s", number, len(participants), subject,
                     self.segmenter, self.stripper)
            brain_image = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
            mask = np.asarray(load_nifti(subject_file(stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
            brain = brain_image.get_fdata(dtype=np.float32)
            labels = tissue_labels(self.segmenter, brain, mask, config.segment)
            save_nifti(labels.astype(np.uint8), brain_image.affine, subject_file(out, subject, "dseg"))
            voxel_ml = float(np.prod(brain_image.header.get_zooms()[:3])) / 1000.0
            rows.append({"participant_id": f"sub-{subject}", **tissue_volumes(labels, voxel_ml)})
        write_tsv(rows, out / "volumes.tsv")
