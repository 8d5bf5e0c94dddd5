"""Stage 4b — segment_qc: check each subject's segmentation and decide whether synthesis may use it.

Per subject, for one segmenter on one stripper: tissue volumes and shares, mean T1 per tissue (a
T1 must read CSF < GM < WM), the share of the brain mask left unlabelled and, when several
segmenters are configured, Dice per tissue with each of the others on the same stripped image.
A subject outside the ``segment.qc`` ranges is excluded, with the reason, unless it is listed in
``segment.qc.force_include``. Writes ``data/qc/<segmenter>-<stripper>/qc.tsv`` and a metrics JSON.

This is a stage of its own, not part of ``segment``: agreement needs every segmenter's output. For the same
reason the ``consensus`` segmenter's labels are made here: fused, per subject, from the other segmenters' labels
(``pipeline/tools/consensus.py``), written as a tissue dataset of their own in ``data/qc/consensus-<stripper>``
and then checked like any segmenter's. ``metrics/qc-<combo>.json`` also gives what the segmenter cost per head.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path

import luigi
import nibabel as nib
import numpy as np

from pipeline.core.bids import (
    STRUCTURES,
    read_cases,
    subject_file,
    subject_of,
    write_derivative_description,
    write_dseg_table,
)
from pipeline.core.config import ANATOMICAL, CONSENSUS, Config, SegmentQCConfig, load_config
from pipeline.core.io import InputError, load_nifti, save_nifti, write_json, write_tsv
from pipeline.core.labels import CSF, GM, TISSUES, WM, tissue_volumes, voxel_volume_ml
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.imaging.overlays import three_planes
from pipeline.runtime.subjects import for_each_subject, read_failures, write_failures
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import ComboStage, Gathered, Stage
from pipeline.stages.segment import Segment
from pipeline.stages.strip import Strip
from pipeline.tools.consensus import fuse
from pipeline.tools.segmentation import cost

log = logging.getLogger("pipeline")

PASSED = "passed"


def read_labels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A dseg as is: unlike ``load_nifti`` it accepts an empty one (QC is there to catch that)."""
    labels = np.asarray(nib.load(path).dataobj)
    if labels.shape != shape:
        raise InputError(f"{path}: labels of shape {labels.shape} are not on the stripped grid {shape}")
    return labels


def mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def measures(labels: np.ndarray, brain: np.ndarray, mask: np.ndarray, voxel_ml: float) -> dict[str, float]:
    means = {f"{name}_mean_t1": mean_or_nan(brain[labels == tissue]) for tissue, name in TISSUES.items()}
    unlabelled = float((mask & (labels == 0)).sum() / max(int(mask.sum()), 1))
    return tissue_volumes(labels, voxel_ml) | means | {"unlabelled_fraction": unlabelled}


def agreement(labels: np.ndarray, others: dict[str, np.ndarray]) -> dict[str, float]:
    return {f"dice_{method}_{tissue}": value
            for method, other in others.items() for tissue, value in dice_per_tissue(other, labels).items()}


def failures(row: dict, others: list[str], qc: SegmentQCConfig) -> list[str]:
    """Why a subject's measures are out of range; empty when they are all fine."""
    reasons = []
    for name, (low, high) in (("GM", qc.gm_fraction), ("WM", qc.wm_fraction), ("CSF", qc.csf_fraction)):
        share = row[f"{name}_fraction"]
        if not low <= share <= high:
            reasons.append(f"{name} fraction {share:.3f} outside [{low}, {high}]")
    means = [row[f"{TISSUES[tissue]}_mean_t1"] for tissue in (CSF, GM, WM)]
    if not means[0] < means[1] < means[2]:  # NaN (an empty tissue) fails too
        reasons.append("mean T1 not CSF < GM < WM (CSF {:.3f}, GM {:.3f}, WM {:.3f})".format(*means))
    if row["unlabelled_fraction"] > qc.max_unlabelled_fraction:
        reasons.append(f"{row['unlabelled_fraction']:.3f} of the brain mask unlabelled "
                       f"(max {qc.max_unlabelled_fraction})")
    for tissue in TISSUES.values() if others else ():
        scores = {method: row[f"dice_{method}_{tissue}"] for method in others}
        best = max(scores, key=lambda method: np.nan_to_num(scores[method]))
        if not scores[best] >= qc.min_dice:
            reasons.append(f"{tissue} Dice {scores[best]:.2f} with {best}, the best-agreeing other segmenter "
                           f"(min {qc.min_dice})")
    return reasons


