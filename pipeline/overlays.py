"""Pictures of label maps over their image: the one overlay every QC page, report and ``predict`` draws, in the
one tissue palette (``pipeline.labels.TISSUE_RGB``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import atomic_path
from pipeline.labels import TISSUE_RGB, TISSUES

PLANES = ("sagittal", "coronal", "axial")  # RAS arrays: the plane across axis 0, 1, 2
OPACITY = 0.45
LEGEND = "GM orange, WM blue, CSF green"


def tissue_rgba(labels: np.ndarray) -> np.ndarray:
    """An RGBA picture of a tissue label map: the palette's colours, transparent where there is no tissue."""
    rgba = np.zeros((*labels.shape, 4), np.float32)
    rgba[..., :3] = TISSUE_RGB[np.clip(labels, 0, len(TISSUE_RGB) - 1)] / 255.0
    rgba[..., 3] = np.where(np.isin(labels, list(TISSUES)), OPACITY, 0.0)
    return rgba


def three_planes(image: np.ndarray, layers: list[tuple[str, np.ndarray | None]], path: Path, title: str,
                 centre: tuple[int, int, int] | None = None) -> None:
    """A row per layer (its name, a label map on ``image``'s RAS grid, or None for the image alone): the layer
    over the image in sagittal, coronal and axial planes through ``centre`` (default: the image's brain
    centre). Saved as a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    inside = np.argwhere(image > 0)
    if centre is None:
        centre = tuple(inside.mean(axis=0).astype(int)) if len(inside) else tuple(np.array(image.shape) // 2)
    vmax = float(np.percentile(image[image > 0], 99.5)) if len(inside) else 1.0
    figure = Figure(figsize=(9.6, 3.3 * len(layers)), layout="constrained")
    FigureCanvasAgg(figure)  # no pyplot: no global state, no display needed
    axes = figure.subplots(len(layers), 3, squeeze=False)
    for row, (name, labels) in zip(axes, layers, strict=True):
        for axis, (plane, ax) in enumerate(zip(PLANES, row, strict=True)):
            section = (slice(None),) * axis + (centre[axis],)
            ax.imshow(image[section].T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
            if labels is not None:
                ax.imshow(tissue_rgba(labels[section]).transpose(1, 0, 2), origin="lower", interpolation="nearest")
            ax.set_title(f"{name}: {plane}", fontsize=9)
            ax.axis("off")
    figure.suptitle(f"{title}   ({LEGEND})", fontsize=10)
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=80)
