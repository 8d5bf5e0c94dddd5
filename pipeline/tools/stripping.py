"""What every skull stripper is given and returns.

A stripper is the Tool it needs (which may depend on the configuration, e.g. SynthStrip's model
file) plus a run function ``run(image, config, device) -> mask``: a bool brain mask on the grid of
``image``, whatever orientation or obliquity its affine has.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.config import StripConfig
from pipeline.tools.base import Availability, Tool, ToolFailed


@dataclass(frozen=True)
class PackagedTool(Tool):
    """A Python package that must also have installed its data: model weights, a bundled binary."""

    package_files: tuple[str, ...] = ()  # paths relative to the folder of ``modules[0]``

    def check(self) -> Availability:
        availability = super().check()
        if not availability.available:
            return availability
        spec = importlib.util.find_spec(self.modules[0])
        root = Path(next(iter(spec.submodule_search_locations)))
        missing = [name for name in self.package_files if not (root / name).is_file()]
        if missing:
            return Availability(False, f"{self.modules[0]} lacks {', '.join(missing)}; {self.install_hint}")
        return Availability(True, f"{availability.detail} and its {len(self.package_files)} data files")


@dataclass(frozen=True)
class Stripper:
    tool_for: Callable[[StripConfig], Tool]
    run: Callable[[nib.Nifti1Image, StripConfig, str], np.ndarray]

    def mask(self, image: nib.Nifti1Image, config: StripConfig, device: str) -> np.ndarray:
        tool = self.tool_for(config)
        tool.require()
        mask = np.asarray(self.run(image, config, device)) > 0
        if mask.shape != image.shape[:3]:
            shapes = f"{mask.shape}, not its input's {image.shape[:3]}"
            raise ToolFailed(f"{tool.name} returned a mask of shape {shapes}")
        return mask


def always(tool: Tool) -> Callable[[StripConfig], Tool]:
    """For a stripper whose tool does not depend on the configuration."""
    return lambda _config: tool
