"""Labels carried from one image's grid onto another's in world space: a tool's output onto its input, a
reference onto a prediction's grid, a brain mask onto a grid that holds two masks.

``predict`` writes its predicted planes onto the input's grid with its own rule (``planes_on_grid``): a thick
input slice must take the label of a thin predicted plane that lies inside it, which nearest-neighbour
resampling misses.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

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