def decide(participant_id: str, reasons: list[str], qc: SegmentQCConfig) -> dict[str, object]:
    """Included when no check failed, or when forced: by its case id or its subject's (all its sessions)."""
    if participant_id in qc.force_include or subject_of(participant_id) in qc.force_include:
        failed = "; ".join(reasons) if reasons else "nothing"
        return {"included": True, "reason": f"forced by segment.qc.force_include (failed: {failed})"}
    return {"included": not reasons, "reason": "; ".join(reasons) or PASSED}


def check_subject(subject: str, segmenter: str, stripped: Path, segmented: dict[str, Path],
                  qc: SegmentQCConfig) -> dict:
    """One qc.tsv row: ``segmenter``'s labels of ``subject`` measured, compared with the others', decided.

    Segmenters that failed on this subject (``keep_going``) are left out of the agreement check.
    """
    image = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
    mask = np.asarray(load_nifti(subject_file(stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
    files = {method: subject_file(folder, subject, "dseg") for method, folder in segmented.items()}
    labels = {method: read_labels(path, mask.shape) for method, path in files.items() if path.is_file()}
    own = labels.pop(segmenter)
    row = {"participant_id": f"sub-{subject}", "segmenter": segmenter}
    row |= measures(own, image.get_fdata(dtype=np.float32), mask, voxel_volume_ml(image.affine))
    row |= agreement(own, {method: other for method, other in labels.items() if method != CONSENSUS})
    row |= decide(row["participant_id"], failures(row, list(labels), qc), qc)
    if not row["included"] or row["reason"] != PASSED:
        log.warning("qc %s sub-%s: %s: %s", segmenter, subject,
                    "included" if row["included"] else "EXCLUDED", row["reason"])
    return row


def lost_subject(failure: dict, segmenter: str) -> dict:
    """The qc.tsv row of a subject lost in an earlier stage (``keep_going``): excluded, with where and why."""
    reason = f"failed in {failure['stage']}: {failure['reason']}"
    return {"participant_id": failure["participant_id"], "segmenter": segmenter, "included": False, "reason": reason}


def summary(rows: list[dict]) -> dict:
    return {
        "subjects": len(rows),
        "included": sum(bool(row["included"]) for row in rows),
        "excluded": {row["participant_id"]: row["reason"] for row in rows if not row["included"]},
        "forced": [row["participant_id"] for row in rows if row["reason"].startswith("forced")],
    }


class SegmentedSets(Gathered):
    """Every configured segmenter's labels on one stripper's images (what the agreement check reads),
    under ``data/segmented``."""

    stripper = luigi.Parameter()
    folders = (str(Path(Segment.out_template).parent),)

    def requires(self) -> list[Stage]:
        return [Segment(segmenter=method, stripper=self.stripper) for method in load_config().segment.methods]


def fuse_subject(subject: str, threads: int, stripped: Path, segmented: dict[str, Path], out: Path,
                 fusion: str) -> float:
    """The consensus of the segmenters' labels of one subject, written like a segmenter's (labels, picture);
    returns the seconds the fusion took (``threads``: for_each_subject's budget, numpy's own)."""
    image = load_nifti(subject_file(stripped, subject, "desc-brain_T1w"), subject)
    mask = np.asarray(load_nifti(subject_file(stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
    maps = [read_labels(subject_file(folder, subject, "dseg"), mask.shape) for folder in segmented.values()]
    structures = [read_labels(subject_file(folder, subject, STRUCTURES), mask.shape)
                  if fusion == "anatomy" and method in ANATOMICAL else None for method, folder in segmented.items()]
    start = time.monotonic()
    labels = np.where(mask, fuse(maps, fusion, structures=structures), 0).astype(np.uint8)
    seconds = time.monotonic() - start
    save_nifti(labels, image.affine, subject_file(out, subject, "dseg"))
    atlas = next((named for named in structures if named is not None), None)
    if atlas is not None:  # the first atlas segmenter's structures, for synthesis (synth.structure_classes)
        save_nifti(np.where(mask, atlas, 0).astype(np.int32), image.affine, subject_file(out, subject, STRUCTURES))
    three_planes(image.get_fdata(dtype=np.float32), [(f"consensus ({fusion})", labels)],
                 out / "qc" / f"sub-{subject}_dseg.png", f"sub-{subject}  consensus-{stripped.name}")
    return seconds


def check_structures(cases: list, atlases: dict[str, Path], lost: dict, stripper: str) -> None:
    """The anatomy consensus reads the structures the atlas segmenters left beside their labels: labels made before
    the segment stage kept them have none, and the consensus stops naming the files and what to re-run."""
    missing = [subject_file(folder, case.label, STRUCTURES) for method, folder in atlases.items() for case in cases
               if f"sub-{case.label}" not in lost and not subject_file(folder, case.label, STRUCTURES).is_file()]
    if missing:
        rerun = " ".join(f"segment@{method}-{stripper}" for method in atlases)
        raise InputError(f"consensus (anatomy): no structures beside {len(missing)} label map(s), e.g. {missing[0]}; "
                         f"they were made before the segment stage kept them: re-run them (dvc repro -f {rerun})")


def segmenter_cost(metrics: Path) -> dict:
    """What the segment stage measured of a segmenter (``metrics/segment-<combo>.json``), written beside the
    labels this stage depends on."""
    return json.loads(metrics.read_text()) if metrics.is_file() else {}


class SegmentQC(ComboStage):
    name = "segment_qc"
    param_keys = ("keep_going", "segment.methods", "segment.qc", "segment.consensus")
    out_template = "data/qc/{segmenter}-{stripper}"
    metrics_template = "metrics/qc-{segmenter}-{stripper}.json"

    @staticmethod
    def labels(segmenter: str, stripper: str) -> Stage:
        """The task whose output holds a combo's tissue labels: its segmenter's, or for the consensus, this
        stage's."""
        stage = SegmentQC if segmenter == CONSENSUS else Segment
        return stage(segmenter=segmenter, stripper=stripper)

    def requires(self) -> dict[str, luigi.Task]:
        return {"stripped": Strip(stripper=self.stripper), "raw": Acquire(),
                "segmented": SegmentedSets(stripper=self.stripper)}

    def build(self, out: Path, config: Config) -> None:
        methods = config.segment.methods
        if self.segmenter not in methods:
            raise InputError(f"segment_qc: segmenter {self.segmenter!r} is not in segment.methods {methods}")
        stripped, cases = self.input_dir("stripped"), read_cases(self.input_dir("raw"))
        segmented = {method: Path(Segment(segmenter=method, stripper=self.stripper).out_dir())
                     for method in methods}
        if self.segmenter == CONSENSUS:
            segmented[CONSENSUS] = out
            cost = self.fuse(cases, stripped, {method: segmented[method] for method in config.segment.fused()}, out,
                             config)
        else:
            cost = segmenter_cost(Segment(**self.combo()).metrics_path())
        lost = {row["participant_id"]: row for row in read_failures(segmented[self.segmenter])}
        rows = [lost_subject(lost[f"sub-{case.label}"], self.segmenter) if f"sub-{case.label}" in lost
                else check_subject(case.label, self.segmenter, stripped, segmented, config.segment.qc)
                for case in cases]
        rows += [lost_subject(row, self.segmenter) for row in lost.values() if row["stage"] == "acquire"]
        write_tsv(rows, out / "qc.tsv")
        write_json(summary(rows) | {"cost": cost}, self.metrics_path())
        log.info("qc %s on %s: %d of %d subjects included", self.segmenter, self.stripper,
                 sum(bool(row["included"]) for row in rows), len(rows))

    def fuse(self, cases: list, stripped: Path, fused: dict[str, Path], out: Path, config: Config) -> dict:
        """The consensus labels of every subject the fused segmenters all labelled; those lost by any of them
        are lost here too (``failures.tsv``). Returns the cost: the fusion's seconds per head, and the fused
        segmenters' own."""
        lost = {row["participant_id"]: row for folder in fused.values() for row in read_failures(folder)}
        if config.segment.consensus.fusion == "anatomy":
            check_structures(cases, {method: folder for method, folder in fused.items() if method in ANATOMICAL},
                             lost, self.stripper)
        work = functools.partial(fuse_subject, stripped=stripped, segmented=fused, out=out,
                                 fusion=config.segment.consensus.fusion)
        done, failed = for_each_subject("consensus", [case.label for case in cases if f"sub-{case.label}" not in lost],
                                        work, out, config.workers, config.keep_going)
        seconds = {f"sub-{subject}": round(spent, 2) for subject, spent in done.items()}
        write_failures([*lost.values(), *failed], out)
        write_dseg_table(out)
        write_derivative_description(out, f"synthseg-pipeline tissues (consensus-{self.stripper})",
                                     f"consensus ({config.segment.consensus.fusion}) of {', '.join(fused)} on "
                                     f"{self.stripper} brains, as GM/WM/CSF (dseg.tsv)",
                                     Parameters=config.segment.consensus.model_dump(mode="json"))
        costs = {method: segmenter_cost(Segment(segmenter=method, stripper=self.stripper).metrics_path())
                 for method in fused}
        return cost(seconds, 1) | {"fused": {method: spent.get("mean_seconds_per_head")
                                             for method, spent in costs.items()}}
