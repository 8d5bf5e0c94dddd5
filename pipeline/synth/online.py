"""Online synthesis: a fresh synthetic sample each time nnU-Net's data loader asks for a training case, as
SynthSeg trains, instead of one of the synthesize stage's fixed PNGs.

The training cases stay the exported set's (``sub-<case>_<n>``: which cases train, and how often each is
drawn, is nnU-Net's sampling as offline). Each load draws the case's model (``pipeline.synth.subject``) with a
seed of its own: ``sample_seed(seed, case, ONLINE_INDEX_OFFSET + k)`` with ``k`` from the data loader's
generator, which nnU-Net's trainer seeds, so a deterministic run draws the same samples again. The sample goes
through the same slice layout as offline (``pipeline.synth.engine``: uint8 image, labels) and then through
nnU-Net's own preprocessing of a PNG case (crop to the non-zero brain, normalization), so the network sees
exactly what it would have read from disk.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.bids import Folders
from pipeline.core.config import SynthConfig
from pipeline.synth.params import sample_seed
from pipeline.synth.real import RealHead, load_real_head, mixed_samples
from pipeline.synth.subject import SubjectModel, subject_model

ONLINE_INDEX_OFFSET = 2_000_000  # beyond the offline train and test indices: no seed is shared
DRAWS = 2**31 - 1 - ONLINE_INDEX_OFFSET


class OnlineSampler:
    """Fresh (image, labels) slices of the training cases, each case's model built on first use."""

    def __init__(self, folders: Folders, config: SynthConfig, seed: int, device: str = "cpu") -> None:
        self.folders, self.config, self.seed, self.device = folders, config, seed, device
        self.models: dict[str, SubjectModel] = {}
        self.heads: dict[str, RealHead] = {}

    def model(self, case: str) -> SubjectModel:
        if case not in self.models:
            self.models[case] = subject_model(case, self.folders, self.config)
        return self.models[case]

    def head(self, case: str) -> RealHead | None:
        """The case's real head, when some samples are real (``synth.real_fraction``)."""
        if self.config.real_fraction == 0:
            return None
        if case not in self.heads:
            self.heads[case] = load_real_head(case, self.folders)
        return self.heads[case]

    def draw(self, case: str, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """One new sample of ``case`` (real or synthetic, as offline): uint8 (size, size) image and labels, laid out
        as the offline PNGs."""
        seed = sample_seed(self.seed, case, ONLINE_INDEX_OFFSET + int(rng.randint(DRAWS)))
        images, labels = mixed_samples(self.model(case), [seed], self.config, self.device, self.head(case))
        return images[0], labels[0]
