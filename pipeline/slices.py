"""The 2D view every model sees: the central axial slice, centre-padded to a square.

Volumes are RAS, so an axial slice is ``volume[:, :, k]`` (rows left->right, columns
posterior->anterior). Synthetic samples and real slices use the same convention.
"""

from __future__ import annotations

import numpy as np


def central_index(depth: int) -> int:
    return depth // 2


def placement(length: int, size: int) -> tuple[slice, slice]:
    """(source, target) slices that centre ``length`` samples in ``size`` (cropping when larger)."""
    if length <= size:
        start = (size - length) // 2
        return slice(0, length), slice(start, start + length)
    start = (length - size) // 2
    return slice(start, start + size), slice(0, size)


def center_pad(array: np.ndarray, size: int) -> np.ndarray:
    """Centre ``array`` (2D) on a ``size`` x ``size`` canvas of zeros (centre-cropping larger axes)."""
    (sx, tx), (sy, ty) = placement(array.shape[0], size), placement(array.shape[1], size)
    canvas = np.zeros((size, size), dtype=array.dtype)
    canvas[tx, ty] = array[sx, sy]
    return canvas


def uncenter(canvas: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse of ``center_pad``: the ``shape`` region of a canvas (zeros where it was cropped)."""
    size = canvas.shape[0]
    (sx, tx), (sy, ty) = placement(shape[0], size), placement(shape[1], size)
    out = np.zeros(shape, dtype=canvas.dtype)
    out[sx, sy] = canvas[tx, ty]
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] intensity image as 8-bit grey levels, as synthetic samples are written."""
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
