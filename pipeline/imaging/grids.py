"""Labels carried from one image's grid onto another's in world space: a tool's output onto its input, a
reference onto a prediction's grid, a brain mask onto a grid that holds two masks (``labels_on_grid``); a model's
class scores onto the input head's grid (``scores_on_grid``).

``predict`` writes a single predicted plane onto the input's grid with its own rule (``plane_on_grid``): a thick
input slice must take the label of a thin predicted plane that lies inside it, which nearest-neighbour
resampling misses.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def foreground(image: nib.spatialimages.SpatialImage) -> np.ndarray:
    """An image's non-zero voxels, in 3D (a trailing axis of size 1 dropped)."""
    return np.asarray(image.dataobj).reshape(image.shape[:3]) > 0


def foreground_on_grid(image: nib.spatialimages.SpatialImage, grid: nib.spatialimages.SpatialImage | Grid
                       ) -> np.ndarray:
    """``image``'s non-zero voxels carried onto ``grid`` in world space (``labels_on_grid``)."""
    return labels_on_grid(nib.Nifti1Image(foreground(image).astype(np.uint8), image.affine), grid) > 0


def scores_on_grid(scores: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray
                   ) -> np.ndarray:
    """The likeliest class (uint8) of each voxel of another grid (``shape``, ``target_affine``), from class scores
    ``(X, Y, Z, C)`` on ``affine``'s grid, each averaged over the target voxel (``footprints``); a tie: the lower
    class; 0 outside the scores' field of view. As nnU-Net and SynthSeg bring probabilities, not labels, back to
    the input's resolution: a 1.5 mm slice takes the tissue that fills most of it, not the one at its centre. On a
    grid that is the scores' own, flipped or shifted by whole voxels, every label is the scores' own argmax."""
    out = np.zeros(tuple(int(n) for n in shape), np.uint8)
    for planes, inside, sampled in footprints(scores, affine, out.shape, target_affine):
        block = np.zeros(inside.shape, np.uint8)
        block[inside] = np.argmax(sampled, axis=-1)
        out[:, :, planes] = block.reshape(*out.shape[:2], len(planes))
    return out


def averaged_on_grid(values: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray
                     ) -> np.ndarray:
    """An image (``(X, Y, Z)``) on another grid, each target voxel the average over its extent (``footprints``;
    0 outside): the intensities an acquisition on that grid records."""
    out = np.zeros(tuple(int(n) for n in shape), np.float32)
    for planes, inside, sampled in footprints(values[..., None], affine, out.shape, target_affine):
        block = np.zeros(inside.shape, np.float32)
        block[inside] = sampled[:, 0]
        out[:, :, planes] = block.reshape(*out.shape[:2], len(planes))
    return out


def footprints(values: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray
               ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Channels ``(X, Y, Z, C)`` on ``affine``'s grid averaged over each voxel of another grid, a few of its planes
    at a time (bounded memory): (those planes, which of their voxels lie in the values' field of view, the averages
    there, (N, C)). The average is a Gaussian with the variance of the target voxel's box along each axis, less
    a source voxel's own, then linear interpolation at its centre."""
    to_values = np.linalg.inv(affine) @ target_affine
    # a box with edges M[:, j] has variance sum_j M_ij^2 / 12 along source axis i; a source voxel holds 1/12 already
    sigma = np.sqrt(np.maximum((to_values[:3, :3] ** 2).sum(axis=1) - 1.0, 0.0) / 12.0)
    channels = [ndimage.gaussian_filter(values[..., c], sigma) if sigma.any() else values[..., c]
                for c in range(values.shape[-1])]
    last = np.array(values.shape[:3])[:, None] - 1
    for first in range(0, shape[2], TARGET_PLANES_PER_PASS):
        planes = np.arange(first, min(first + TARGET_PLANES_PER_PASS, shape[2]))
        ijk = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), planes, indexing="ij")).reshape(3, -1)
        coords = to_values[:3, :3] @ ijk + to_values[:3, 3:]
        inside = np.all((coords > -0.5) & (coords < last + 0.5), axis=0)  # nearer a source voxel than outside
        on_grid = np.clip(coords[:, inside], 0, last)  # rounding error at the edge planes stays inside
        yield planes, inside, np.stack([ndimage.map_coordinates(channel, on_grid, order=1) for channel in channels],
                                       axis=-1)
