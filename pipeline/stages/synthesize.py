"""Stage 5 — synthesize: lab2im-style synthetic slices from each set of tissue label maps.

For every subject, ``synth.n_train`` (train split) and ``synth.n_test`` (test split)
samples: the central axial slice of a randomly deformed, re-textured volume, padded
to ``synth.size`` squared, written as an image PNG and a label PNG {0,1,2,3}.
Each sample's seed derives from (seed, subject, index), so samples are reproducible
and independent of which other subjects are in the study.
"""

from __future__ import annotations

import logging
from pathlib import Path

import luigi
import numpy as np

from pipeline.config import Config
from pipeline.devices import torch_device
from pipeline.io import load_nifti, save_png
from pipeline.stages.acquire import Acquire, read_participants, subject_file
from pipeline.stages.base import Stage
from pipeline.stages.segment import Segment

log = logging.getLogger("pipeline")

# Test samples use indices far from training ones so the two never share a seed.
TEST_INDEX_OFFSET = 1_000_000


def write_samples(out: Path, subject: str, labels: np.ndarray, seeds: list[int], config: Config) -> None:
    from pipeline.synth.model import synthesize_slices  # torch: imported only when generating

    images, label_slices = synthesize_slices(labels, config.synth, seeds, device=torch_device())
    for number, (image, label_slice) in enumerate(zip(images, label_slices, strict=True)):
        case = f"sub-{subject}_{number:04d}"
        save_png(image, out / "images" / f"{case}.png")
        save_png(label_slice, out / "labels" / f"{case}.png")


class Synthesize(Stage):
    name = "synthesize"
    segmenter = luigi.Parameter()
    stripper = luigi.Parameter()
    matrix = {"segmenter": "segment.methods", "stripper": "strip.methods"}
    param_keys = ("seed", "synth")
    out_template = "data/synthetic/{segmenter}-{stripper}"

    def requires(self) -> list[Stage]:
        return [Segment(segmenter=self.segmenter, stripper=self.stripper), Acquire()]

    def build(self, out: Path, config: Config) -> None:
        segmented = self.input_dir(0)
        participants = read_participants(self.input_dir(1))
        for number, participant in enumerate(participants, 1):
            subject = participant.subject
            from pipeline.synth.params import sample_seed

            labels = np.asarray(load_nifti(subject_file(segmented, subject, "dseg"), subject).dataobj)
            for split, count, offset in (("train", config.synth.n_train, 0),
                                         ("test", config.synth.n_test, TEST_INDEX_OFFSET)):
                if not (participant.in_train if split == "train" else participant.in_test):
                    continue
                log.info("synthesize [%d/%d] sub-%s: %d %s samples", number, len(participants), subject, count, split)
                seeds = [sample_seed(config.seed, subject, offset + index) for index in range(count)]
                write_samples(out / split, subject, labels, seeds, config)
