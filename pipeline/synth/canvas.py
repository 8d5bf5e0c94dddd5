"""The label volume synthesis starts from: optionally padded in plane with background to the output size.

The pipeline's label volumes are cropped to the brain. Synthesised as they are, the image is generated only
inside that box and padded with 0 afterwards, so every sample shows the box's edge against a black frame.
With ``synth.pad_labels_to_size`` the volume is first centred on a ``size`` × ``size`` in-plane field of
background (label 0), as lab2im sees a full field of view: background intensities are generated everywhere
and the output needs no padding. The placement is ``pipeline.imaging.slices.center_pad``'s, so a label keeps its
output position; axes already at least ``size`` long are left as they are (cropped after synthesis).
"""

from __future__ import annotations

import numpy as np

from pipeline.core.config import SynthConfig


def in_plane_padding(shape: tuple[int, ...], size: int) -> list[tuple[int, int]]:
    """(before, after) background voxels per axis: x and y centred on ``size``, z untouched."""
    pads = [((size - n) // 2, size - n - (size - n) // 2) if n < size else (0, 0) for n in shape[:2]]
    return pads + [(0, 0)] * (len(shape) - 2)


def background_generated(cfg: SynthConfig) -> bool:
    """Whether any sample shows a generated background: with ``zero_background: 1`` every sample's background is
    exactly 0, so padding the volume would only generate voxels the output throws away (half the work at 256)."""
    return cfg.pad_labels_to_size and cfg.zero_background < 1.0


def synthesis_labels(labels: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """``labels`` as the engines synthesise them: padded in plane when a generated background shows
    (``background_generated``); the output is then padded with 0 after synthesis, the same canvas.

    Anything but a 3D array is returned unchanged, for the engine's own validation to reject.
    """
    labels = np.asarray(labels)
    if not background_generated(cfg) or labels.ndim != 3:
        return labels
    pads = in_plane_padding(labels.shape, cfg.size)
    return np.pad(labels, pads) if any(before or after for before, after in pads) else labels
