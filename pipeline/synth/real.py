"""Real training samples (``synth.real_fraction``): the seed project's final dataset is "composed of real and
synthetic MRI images with corresponding labels".

A real sample is a slice of a training head as every model sees it at evaluation and in ``predict``: the
stripped, normalised brain (``desc-brain_T1w``) and its mask laid out by ``pipeline.imaging.slices.slice_canvas``, the
path ``pipeline.nnunet.inference`` takes, with the teacher's labels (the segmenter's map the synthesize stage reads)
centred on the same canvas. It is cut in the view and at the plane its seed's draws pick (``draw_view``,
``draw_level`` through the case's ``pipeline.synth.levels``), so a mixed set differs from a synthetic one only in
where each image comes from. Nothing is deformed, flipped or re-textured: the sample is what the model will be
asked to segment. Which samples are real is a draw of each sample's own (``draw_real``), so ``real_fraction: 0``
gives the synthetic set byte for byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.bids import Folders, subject_file
from pipeline.core.config import SynthConfig
from pipeline.core.io import InputError, load_nifti
from pipeline.imaging.slices import center_pad, in_view, slice_canvas
from pipeline.synth.engine import synthesize
from pipeline.synth.levels import Levels
from pipeline.synth.params import draw_level, draw_real, draw_view
from pipeline.synth.subject import SubjectModel


@dataclass(frozen=True, eq=False)
class RealHead:
    """A training head as the model sees it, on its label map's grid (RAS)."""

    brain: np.ndarray  # float32: stripped, normalised, cropped
    mask: np.ndarray  # bool: the stripper's mask
    labels: np.ndarray  # uint8 tissues: the teacher's


def load_real_head(subject: str, folders: Folders) -> RealHead:
    """The subject's stripped brain, its mask and its teacher's labels."""
    labels = np.asarray(load_nifti(subject_file(folders.segmented, subject, "dseg"), subject).dataobj, np.uint8)
    brain = load_nifti(subject_file(folders.stripped, subject, "desc-brain_T1w"), subject).get_fdata(dtype=np.float32)
    mask = np.asarray(load_nifti(subject_file(folders.stripped, subject, "desc-brain_mask"), subject).dataobj) > 0
    if not brain.shape == mask.shape == labels.shape:
        raise InputError(f"sub-{subject}: the stripped brain {brain.shape}, its mask {mask.shape} and the labels "
                         f"{labels.shape} are not on one grid")
    return RealHead(brain, mask, labels)


def real_slices(head: RealHead, levels: dict[str, Levels], seeds: Sequence[int],
                cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) uint8 (N, size, size): each seed's slice of ``head`` in its view, at the plane ``levels``
    maps its level draw to (kept inside the head)."""
    images = np.zeros((len(seeds), cfg.size, cfg.size), np.uint8)
    labels = np.zeros_like(images)
    for index, seed in enumerate(seeds):
        view = draw_view(seed, cfg)
        brain, mask, tissues = (in_view(volume, view) for volume in (head.brain, head.mask, head.labels))
        plane = int(np.clip(levels[view].plane(draw_level(seed)), 0, brain.shape[2] - 1))
        images[index] = slice_canvas(brain[:, :, plane], mask[:, :, plane], cfg.size)
        labels[index] = center_pad(tissues[:, :, plane], cfg.size)
    return images, labels


def mixed_samples(model: SubjectModel, seeds: Sequence[int], cfg: SynthConfig, device: str = "cpu",
                  head: RealHead | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) uint8 (N, size, size) of ``seeds`` in their order: with a real ``head``, the samples
    ``draw_real`` picks are its real slices and the others synthetic; without one (a test split), all synthetic.
    The synthetic ones are drawn together (``synth.engine``), exactly as a synthetic-only set draws them."""
    real = np.array([head is not None and draw_real(int(seed), cfg) for seed in seeds], bool)
    images = np.zeros((len(seeds), cfg.size, cfg.size), np.uint8)
    labels = np.zeros_like(images)
    synthetic = [int(seed) for seed, is_real in zip(seeds, real, strict=True) if not is_real]
    if synthetic:
        images[~real], labels[~real] = synthesize(model.classes.labels, cfg, synthetic, device, priors=model.priors,
                                                  targets=model.classes.targets, levels=model.levels)
    if real.any():
        chosen = [int(seed) for seed, is_real in zip(seeds, real, strict=True) if is_real]
        images[real], labels[real] = real_slices(head, model.levels, chosen, cfg)
    return images, labels
