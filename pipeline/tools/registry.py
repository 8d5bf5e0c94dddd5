"""Registries of the methods each stage can use, each backed by one Tool."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pipeline.config import Config, StripConfig
from pipeline.devices import torch_device
from pipeline.tools import (
    deepbet,
    fast,
    fastsurfer,
    freesurfer,
    hdbet,
    hmrf,
    robex,
    samseg,
    synthseg,
    synthstrip,
)
from pipeline.tools.base import Tool
from pipeline.tools.segmentation import Segmenter
from pipeline.tools.stripping import Stripper

HARMONIZERS: dict[str, Tool | None] = {"builtin": None, "synthsr": freesurfer.SYNTHSR}
STRIPPERS: dict[str, Stripper] = {
    "deepbet": deepbet.STRIPPER,
    "hdbet": hdbet.STRIPPER,
    "robex": robex.STRIPPER,
    "synthstrip": synthstrip.STRIPPER,
}
SEGMENTERS: dict[str, Segmenter] = {
    "hmrf": hmrf.SEGMENTER,
    "samseg": samseg.SEGMENTER,
    "fast": fast.SEGMENTER,
    "synthseg": synthseg.SEGMENTER,
    "fastsurfer": fastsurfer.SEGMENTER,
}


def all_tools(strip: StripConfig | None = None) -> dict[str, dict[str, Tool | None]]:
    """Every method's tool; ``strip`` picks the tools that depend on the configuration (SynthStrip's)."""
    segment = {method: segmenter.tool for method, segmenter in SEGMENTERS.items()}
    strippers = {method: stripper.tool_for(strip or StripConfig()) for method, stripper in STRIPPERS.items()}
    from pipeline.synth.lab2im_engine import TOOL as LAB2IM  # here: pipeline.synth imports pipeline.tools.base

    synthesize: dict[str, Tool | None] = {"builtin": None, "lab2im": LAB2IM}
    return {"harmonize": HARMONIZERS, "strip": strippers, "segment": segment, "synthesize": synthesize}


def configured_methods(config: Config) -> dict[str, list[str]]:
    """The methods a study's configuration runs, by stage."""
    return {"harmonize": [config.harmonize.method], "strip": list(config.strip.methods),
            "segment": list(config.segment.methods), "synthesize": [config.synth.engine]}


def missing_tools(config: Config) -> list[str]:
    """'stage method: what to install' for every configured method whose tool this machine lacks."""
    tools = all_tools(config.strip)
    missing = []
    for stage, methods in configured_methods(config).items():
        for method in methods:
            tool = tools[stage][method]
            availability = tool.check() if tool is not None else None
            if availability is not None and not availability.available:
                missing.append(f"{stage} {method}: {availability.detail}")
    return missing


def brain_mask(method: str, image: nib.Nifti1Image, config: StripConfig) -> np.ndarray:
    """Bool brain mask on ``image``'s grid; stops with ToolMissing when the method's tool is absent."""
    return STRIPPERS[method].mask(image, config, torch_device())
