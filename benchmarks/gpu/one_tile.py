"""Planes per second on the GPU with one tile a network call (nnU-Net's own way) against the device-sized batch."""
import json
import sys
from pathlib import Path

import numpy as np

from pipeline.apps import bench_predict, bench_train
from pipeline.runtime.devices import torch_device

DEVICE = torch_device("auto")

study = Path(sys.argv[1])
config = bench_train.study_config(study, [])
head = bench_train.held_out_heads(study, bench_train.study_folders(study, "hmrf-deepbet"), config)[0]
brain = head.brain.get_fdata(dtype=np.float32)
out = {}
for batch in (1, None):
    model, record, _ = bench_predict.load_model(study / "models/hmrf-deepbet", DEVICE, batch)
    bench_predict.time_inference(model, brain, head.mask, record, DEVICE)  # warm-up
    out[f"tiles_per_call_{model.batch_size}"] = bench_predict.time_inference(model, brain, head.mask, record, DEVICE)
print(json.dumps(out, indent=2))
