"""Where torch work runs: the GPU when one is present, else the CPU."""

from __future__ import annotations

import os
from functools import cache

from pipeline.core.io import InputError


@cache
def torch_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no GPU")
    return requested


def job_device(requested: str, executor) -> str:
    """The device training runs on: this machine's (``torch_device``), or on a cluster its job's, which is not
    this machine: CUDA when the jobs get GPUs (``executor.slurm.gpus``)."""
    if executor.kind != "slurm":
        return torch_device(requested)
    if requested == "auto":
        return "cuda" if executor.slurm.gpus else "cpu"
    return requested


@cache
def native_bfloat16_cpu() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX) and oneDNN may use it: there a network
    runs about twice as fast in bfloat16; elsewhere torch emulates it, about 40 times slower than float32.
    ``ONEDNN_MAX_CPU_ISA`` below AVX512_CORE_BF16 (e.g. AVX2) holds oneDNN back, so it counts as no."""
    import torch

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if isa != "ALL" and "BF16" not in isa and "AMX" not in isa:
        return False
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in checks)


def native_mixed_precision(device: str) -> bool:
    """Whether ``device`` computes torch's autocast (mixed) precision natively: float16 on a GPU, bfloat16 on a CPU
    that has it in hardware (``native_bfloat16_cpu``)."""
    return device == "cuda" or (device == "cpu" and native_bfloat16_cpu())


def uses_mixed_precision(precision: str, device: str) -> bool:
    """Whether a network runs in torch's autocast (mixed) precision on ``device`` for a ``Precision`` setting:
    "mixed" always, "float32" never, "auto" where the device computes it natively (``native_mixed_precision``)."""
    return precision == "mixed" or (precision == "auto" and native_mixed_precision(device))


def training_mixed_precision(precision: str, device: str) -> bool:
    """``uses_mixed_precision`` for a training, which nnU-Net runs in float16 on a GPU whatever it is asked."""
    if device == "cuda" and precision == "float32":
        raise InputError("train.precision float32: nnU-Net trains on a GPU in mixed precision (float16) always; "
                         "set train.precision to auto or mixed")
    return uses_mixed_precision(precision, device)
