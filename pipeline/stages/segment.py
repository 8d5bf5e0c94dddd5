"""Stage 4 — segment: tissue labels {0 background, 1 GM, 2 WM, 3 CSF} per segmenter x stripper.

Every tool's own labels are remapped to the one scheme in ``pipeline.labels``.
Per subject: ``sub-X_dseg.nii.gz`` on the stripped image's grid and ``qc/sub-X_dseg.png`` (the labels
over the image in three planes); per set: ``volumes.tsv``. The ``segment_qc`` stage decides who is used.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from pathlib import Path

import numpy as np

from pipeline.bids import read_cases, subject_file, write_derivative_description
from pipeline.config import Config, SegmentConfig
from pipeline.io import load_nifti, save_nifti, write_tsv
from pipeline.labels import LABEL_NAMES, tissue_volumes
from pipeline.overlays import three_planes
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import ComboStage, Stage
from pipeline.stages.strip import Strip
from pipeline.subjects import for_each_subject, not_failed, read_failures, write_failures
from pipeline.tools.registry import SEGMENTERS
from pipeline.tools.segmentation import SegmentJob, tool_image

log = logging.getLogger("pipeline")

def tissue_labels(method: str, job: SegmentJob, config: SegmentConfig) -> np.ndarray:
    segmenter = SEGMENTERS[method]
    segmenter.tool.require()
    labels = segmenter.run(job, config)
    # The stripper decides what is brain: labels a tool puts outside its mask are dropped.
    return np.where(job.mask, labels, 0).astype(np.uint8)


def segment_subject(subject: str, threads: int, method: str, stripped: Path, out: Path,
                    config: SegmentConfig) -> dict:
    """The subject's tissue labels and overlay; returns its ``volumes.tsv`` row."""
    image = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
    mask = np.asarray(load_nifti(subject_file(stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
    with tempfile.TemporaryDirectory(prefix=f"segment-{method}-") as scratch:
        labels = tissue_labels(method, SegmentJob(tool_image(image, mask), mask, Path(scratch), threads), config)
    save_nifti(labels, image.affine, subject_file(out, subject, "dseg"))
    three_planes(image.get_fdata(dtype=np.float32), [(method, labels)], out / "qc" / f"sub-{subject}_dseg.png",
                 f"sub-{subject}  {method}-{stripped.name}")
    voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
    return {"participant_id": f"sub-{subject}", **tissue_volumes(labels, voxel_ml)}


class Segment(ComboStage):
    name = "segment"
    param_keys = ("keep_going", "segment.{segmenter}")
    out_template = "data/segmented/{segmenter}-{stripper}"
    runs_tool = "segmenter"

    def requires(self) -> dict[str, Stage]:
        return {"stripped": Strip(stripper=self.stripper), "raw": Acquire()}

    def build(self, out: Path, config: Config) -> None:
        stripped = self.input_dir("stripped")
        SEGMENTERS[self.segmenter].tool.require()  # a missing tool stops before any work
        subjects = not_failed([case.label for case in read_cases(self.input_dir("raw"))], stripped)
        work = functools.partial(segment_subject, method=self.segmenter, stripped=stripped, out=out,
                                 config=config.segment)
        files = {subject: subject_file(stripped, subject, "desc-brain_T1w") for subject in subjects}
        rows, failures = for_each_subject(f"segment {self.segmenter}-{self.stripper}", subjects, work, out,
                                          config.workers, config.keep_going, files)
        write_tsv(list(rows.values()), out / "volumes.tsv")
        write_failures(read_failures(stripped) + failures, out)
        write_tsv([{"index": index, "name": name} for index, name in LABEL_NAMES.items()], out / "dseg.tsv")
        write_derivative_description(out, f"synthseg-pipeline tissues ({self.segmenter}-{self.stripper})",
                                     f"segment: {self.segmenter} on {self.stripper} brains, as GM/WM/CSF (dseg.tsv)",
                                     Parameters=getattr(config.segment, self.segmenter).model_dump(mode="json"))
