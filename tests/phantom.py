"""A small brain phantom whose true tissues are known: nested spheres on an anisotropic grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pipeline.core.labels import CSF, GM, WM

CENTRE_MM = np.array([4.0, -6.0, 10.0])
INTENSITY = {GM: 0.55, WM: 0.85, CSF: 0.25}  # a T1: CSF < GM < WM


def phantom() -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray]:
    """(stripped T1, brain mask, true tissues): WM core, GM shell, CSF rim, like a cropped stripped brain."""
    shape, voxel = (40, 44, 36), np.array([1.2, 1.1, 1.3])
    affine = nib.affines.from_matvec(np.diag(voxel), CENTRE_MM - voxel * (np.array(shape) - 1) / 2)
    world = nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    radius = np.linalg.norm(world - CENTRE_MM, axis=-1)
    truth = np.select([radius < 12, radius < 16, radius < 18.5], [WM, GM, CSF], 0).astype(np.uint8)
    noise = np.random.default_rng(0).normal(0, 0.05, shape)  # dipy's HMRF needs some spread
    means = np.choose(truth, [0, INTENSITY[GM], INTENSITY[WM], INTENSITY[CSF]])
    image = np.where(truth > 0, means + noise, 0).astype(np.float32)
    return nib.Nifti1Image(image, affine), truth > 0, truth
