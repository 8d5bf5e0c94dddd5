"""Stage 5 — synthesize: lab2im-style synthetic slices from each set of tissue label maps.

For every subject, ``synth.n_train`` (train split) and ``synth.n_test`` (test split)
samples: a slice in one of ``synth.views``, at a plane ``synth.levels`` picks (default: any plane of the
brain; ``reference``: the subject's reference level +- ``band_mm``), of a randomly deformed, re-textured
volume, padded to ``synth.size`` squared, written as an image PNG and a label PNG {0,1,2,3}, by the
``synth.engine`` (builtin, or the optional lab2im package). Each sample's seed derives from (seed, subject,
index), so samples are reproducible and independent of which other subjects are in the study. A share
``synth.real_fraction`` of the training samples are real slices of the subject's stripped brain with the
teacher's labels instead, in the same views and levels (``pipeline.synth.real``); test samples stay synthetic.
``montage.png``: 16 training samples with tissue contours, for QC.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from pipeline.core.bids import STRUCTURES, Case, Folders, read_cases, subject_file
from pipeline.core.config import Config
from pipeline.core.io import read_tsv, save_png
from pipeline.runtime.devices import torch_device
from pipeline.runtime.subjects import for_each_subject, write_failures
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import ComboStage, Stage
from pipeline.stages.harmonize import Harmonize
from pipeline.stages.segment_qc import SegmentQC
from pipeline.stages.strip import Strip
from pipeline.synth.engine import check_engine
from pipeline.synth.montage import write_montage
from pipeline.synth.params import sample_seed
from pipeline.synth.real import RealHead, load_real_head, mixed_samples
from pipeline.synth.subject import SubjectModel, sample_name, subject_model

log = logging.getLogger("pipeline")

# Test samples use indices far from training ones so the two never share a seed.
TEST_INDEX_OFFSET = 1_000_000


def write_samples(out: Path, subject: str, model: SubjectModel, seeds: list[int], config: Config,
                  head: RealHead | None = None) -> None:
    images, label_slices = mixed_samples(model, seeds, config.synth, torch_device(), head)
    for number, (image, label_slice) in enumerate(zip(images, label_slices, strict=True)):
        case = sample_name(subject, number)
        save_png(image, out / "images" / f"{case}.png")
        save_png(label_slice, out / "labels" / f"{case}.png")


def write_subject(subject: str, threads: int, splits: dict[str, str], folders: Folders, out: Path,
                  config: Config) -> None:
    """The subject's training and/or test samples, as its split asks. One torch thread whatever the budget:
    the ops are small, and subjects run in parallel processes instead (``pipeline.runtime.subjects``)."""
    model = subject_model(subject, folders, config.synth)
    case = Case(subject, splits[subject])
    real = case.in_train and config.synth.real_fraction > 0
    head = load_real_head(subject, folders) if real else None
    for name, count, offset, wanted in (("train", config.synth.n_train, 0, case.in_train),
                                        ("test", config.synth.n_test, TEST_INDEX_OFFSET, case.in_test)):
        if wanted:
            log.info("synthesize sub-%s: %d %s samples", subject, count, name)
            seeds = [sample_seed(config.seed, subject, offset + index) for index in range(count)]
            write_samples(out / name, subject, model, seeds, config, head if name == "train" else None)


class Synthesize(ComboStage):
    name = "synthesize"
    param_keys = ("seed", "keep_going", "synth")
    out_template = "data/synthetic/{segmenter}-{stripper}"

    def requires(self) -> dict[str, Stage]:
        return {"segmented": SegmentQC.labels(**self.combo()), "raw": Acquire(), "qc": SegmentQC(**self.combo()),
                "stripped": Strip(stripper=self.stripper), "harmonized": Harmonize()}

    def build(self, out: Path, config: Config) -> None:
        folders = Folders(segmented=self.input_dir("segmented"), stripped=self.input_dir("stripped"),
                          harmonized=self.input_dir("harmonized"))
        decisions = read_decisions(self.input_dir("qc") / "qc.tsv")
        check_engine(config.synth)  # a missing optional engine stops before any work
        splits = {}
        for case in read_cases(self.input_dir("raw")):
            included, reason = decisions[f"sub-{case.label}"]
            if included:
                splits[case.label] = case.split
            else:
                log.warning("synthesize: sub-%s skipped, excluded by segmentation QC: %s", case.label, reason)
        if config.synth.structure_classes and not any(subject_file(folders.segmented, subject, STRUCTURES).is_file()
                                                      for subject in splits):
            log.warning("synthesize %s-%s: synth.structure_classes is set, but its label maps name no structures (an "
                        "intensity segmenter's, or a majority or staple consensus): drawn by tissue only",
                        self.segmenter, self.stripper)
        work = functools.partial(write_subject, splits=splits, folders=folders, out=out, config=config)
        files = {subject: subject_file(folders.segmented, subject, "dseg") for subject in splits}
        _, failures = for_each_subject(f"synthesize {self.segmenter}-{self.stripper}", list(splits), work, out,
                                       config.workers, config.keep_going, files, config.executor)
        write_failures(failures, out)
        chosen = write_montage(out / "train", out / "montage.png", config.seed,
                               f"synthetic {self.segmenter}-{self.stripper}")
        log.info("synthesize: montage.png shows %d training samples", len(chosen))


def read_decisions(path: Path) -> dict[str, tuple[bool, str]]:
    """participant_id -> (included, reason) from a qc.tsv."""
    return {row["participant_id"]: (row["included"] == "True", row["reason"]) for row in read_tsv(path)}
