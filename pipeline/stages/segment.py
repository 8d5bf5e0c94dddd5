"""Stage 4 — segment: tissue labels {0 background, 1 GM, 2 WM, 3 CSF} per segmenter x stripper.

Every tool's own labels are remapped to the one scheme in ``pipeline.core.labels``.
Per subject: ``sub-X_dseg.nii.gz`` on the stripped image's grid, for an atlas-based segmenter also the structures
it named (``sub-X_desc-structures_dseg.nii.gz``, FreeSurfer labels), and ``qc/sub-X_dseg.png`` (the labels
over the image in three planes); per set: ``volumes.tsv``; the seconds each head took, in
``metrics/segment-<combo>.json`` (not in the folder: its bytes must not change from run to run). The
``segment_qc`` stage decides who is used. The ``consensus`` segmenter has nothing of its own to segment: its
labels are fused from the others' in segment_qc (``pipeline/tools/consensus.py``), and here it only says so.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.bids import STRUCTURES, read_cases, subject_file, write_derivative_description, write_dseg_table
from pipeline.core.config import CONSENSUS, Config, SegmentConfig
from pipeline.core.io import load_nifti, save_nifti, write_json, write_tsv
from pipeline.core.labels import remap, tissue_volumes, voxel_volume_ml
from pipeline.imaging.overlays import three_planes
from pipeline.runtime.executors import job_threads
from pipeline.runtime.subjects import for_each_subject, not_failed, plan_budget, read_failures, write_failures
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import ComboStage, Stage
from pipeline.stages.strip import Strip
from pipeline.tools.registry import SEGMENTERS
from pipeline.tools.segmentation import SegmentJob, cost, tool_image

log = logging.getLogger("pipeline")


@dataclass(frozen=True, eq=False)
class Segmentation:
    tissues: np.ndarray  # uint8 {0 background, 1 GM, 2 WM, 3 CSF}
    structures: np.ndarray | None  # int32 FreeSurfer labels: an atlas-based segmenter's own (None: an intensity one's)


def segmentation(method: str, job: SegmentJob, config: SegmentConfig) -> Segmentation:
    """The method's labels of the job's brain: its tissues, and an atlas segmenter's structures as it named them."""
    segmenter = SEGMENTERS[method]
    segmenter.tool.require()
    labels = segmenter.run(job, config)
    tissues = remap(labels) if segmenter.anatomical else labels
    # The stripper decides what is brain: labels a tool puts outside its mask are dropped.
    structures = np.where(job.mask, labels, 0).astype(np.int32) if segmenter.anatomical else None
    return Segmentation(np.where(job.mask, tissues, 0).astype(np.uint8), structures)


def segment_subject(subject: str, threads: int, method: str, stripped: Path, out: Path,
                    config: SegmentConfig) -> dict:
    """The subject's tissue labels and overlay; returns its ``volumes.tsv`` row and the tool's ``seconds``."""
    image = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
    mask = np.asarray(load_nifti(subject_file(stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"segment-{method}-") as scratch:
        result = segmentation(method, SegmentJob(tool_image(image, mask), mask, Path(scratch), threads), config)
    seconds = time.monotonic() - start
    labels = result.tissues
    save_nifti(labels, image.affine, subject_file(out, subject, "dseg"))
    if result.structures is not None:
        save_nifti(result.structures, image.affine, subject_file(out, subject, STRUCTURES))
    three_planes(image.get_fdata(dtype=np.float32), [(method, labels)], out / "qc" / f"sub-{subject}_dseg.png",
                 f"sub-{subject}  {method}-{stripped.name}")
    log.info("segment sub-%s with %s: %.1f s", subject, method, seconds)
    return {"participant_id": f"sub-{subject}", **tissue_volumes(labels, voxel_volume_ml(image.affine)),
            "seconds": round(seconds, 1)}


class Segment(ComboStage):
    name = "segment"
    param_keys = ("keep_going", "segment.{segmenter}")
    out_template = "data/segmented/{segmenter}-{stripper}"
    metrics_template = "metrics/segment-{segmenter}-{stripper}.json"
    runs_tool = "segmenter"

    def requires(self) -> dict[str, Stage]:
        return {"stripped": Strip(stripper=self.stripper), "raw": Acquire()}

    def build(self, out: Path, config: Config) -> None:
        if self.segmenter == CONSENSUS:
            self.describe_consensus(out, config)
            return
        stripped = self.input_dir("stripped")
        SEGMENTERS[self.segmenter].tool.require()  # a missing tool stops before any work
        subjects = not_failed([case.label for case in read_cases(self.input_dir("raw"))], stripped)
        work = functools.partial(segment_subject, method=self.segmenter, stripped=stripped, out=out,
                                 config=config.segment)
        files = {subject: subject_file(stripped, subject, "desc-brain_T1w") for subject in subjects}
        rows, failures = for_each_subject(f"segment {self.segmenter}-{self.stripper}", subjects, work, out,
                                          config.workers, config.keep_going, files, config.executor)
        write_tsv([{key: value for key, value in row.items() if key != "seconds"} for row in rows.values()],
                  out / "volumes.tsv")
        write_failures(read_failures(stripped) + failures, out)
        write_dseg_table(out)
        write_derivative_description(out, f"synthseg-pipeline tissues ({self.segmenter}-{self.stripper})",
                                     f"segment: {self.segmenter} on {self.stripper} brains, as GM/WM/CSF (dseg.tsv)"
                                     + (f"; {STRUCTURES}: the structures it named, FreeSurfer lookup-table numbers"
                                        if SEGMENTERS[self.segmenter].anatomical else ""),
                                     Parameters=getattr(config.segment, self.segmenter).model_dump(mode="json"))
        threads = job_threads(config.executor, plan_budget(config.workers, len(subjects)).threads)
        write_json(cost({row["participant_id"]: row["seconds"] for row in rows.values()}, threads),
                   self.metrics_path())

    def describe_consensus(self, out: Path, config: Config) -> None:
        write_derivative_description(out, f"synthseg-pipeline tissues (consensus-{self.stripper})",
                                     f"segment: the consensus of the other segmenters on {self.stripper} brains, "
                                     f"fused in data/qc/consensus-{self.stripper} (segment_qc reads every segmenter)",
                                     Parameters=config.segment.consensus.model_dump(mode="json"))
        write_json(cost({}, 1), self.metrics_path())
