"""The preprocessing of a head that the stages and ``predict`` share: reorient and resample, bias-field
correction, intensity normalization (harmonize), the crop to the brain once a stripper has masked it
(strip; the masks themselves come from ``pipeline.tools.registry.brain_mask``). A model
sees a new head exactly as its training data was made.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_to_output

from pipeline.config import HarmonizeConfig
from pipeline.io import InputError, load_nifti
from pipeline.tools import freesurfer

log = logging.getLogger("pipeline")


def to_ras_isotropic(image: nib.Nifti1Image, voxel_mm: float) -> nib.Nifti1Image:
    canonical = nib.as_closest_canonical(image)
    data = np.asarray(canonical.dataobj, dtype=np.float32)
    canonical = nib.Nifti1Image(data, canonical.affine)
    # Cubic spline can overshoot below zero next to the skull; T1 intensities are non-negative.
    resampled = resample_to_output(canonical, voxel_sizes=voxel_mm, order=3, mode="nearest")
    return nib.Nifti1Image(np.clip(resampled.get_fdata(dtype=np.float32), 0, None), resampled.affine)


def n4_correct(data: np.ndarray, shrink: int, iterations: int) -> np.ndarray:
    """N4 on a shrunk copy (fast), bias field evaluated at full resolution."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(data)
    shrunk = sitk.Shrink(image, [shrink] * 3)
    head = sitk.OtsuThreshold(shrunk, 0, 1, 200)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([iterations] * 4)
    corrector.Execute(shrunk, head)
    log_bias = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    return (data / np.exp(log_bias)).astype(np.float32)


def normalize_percentiles(data: np.ndarray, low_high: tuple[float, float],
                          mask: np.ndarray | None = None) -> np.ndarray:
    """Map the [low, high] percentiles of the foreground (or ``mask``) to [0, 1], clipped."""
    region = data[mask] if mask is not None else data[data > 0]
    low, high = np.percentile(region, low_high)
    if high <= low:
        raise ValueError("intensity range is empty after percentile normalization")
    return np.clip((data - low) / (high - low), 0.0, 1.0).astype(np.float32)


def harmonize_builtin(image: nib.Nifti1Image, config: HarmonizeConfig) -> tuple[nib.Nifti1Image, dict]:
    resampled = to_ras_isotropic(image, config.voxel_size_mm)
    data = resampled.get_fdata(dtype=np.float32)
    steps = [f"reorient to RAS; resample to {config.voxel_size_mm} mm isotropic (cubic spline)"]
    if config.n4:
        data = n4_correct(data, config.n4_shrink, config.n4_iterations)
        steps.append(f"N4 bias-field correction (shrink {config.n4_shrink}, "
                     f"{config.n4_iterations} iterations x 4 levels)")
    data = normalize_percentiles(data, config.percentiles)
    steps.append(f"intensities: percentiles {config.percentiles} of the head -> [0, 1]")
    return nib.Nifti1Image(data, resampled.affine), {"Method": "builtin", "Steps": steps}


def harmonize_synthsr(source: Path, target: Path, config: HarmonizeConfig,
                      threads: int) -> tuple[nib.Nifti1Image, dict]:
    """SynthSR makes a 1 mm MPRAGE-like image; we then bring it to RAS and [0, 1] like ``builtin``."""
    freesurfer.synthsr(source, target, config.synthsr, threads)
    image = to_ras_isotropic(load_nifti(target, source.name), config.voxel_size_mm)
    data = normalize_percentiles(image.get_fdata(dtype=np.float32), config.percentiles)
    steps = ["mri_synthsr", f"resample to {config.voxel_size_mm} mm RAS", f"percentiles {config.percentiles} -> [0, 1]"]
    return nib.Nifti1Image(data, image.affine), {"Method": "synthsr", "Steps": steps}


THICK_SLICE_MM = 3.0  # a voxel this long in one axis: a clinical scan, resampled but flagged


MIN_FIELD_OF_VIEW_MM = 100.0  # less than this in any axis cannot hold a brain


def acquisition_qc(image: nib.Nifti1Image, subject: str, source: Path) -> dict:
    """The source's voxel size, a flag for thick slices, and a refusal when the field of view is too small."""
    zooms = np.array(image.header.get_zooms()[:3], dtype=float)
    extent = zooms * np.array(image.shape[:3])
    if extent.min() < MIN_FIELD_OF_VIEW_MM:
        raise InputError(f"subject {subject}, file {source}: field of view {np.round(extent).tolist()} mm is too "
                         f"small for a brain (at least {MIN_FIELD_OF_VIEW_MM:g} mm in every axis)")
    flags = []
    if zooms.max() >= THICK_SLICE_MM:
        flags.append(f"voxels of {zooms.max():.1f} mm: resampled to 1 mm, thin structures are lost "
                     "(harmonize.method: synthsr recovers them, if FreeSurfer is installed)")
        log.warning("harmonize sub-%s: %s", subject, flags[-1])
    return {"SourceVoxelMM": np.round(zooms, 3).tolist(), "QCFlags": flags}


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


def crop_to_brain(image: nib.Nifti1Image, mask: np.ndarray, margin: int) -> tuple[nib.Nifti1Image, ...]:
    """The masked brain, its intensities normalized inside the mask, and the mask: both cropped alike."""
    data = image.get_fdata(dtype=np.float32)
    brain = np.where(mask, normalize_percentiles(data, (0.5, 99.5), mask), 0).astype(np.float32)
    box = bounding_box(mask, margin)
    brain, affine = crop(brain, image.affine, box)
    return nib.Nifti1Image(brain, affine), nib.Nifti1Image(mask[box].astype(np.uint8), affine)
