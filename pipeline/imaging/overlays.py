"""Pictures of label maps over their image: the one overlay every QC page, report and ``predict`` draws, in the
one tissue palette (``pipeline.core.labels.TISSUE_RGB``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.io import atomic_path
from pipeline.core.labels import TISSUE_RGB, TISSUES

PLANES = ("sagittal", "coronal", "axial")  # RAS arrays: the plane across axis 0, 1, 2
OPACITY = 0.45
LEGEND = "GM orange, WM blue, CSF green"


def tissue_rgba(labels: np.ndarray) -> np.ndarray:
    """An RGBA picture of a tissue label map: the palette's colours, transparent where there is no tissue."""
    rgba = np.zeros((*labels.shape, 4), np.float32)
    rgba[..., :3] = TISSUE_RGB[np.clip(labels, 0, len(TISSUE_RGB) - 1)] / 255.0
    rgba[..., 3] = np.where(np.isin(labels, list(TISSUES)), OPACITY, 0.0)
    return rgba


def brain_centre(mask: np.ndarray, axial_plane: int | None = None) -> tuple[int, int, int]:
    """The voxel at the centre of ``mask`` (moved to ``axial_plane``, e.g. the reference level, when given)."""
    centre = np.argwhere(mask).mean(axis=0).astype(int) if mask.any() else np.array(mask.shape) // 2
    if axial_plane is not None:
        centre[2] = axial_plane
    return tuple(int(c) for c in centre)


def sections(centre: tuple[int, int, int]) -> list[tuple[str, tuple]]:
    """(plane name, index of a RAS array) of the sagittal, coronal and axial planes through ``centre``."""
    return [(plane, (slice(None),) * axis + (centre[axis],)) for axis, plane in enumerate(PLANES)]


def three_planes(image: np.ndarray, layers: list[tuple[str, np.ndarray | None]], path: Path, title: str,
                 centre: tuple[int, int, int] | None = None) -> None:
    """A row per layer (its name, a label map on ``image``'s RAS grid, or None for the image alone): the layer
    over the image in sagittal, coronal and axial planes through ``centre`` (default: the image's brain
    centre). Saved as a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    inside = image > 0
    centre = brain_centre(inside) if centre is None else centre
    vmax = float(np.percentile(image[inside], 99.5)) if inside.any() else 1.0
    figure = Figure(figsize=(9.6, 3.3 * len(layers)), layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot: no global state, no display needed
    axes = figure.subplots(len(layers), 3, squeeze=False)
    for row, (name, labels) in zip(axes, layers, strict=True):
        for (plane, section), ax in zip(sections(centre), row, strict=True):
            ax.imshow(image[section].T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
            if labels is not None:
                ax.imshow(tissue_rgba(labels[section]).transpose(1, 0, 2), origin="lower", interpolation="nearest")
            ax.set_title(f"{name}: {plane}", fontsize=9)
            ax.axis("off")
    figure.suptitle(f"{title}   ({LEGEND})", fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=80)


def mask_outline(image: nib.Nifti1Image, mask: np.ndarray, path: Path, title: str) -> None:
    """The mask's outline (red) over the head, through the mask's centre: sagittal, coronal, axial; drawn in RAS
    voxel order whatever the storage order, with the voxels' aspect."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    head = nib.as_closest_canonical(image)
    inside = nib.as_closest_canonical(nib.Nifti1Image(mask.astype(np.uint8), image.affine)).get_fdata() > 0
    data, zooms = head.get_fdata(dtype=np.float32), head.header.get_zooms()[:3]
    vmax = np.percentile(data[inside], 99.5)
    figure = Figure(figsize=(10.5, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    for axis, ((plane, section), ax) in enumerate(zip(sections(brain_centre(inside)), figure.subplots(1, 3),
                                                      strict=True)):
        across, up = (a for a in range(3) if a != axis)
        ax.imshow(data[section].T, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=zooms[up] / zooms[across])
        ax.contour(inside[section].T.astype(np.float32), levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(plane)
        ax.axis("off")
    figure.suptitle(title)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=90)
