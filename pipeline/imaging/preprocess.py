"""The preprocessing of a head that the stages and ``predict`` share: reorient and resample, bias-field
correction, intensity normalization (harmonize), the crop to the brain once a stripper has masked it
(strip; the masks themselves come from ``pipeline.tools.registry.brain_mask``). A model
sees a new head exactly as its training data was made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_to_output

from pipeline.core.config import HarmonizeConfig
from pipeline.core.io import InputError, load_nifti, voxel_sizes_mm
from pipeline.imaging.slices import BRAIN_PERCENTILES, reference_level_mm
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
    zooms = voxel_sizes_mm(image)
    extent = zooms * np.array(image.shape[:3])
    if extent.min() < MIN_FIELD_OF_VIEW_MM:
        raise InputError(f"subject {subject}, file {source}: field of view {np.round(extent).tolist()} mm is too "
                         f"small for a brain (at least {MIN_FIELD_OF_VIEW_MM:g} mm in every axis)")
    flags = []
    if zooms.max() >= THICK_SLICE_MM:
        flags.append(f"voxels of {zooms.max():.1f} mm: resampled to 1 mm, thin structures are lost "
                     "(harmonize.method: synthsr recovers them, if FreeSurfer is installed)")
        log.warning("harmonize sub-%s: %s", subject, flags[-1])
    return {"SourceVoxelMM": zooms.tolist(), "QCFlags": flags}


@dataclass(frozen=True, eq=False)
class HarmonizedHead:
    """A head on the pipeline's grid and intensity scale (``harmonize``), with what was done and found."""

    image: nib.Nifti1Image
    record: dict  # the sidecar: steps, source voxel size, QC flags, source file, reference level
    level_mm: float  # the reference axial level (``pipeline.imaging.slices``)


def harmonize(source: Path, case: str, config: HarmonizeConfig, target: Path, threads: int) -> HarmonizedHead:
    """A raw head through the acquisition QC, the configured harmonization and the search for its reference
    level; ``target``: where SynthSR writes its image (``harmonize.method: synthsr``)."""
    head = load_nifti(source, case)
    qc = acquisition_qc(head, case, source)
    if config.method == "synthsr":
        image, record = harmonize_synthsr(source, target, config, threads)
    else:
        image, record = harmonize_builtin(head, config)
    try:
        level = reference_level_mm(image)
    except ValueError as error:
        raise InputError(f"subject {case}, file {source}: no reference level ({error})") from None
    record |= qc | {"Source": str(source), "ReferenceLevelMM": round(level, 2)}
    return HarmonizedHead(image, record, level)


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


def box_of(affine: np.ndarray, shape: tuple[int, ...], grid: nib.Nifti1Image) -> tuple[slice, ...]:
    """Where a volume of ``shape`` and ``affine``, cut out of ``grid`` by ``crop``, lies on that grid."""
    offset = np.linalg.solve(grid.affine, affine[:, 3])[:3]
    start = np.round(offset).astype(int)
    if not np.allclose(offset, start, atol=1e-3) or not np.allclose(affine[:3, :3], grid.affine[:3, :3]):
        raise ValueError("the volume is not a box of the grid")
    return tuple(slice(int(s), int(s) + n) for s, n in zip(start, shape[:3], strict=True))


def uncrop(data: np.ndarray, affine: np.ndarray, grid: nib.Nifti1Image) -> np.ndarray:
    """``crop``'s inverse: ``data`` put back on the whole grid it was cut from, 0 around it."""
    out = np.zeros(grid.shape[:3], data.dtype)
    out[box_of(affine, data.shape, grid)] = data
    return out


def crop_to_brain(image: nib.Nifti1Image, mask: np.ndarray, margin: int) -> tuple[nib.Nifti1Image, ...]:
    """The masked brain, its intensities normalized inside the mask (the brain's range, ``BRAIN_PERCENTILES``, not
    the head's ``harmonize.percentiles``), and the mask: both cropped alike."""
    data = image.get_fdata(dtype=np.float32)
    brain = np.where(mask, normalize_percentiles(data, BRAIN_PERCENTILES, mask), 0).astype(np.float32)
    box = bounding_box(mask, margin)
    brain, affine = crop(brain, image.affine, box)
    return nib.Nifti1Image(brain, affine), nib.Nifti1Image(mask[box].astype(np.uint8), affine)
