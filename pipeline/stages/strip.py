"""Stage 3 — strip: skull stripping (one branch per method), normalization and crop.

Per subject, under ``data/stripped/<method>/``: the brain mask and the masked,
intensity-normalized brain, both cropped to the mask's bounding box plus a margin.
The crop shifts the affine, so every image stays aligned with the original in world space.
"""

from __future__ import annotations

import logging
from pathlib import Path

import luigi
import nibabel as nib
import numpy as np

from pipeline.config import Config, StripConfig
from pipeline.devices import torch_device
from pipeline.io import InputError, load_nifti, save_nifti, write_tsv
from pipeline.stages.acquire import Acquire, read_participants, subject_file
from pipeline.stages.base import Stage
from pipeline.stages.harmonize import Harmonize, normalize_percentiles
from pipeline.tools import STRIPPERS, deepbet

log = logging.getLogger("pipeline")


def brain_mask(method: str, image: nib.Nifti1Image, config: StripConfig) -> np.ndarray:
    STRIPPERS[method].require()
    device = torch_device()
    if method == "deepbet":
        return deepbet.strip(image, config.deepbet, device)
    raise NotImplementedError(method)


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The mask's bounding box grown by ``margin`` voxels, clipped to the image."""
    coords = np.argwhere(mask)
    low = np.maximum(coords.min(axis=0) - margin, 0)
    high = np.minimum(coords.max(axis=0) + 1 + margin, mask.shape)
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))


def crop(data: np.ndarray, affine: np.ndarray, box: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``data`` to ``box`` and move the affine's origin so world coordinates are unchanged."""
    offset = np.array([s.start for s in box] + [1])
    cropped_affine = affine.copy()
    cropped_affine[:3, 3] = (affine @ offset)[:3]
    return data[box], cropped_affine


def mask_figures(mask: np.ndarray, voxel_ml: float) -> dict:
    from scipy import ndimage

    _, n_components = ndimage.label(mask)
    border = np.zeros_like(mask)
    border[[0, -1], :, :] = border[:, [0, -1], :] = border[:, :, [0, -1]] = True
    return {
        "brain_ml": float(mask.sum() * voxel_ml),
        "components": int(n_components),
        "border_fraction": float((mask & border).sum() / max(mask.sum(), 1)),
    }


class Strip(Stage):
    name = "strip"
    stripper = luigi.Parameter()
    matrix = {"stripper": "strip.methods"}
    param_keys = ("strip.{stripper}", "strip.crop_margin_vox")
    out_template = "data/stripped/{stripper}"

    def requires(self) -> list[Stage]:
        return [Harmonize(), Acquire()]

    def build(self, out: Path, config: Config) -> None:
        harmonized = self.input_dir(0)
        participants = read_participants(self.input_dir(1))
        rows = []
        for number, participant in enumerate(participants, 1):
            subject = participant.subject
            log.info("strip [%d/%d] sub-%s with %s", number, len(participants), subject, self.stripper)
            image = load_nifti(subject_file(harmonized, subject, "desc-harmonized_T1w"), subject)
            mask = brain_mask(self.stripper, image, config.strip)
            if not mask.any():
                raise InputError(f"subject {subject}: {self.stripper} found no brain")
            data = image.get_fdata(dtype=np.float32)
            brain = np.where(mask, normalize_percentiles(data, (0.5, 99.5), mask), 0).astype(np.float32)
            box = bounding_box(mask, config.strip.crop_margin_vox)
            brain, affine = crop(brain, image.affine, box)
            mask, _ = crop(mask, image.affine, box)
            save_nifti(brain, affine, subject_file(out, subject, "desc-brain_T1w"))
            save_nifti(mask.astype(np.uint8), affine, subject_file(out, subject, "desc-brain_mask"))
            voxel_ml = float(np.prod(image.header.get_zooms()[:3])) / 1000.0
            rows.append({"participant_id": f"sub-{subject}", "method": self.stripper, **mask_figures(mask, voxel_ml)})
        write_tsv(rows, out / "masks.tsv")
