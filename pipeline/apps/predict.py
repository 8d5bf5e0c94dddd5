"""``python -m pipeline predict``: segment new heads with a trained model.

A head (.nii, .nii.gz, .mgz, .mgh) goes through what the model's training data went through (``prepare_head``:
the acquisition QC, harmonization, the model's stripper, the crop), then every plane of its brain is
predicted in each view the model was trained on, the views fused by summing class probabilities
(``pipeline.nnunet.inference``; ``slices="reference"``: the axial plane at its reference level only) and the labels
are written on the input's grid (same shape and affine). A head whose contrast is not T1-like is refused, naming
the file, unless ``allow_non_t1``. A PNG slice is predicted as it is and written as a label PNG.

The output folder is a BIDS derivative: ``<entities>_dseg.nii.gz`` per head (``sub-01_T1w.mgz`` gives
``sub-01_dseg.nii.gz``; a non-BIDS name keeps its stem), ``dseg.tsv``, ``dataset_description.json`` (the
pipeline's version, the model and its training record), ``tissue_volumes.tsv`` (mL of GM, WM and CSF over the
predicted planes, with each head's QC flags) and a three-plane picture per head.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from PIL import Image

from pipeline.core.bids import write_derivative_description, write_dseg_table
from pipeline.core.config import ExecutorConfig, Precision, Window
from pipeline.core.io import HEAD_SUFFIXES, InputError, image_stem, save_nifti, save_png, write_tsv
from pipeline.core.labels import TISSUES, tissue_volumes, voxel_volume_ml
from pipeline.imaging.grids import scores_on_grid
from pipeline.imaging.overlays import brain_centre, three_planes
from pipeline.imaging.preprocess import crop_to_brain, harmonize
from pipeline.imaging.slices import level_index
from pipeline.nnunet.inference import Segmenter, predict_planes, view_scores
from pipeline.nnunet.models import TrainingRecord
from pipeline.nnunet.predictor import SlicePredictor
from pipeline.runtime.devices import job_device, torch_device
from pipeline.runtime.executors import Slurm
from pipeline.synth.classes import kmeans_1d
from pipeline.tools.registry import brain_mask

log = logging.getLogger("pipeline")


BIDS_NAME = re.compile(r"^(sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_[A-Za-z0-9]+$")  # entities, then a suffix
Slices = Literal["brain", "reference"]


def inputs_of(path: Path, suffixes: tuple[str, ...] = (*HEAD_SUFFIXES, ".png")) -> list[Path]:
    """``path`` itself, or the files of the folder ``path``, whose names end in one of ``suffixes`` (heads, and by
    default PNG slices too)."""
    kinds = " or ".join(filter(None, (", ".join(suffixes[:-1]), suffixes[-1])))
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith(suffixes))
        if not found:
            raise InputError(f"{path}: no {kinds} files")
        return found
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    if not path.name.endswith(suffixes):
        raise InputError(f"{path}: not a {kinds} file")
    return [path]


def case_name(path: Path) -> str:
    """The output's name: a BIDS name's entities (``sub-01_ses-2_T1w.mgz`` -> ``sub-01_ses-2``), else its stem."""
    match = BIDS_NAME.match(image_stem(path))
    return match.group(1) if match else image_stem(path)


def intensity_classes(brain: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Shares of the brain's voxels in three intensity classes (1D k-means), darkest first."""
    values = brain[mask].astype(np.float64)[::7]  # every 7th voxel: the same shares, a seventh of the time
    return np.bincount(kmeans_1d(values, 3), minlength=3) / values.size


def t1_contrast(brain: np.ndarray, mask: np.ndarray) -> str | None:
    """Why the brain does not look T1-weighted, or None. On a T1 the largest tissue, white matter, is the
    brightest and CSF, a small share, the darkest; on a T2-weighted (or inverted) scan CSF is the brightest
    and white matter the darkest, so the brightest of three intensity classes holds fewer voxels than the
    darkest. Measured on 10 real T1 brains (OASIS) as ``predict`` sees them (harmonized, deepbet's mask): brightest
    36-42 %, darkest 6-15 %; raw, inside the generous manual masks: brightest 34-38 %, darkest 20-32 %."""
    dark, _, bright = intensity_classes(brain, mask)
    if bright > dark:
        return None
    return (f"the contrast is not T1-like: inside the brain mask the brightest of three intensity classes holds "
            f"{bright:.0%} of the voxels and the darkest {dark:.0%} (on a T1, bright white matter outweighs dark "
            "CSF); is it T2-weighted, FLAIR or inverted?")


