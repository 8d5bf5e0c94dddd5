"""``python -m pipeline bench cross-site``: a model trained at one site, scored at another against its reference
labels, clean and degraded as other scanners and protocols would give the heads, as JSON.

Training is ``bench real``'s study on the training site's BIDS folder (``dvc repro`` in a work folder holding
this project's code; default ``ds000011``: heads with skull, another scanner). Every head of the test site
(default ``oasis-manual``, with its manual labels) then goes through ``predict`` with each strategy's model (its
own harmonization and stripping, as any new head), clean and in each degraded condition, and is scored over the
whole head in 3D against its reference labels: Dice per tissue, the mean over heads with a 95 % bootstrap
interval over heads, and each condition's loss against the clean heads. A degraded head keeps the clean head's
grid, so the clean head's labels score it, except on a grid of its own (``-grid``):

- ``axial-3mm``, ``coronal-5mm``, ...: thick slices, the head averaged over blocks of that thickness along the
  superior (axial slices) or anterior (coronal) axis, as a thick-slice acquisition integrates, then linearly
  interpolated back to the grid, as such a scan is upsampled for segmentation;
- ``coronal-1.5mm-grid``, ...: a head acquired and kept on thicker slices (IBSR's heads: 1.5 mm coronal): the
  head on a grid whose voxels are that thick along the slices' axis, each the average over its extent
  (``pipeline.imaging.grids.averaged_on_grid``); its reference carried there as raters on that grid would draw
  it, each voxel the tissue that fills most of it, and scored there, where ``predict`` writes its labels;
- ``bias``: a smooth multiplicative field, exp of a Gaussian field (``BIAS_LOG_SD``) on a 4 x 4 x 4 grid,
  cubic-interpolated over the head (N4 in harmonization has to undo it);
- ``noise``: Rician noise, sd ``NOISE_SHARE`` of the head's 99th-percentile intensity.

Degradations are seeded by the head: the same heads always get the same fields and noise.

    python -m pipeline bench cross-site --workdir /tmp/bench-cross-site
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import yaml
from scipy import ndimage

from pipeline.apps.bench_real import benchmark as train_study
from pipeline.apps.predict import segment_head_file
from pipeline.core.config import Precision, Window, parse_config
from pipeline.core.io import InputError, save_nifti, write_tsv
from pipeline.core.labels import one_hot
from pipeline.evaluation.compare import mean_ci95
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.evaluation.references import check_left_right, check_on_head, read_reference, reference_file, within
from pipeline.imaging.grids import averaged_on_grid, scores_on_grid
from pipeline.nnunet.models import TrainingRecord
from pipeline.nnunet.predictor import SlicePredictor
from pipeline.runtime.devices import torch_device
from pipeline.sources.local_bids import bids_scans

log = logging.getLogger("pipeline")

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
TRAIN_ROOT = SHARED_DATA / "ds000011"
TEST_ROOT = SHARED_DATA / "oasis-manual"
CONDITIONS = ("clean", "axial-3mm", "axial-5mm", "coronal-3mm", "coronal-5mm", "coronal-1.5mm-grid", "bias",
              "noise")
SLICE_AXES = {"axial": "S", "coronal": "A"}  # the world direction a view's slices are stacked along
CONDITION = re.compile(r"^(clean|bias|noise|(?P<view>axial|coronal)-(?P<mm>\d+(\.\d+)?)mm(?P<grid>-grid)?)$")
OPPOSITE = {"S": "I", "A": "P"}
BIAS_LOG_SD = 0.3  # sd of the log bias field: lab2im's bias_field_std, a strong but plausible field
NOISE_SHARE = 0.04  # noise sd / the head's 99th percentile
SCORED = ("GM", "WM")  # CSF in manual labels is often the ventricles only


def slice_axis(affine: np.ndarray, view: str) -> int:
    """The voxel axis closest to the world direction ``view``'s slices are stacked along."""
    codes = nib.aff2axcodes(affine)
    wanted = SLICE_AXES[view]
    return next(axis for axis, code in enumerate(codes) if code in (wanted, OPPOSITE[wanted]))


