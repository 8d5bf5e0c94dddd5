"""``synth.engine``: which implementation draws the samples (both return the same arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.core.config import SynthConfig
from pipeline.synth.levels import Levels
from pipeline.synth.priors import IntensityPriors


def check_engine(cfg: SynthConfig) -> None:
    """Stop early (before any work) when the configured engine cannot run: ``ToolMissing``, ``ConfigError``."""
    if cfg.engine == "lab2im":
        from pipeline.synth.lab2im_engine import check_config, check_installed

        check_config(cfg)
        check_installed()


def synthesize(
    labels: np.ndarray, cfg: SynthConfig, seeds: Sequence[int], device: str = "cpu",
    priors: IntensityPriors | None = None, targets: np.ndarray | None = None, levels: dict[str, Levels] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) uint8 (N, size, size) of ``seeds`` by ``cfg.engine``, each a slice in the sample's view
    at the plane ``levels[view]`` maps its draw to (None: the middle); ``device``, ``priors`` and ``targets``:
    builtin engine only (``model.synthesize_slices``)."""
    if cfg.engine == "lab2im":
        from pipeline.synth.lab2im_engine import synthesize_slices as lab2im_slices

        return lab2im_slices(labels, cfg, seeds, levels)
    from pipeline.synth.model import synthesize_slices  # torch: imported only when generating

    return synthesize_slices(labels, cfg, seeds, device=device, priors=priors, targets=targets, levels=levels)
