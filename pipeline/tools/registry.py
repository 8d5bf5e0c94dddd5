"""The methods each stage can use, by name: a method ``m`` is the wrapper module ``pipeline.tools.m``, imported the
first time it is used. A stage so loads (and depends on, in ``dvc.yaml``) only the wrapper it runs."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Generic, TypeVar, get_args

import nibabel as nib
import numpy as np

from pipeline.core.config import CONSENSUS, SegmentMethod, StripConfig, StripMethod
from pipeline.runtime.devices import torch_device
from pipeline.tools.segmentation import Segmenter
from pipeline.tools.stripping import Stripper

T = TypeVar("T")
PACKAGE = "pipeline.tools"


class Registry(MutableMapping[str, T], Generic[T]):
    """Method name -> the object its wrapper module exports as ``attribute``, imported on first use."""

    def __init__(self, attribute: str, methods: tuple[str, ...]) -> None:
        self.attribute, self.methods = attribute, methods
        self.loaded: dict[str, T] = {}

    def __getitem__(self, method: str) -> T:
        if method not in self.loaded:
            if method not in self.methods:
                raise KeyError(method)
            self.loaded[method] = getattr(importlib.import_module(f"{PACKAGE}.{method}"), self.attribute)
        return self.loaded[method]

    def __setitem__(self, method: str, value: T) -> None:  # tests put stand-ins in
        self.loaded[method] = value

    def __delitem__(self, method: str) -> None:
        del self.loaded[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self.methods)

    def __len__(self) -> int:
        return len(self.methods)


STRIPPERS: Registry[Stripper] = Registry("STRIPPER", get_args(StripMethod))
# the consensus is no tool of its own: segment_qc fuses the others' labels (pipeline/tools/consensus.py)
SEGMENTERS: Registry[Segmenter] = Registry("SEGMENTER", tuple(m for m in get_args(SegmentMethod) if m != CONSENSUS))
REGISTRIES = {"stripper": STRIPPERS, "segmenter": SEGMENTERS}  # by the matrix key that names the method


def stripper_config(strip: StripConfig, method: str) -> StripConfig:
    """What of ``strip`` applies to one stripper (its own section, the crop margin and the mask QC), the rest at
    its defaults: what that stripper's outputs and models record, and depend on."""
    return StripConfig(methods=[method], crop_margin_vox=strip.crop_margin_vox, qc=strip.qc,
                       **{method: getattr(strip, method)})


def brain_mask(method: str, image: nib.Nifti1Image, config: StripConfig) -> np.ndarray:
    """Bool brain mask on ``image``'s grid; stops with ToolMissing when the method's tool is absent."""
    return STRIPPERS[method].mask(image, config, torch_device())
