"""``python -m pipeline bench strip``: each skull stripper's seconds, brain volume and agreement on real heads, as
JSON.

Each head is harmonized as a study harmonizes it by default (builtin: RAS, 1 mm, N4), then masked by each stripper
in turn through the strip stage's own call (``pipeline.tools.registry.brain_mask``), each timed alone; the masks
are compared pairwise (Dice on the harmonized grid). A stripper whose tool is missing stops it with what to
install.

    python -m pipeline bench strip --input ../shared/data/ds000011/sub-01/anat/sub-01_T1w.nii.gz \\
        --method deepbet --method hdbet --method robex
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

from pipeline.apps.predict import inputs_of
from pipeline.core.config import HarmonizeConfig, StripConfig
from pipeline.core.io import HEAD_SUFFIXES, image_stem, load_nifti
from pipeline.core.labels import voxel_volume_ml
from pipeline.evaluation.dice import dice
from pipeline.imaging.preprocess import harmonize_builtin
from pipeline.runtime.devices import torch_device
from pipeline.tools.registry import brain_mask


def strip_head(path: Path, methods: Sequence[str]) -> dict:
    """One head harmonized, then each stripper's seconds and brain volume, and the masks' pairwise Dice."""
    image, _ = harmonize_builtin(load_nifti(path, image_stem(path)), HarmonizeConfig())
    row: dict = {"head": path.name}
    masks = {}
    for method in methods:
        start = time.perf_counter()
        masks[method] = brain_mask(method, image, StripConfig())
        row[method] = {"seconds": round(time.perf_counter() - start, 2),
                       "brain_ml": round(float(masks[method].sum()) * voxel_volume_ml(image.affine), 1)}
    row["agreement_dice"] = {f"{a}-{b}": round(dice(masks[a], masks[b], True), 4)
                             for a, b in itertools.combinations(methods, 2)}
    return row


def benchmark(input_path: Path, methods: Sequence[str]) -> dict:
    import torch

    rows = [strip_head(path, methods) for path in inputs_of(input_path, HEAD_SUFFIXES)]
    return {"device": torch_device(), "threads": torch.get_num_threads(), "heads": len(rows),
            "seconds_per_head": {method: statistics.median(row[method]["seconds"] for row in rows)
                                 for method in methods},
            "cases": rows}
