"""``python -m pipeline predict``: segment new images with a trained model.

A head (.nii, .nii.gz, .mgz, .mgh) goes through the model's own preprocessing (harmonize, strip
with the model's stripper, crop); its axial slice at the reference level (``pipeline.slices``, as
in training and evaluation) or every axial slice is predicted, and the labels are written on the
input's grid (same shape and affine). A PNG slice is predicted as it is and written as a label PNG.

The output folder is a BIDS derivative: ``<entities>_dseg.nii.gz`` per head (``sub-01_T1w.mgz``
gives ``sub-01_dseg.nii.gz``; a non-BIDS name keeps its stem), ``dseg.tsv``,
``dataset_description.json`` (the pipeline's version, the model and its training record),
``tissue_volumes.tsv`` (mL over the predicted slices) and an overlay PNG per head.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

from pipeline import nnunet
from pipeline.bids import write_derivative_description
from pipeline.config import HarmonizeConfig, StripConfig, TrainConfig
from pipeline.devices import torch_device
from pipeline.io import (
    HEAD_SUFFIXES,
    InputError,
    atomic_path,
    image_stem,
    load_nifti,
    load_png,
    save_nifti,
    save_png,
    write_tsv,
)
from pipeline.labels import LABEL_NAMES, coloured, tissue_volumes, voxel_volume_ml
from pipeline.preprocess import crop_to_brain, harmonize_builtin, harmonize_synthsr
from pipeline.slices import center_pad, level_index, reference_level_mm, to_uint8, uncenter
from pipeline.tools.registry import brain_mask

log = logging.getLogger("pipeline")


BIDS_NAME = re.compile(r"^(sub-[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*)_[A-Za-z0-9]+$")  # entities, then a suffix


def inputs_of(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith((*HEAD_SUFFIXES, ".png")))
        if not found:
            raise InputError(f"{path}: no .nii, .nii.gz, .mgz, .mgh or .png files to predict")
        return found
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    return [path]


def case_name(path: Path) -> str:
    """The output's name: a BIDS name's entities (``sub-01_ses-2_T1w.mgz`` -> ``sub-01_ses-2``), else its stem."""
    match = BIDS_NAME.match(image_stem(path))
    return match.group(1) if match else image_stem(path)


@dataclass(frozen=True, eq=False)
class PreparedHead:
    """A head as the model's training data was made."""

    original: nib.Nifti1Image  # as read: the labels are written on its grid
    brain: nib.Nifti1Image  # harmonized, stripped, normalized and cropped
    mask: np.ndarray  # the brain mask on the cropped grid
    level_mm: float  # the reference axial level (world z), found on the harmonized head


def preprocess_head(path: Path, model: dict, work: Path) -> PreparedHead:
    """The input head through the model's harmonization and stripper, and its reference level."""
    original = load_nifti(path, image_stem(path))
    harmonize = HarmonizeConfig.model_validate(model["harmonize"])
    if harmonize.method == "synthsr":
        target = work / "synthsr" / f"{image_stem(path)}.nii.gz"
        harmonized, _ = harmonize_synthsr(path, target, harmonize, threads=len(os.sched_getaffinity(0)))
    else:
        harmonized, _ = harmonize_builtin(original, harmonize)
    strip = StripConfig.model_validate(model["strip"])
    mask = brain_mask(model["stripper"], harmonized, strip)
    brain, cropped_mask = crop_to_brain(harmonized, mask, strip.crop_margin_vox)
    return PreparedHead(original, brain, np.asarray(cropped_mask.dataobj) > 0, reference_level_mm(harmonized))


def labels_on_grid(labels: np.ndarray, affine: np.ndarray, plane: int | None, shape: tuple[int, ...],
                   target_affine: np.ndarray) -> np.ndarray:
    """Predicted axial plane(s) of ``labels`` carried onto another grid (the input's), nearest neighbour.

    ``plane``: the one predicted axial plane, or None when every plane was predicted. A target voxel
    takes the label of the nearest predicted plane that passes through it: plain nearest-neighbour
    resampling would miss a single 1 mm plane lying between two thicker input slices.
    """
    to_labels = np.linalg.inv(affine) @ target_affine
    thickness = float(np.abs(to_labels[2, :3]).sum())  # a target voxel's depth, in label-grid slices
    reach = max(0.5, thickness / 2)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    x, y, z = (to_labels[:3, :3] @ ijk + to_labels[:3, 3:]).astype(np.float32)
    nearest = np.clip(np.round(z), 0, labels.shape[2] - 1).astype(int) if plane is None else np.full(len(z), plane)
    xi, yi = np.round(x).astype(int), np.round(y).astype(int)
    inside = (np.abs(z - nearest) <= reach) & (xi >= 0) & (xi < labels.shape[0]) & (yi >= 0) & (yi < labels.shape[1])
    out = np.zeros(len(z), np.uint8)
    out[inside] = labels[xi[inside], yi[inside], nearest[inside]]
    return out.reshape(shape)


