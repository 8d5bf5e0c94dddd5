"""``synth.engine``: which implementation draws the samples (both return the same arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.config import SynthConfig


def check_engine(cfg: SynthConfig) -> None:
    """Stop early (before any work) when the configured engine cannot run: ``ToolMissing``, ``ConfigError``."""
    if cfg.engine == "lab2im":
        from pipeline.synth.lab2im_engine import check_config, check_installed

        check_config(cfg)
        check_installed()


def synthesize(
    labels: np.ndarray, cfg: SynthConfig, seeds: Sequence[int], device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) uint8 (N, size, size) of ``seeds`` by ``cfg.engine``; ``device``: builtin engine only."""
    if cfg.engine == "lab2im":
        from pipeline.synth.lab2im_engine import synthesize_slices as lab2im_slices

        return lab2im_slices(labels, cfg, seeds)
    from pipeline.synth.model import synthesize_slices  # torch: imported only when generating

    return synthesize_slices(labels, cfg, seeds, device=device)