@dataclass(frozen=True, eq=False)
class PreparedHead:
    """A head as the model's training data was made."""

    original: nib.Nifti1Image  # as read: the labels are written on its grid
    brain: nib.Nifti1Image  # harmonized, stripped, normalized and cropped
    mask: np.ndarray  # the brain mask on the cropped grid
    level_mm: float  # the reference axial level (world z), found on the harmonized head
    flags: list[str]  # what the QC found (thick slices, a contrast let through)


def prepare_head(path: Path, record: TrainingRecord, work: Path, allow_non_t1: bool = False) -> PreparedHead:
    """The input head through the study's acquisition QC and harmonization and the model's stripper; refused
    when it does not look T1-weighted (``allow_non_t1``: flagged instead)."""
    head = harmonize(path, image_stem(path), record.harmonize, work / "synthsr" / f"{image_stem(path)}.nii.gz",
                     threads=len(os.sched_getaffinity(0)))
    mask = brain_mask(record.stripper, head.image, record.strip)
    if not mask.any():
        raise InputError(f"file {path}: {record.stripper} found no brain")
    brain, cropped_mask = crop_to_brain(head.image, mask, record.strip.crop_margin_vox)
    inside = np.asarray(cropped_mask.dataobj) > 0
    flags = list(head.record["QCFlags"])
    contrast = t1_contrast(brain.get_fdata(dtype=np.float32), inside)
    if contrast and not allow_non_t1:
        raise InputError(f"file {path}: {contrast} The model was trained on T1-weighted heads; pass "
                         "--allow-non-t1 to segment it anyway")
    if contrast:
        flags.append(contrast)
        log.warning("predict %s: %s", path, contrast)
    return PreparedHead(nib.load(path), brain, inside, head.level_mm, flags)


def plane_on_grid(labels: np.ndarray, affine: np.ndarray, plane: int, shape: tuple[int, ...],
                  target_affine: np.ndarray) -> np.ndarray:
    """The one predicted axial plane of ``labels`` carried onto another grid (the input's), nearest neighbour:
    the target voxels it passes through take its labels, as plain nearest-neighbour resampling would miss a 1 mm
    plane lying between two thicker input slices. (A whole prediction goes to the input's grid as its scores:
    ``scores_on_grid``.)
    """
    to_labels = np.linalg.inv(affine) @ target_affine
    thickness = float(np.abs(to_labels[2, :3]).sum())  # a target voxel's depth, in label-grid slices
    reach = max(0.5, thickness / 2)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (to_labels[:3, :3] @ ijk + to_labels[:3, 3:]).astype(np.float32)
    xi, yi = np.round(x).astype(int), np.round(y).astype(int)
    inside = (np.abs(z - plane) <= reach) & (xi >= 0) & (xi < labels.shape[0]) & (yi >= 0) & (yi < labels.shape[1])
    out = np.zeros(len(z), np.uint8)
    out[inside] = labels[xi[inside], yi[inside], plane]
    return out.reshape(shape)


def segment_head_file(path: Path, model: SlicePredictor, record: TrainingRecord, output: Path, work: Path,
                      slices: Slices, allow_non_t1: bool) -> dict:
    """One head's labels on its own grid, its picture; returns its ``tissue_volumes.tsv`` row."""
    head = prepare_head(path, record, work, allow_non_t1)
    plane = level_index(head.brain, head.level_mm)
    brain = head.brain.get_fdata(dtype=np.float32)
    original = head.original
    if slices == "reference":
        labels = predict_planes(model, brain, head.mask, record.size, [plane])
        on_input = plane_on_grid(labels, head.brain.affine, plane, original.shape[:3], original.affine)
    else:  # the scores, not the labels, go to the input's grid: a thick slice takes the tissue that fills it most
        scores = view_scores(model.probabilities_in, brain, head.mask, record.size, record.views,
                             label=f"predict {path.name}")
        labels = np.argmax(scores, axis=-1).astype(np.uint8)
        on_input = scores_on_grid(scores, head.brain.affine, original.shape[:3], original.affine)
    save_nifti(on_input, original.affine, output / f"{case_name(path)}_dseg.nii.gz", dtype=np.uint8)
    three_planes(brain, [(f"{record.segmenter}-{record.stripper} model", labels)],
                 output / f"{case_name(path)}_dseg.png", case_name(path), brain_centre(head.mask, plane))
    volumes = tissue_volumes(labels, voxel_volume_ml(head.brain.affine))
    return {"case": case_name(path), "source": str(path), "slices": slices,
            "planes": int(np.any(labels > 0, axis=(0, 1)).sum()),
            **{f"{name}_ml": round(volumes[f"{name}_ml"], 2) for name in TISSUES.values()},
            "qc_flags": "; ".join(head.flags) or "none"}


