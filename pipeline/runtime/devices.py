"""Where torch work runs: the GPU when one is present, else the CPU."""

from __future__ import annotations

from functools import cache


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
