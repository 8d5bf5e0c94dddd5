"""Throughput of the slice synthesis on a real 1 mm label volume.

    python -m pipeline.apps.bench_synth --n 200 [--labels seg.nii.gz] [--device cpu] [--threads 1]
                                   [--no-pad-labels-to-size]

``slices_per_cpu_second`` is n / (CPU time of the whole process while generating, all threads),
after a short warm-up. One torch thread per process (synthesize_slices' default) is the most
CPU-efficient setting: a second intra-op thread mostly waits (parallelise over subjects instead).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from pipeline.core.config import SynthConfig
from pipeline.core.labels import remap
from pipeline.synth.model import sample_seed, synthesize_slices

DEFAULT_LABELS = (
    Path(__file__).resolve().parents[3] / "shared/data/synthseg-label-maps/training_seg_01.nii.gz"
)
CROP_MARGIN = 4  # voxels around the brain, as strip.crop_margin_vox


def load_tissue_labels(path: str | Path) -> np.ndarray:
    """A label volume as the pipeline feeds it: RAS, tissue labels 0..3, cropped to the brain."""
    image = nib.load(str(path))
    labels = np.asarray(image.dataobj)
    labels = remap(labels) if labels.max() > 3 else labels.astype(np.uint8)  # FreeSurfer labels → tissues
    labels = nib.orientations.apply_orientation(labels, nib.orientations.io_orientation(image.affine))  # RAS
    inside = np.nonzero(labels)
    box = tuple(slice(max(int(a.min()) - CROP_MARGIN, 0), int(a.max()) + CROP_MARGIN + 1) for a in inside)
    return np.ascontiguousarray(labels[box], dtype=np.uint8)


def run_benchmark(
    label_path: str | None, n: int, device: str, threads: int | None = 1, pad_labels_to_size: bool | None = None,
    batch_size: int = 8,
) -> dict:
    """``pad_labels_to_size``: synth.pad_labels_to_size (None: its default); ``batch_size``: samples per call
    (those of one plane are generated together)."""
    labels = load_tissue_labels(label_path or DEFAULT_LABELS)
    cfg = SynthConfig() if pad_labels_to_size is None else SynthConfig(pad_labels_to_size=pad_labels_to_size)
    rss_before = _current_rss_mb()
    synthesize_slices(labels, cfg, [sample_seed(0, "warm-up", i) for i in range(2)], device, threads=threads,
                      batch_size=batch_size)
    seeds = [sample_seed(0, "bench", i) for i in range(n)]
    cpu, wall = time.process_time(), time.perf_counter()
    images, _ = synthesize_slices(labels, cfg, seeds, device=device, threads=threads, batch_size=batch_size)
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "n": n,
        "slices_per_cpu_second": round(n / cpu, 2),
        "slices_per_s": round(n / wall, 1),
        "batch_size": batch_size,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_generation_mb": rss_before,  # torch, the loaded volume; the peak may predate it (loading)
        "shape": list(labels.shape),
        "device": device,
        "threads": threads if threads else torch.get_num_threads(),
        "pad_labels_to_size": cfg.pad_labels_to_size,
        "output": list(images.shape),
    }


def _current_rss_mb() -> float | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), None)
    return round(int(line.split()[1]) / 1024, 1) if line else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--labels", default=None, help="a label NIfTI (default: training_seg_01, remapped)")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    parser.add_argument("--pad-labels-to-size", action=argparse.BooleanOptionalAction, default=None,
                        help="synth.pad_labels_to_size (default: the configuration's default)")
    args = parser.parse_args(argv)
    report = run_benchmark(args.labels, args.n, args.device, args.threads or None, args.pad_labels_to_size)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
