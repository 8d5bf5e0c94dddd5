"""``python -m pipeline bench predict``: how fast a trained model segments whole heads on this machine, as JSON.

Each head goes through ``predict``'s own preparation (acquisition QC, harmonization, the model's stripper, the
crop), timed apart, then every plane of its brain in each of the model's views through the network, in batches
of tiles sized to the device (``--batch-size`` sets it; 1 is one tile a network call, as nnU-Net predicts one
image) in ``predict``'s precision and window (``--precision``, ``--window``), the views fused as ``predict`` fuses
them: planes per second and seconds per head.

    python -m pipeline bench predict --model models/atropos-deepbet --input data/raw/sub-01/anat/sub-01_T1w.nii.gz
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.apps.predict import inputs_of, prepare_head
from pipeline.core.config import Precision, Window
from pipeline.core.io import HEAD_SUFFIXES
from pipeline.imaging.slices import in_view
from pipeline.nnunet.inference import brain_planes, view_scores
from pipeline.nnunet.models import TrainingRecord
from pipeline.nnunet.predictor import SlicePredictor
from pipeline.runtime.devices import torch_device


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a wall-clock time covers it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_inference(model: SlicePredictor, brain: np.ndarray, mask: np.ndarray, record: TrainingRecord,
                   device: str) -> dict:
    """A prepared brain segmented in each of the model's views, fused: the planes the network saw, and the time."""
    start = time.perf_counter()
    np.argmax(view_scores(model.probabilities_in, brain, mask, record.size, record.views), axis=-1)
    synchronize(device)
    seconds = time.perf_counter() - start
    planes = sum(len(brain_planes(in_view(mask, view))) for view in record.views)
    return {"planes": planes, "inference_s": round(seconds, 3), "planes_per_s": round(planes / seconds, 1)}


def time_head(path: Path, model: SlicePredictor, record: TrainingRecord, work: Path, device: str) -> dict:
    """One head: its preparation and its inference timed apart."""
    start = time.perf_counter()
    head = prepare_head(path, record, work)
    brain = head.brain.get_fdata(dtype=np.float32)
    preparation_s = time.perf_counter() - start
    return {"head": path.name, "preprocessing_s": round(preparation_s, 2),
            **time_inference(model, brain, head.mask, record, device)}


def load_model(model_dir: Path, device: str, batch_size: int | None, precision: Precision = "auto",
               window: Window = "nnunet") -> tuple[SlicePredictor, TrainingRecord, float]:
    """A trained model on ``device``, its record, and the seconds it took to load."""
    record = TrainingRecord.read(model_dir)
    start = time.perf_counter()
    model = SlicePredictor.from_folder(model_dir, record.dataset_id, record.trainer, str(record.fold), device, False,
                                       batch_size, precision, window)
    return model, record, time.perf_counter() - start


def summary(model: SlicePredictor, record: TrainingRecord, device: str, load_s: float, rows: list[dict]) -> dict:
    """Planes per second over every head, the median head's seconds, and each head's figures."""
    import torch

    planes, inference = sum(row["planes"] for row in rows), sum(row["inference_s"] for row in rows)
    figures = {"device": device, "threads": torch.get_num_threads(), "tiles_per_call": model.batch_size,
               "precision": model.precision, "mixed_precision": model.mixed_precision, "window": model.window,
               "patch_size": list(model.predictor.configuration_manager.patch_size), "views": record.views,
               "model_load_s": round(load_s, 2), "heads": len(rows), "planes_per_s": round(planes / inference, 1),
               "inference_s_per_head": round(statistics.median(row["inference_s"] for row in rows), 3)}
    if all("preprocessing_s" in row for row in rows):
        figures["preprocessing_s_per_head"] = round(statistics.median(row["preprocessing_s"] for row in rows), 2)
        figures["seconds_per_head"] = round(statistics.median(row["inference_s"] + row["preprocessing_s"]
                                                              for row in rows), 2)
    figures["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None
    return figures | {"per_head": rows}


def benchmark(model_dir: Path, input_path: Path, device: str = "auto", batch_size: int | None = None,
              precision: Precision = "auto", window: Window = "nnunet") -> dict:
    device = torch_device(device)
    model, record, load_s = load_model(model_dir, device, batch_size, precision, window)
    heads = inputs_of(input_path, HEAD_SUFFIXES)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        rows = [time_head(path, model, record, Path(tmp), device) for path in heads]
    return {"model": str(model_dir)} | summary(model, record, device, load_s, rows)
