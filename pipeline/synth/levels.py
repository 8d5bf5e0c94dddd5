"""Which plane of a case's label map each synthetic sample is cut from (``synth.levels``), in each of its views
(``synth.views``: axial, coronal, sagittal; the reference level is axial).

- ``brain`` (default): any plane of the brain, so that a model learns every level of the head it will be asked
  to segment, from the vertex down to the cerebellum and brainstem. ``synth.level_spread`` says how the planes
  are drawn: ``uniform`` over the brain's extent along the view's axis (every level as often: the small top and
  bottom slices, where a model trained near the centre fails, as often as the large central ones), or ``area``,
  in proportion
  to the tissue each plane holds (as often as a voxel drawn at random lies in it).
- ``reference``: the seed project's protocol, one slice per case: the case's reference level
  (``pipeline.imaging.slices``: the same anatomy for every case and strategy), or within ``synth.band_mm`` of it.

A sample's draw (``SampleParams.level``, uniform on [0, 1) from its own stream) is mapped to a plane here, so the
draw does not depend on the label map and the mapping does not depend on the random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.core.config import SynthConfig
from pipeline.imaging.slices import in_view


@dataclass(frozen=True, eq=False)
class Levels:
    """The planes a case's samples may be cut from, and how a draw picks one."""

    reference: int  # the reference level's plane on the label grid
    band_mm: float  # levels: reference: planes within reference ± band_mm (1 mm voxels)
    planes: np.ndarray | None = None  # levels: brain: the candidate planes ...
    cumulative: np.ndarray | None = None  # ... and their cumulative probabilities (last one 1)

    def plane(self, draw: float) -> int:
        """The plane of a draw ~ U(0, 1)."""
        if self.planes is None:  # round(U(-band, band)): numpy's uniform(low, high) is low + (high - low) * u
            return self.reference + int(np.round(-self.band_mm + 2 * self.band_mm * draw))
        return int(self.planes[np.searchsorted(self.cumulative, draw, side="right")])


def case_levels(labels: np.ndarray, reference: int, cfg: SynthConfig) -> dict[str, Levels]:
    """A case's levels in each of ``cfg.views`` as ``cfg`` asks, from its label map (RAS) and reference plane
    (axial)."""
    return {view: view_levels(in_view(np.asarray(labels), view), reference, cfg) for view in cfg.views}


def view_levels(labels: np.ndarray, reference: int, cfg: SynthConfig) -> Levels:
    """The levels of a label map whose planes are along its last axis."""
    if cfg.levels == "reference":
        return Levels(reference, cfg.band_mm)
    tissue = np.count_nonzero(labels > 0, axis=(0, 1))
    planes = np.flatnonzero(tissue)
    if planes.size == 0:
        raise ValueError("the label map has no tissue")
    if cfg.level_spread == "uniform":
        planes = np.arange(planes[0], planes[-1] + 1)
        weights = np.ones(planes.size)
    else:
        weights = tissue[planes].astype(np.float64)
    cumulative = np.cumsum(weights) / weights.sum()
    cumulative[-1] = 1.0  # a draw below 1 always finds a plane
    return Levels(reference, cfg.band_mm, planes, cumulative)
