"""What one case's synthetic samples are drawn from: its label map split into generation classes, their
intensity priors and the planes its slices are cut from. Built alike by the synthesize stage (offline PNG sets)
and by the online trainers (``pipeline/nnunet/trainers``), so both draw from the same model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.bids import STRUCTURES, Folders, reference_level, subject_file
from pipeline.core.config import SynthConfig
from pipeline.core.io import load_nifti
from pipeline.imaging.slices import level_index
from pipeline.synth.classes import GenerationClasses, one_class_per_label, split_tissues, with_structures
from pipeline.synth.levels import Levels, case_levels
from pipeline.synth.priors import IntensityPriors, priors_for


@dataclass(frozen=True, eq=False)
class SubjectModel:
    """What one subject's samples are drawn from."""

    classes: GenerationClasses  # generation classes and their training labels (synth.subclasses)
    priors: IntensityPriors | None  # their GMM priors (synth.priors; None: lab2im's uniform ones)
    levels: dict[str, Levels]  # per view, the planes its output slices are cut from (synth.levels, synth.views)


def subject_model(subject: str, folders: Folders, cfg: SynthConfig) -> SubjectModel:
    """The subject's labels split into classes, their priors and its output planes, as ``cfg`` asks."""
    dseg = load_nifti(subject_file(folders.segmented, subject, "dseg"), subject)
    labels = np.asarray(dseg.dataobj)
    image = None
    if cfg.priors == "subject" or cfg.subclasses > 1:
        brain = load_nifti(subject_file(folders.stripped, subject, "desc-brain_T1w"), subject)
        image = brain.get_fdata(dtype=np.float32)
    classes = split_tissues(labels, image, cfg.subclasses) if image is not None else one_class_per_label(labels)
    structures = subject_file(folders.segmented, subject, STRUCTURES)
    if cfg.structure_classes and structures.is_file():
        classes = with_structures(classes, np.asarray(load_nifti(structures, subject).dataobj))
    priors = priors_for(cfg, image, classes.labels, classes.targets)
    reference = level_index(dseg, reference_level(folders.harmonized, subject))
    return SubjectModel(classes, priors, case_levels(labels, reference, cfg))


def sample_name(case: str, number: int) -> str:
    """A synthetic sample's file stem, and nnU-Net's case identifier once exported (``sub-01_ses-A_0007``)."""
    return f"sub-{case}_{number:04d}"


def case_of(identifier: str) -> str:
    """The case label of a sample's identifier (``sample_name``'s inverse for the case)."""
    return identifier.rsplit("_", 1)[0].removeprefix("sub-")
