"""Synthetic 2D training images from 3D label maps (lab2im's generative model, slab-wise).

Exports resolve lazily: importing ``pipeline.synth.params`` (seeds, draws) does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SampleParams": "params",
    "draw_parameters": "params",
    "sample_seed": "params",
    "synthesize": "engine",
    "synthesize_full_volume": "model",
    "synthesize_slices": "model",
    "write_montage": "montage",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