def write_description(output: Path, model_dir: Path, record: TrainingRecord, precision: Precision, window: Window,
                      mixed_precision: bool | None) -> None:
    """``output`` as a BIDS derivative: its label table and where the labels came from (the model, and the
    arithmetic it ran in: ``mixed_precision`` None where SLURM jobs ran it on their own machines)."""
    write_dseg_table(output)
    write_derivative_description(output, "synthseg-pipeline predictions",
                                 f"predict: nnU-Net 2D model {record.segmenter}-{record.stripper}",
                                 Model=str(model_dir.resolve()), TrainingRecord=record.model_dump(mode="json"),
                                 Precision=precision, MixedPrecision=mixed_precision, Window=window)


def predict_pngs(slices: list[Path], output: Path, segment: Segmenter) -> None:
    for path in slices:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"))
        save_png(segment(grey[None])[0], output / f"{image_stem(path)}.png")
        log.info("predict: %s -> %s", path, output / f"{image_stem(path)}.png")


def predict_alone(path: Path, threads: int, model_dir: Path, output: Path, slices: Slices, device: str, tta: bool,
                  precision: Precision, window: Window, fold: str, allow_non_t1: bool) -> dict:
    """One head with a model loaded for it: what a SLURM job of ``predict`` runs."""
    record = TrainingRecord.read(model_dir)
    model = SlicePredictor.from_folder(model_dir, record.dataset_id, record.trainer, fold, torch_device(device), tta,
                                       precision=precision, window=window)
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        return segment_head_file(path, model, record, output, Path(tmp), slices, allow_non_t1)


def predict_on_slurm(heads: list[Path], executor: ExecutorConfig, **arguments: object) -> Iterator[dict]:
    """Every head as a task of one SLURM array with the training resources (a GPU each); their rows as they end,
    or the first failure, naming the head, the job and its log."""
    work = functools.partial(predict_alone, **arguments)
    for _, job in Slurm(executor.slurm).map("predict", work, heads, gpu=True):
        outcome = job.outcome()
        if outcome.error is not None:
            raise InputError(f"{outcome.error} [{job.where()}]") if isinstance(outcome.error, InputError) \
                else outcome.error
        yield outcome.value


def predict(model_dir: Path, input_path: Path, output: Path, slices: Slices = "brain", device: str = "auto",
            tta: bool = False, precision: Precision = "auto", window: Window = "nnunet", fold: int | str | None = None,
            allow_non_t1: bool = False, executor: ExecutorConfig | None = None) -> None:
    """``fold``: None for the fold the model was trained on; ``executor``: where the heads are segmented (here,
    one after the other, or with ``kind: slurm`` each as a SLURM job)."""
    record = TrainingRecord.read(model_dir)
    files = inputs_of(input_path)
    heads = [f for f in files if f.suffix != ".png"]
    if heads and slices == "brain" and record.levels == "reference":
        log.warning("predict: this model was trained on each subject's reference level only (synth.levels: "
                    "reference); planes far from it are outside what it learned")
    output.mkdir(parents=True, exist_ok=True)
    fold = str(record.fold if fold is None else fold)
    if executor is not None and executor.kind == "slurm" and heads:
        rows = list(predict_on_slurm(heads, executor, model_dir=model_dir.resolve(), output=output.resolve(),
                                     slices=slices, device=job_device(device, executor), tta=tta,
                                     precision=precision, window=window, fold=fold,
                                     allow_non_t1=allow_non_t1))
        heads = []
    else:
        rows = []
    model = SlicePredictor.from_folder(model_dir, record.dataset_id, record.trainer, fold, torch_device(device), tta,
                                       precision=precision, window=window
                                       ) if heads or any(f.suffix == ".png" for f in files) else None
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        for number, path in enumerate(heads, start=1):
            start = time.monotonic()
            row = segment_head_file(path, model, record, output, Path(tmp), slices, allow_non_t1)
            rows.append(row)
            log.info("predict [%d/%d] %s: %.0f s, GM %.0f mL, WM %.0f mL, CSF %.0f mL over %d planes%s -> %s",
                     number, len(heads), path.name, time.monotonic() - start, row["GM_ml"], row["WM_ml"],
                     row["CSF_ml"], row["planes"], "" if row["qc_flags"] == "none" else f"; QC: {row['qc_flags']}",
                     output / f"{row['case']}_dseg.nii.gz")
    if rows:
        write_tsv(rows, output / "tissue_volumes.tsv")
    pngs = [f for f in files if f.suffix == ".png"]
    if pngs:
        predict_pngs(pngs, output, model)
    write_description(output, model_dir, record, precision, window if model is None else model.window,
                      None if model is None else model.mixed_precision)
