"""QC montage of a synthetic dataset: a grid of training samples, tissue contours over the grey image.

Samples are picked by the study's seed among the written cases' names: two datasets of the same study
(other segmenter or stripper, same subjects) show the same samples, drawn with the same seeds, side by side
comparable. Slices are stored with rows left→right and columns posterior→anterior; ``np.rot90`` turns
them so that anterior is up. Rendered with matplotlib's Agg canvas (no pyplot state) and without the
software metadata, so the same dataset gives the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.core.io import atomic_path, load_png
from pipeline.core.labels import GM, TISSUE_RGB, TISSUES

if TYPE_CHECKING:
    from matplotlib.axes import Axes

N_PANELS = 16
PANEL_INCHES = 2.6  # ~ a 256-pixel slice at 1:1
HEADER_INCHES = 0.6
DPI = 100
# label: (name, colour, line width), in the one tissue palette (pipeline.core.labels). Neighbouring tissues share their
# boundary: GM is drawn first and wider, so that it shows as a rim beside the WM and CSF lines drawn over it.
CONTOURS = {tissue: (name, "#{:02x}{:02x}{:02x}".format(*TISSUE_RGB[tissue]), 1.3 if tissue == GM else 0.6)
            for tissue, name in TISSUES.items()}
MONTAGE_STREAM = 1  # spawn key of the pick's random stream (samples use their own seeds)


def pick_cases(cases: list[str], seed: int, n: int = N_PANELS) -> list[str]:
    """``n`` of ``cases`` drawn by ``seed`` (all when fewer), in name order."""
    names = sorted(cases)
    if len(names) <= n:
        return names
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(MONTAGE_STREAM,)))
    return [names[i] for i in sorted(rng.choice(len(names), size=n, replace=False))]


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, columns) of a near-square grid of ``n`` panels (at least one)."""
    columns = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / columns)), columns


def draw_panel(axes: Axes, image: np.ndarray, labels: np.ndarray, title: str) -> None:
    """One sample (axial: anterior up; coronal, sagittal: superior up): the grey image and one contour per
    tissue present."""
    image, labels = np.rot90(image), np.rot90(labels)
    axes.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for label, (_, colour, width) in CONTOURS.items():
        mask = labels == label
        if mask.any() and not mask.all():
            axes.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)
    axes.set_title(title, fontsize=6)


def write_montage(split: Path, target: Path, seed: int, title: str, n: int = N_PANELS) -> list[str]:
    """Montage of ``n`` cases of ``split`` (``images/`` and ``labels/`` PNGs) as ``target``; the cases shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    chosen = pick_cases([path.stem for path in (split / "images").glob("*.png")], seed, n)
    rows, columns = grid_shape(len(chosen))
    figure = Figure(figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES + HEADER_INCHES), dpi=DPI)
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat:
        axes.set_axis_off()
    for axes, case in zip(grid.flat, chosen, strict=False):
        draw_panel(axes, load_png(split / "images" / f"{case}.png"), load_png(split / "labels" / f"{case}.png"), case)
    if not chosen:
        grid[0, 0].text(0.5, 0.5, "no training samples", ha="center", va="center", fontsize=8)
    handles = [Line2D([], [], color=colour, label=name) for name, colour, _ in CONTOURS.values()]
    figure.legend(handles=handles, loc="upper right", ncol=3, fontsize=7, frameon=False)
    figure.suptitle(f"{title}: {len(chosen)} training samples (axial: anterior up; coronal, sagittal: superior up)",
                    x=0.02, ha="left", fontsize=9)
    figure.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - HEADER_INCHES / figure.get_figheight(), wspace=0.04, hspace=0.12
    )
    with atomic_path(target, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": None})
    return chosen
