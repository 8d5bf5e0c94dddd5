"""Where the work runs (``executor``): each head of a per-head stage, and each training and evaluation.

- ``local`` (default): this machine; heads in a pool of processes within the ``workers`` budget
  (``pipeline.runtime.subjects``), training and evaluation in the stage's own process.
- ``slurm``: SLURM jobs, through submitit (made for exactly this: it pickles the function and its arguments,
  writes the sbatch script, submits job arrays with a throttle and brings results and tracebacks back, so the
  pipeline parses no sbatch output). One array task per head; one job with a GPU per training (and seed) and per
  evaluation. The stage itself waits for its jobs where it runs (a login node, or a small long-running job), so
  Luigi and DVC drive a cluster study exactly as a local one, and a rerun redoes only unfinished stages.

A job runs the same function with the same arguments as the local path, on the same shared files, so its
outputs are the same bytes. Every job is recorded in ``<executor.slurm.folder>/jobs.tsv``.
"""

from __future__ import annotations

import csv
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.config import ExecutorConfig, SlurmConfig

log = logging.getLogger("pipeline")

T = TypeVar("T")
JOBS = "jobs.tsv"
POLL_S = 2.0  # how often the stage looks at its jobs
SIGNAL_DELAY_S = 120  # submitit's warning before the time limit (its default, 90 s, cuts short jobs early)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


@dataclass(frozen=True)
class Outcome:
    """What a job hands back: the work's value, or the exception it raised (as the local path would raise it)."""

    value: Any = None
    error: BaseException | None = None
    trace: str = ""


def capture(work: Callable[..., T], *args: object) -> Outcome:
    """The function a job runs: ``work(*args)``, its exception returned rather than raised, so that the stage
    reports it as it would locally (an input error stays one line naming the file)."""
    try:
        return Outcome(value=work(*args))
    except Exception as error:  # noqa: BLE001 - handed back to the stage, which reports or raises it
        return Outcome(error=error, trace=traceback.format_exc())


class JobFailed(RuntimeError):
    """A job ended without handing back a result (killed, out of time or memory, its node lost)."""


@dataclass(frozen=True)
class Job:
    """One submitted job: its id and log, and how to wait for its outcome."""

    job: Any  # a submitit Job

    @property
    def id(self) -> str:
        return str(self.job.job_id)

    @property
    def log(self) -> Path:
        return Path(self.job.paths.stderr)

    def where(self) -> str:
        return f"SLURM job {self.id}, log {self.log}"

    def outcome(self) -> Outcome:
        from submitit.core.utils import UncompletedJobError

        try:
            return self.job.result()
        except UncompletedJobError as error:  # FailedJobError too: only submitit's own wrapper can raise here
            last = str(error).strip().splitlines()[-1] if str(error).strip() else "no output"
            raise JobFailed(f"{self.where()}: the job ended without a result ({last})") from None


class Slurm:
    """Jobs on a SLURM cluster, as ``executor.slurm`` describes them."""

    def __init__(self, config: SlurmConfig) -> None:
        self.config = config
        self.folder = Path(config.folder).resolve()

    def executor(self, name: str, gpu: bool):
        """A submitit executor with the per-head (or, ``gpu``, the training) resources."""
        import submitit

        config = self.config
        cpus = config.gpu_cpus_per_task if gpu else config.cpus_per_task
        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster="slurm")
        partition = (config.gpu_partition or config.partition) if gpu else config.partition
        executor.update_parameters(
            name=name, cpus_per_task=cpus, mem_gb=config.gpu_mem_gb if gpu else config.mem_gb,
            timeout_min=config.gpu_time_min if gpu else config.time_min,
            slurm_signal_delay_s=SIGNAL_DELAY_S, slurm_array_parallelism=config.max_parallel,
            slurm_setup=[*(f"export {variable}={cpus}" for variable in THREAD_VARIABLES), *config.setup],
            slurm_additional_parameters=dict(config.options),
            **({"slurm_partition": partition} if partition else {}),
            **({"gpus_per_node": config.gpus} if gpu and config.gpus else {}))
        return executor

    def record(self, stage: str, cases: Sequence[str], jobs: Sequence[Job]) -> None:
        """``jobs.tsv``: which job did what (appended: a study's every job, across reruns)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        table = self.folder / JOBS
        new = not table.is_file()
        with table.open("a", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            if new:
                writer.writerow(["stage", "case", "job_id", "log"])
            writer.writerows([stage, case, job.id, str(job.log)] for case, job in zip(cases, jobs, strict=True))

    def map(self, stage: str, work: Callable[[T, int], Any], cases: Sequence[T], gpu: bool = False
            ) -> Iterator[tuple[T, Job]]:
        """One array task per case running ``work(case, cpus)``, throttled to ``max_parallel``, with the per-head
        resources (``gpu``: the training ones); yields (case, job) as they finish."""
        executor = self.executor(stage, gpu=gpu)
        cpus = self.config.gpu_cpus_per_task if gpu else self.config.cpus_per_task
        jobs = [Job(job) for job in executor.map_array(capture, [work] * len(cases), list(cases),
                                                       [cpus] * len(cases))]
        self.record(stage, cases, jobs)
        log.info("%s: %d case(s) as SLURM array %s (at most %d at once)", stage, len(cases),
                 jobs[0].id.split("_")[0] if jobs else "-", self.config.max_parallel)
        pending = dict(zip(cases, jobs, strict=True))
        try:
            while pending:
                for case, job in list(pending.items()):
                    if job.job.done():
                        del pending[case]
                        yield case, job
                if pending:
                    time.sleep(POLL_S)
        finally:  # the stage stopped (a head failed, or Ctrl-C): its other heads' jobs have nowhere to write
            for job in pending.values():
                job.job.cancel(check=False)

    def run(self, stage: str, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` as one GPU job (``gpus``); its value, or the exception it raised, here."""
        job = Job(self.executor(stage, gpu=True).submit(capture, work, *args))
        self.record(stage, ["-"], [job])
        log.info("%s: SLURM job %s (log %s)", stage, job.id, job.log)
        try:
            outcome = job.outcome()
        except BaseException:  # Ctrl-C or a lost job: nothing is left running on the cluster
            job.job.cancel(check=False)
            raise
        if outcome.error is not None:
            log.error("%s failed in %s:\n%s", stage, job.where(), outcome.trace)
            raise outcome.error
        return outcome.value


def run_job(executor: ExecutorConfig, label: str, work: Callable[..., T], *args: object) -> T:
    """``work(*args)``: here, or as one SLURM job with the training resources (GPUs) when ``executor`` says so."""
    if executor.kind == "slurm":
        return Slurm(executor.slurm).run(label, work, *args)
    return work(*args)


def job_threads(executor: ExecutorConfig, local: int, gpu: bool = False) -> int:
    """The threads a piece of work gets: ``local`` here, the job's CPUs on a cluster."""
    if executor.kind != "slurm":
        return local
    return executor.slurm.gpu_cpus_per_task if gpu else executor.slurm.cpus_per_task
