"""Stage 2 — harmonize: bring every head to one grid and intensity scale.

``builtin``: reorient to RAS, resample to isotropic voxels, N4 bias-field correction,
robust percentile normalization to [0, 1]. ``synthsr``: FreeSurfer's mri_synthsr.
What was done is recorded in a JSON sidecar beside each image, with the subject's reference axial level
(``ReferenceLevelMM``, ``pipeline.imaging.slices``): found here, before any stripper, so that every strategy's
slab scores, panels and reference-level samples are at the same anatomy.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from pipeline.core.bids import read_cases, sidecar, subject_file, write_derivative_description
from pipeline.core.config import Config, HarmonizeConfig
from pipeline.core.io import save_nifti, write_json
from pipeline.imaging.preprocess import harmonize
from pipeline.runtime.subjects import for_each_subject, read_failures, write_failures
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import Stage

log = logging.getLogger("pipeline")


def harmonize_subject(subject: str, threads: int, raw: Path, out: Path, config: HarmonizeConfig) -> None:
    target = subject_file(out, subject, "desc-harmonized_T1w")
    head = harmonize(subject_file(raw, subject, "T1w"), subject, config, target, threads)
    save_nifti(head.image.get_fdata(dtype=np.float32), head.image.affine, target)
    write_json(head.record, sidecar(target))


class Harmonize(Stage):
    name = "harmonize"
    param_keys = ("keep_going", "harmonize")
    out_template = "data/harmonized"

    def requires(self) -> dict[str, Stage]:
        return {"raw": Acquire()}

    def build(self, out: Path, config: Config) -> None:
        raw = self.input_dir("raw")
        subjects = [case.label for case in read_cases(raw)]
        log.info("harmonize: %s", config.harmonize.method)
        work = functools.partial(harmonize_subject, raw=raw, out=out, config=config.harmonize)
        _, failures = for_each_subject("harmonize", subjects, work, out, config.workers, config.keep_going,
                                       {subject: subject_file(raw, subject, "T1w") for subject in subjects},
                                       config.executor)
        write_failures(read_failures(raw) + failures, out)
        write_derivative_description(out, "synthseg-pipeline harmonized T1w", f"harmonize: {config.harmonize.method}",
                                     Parameters=config.harmonize.model_dump(mode="json"))
