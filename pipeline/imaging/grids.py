"""Labels carried from one image's grid onto another's in world space: a tool's output onto its input, a
reference onto a prediction's grid, a brain mask onto a grid that holds two masks (``labels_on_grid``); a model's
class scores onto the input head's grid (``scores_on_grid``).

``predict`` writes a single predicted plane onto the input's grid with its own rule (``plane_on_grid``): a thick
input slice must take the label of a thin predicted plane that lies inside it, which nearest-neighbour
resampling misses.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage

TARGET_PLANES_PER_PASS = 16  # scores_on_grid samples this many of the target's planes at a time (bounded memory)

Grid = tuple[tuple[int, ...], np.ndarray]  # a volume's shape and affine


def labels_on_grid(labels: nib.spatialimages.SpatialImage, grid: nib.spatialimages.SpatialImage | Grid) -> np.ndarray:
    """Integer labels on ``grid`` (an image's, or a shape and affine): as they are when the grids match, else
    each voxel takes the label of the nearest labelled voxel (0 outside the labels' field of view)."""
    shape, affine = grid if isinstance(grid, tuple) else (grid.shape[:3], grid.affine)
    shape = tuple(int(n) for n in shape)
    if labels.shape[:3] == shape and np.allclose(labels.affine, affine, atol=1e-4):
        data = np.asarray(labels.dataobj).reshape(shape)
    else:
        resampled = resample_from_to(labels, (shape, affine), order=0, mode="constant", cval=0,
                                     out_class=nib.Nifti1Image)
        data = np.asarray(resampled.dataobj)
    return data.astype(np.int64) if np.issubdtype(data.dtype, np.integer) else np.rint(data).astype(np.int64)


def scores_on_grid(scores: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray
                   ) -> np.ndarray:
    """The likeliest class (uint8) of each voxel of another grid (``shape``, ``target_affine``), from class scores
    ``(X, Y, Z, C)`` on ``affine``'s grid: each class's scores averaged over the target voxel's footprint, then
    the largest (a tie: the lower class); 0 outside the scores' field of view. As nnU-Net and SynthSeg bring
    probabilities, not labels, back to the input's resolution: a 1.5 mm slice takes the tissue that fills most of
    it, not the one at its centre. The footprint is a Gaussian with the variance of the target voxel's box along
    each score axis, less the score voxel's own; then linear interpolation at its centre. On a grid that is the
    scores' own, flipped or shifted by whole voxels, every label is the scores' own argmax."""
    shape = tuple(int(n) for n in shape)
    to_scores = np.linalg.inv(affine) @ target_affine
    # a box with edges M[:, j] has variance sum_j M_ij^2 / 12 along score axis i; a score voxel already holds 1/12
    sigma = np.sqrt(np.maximum((to_scores[:3, :3] ** 2).sum(axis=1) - 1.0, 0.0) / 12.0)
    classes = [ndimage.gaussian_filter(scores[..., c], sigma) if sigma.any() else scores[..., c]
               for c in range(scores.shape[-1])]
    out = np.zeros(shape, np.uint8)
    for first in range(0, shape[2], TARGET_PLANES_PER_PASS):
        planes = np.arange(first, min(first + TARGET_PLANES_PER_PASS, shape[2]))
        ijk = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), planes, indexing="ij")).reshape(3, -1)
        coords = to_scores[:3, :3] @ ijk + to_scores[:3, 3:]
        last = np.array(scores.shape[:3])[:, None] - 1
        inside = np.all((coords > -0.5) & (coords < last + 0.5), axis=0)  # nearer a score voxel than outside
        on_grid = np.clip(coords[:, inside], 0, last)  # rounding error at the edge planes stays inside
        sampled = np.stack([ndimage.map_coordinates(scores_c, on_grid, order=1) for scores_c in classes], axis=-1)
        block = np.zeros(inside.shape, np.uint8)
        block[inside] = np.argmax(sampled, axis=-1)
        out[:, :, planes] = block.reshape(shape[0], shape[1], len(planes))
    return out
