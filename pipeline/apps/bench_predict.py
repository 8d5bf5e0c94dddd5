"""``python -m pipeline bench predict``: how fast a trained model segments whole heads on this machine, as JSON.

Each head goes through ``predict``'s own preparation (acquisition QC, harmonization, the model's stripper, the
crop), timed apart, then every plane of its brain in each of the model's views through the network, in batches
of tiles sized to the device (``--batch-size`` sets it; 1 is one tile a network call, as nnU-Net predicts one
image), the views fused as ``predict`` fuses them: planes per second and seconds per head.

    python -m pipeline bench predict --model models/hmrf-deepbet --input data/raw/sub-01/anat/sub-01_T1w.nii.gz
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.apps.predict import inputs_of, prepare_head
from pipeline.devices import torch_device
from pipeline.inference import brain_planes, predict_views
from pipeline.nnunet.models import SlicePredictor, TrainingRecord
from pipeline.slices import in_view


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a wall-clock time covers it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_head(path: Path, model: SlicePredictor, record: TrainingRecord, work: Path, device: str) -> dict:
    """One head: its preparation and its inference timed apart, and the planes the network segmented."""
    start = time.perf_counter()
    head = prepare_head(path, record, work)
    brain = head.brain.get_fdata(dtype=np.float32)
    prepared = time.perf_counter()
    predict_views(model, model.probabilities_in, brain, head.mask, record.size, record.views)
    synchronize(device)
    done = time.perf_counter()
    planes = sum(len(brain_planes(in_view(head.mask, view))) for view in record.views)
    return {"head": path.name, "planes": planes, "preprocessing_s": round(prepared - start, 2),
            "inference_s": round(done - prepared, 3), "planes_per_s": round(planes / (done - prepared), 1)}


def benchmark(model_dir: Path, input_path: Path, device: str = "auto", batch_size: int | None = None) -> dict:
    import torch

    record = TrainingRecord.read(model_dir)
    device = torch_device(device)
    start = time.perf_counter()
    model = SlicePredictor.from_folder(model_dir, record.dataset_id, record.trainer, str(record.fold), device, False,
                                       batch_size)
    load_s = time.perf_counter() - start
    heads = [path for path in inputs_of(input_path) if path.suffix != ".png"]
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        rows = [time_head(path, model, record, Path(tmp), device) for path in heads]
    planes, inference = sum(row["planes"] for row in rows), sum(row["inference_s"] for row in rows)
    median = statistics.median
    return {
        "model": str(model_dir), "device": device, "threads": torch.get_num_threads(),
        "tiles_per_call": model.batch_size, "patch_size": list(model.predictor.configuration_manager.patch_size),
        "views": record.views, "model_load_s": round(load_s, 2), "heads": len(rows),
        "planes_per_s": round(planes / inference, 1) if inference else None,
        "inference_s_per_head": round(median(row["inference_s"] for row in rows), 2),
        "preprocessing_s_per_head": round(median(row["preprocessing_s"] for row in rows), 2),
        "seconds_per_head": round(median(row["inference_s"] + row["preprocessing_s"] for row in rows), 2),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None,
        "per_head": rows,
    }
