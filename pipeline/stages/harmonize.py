"""Stage 2 — harmonize: bring every head to one grid and intensity scale.

``builtin``: reorient to RAS, resample to isotropic voxels, N4 bias-field correction,
robust percentile normalization to [0, 1]. ``synthsr``: FreeSurfer's mri_synthsr.
What was done is recorded in a JSON sidecar beside each image, with the subject's reference axial level
(``ReferenceLevelMM``, ``pipeline.slices``): found here, before any stripper, so that every strategy is
trained and scored at the same anatomy.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_to_output

from pipeline.bids import write_derivative_description
from pipeline.config import Config, HarmonizeConfig
from pipeline.io import InputError, load_nifti, save_nifti, write_json
from pipeline.slices import reference_level_mm
from pipeline.stages.acquire import Acquire, read_participants, subject_file
from pipeline.stages.base import Stage
from pipeline.subjects import for_each_subject, read_failures, write_failures
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


def harmonize_subject(subject: str, threads: int, raw: Path, out: Path, config: HarmonizeConfig) -> None:
    source = subject_file(raw, subject, "T1w")
    target = subject_file(out, subject, "desc-harmonized_T1w")
    head = load_nifti(source, subject)
    qc = acquisition_qc(head, subject, source)
    if config.method == "synthsr":
        image, record = harmonize_synthsr(source, target, config, threads)
    else:
        image, record = harmonize_builtin(head, config)
    record |= qc
    try:
        level = reference_level_mm(image)
    except ValueError as error:
        raise InputError(f"subject {subject}, file {source}: no reference level ({error})") from None
    save_nifti(image.get_fdata(dtype=np.float32), image.affine, target)
    write_json(record | {"Source": str(source), "ReferenceLevelMM": round(level, 2)}, sidecar(target))


def sidecar(image: Path) -> Path:
    return image.with_name(image.name.replace(".nii.gz", ".json"))


def reference_level(harmonized: Path, subject: str) -> float:
    """The subject's reference axial level (world z, mm), as the harmonize stage found it."""
    record = sidecar(subject_file(harmonized, subject, "desc-harmonized_T1w"))
    try:
        return float(json.loads(record.read_text())["ReferenceLevelMM"])
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"subject {subject}, file {record}: no reference level ({error}); re-run harmonize") from None


class Harmonize(Stage):
    name = "harmonize"
    param_keys = ("keep_going", "harmonize")
    out_template = "data/harmonized"

    def requires(self) -> list[Stage]:
        return [Acquire()]

    def build(self, out: Path, config: Config) -> None:
        raw = self.input_dir()
        subjects = [participant.subject for participant in read_participants(raw)]
        log.info("harmonize: %s", config.harmonize.method)
        work = functools.partial(harmonize_subject, raw=raw, out=out, config=config.harmonize)
        _, failures = for_each_subject("harmonize", subjects, work, out, config.workers, config.keep_going,
                                       {subject: subject_file(raw, subject, "T1w") for subject in subjects})
        write_failures(read_failures(raw) + failures, out)
        write_derivative_description(out, "synthseg-pipeline harmonized T1w", f"harmonize: {config.harmonize.method}",
                                     Parameters=config.harmonize.model_dump(mode="json"))
