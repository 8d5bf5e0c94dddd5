"""SynthStrip (Hoopes et al. 2022): FreeSurfer's ``mri_synthstrip``, or ``nipreps-synthstrip`` with a model.

FreeSurfer ships SynthStrip's weights with ``mri_synthstrip``. ``nipreps-synthstrip`` (PyPI) is the same
network without weights: it runs only when ``strip.synthstrip.model`` names a SynthStrip .pt file
(e.g. ``$FREESURFER_HOME/models/synthstrip.1.pt``). Both are command lines with the same interface,
and both write the mask on the input grid.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.config import StripConfig
from pipeline.core.io import save_nifti
from pipeline.tools.base import Availability, Tool, ToolFailed, run_command
from pipeline.tools.freesurfer import FREESURFER_HINT
from pipeline.tools.stripping import Stripper

NIPREPS_HINT = "pip install 'synthseg-pipeline[synthstrip]' (nipreps-synthstrip)"
FREESURFER = Tool(
    "synthstrip",
    f"{FREESURFER_HINT}; or set strip.synthstrip.model to a SynthStrip .pt file and {NIPREPS_HINT}",
    executables=("mri_synthstrip",),
    search_dirs_env=("FREESURFER_HOME",),
)


@dataclass(frozen=True)
class ModelTool(Tool):
    """A console script that also needs a weights file the user supplies."""

    model: str = ""

    def find_executable(self, program: str) -> str | None:
        # A venv's scripts sit beside its Python, on PATH or not.
        beside = Path(sys.executable).parent / program
        return super().find_executable(program) or (str(beside) if beside.is_file() else None)

    def check(self) -> Availability:
        if not Path(self.model).expanduser().is_file():
            return Availability(False, f"model file {self.model} not found (strip.synthstrip.model)")
        return super().check()


def tool_for(config: StripConfig) -> Tool:
    model = config.synthstrip.model
    if model is None:
        return FREESURFER
    return ModelTool("synthstrip (nipreps)", NIPREPS_HINT, executables=("nipreps-synthstrip",), model=model)


def command(source: Path, stripped: Path, mask: Path, config: StripConfig, device: str) -> list[str]:
    tool = tool_for(config)
    program = tool.find_executable(tool.executables[0])
    args = [str(program), "-i", str(source), "-o", str(stripped), "-m", str(mask),
            "-b", str(config.synthstrip.border_mm)]
    if config.synthstrip.model is not None:
        args += ["--model", str(Path(config.synthstrip.model).expanduser())]
    if device == "cuda":
        args.append("-g")
    return args


def strip(image: nib.Nifti1Image, config: StripConfig, device: str) -> np.ndarray:
    with tempfile.TemporaryDirectory(prefix="synthstrip-") as tmp:
        names = ("t1.nii.gz", "brain.nii.gz", "mask.nii.gz")
        source, stripped, mask_path = (Path(tmp, name) for name in names)
        save_nifti(image.get_fdata(dtype=np.float32), image.affine, source)
        run_command(command(source, stripped, mask_path, config, device), "synthstrip")
        mask = nib.load(mask_path)
        if not np.allclose(mask.affine, image.affine, atol=1e-3):
            raise ToolFailed(f"synthstrip wrote its mask on another grid than the input's:\n{mask.affine}")
        return np.asarray(mask.dataobj).reshape(mask.shape[:3]) > 0


STRIPPER = Stripper(tool_for, strip)
