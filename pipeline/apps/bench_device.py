"""``python -m pipeline bench device``: what this machine does with a study, on whatever device torch finds, as
one JSON: synthesis (slices per second), prediction (planes per second, seconds per whole head) and training
(iterations per second, the GPU's busy share sampled while it trains, peak memory, Dice on the real test heads
when the time is up), each for about ``--seconds``.

    python -m pipeline bench device --study . --combo atropos-deepbet --seconds 60

The study must have run (``dvc repro``): its label maps feed the synthesis, its model the prediction, its
exported set the training (``train.profile: auto``: the gpu profile on a GPU, quick on a CPU; ``-S`` changes it).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
from pathlib import Path

import numpy as np

from pipeline.apps import bench_predict, bench_synth, bench_train
from pipeline.core.io import InputError
from pipeline.runtime.devices import torch_device

SYNTH_BATCH = {"cpu": 8, "cuda": 256}  # samples a synthesis call: one plane's on a CPU, many on a GPU


class BusySampler:
    """The GPU's busy share (nvidia-smi's utilization.gpu, 0-100 %) sampled every ``interval`` seconds in a
    thread while the block runs; None without a GPU or nvidia-smi."""

    def __init__(self, device: str, interval: float = 0.5) -> None:
        self.enabled = device == "cuda" and shutil.which("nvidia-smi") is not None
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        index = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        while not self._stop.wait(self.interval):
            result = subprocess.run(["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu",
                                     "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
            if result.returncode == 0 and result.stdout.strip().isdigit():
                self.samples.append(int(result.stdout.strip()))

    def __enter__(self) -> BusySampler:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        return {"mean_percent": round(statistics.mean(self.samples), 1),
                "median_percent": statistics.median(self.samples), "samples": len(self.samples)}


def synthesis(labels: Path, device: str, seconds: float) -> dict:
    """Slices per second for about ``seconds``: a short run sizes the timed one."""
    batch = SYNTH_BATCH[device]
    probe = bench_synth.run_benchmark(str(labels), batch, device, threads=None, batch_size=batch)
    n = max(batch, int(seconds * probe["n"] / max(probe["wall_s"], 1e-3)))
    return bench_synth.run_benchmark(str(labels), n, device, threads=None, batch_size=batch)


def prediction(study: Path, combo: str, device: str, overrides: list[str]) -> dict:
    """The study's model on its held-out heads as the evaluate stage has them (prepared: inference alone)."""
    config = bench_train.study_config(study, overrides)
    heads = bench_train.held_out_heads(study, bench_train.study_folders(study, combo), config)
    if not heads:
        raise InputError(f"bench device: {study} has no held-out heads of {combo}: run the study first")
    model, record, load_s = bench_predict.load_model(study / "models" / combo, device, None,
                                                     config.train.predict_precision, config.train.predict_window)
    bench_predict.time_inference(model, heads[0].brain.get_fdata(dtype=np.float32), heads[0].mask, record, device)
    rows = [{"head": head.case} | bench_predict.time_inference(model, head.brain.get_fdata(dtype=np.float32),
                                                               head.mask, record, device) for head in heads]
    return bench_predict.summary(model, record, device, load_s, rows)  # after a warm-up head


def benchmark(study: Path, combo: str, seconds: float, overrides: list[str]) -> dict:
    import torch

    device = torch_device("auto")
    labels = sorted(path for path in bench_train.study_folders(study, combo).segmented.glob("sub-*/**/*_dseg.nii.gz")
                    if "_desc-" not in path.name)  # the tissues, not an atlas segmenter's structures
    if not labels:
        raise InputError(f"bench device: {study} has no label maps of {combo}: run the study first")
    machine = {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
               "cpu_cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads()}
    synth = synthesis(labels[0], device, seconds)
    predicted = prediction(study, combo, device, overrides)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with BusySampler(device) as busy:
        training = bench_train.benchmark(study, combo, overrides, eval_every=10**6, max_seconds=seconds)
    training["gpu_busy"] = busy.summary()
    iteration_s = training["iteration_s"]
    training["iterations_per_s"] = round(1 / iteration_s, 2) if iteration_s else None
    return {"machine": machine,
            "synthesis": {key: synth[key] for key in ("n", "slices_per_s", "batch_size", "device", "wall_s")},
            "prediction": {key: value for key, value in predicted.items() if key != "per_head"},
            "training": training}