def predict_heads(heads: list[Path], model_dir: Path, model: dict, output: Path, work: Path, all_slices: bool,
                  run) -> None:
    prepared = {}
    for path in heads:
        log.info("predict: preprocessing %s", path)
        head = preprocess_head(path, model, work)
        data = head.brain.get_fdata(dtype=np.float32)
        ks = range(data.shape[2]) if all_slices else [level_index(head.brain, head.level_mm)]
        for k in ks:
            slice_png = work / "images" / f"{image_stem(path)}-{k:04d}_0000.png"
            save_png(center_pad(to_uint8(data[:, :, k], head.mask[:, :, k]), model["size"]), slice_png)
        prepared[path] = (head, list(ks))
    run(work / "images", work / "predictions")
    volumes = []
    for path, (head, ks) in prepared.items():
        brain, original = head.brain, head.original
        labels = np.zeros(brain.shape, np.uint8)
        for k in ks:
            canvas = load_png(work / "predictions" / f"{image_stem(path)}-{k:04d}.png")
            labels[:, :, k] = uncenter(canvas, brain.shape[:2])
        plane = None if all_slices else ks[0]
        on_input = labels_on_grid(labels, brain.affine, plane, original.shape[:3], original.affine)
        target = output / f"{case_name(path)}_dseg.nii.gz"
        save_nifti(on_input, original.affine, target)
        k = level_index(brain, head.level_mm)
        save_overlay(head.brain.get_fdata(dtype=np.float32)[:, :, k], labels[:, :, k],
                     output / f"{case_name(path)}_dseg.png")
        ml = {key: round(value, 2) for key, value in tissue_volumes(labels, voxel_volume_ml(brain.affine)).items()
              if key.endswith("_ml")}
        volumes.append({"case": case_name(path), "source": str(path), "slices": len(ks), **ml})
        log.info("predict: %s -> %s", path, target)
    write_tsv(volumes, output / "tissue_volumes.tsv")


def save_overlay(image: np.ndarray, labels: np.ndarray, path: Path) -> None:
    """The reference-level slice with its tissues over it, anterior up."""
    grey = np.repeat(to_uint8(image, image > 0)[..., None], 3, axis=2).astype(np.float32)
    blended = np.where(labels[..., None] > 0, 0.55 * grey + 0.45 * coloured(labels), grey)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(np.rot90(blended).astype(np.uint8)).save(tmp, format="PNG")


def write_description(output: Path, model_dir: Path, model: dict) -> None:
    """``output`` as a BIDS derivative: its label table and where the labels came from."""
    write_tsv([{"index": index, "name": name} for index, name in LABEL_NAMES.items()], output / "dseg.tsv")
    write_derivative_description(output, "synthseg-pipeline predictions",
                                 f"predict: nnU-Net 2D model {model['segmenter']}-{model['stripper']}",
                                 Model=str(model_dir.resolve()), TrainingRecord=model)


def predict_pngs(slices: list[Path], output: Path, work: Path, run) -> None:
    for path in slices:
        with Image.open(path) as image:
            save_png(np.asarray(image.convert("L")), work / "slices" / f"{image_stem(path)}_0000.png")
    run(work / "slices", work / "slice-predictions")
    for path in slices:
        shutil.copyfile(work / "slice-predictions" / f"{image_stem(path)}.png", output / f"{image_stem(path)}.png")
        log.info("predict: %s -> %s", path, output / f"{image_stem(path)}.png")


def predict(model_dir: Path, input_path: Path, output: Path, all_slices: bool = False, device: str = "auto",
            tta: bool = False, fold: int | str | None = None) -> None:
    """``fold``: None for the fold the model was trained on."""
    record = model_dir / "training.json"
    if not record.is_file():
        raise InputError(f"{model_dir}: not a trained model folder (no training.json)")
    model = json.loads(record.read_text())
    files = inputs_of(input_path)
    output.mkdir(parents=True, exist_ok=True)
    train = TrainConfig(device=device)
    device = torch_device(train.device)
    fold = model["fold"] if fold is None else fold
    with tempfile.TemporaryDirectory(prefix="predict-") as tmp:
        work = Path(tmp)
        env = nnunet.environment(work, work, model_dir, len(os.sched_getaffinity(0)))

        def run(images: Path, predictions: Path) -> None:
            nnunet.predict(images, predictions, model.get("dataset_id", 1), str(fold), device, env, tta=tta,
                           trainer=model["trainer"])

        heads = [f for f in files if f.suffix != ".png"]
        slices = [f for f in files if f.suffix == ".png"]
        if heads:
            predict_heads(heads, model_dir, model, output, work, all_slices, run)
        if slices:
            predict_pngs(slices, output, work, run)
    write_description(output, model_dir, model)
