"""The 2D view every model sees, for synthesis, evaluation and ``predict`` alike.

- **The reference level**: one world-space axial level per subject (``reference_level_mm``), found on the
  harmonized head before any stripper runs, so that every strategy's slab scores (``dice_band``), panels and
  ``synth.levels: reference`` samples are at the same anatomy. It is the
  height of the centre of the cerebral white matter (the largest bright connected structure of a T1 head):
  the axial plane through the basal ganglia and the bodies of the lateral ventricles, with or without skull.
- **Where in the canvas**: centre-padded (or centre-cropped) to ``size`` x ``size``.
- **Which grey levels**: outside the brain exactly 0, as a skull-stripped scan; inside, the slice's own
  robust range stretched to 1..255, so the darkest CSF never takes the background's value (nnU-Net crops and
  normalises every image within its non-zero region).

Volumes are RAS, so an axial slice is ``volume[:, :, k]`` (rows left->right, columns posterior->anterior).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

# A brain's robust intensity range, cut off its darkest and brightest voxels: what the strip stage maps to [0, 1]
# for the whole brain (``preprocess.crop_to_brain``) and each slice a model sees maps to 1..255 (``to_uint8``).
# Not ``harmonize.percentiles``: that range is the whole head's, skull and scalp included, taken before any
# stripper has found the brain; changing it must not change what the brain's range means.
BRAIN_PERCENTILES = (0.5, 99.5)
OPENING_VOXELS = 2  # cuts thin bright bridges (scalp fat, marrow, vessels) off the white matter
HULL_CLOSING_VOXELS = 4  # closes the white matter's hull over sulci and ventricles


# A view's axes of a RAS volume: the canvas's rows, its columns, then the axis its planes are stacked along.
# Rows run left -> right in the axial and coronal views; the sagittal view's run posterior -> anterior.
VIEW_AXES = {"axial": (0, 1, 2), "coronal": (0, 2, 1), "sagittal": (1, 2, 0)}


def rows_left_right(view: str) -> bool:
    """Whether ``view``'s rows run left -> right, so that mirroring them (a left-right flip) keeps a brain a brain."""
    return VIEW_AXES[view][0] == 0


def in_view(volume: np.ndarray, view: str) -> np.ndarray:
    """A RAS volume with ``view``'s planes along its last axis (a view of the array, not a copy)."""
    return np.transpose(volume, VIEW_AXES[view] + tuple(range(3, volume.ndim)))


def from_view(volume: np.ndarray, view: str) -> np.ndarray:
    """``in_view``'s inverse."""
    return np.transpose(volume, tuple(np.argsort(VIEW_AXES[view])) + tuple(range(3, volume.ndim)))


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


def to_uint8(image: np.ndarray, brain: np.ndarray | None = None) -> np.ndarray:
    """A slice as 8-bit grey levels.

    Without ``brain``: [0, 1] intensities scaled to 0..255 (lab2im's generated background kept). With a
    ``brain`` mask: 0 outside it, and inside the slice's ``BRAIN_PERCENTILES`` range stretched to 1..255.
    """
    if brain is None:
        return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    out = np.zeros(image.shape, np.uint8)
    values = image[brain].astype(np.float64)
    if values.size == 0:
        return out
    low, high = np.percentile(values, BRAIN_PERCENTILES)
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) if high > low else np.full(values.shape, 0.5)
    out[brain] = (1 + np.round(scaled * 254)).astype(np.uint8)
    return out


def slice_canvas(image: np.ndarray, brain: np.ndarray, size: int) -> np.ndarray:
    """A real axial slice as every model sees it: its grey levels (``to_uint8``, 0 outside ``brain``), centred
    on the ``size`` x ``size`` canvas."""
    return center_pad(to_uint8(image, brain), size)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total_weight, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = mass / weight
        mean_high = (total_mass - mass) / (total_weight - weight)
        between = weight * (total_weight - weight) * (mean_low - mean_high) ** 2
    return float(centres[np.nanargmax(between[:-1])])


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    pieces, count = ndimage.label(mask)
    if count == 0:
        raise ValueError("no white matter found in the head image")
    return pieces == 1 + int(np.argmax(ndimage.sum_labels(mask, pieces, index=np.arange(1, count + 1))))


def white_matter_centre(head: np.ndarray) -> np.ndarray:
    """Voxel coordinates of the centre of the head's cerebral white matter.

    The bright class of the foreground (Otsu twice), opened to cut thin bright bridges, and its largest
    piece: in a T1 head, skull or not, the white matter with some grey matter the skull's darkness let in.
    A second pass thresholds again inside that piece's hull alone (white matter, deep grey nuclei,
    ventricles), so the white matter is found as it would be in the stripped brain.
    """
    data = np.asarray(head, dtype=np.float32)
    positive = data[data > 0]
    if positive.size == 0:
        raise ValueError("the head image has no positive voxels")
    ball = ndimage.generate_binary_structure(3, 1)
    foreground = data > _otsu(positive)
    region = foreground
    for _ in range(2):
        bright = ndimage.binary_opening(region & (data > _otsu(data[region])), ball, iterations=OPENING_VOXELS)
        white = _largest_piece(bright)
        region = ndimage.binary_fill_holes(ndimage.binary_closing(white, ball, iterations=HULL_CLOSING_VOXELS))
    return np.argwhere(white).mean(axis=0)


def reference_level_mm(head: nib.Nifti1Image) -> float:
    """The subject's reference axial level: world z (mm, RAS) of the white matter's centre."""
    centre = white_matter_centre(head.get_fdata(dtype=np.float32))
    return float((head.affine @ np.append(centre, 1.0))[2])


def level_index(image: nib.Nifti1Image, level_mm: float) -> int:
    """The axial plane of a RAS, axis-aligned image (harmonized, stripped or cropped) nearest ``level_mm``,
    kept inside the image."""
    centre = (np.array(image.shape[:3]) - 1) / 2
    world_centre = image.affine @ np.append(centre, 1.0)
    k = (np.linalg.inv(image.affine) @ np.array([world_centre[0], world_centre[1], level_mm, 1.0]))[2]
    return int(np.clip(round(float(k)), 0, image.shape[2] - 1))