def thick_slices(data: np.ndarray, axis: int, block: int) -> np.ndarray:
    """``data`` averaged over blocks of ``block`` voxels along ``axis`` and interpolated back (linear, between
    block centres; the edge blocks held)."""
    moved = np.moveaxis(data, axis, 0)
    length = moved.shape[0]
    blocks = -(-length // block)
    padded = np.pad(moved, [(0, blocks * block - length)] + [(0, 0)] * (moved.ndim - 1), mode="edge")
    means = padded.reshape(blocks, block, *moved.shape[1:]).mean(axis=1)
    position = np.clip((np.arange(length) - (block - 1) / 2) / block, 0, blocks - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, blocks - 1)
    weight = (position - low).reshape(-1, *[1] * (moved.ndim - 1))
    return np.moveaxis(means[low] * (1 - weight) + means[high] * weight, 0, axis)


def degrade(image: nib.Nifti1Image, condition: str, rng: np.random.Generator) -> np.ndarray:
    """The head's intensities as ``condition`` (``CONDITIONS``, or ``<view>-<mm>mm``) degrades them."""
    data = image.get_fdata(dtype=np.float32)
    if condition == "bias":
        field = ndimage.zoom(rng.normal(0, BIAS_LOG_SD, (4, 4, 4)), np.array(data.shape) / 4, order=3,
                             mode="nearest")
        return data * np.exp(field[tuple(slice(0, n) for n in data.shape)])
    if condition == "noise":
        sd = NOISE_SHARE * float(np.percentile(data[data > 0], 99))
        return np.hypot(data + rng.normal(0, sd, data.shape), rng.normal(0, sd, data.shape))  # Rician
    parts = CONDITION.match(condition)
    if parts is None or not parts["view"] or parts["grid"]:
        raise ValueError(f"unknown condition {condition!r}: one of {', '.join(CONDITIONS)}, or <view>-<mm>mm")
    axis = slice_axis(image.affine, parts["view"])
    voxel = float(np.linalg.norm(image.affine[:3, axis]))
    return thick_slices(data, axis, max(1, round(float(parts["mm"]) / voxel)))


def on_thick_slices(image: nib.Nifti1Image, condition: str) -> nib.Nifti1Image:
    """The head on a grid of its own (``<view>-<mm>mm-grid``): voxels ``mm`` thick along the view's slice axis,
    the in-plane voxels as they are; each the head's average over its extent."""
    parts = CONDITION.match(condition)
    axis = slice_axis(image.affine, parts["view"])
    scale = float(parts["mm"]) / float(np.linalg.norm(image.affine[:3, axis]))
    affine = image.affine.copy()
    affine[:3, axis] *= scale
    affine[:3, 3] += image.affine[:3, axis] * (scale - 1) / 2  # the first slice starts where the head does
    shape = list(image.shape[:3])
    shape[axis] = int(np.ceil(shape[axis] / scale))
    return nib.Nifti1Image(averaged_on_grid(image.get_fdata(dtype=np.float32), image.affine, tuple(shape), affine),
                           affine)


def degraded_head(path: Path, case: str, condition: str, folder: Path) -> Path:
    """The head file ``condition`` scores: the clean one itself, or its degraded copy (written once, in a folder
    named by a digest of its path: a work folder reused for another test site never scores the first's copy)."""
    if condition == "clean":
        return path
    path_digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    target = folder / condition / path_digest / f"sub-{case}_T1w.nii.gz"
    if not target.is_file():
        image = nib.load(path)
        if (parts := CONDITION.match(condition)) and parts["grid"]:  # else degrade() names a bad condition
            moved = on_thick_slices(image, condition)
            save_nifti(moved.get_fdata(dtype=np.float32), moved.affine, target)
        else:
            rng = np.random.default_rng([*condition.encode(), 0, *case.encode()])
            save_nifti(degrade(image, condition, rng).astype(np.float32), image.affine, target)
    return target


def score_site(model_dir: Path, heads: list[SiteHead], conditions: list[str], work: Path, device: str,
               precision: Precision, window: Window = "nnunet") -> list[dict]:
    """One row per (head, condition): the model's whole-head Dice against the head's reference tissues (on its
    drawn planes where it is sparse)."""
    record = TrainingRecord.read(model_dir)
    model = SlicePredictor.from_folder(model_dir, record.dataset_id, record.trainer, str(record.fold),
                                       torch_device(device), False, precision=precision, window=window)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cross-site-") as tmp:
        for head in heads:
            for condition in conditions:
                start = time.monotonic()
                source = degraded_head(head.path, head.case, condition, work / "heads")
                output = work / f"{record.segmenter}-{record.stripper}" / condition
                predicted = segment_head_file(source, model, record, output, Path(tmp), "brain", allow_non_t1=True)
                labels = nib.load(output / f"{predicted['case']}_dseg.nii.gz")
                scored, reference = reference_on(head, labels)
                tissues = np.asarray(labels.dataobj)
                check_left_right(head.case, head.reference_file, reference, tissues, labels.affine, scored,
                                 f"the model's labels of {source}")
                dice = dice_per_tissue(*within(scored, reference, tissues))
                rows.append({"case": head.case, "condition": condition, **{k: round(v, 4) for k, v in dice.items()},
                             "seconds": round(time.monotonic() - start, 1)})
                log.info("cross-site sub-%s %s: %s", head.case, condition, rows[-1])
    return rows


def reference_on(head: SiteHead, grid: nib.Nifti1Image) -> tuple[np.ndarray | None, np.ndarray]:
    """Where the head's reference is scored on ``grid`` and its tissues there: as they are on the head's own grid;
    on another (a ``-grid`` condition's), each voxel the tissue that fills most of it, as raters would draw it."""
    own = head.image
    if grid.shape[:3] == own.shape[:3] and np.allclose(grid.affine, own.affine, atol=1e-4):
        return head.scored, head.reference
    shape = grid.shape[:3]
    if head.scored is None:
        return None, scores_on_grid(one_hot(head.reference), own.affine, shape, grid.affine)
    scored = scores_on_grid(np.stack([~head.scored, head.scored], axis=-1).astype(np.float32), own.affine, shape,
                            grid.affine) == 1
    # the tissue filling most of a voxel's scored part: unscored voxels (undrawn, left out) are no background vote
    return scored, scores_on_grid(one_hot(head.reference) * head.scored[..., None], own.affine, shape, grid.affine)


def summarise(rows: list[dict], conditions: list[str]) -> dict:
    """Per condition and tissue: the mean over heads, its 95 % CI, and the loss against the clean heads."""
    summary = {}
    for condition in conditions:
        chosen = [row for row in rows if row["condition"] == condition]
        summary[condition] = {"n": len(chosen)}
        for tissue in SCORED:
            scores = {row["case"]: [row[tissue]] for row in chosen}
            mean = float(np.mean([row[tissue] for row in chosen]))
            ci = mean_ci95(scores)
            summary[condition][tissue] = {"mean": round(mean, 4), "ci95": ci and [round(v, 4) for v in ci]}
            if condition != "clean" and "clean" in summary:
                summary[condition][tissue]["minus_clean"] = round(mean - summary["clean"][tissue]["mean"], 4)
    return summary


class SiteHead(NamedTuple):
    """A test-site head and what it is scored against."""

    case: str
    path: Path  # the head file
    reference_file: Path  # its reference labels
    image: nib.Nifti1Image  # the head (its header: the grid its reference is on)
    reference: np.ndarray  # its reference tissues, on the head's grid
    scored: np.ndarray | None  # where they are scored (``Reference.on_grid``; None: every voxel)


def site_heads(root: Path, reference: Path, scheme: str, subjects: list[str]) -> list[SiteHead]:
    """Every test-site head with reference labels."""
    heads = []
    for scan in bids_scans(root, subjects):
        labels = reference_file(reference, scan.case, scan.path)
        if labels is None:
            log.warning("bench cross-site: sub-%s has no reference labels under %s; skipped", scan.case, reference)
            continue
        image = nib.load(scan.path)
        native = read_reference(labels, reference, scheme, scan.case)
        # the test site's heads are brains (``segment_head_file``'s "brain"): each its own mask
        check_on_head(scan.case, labels, native, image, None, f"{scan.path} (its non-zero voxels)")
        heads.append(SiteHead(scan.case, scan.path, labels, image, *native.on_grid(image)))
    if not heads:
        raise SystemExit(f"bench cross-site: no head under {root} has reference labels under {reference}")
    return heads


def benchmark(train_root: Path, test_root: Path, reference: Path, workdir: Path, *, train_subjects: list[str],
              test_subjects: list[str], train_test_fraction: float, conditions: list[str], scheme: str,
              device: str, overrides: list[str]) -> dict:
    start = time.monotonic()
    unknown = [condition for condition in conditions if not CONDITION.match(condition)]
    if unknown:  # before training
        raise InputError(f"bench cross-site: unknown condition(s) {', '.join(unknown)}: clean, bias, noise, "
                         "<axial|coronal>-<mm>mm or <axial|coronal>-<mm>mm-grid")
    heads = site_heads(test_root, reference, scheme, test_subjects)  # before training: a bad folder stops at once
    trained = train_study(train_root, None, train_subjects, train_test_fraction, workdir, overrides)
    params = parse_config(yaml.safe_load((workdir / "params.yaml").read_text()), "bench cross-site")
    strategies = {}
    for segmenter, stripper in params.combos():
        combo = f"{segmenter}-{stripper}"
        print(f"bench cross-site: {combo} on {len(heads)} heads of {test_root}, {len(conditions)} conditions",
              file=sys.stderr)
        rows = score_site(workdir / "models" / combo, heads, conditions, workdir / "cross-site", device,
                          params.train.predict_precision, params.train.predict_window)
        write_tsv(rows, workdir / "cross-site" / f"{combo}-cases.tsv")
        strategies[combo] = {"training_site": trained["strategies"][combo], "test_site": summarise(rows, conditions)}
    return {"train_root": str(train_root), "test_root": str(test_root), "reference": str(reference),
            "conditions": conditions, "overrides": overrides, "workdir": str(workdir), "n_test_heads": len(heads),
            "train_wall_s": trained["wall_s"], "wall_s": round(time.monotonic() - start, 1),
            "strategies": strategies}
