"""``python -m pipeline plan``: what a study would submit to SLURM (``executor.slurm``), as JSON, without running
anything: for each stage of the Luigi graph and each of its matrix items, whether it is a job array (one task per
head), GPU jobs (one per training seed, one per evaluated model) or runs in the driving process, with the resources
each job asks for and the stages it waits for."""

from __future__ import annotations

import luigi

from pipeline.core.config import Config
from pipeline.runtime.graph import STAGES
from pipeline.stages.base import Stage

PER_HEAD = ("harmonize", "strip", "segment", "synthesize")  # their heads go to the executor, a task each
GPU = ("train", "evaluate")  # a job each, with the training resources


def items(stage: type[Stage], config: Config) -> list[Stage]:
    """Every matrix item of a stage the configuration runs."""
    if not stage.matrix:
        return [stage()]
    if set(stage.matrix) == {"stripper"}:
        return [stage(stripper=stripper) for stripper in config.strip.methods]
    return [stage(segmenter=segmenter, stripper=stripper) for segmenter, stripper in config.combos()]


def waits_for(task: Stage) -> list[str]:
    """The stages a task needs first (gathering tasks looked through)."""
    found = []
    for upstream in luigi.task.flatten(task.requires()):
        if isinstance(upstream, Stage):
            found.append(" ".join([upstream.name, *upstream.item().values()]))
        else:
            found += waits_for(upstream)
    return sorted(set(found))


def submission(task: Stage, config: Config, heads: int) -> dict:
    slurm, name = config.executor.slurm, task.name
    if name in PER_HEAD:
        per_head = heads if name != "segment" or task.item().get("segmenter") != "consensus" else 0
        return {"kind": "array", "tasks": per_head, "throttle": slurm.max_parallel, "cpus": slurm.cpus_per_task,
                "mem_gb": slurm.mem_gb, "time_min": slurm.time_min, "partition": slurm.partition}
    if name in GPU:
        return {"kind": "gpu jobs", "jobs": len(config.train.training_seeds(config.seed)), "gpus": slurm.gpus,
                "cpus": slurm.gpu_cpus_per_task, "mem_gb": slurm.gpu_mem_gb, "time_min": slurm.gpu_time_min,
                "partition": slurm.gpu_partition or slurm.partition}
    return {"kind": "in the driving process"}


def cluster_plan(config: Config, heads: int) -> dict:
    stages = [{"stage": " ".join([task.name, *task.item().values()]), **submission(task, config, heads),
               "after": waits_for(task)} for stage in STAGES for task in items(stage, config)]
    arrays = [stage for stage in stages if stage["kind"] == "array"]
    jobs = [stage for stage in stages if stage["kind"] == "gpu jobs"]
    return {"heads": heads, "array_tasks": sum(stage["tasks"] for stage in arrays),
            "gpu_jobs": sum(stage["jobs"] for stage in jobs), "stages": stages}
