"""Stage 3 — strip: skull stripping (one branch per method), normalization and crop.

Per subject, under ``data/stripped/<method>/``: the brain mask and the masked,
intensity-normalized brain, both cropped to the mask's bounding box plus a margin.
The crop shifts the affine, so every image stays aligned with the original in world space.
QC: ``qc/sub-X_mask.png`` draws the mask's outline over the head in three planes; ``masks.tsv``
holds each mask's figures and whether they fall in ``strip.qc``'s plausible ranges
(``qc_pass``, ``qc_reason``). A flagged subject is kept and labelled: later stages read the verdict.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import luigi
import numpy as np

from pipeline.core.bids import read_cases, subject_file, write_derivative_description
from pipeline.core.config import Config, StripConfig, StripQcConfig
from pipeline.core.io import InputError, load_nifti, save_nifti, write_tsv
from pipeline.core.labels import voxel_volume_ml
from pipeline.imaging.overlays import mask_outline
from pipeline.imaging.preprocess import crop_to_brain
from pipeline.runtime.subjects import for_each_subject, not_failed, read_failures, write_failures
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import Stage
from pipeline.stages.harmonize import Harmonize
from pipeline.tools.registry import STRIPPERS, brain_mask, stripper_config

log = logging.getLogger("pipeline")



def mask_figures(mask: np.ndarray, voxel_ml: float) -> dict:
    """Volume, connected components and the share on the image's faces, of a mask on the full image."""
    from scipy import ndimage

    _, n_components = ndimage.label(mask)
    border = np.zeros_like(mask)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    return {
        "brain_ml": float(mask.sum() * voxel_ml),
        "components": int(n_components),
        "border_fraction": float((mask & border).sum() / max(mask.sum(), 1)),
    }


def qc_verdict(figures: dict, qc: StripQcConfig) -> dict:
    """``qc_pass`` and, when it fails, every reason (``qc_reason``)."""
    low, high = qc.brain_ml
    reasons = []
    if not low <= figures["brain_ml"] <= high:
        reasons.append(f"brain volume {figures['brain_ml']:.0f} mL outside [{low:g}, {high:g}]")
    if figures["components"] > qc.max_components:
        reasons.append(f"{figures['components']} connected components (at most {qc.max_components})")
    if figures["border_fraction"] > qc.max_border_fraction:
        reasons.append(f"{figures['border_fraction']:.1%} of the mask on the image border "
                       f"(at most {qc.max_border_fraction:.1%})")
    return {"qc_pass": not reasons, "qc_reason": "; ".join(reasons) or None}


def strip_subject(subject: str, threads: int, method: str, harmonized: Path, out: Path,
                  config: StripConfig) -> dict:
    """The subject's cropped brain and mask, a QC picture; returns its ``masks.tsv`` row."""
    image = load_nifti(subject_file(harmonized, subject, "desc-harmonized_T1w"), subject)
    start = time.monotonic()
    mask = brain_mask(method, image, config)
    seconds = time.monotonic() - start
    if not mask.any():
        raise InputError(f"subject {subject}: {method} found no brain")
    brain, cropped_mask = crop_to_brain(image, mask, config.crop_margin_vox)
    for image_out, suffix in ((brain, "desc-brain_T1w"), (cropped_mask, "desc-brain_mask")):
        save_nifti(np.asarray(image_out.dataobj), image_out.affine, subject_file(out, subject, suffix))
    mask_outline(image, mask, out / "qc" / f"sub-{subject}_mask.png", f"sub-{subject}: {method}")
    figures = mask_figures(mask, voxel_volume_ml(image.affine))
    verdict = qc_verdict(figures, config.qc)
    if not verdict["qc_pass"]:
        log.warning("strip sub-%s with %s: QC flags %s", subject, method, verdict["qc_reason"])
    # the time goes to the log, not masks.tsv: an output must be the same, byte for byte, on every run
    log.info("strip sub-%s with %s: %.1f s", subject, method, seconds)
    return {"participant_id": f"sub-{subject}", "method": method, **figures, **verdict}


class Strip(Stage):
    name = "strip"
    stripper = luigi.Parameter()
    matrix = {"stripper": "strip.methods"}
    param_keys = ("keep_going", "strip.{stripper}", "strip.crop_margin_vox", "strip.qc")
    out_template = "data/stripped/{stripper}"
    runs_tool = "stripper"

    def requires(self) -> dict[str, Stage]:
        return {"harmonized": Harmonize(), "raw": Acquire()}

    def build(self, out: Path, config: Config) -> None:
        harmonized = self.input_dir("harmonized")
        STRIPPERS[self.stripper].tool_for(config.strip).require()  # a missing tool stops before any work
        subjects = not_failed([case.label for case in read_cases(self.input_dir("raw"))], harmonized)
        work = functools.partial(strip_subject, method=self.stripper, harmonized=harmonized, out=out,
                                 config=config.strip)
        files = {subject: subject_file(harmonized, subject, "desc-harmonized_T1w") for subject in subjects}
        rows, failures = for_each_subject(f"strip {self.stripper}", subjects, work, out, config.workers,
                                          config.keep_going, files, config.executor)
        write_tsv(list(rows.values()), out / "masks.tsv")
        write_failures(read_failures(harmonized) + failures, out)
        write_derivative_description(out, f"synthseg-pipeline brains ({self.stripper})",
                                     f"strip: {self.stripper} brain mask, normalized and cropped brain",
                                     Parameters=stripper_config(config.strip, self.stripper).model_dump(mode="json"))
