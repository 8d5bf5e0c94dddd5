"""Per-subject work inside a stage: several subjects at once within the ``workers`` core budget, and,
with ``keep_going``, a subject that fails is listed in ``failures.tsv`` instead of stopping the stage.

The budget: ``min(workers, subjects)`` processes, each with ``workers // processes`` threads (torch,
ITK, BLAS and the tools they start). Processes are spawned, not forked: torch and ITK thread pools
do not survive a fork. Failures accumulate along the pipeline: each per-subject stage copies its
input's ``failures.tsv`` and adds its own, so the QC table at the end names every subject that was
lost, in which stage, with which file, and why.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.core.bids import case_dir
from pipeline.core.config import ConfigError, ExecutorConfig
from pipeline.core.io import InputError, read_tsv, write_tsv
from pipeline.runtime.environ import scoped_environ
from pipeline.runtime.executors import THREAD_VARIABLES, JobFailed, Slurm
from pipeline.tools.base import ToolMissing

log = logging.getLogger("pipeline")

T = TypeVar("T")
FAILURES = "failures.tsv"
FAILURE_COLUMNS = ("participant_id", "stage", "file", "reason")


class SubjectFailed(RuntimeError):
    """One subject's work failed; the message names the stage, the subject, its file and the cause."""


@dataclass(frozen=True)
class Budget:
    processes: int  # subjects worked on at once
    threads: int  # per subject


def plan_budget(workers: int, n_subjects: int) -> Budget:
    processes = max(1, min(workers, n_subjects))
    return Budget(processes, max(1, workers // processes))


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Cap the threads of torch and ITK in this process and of the tools it starts, then restore them."""
    with scoped_environ({name: str(threads) for name in THREAD_VARIABLES}), _library_threads(threads):
        yield


@contextlib.contextmanager
def _library_threads(threads: int) -> Iterator[None]:
    torch = sys.modules.get("torch")  # set only what is loaded; a library loaded later reads the variables
    saved_torch = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(threads)
    sitk = sys.modules.get("SimpleITK")
    saved_itk = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() if sitk else None
    if sitk:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    try:
        yield
    finally:
        if torch:
            torch.set_num_threads(saved_torch)
        if sitk:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved_itk)


def _start_worker_process(threads: int, log_level: int) -> None:
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})  # before torch or ITK load
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s [%(processName)s] %(message)s",
                        datefmt="%H:%M:%S")


def for_each_subject(stage: str, subjects: Sequence[str], work: Callable[[str, int], T], out: Path, workers: int,
                     keep_going: bool, files: Mapping[str, Path] | None = None,
                     executor: ExecutorConfig | None = None) -> tuple[dict[str, T], list[dict]]:
    """``work(subject, threads)`` for every subject: within the budget of ``workers`` cores, or with
    ``executor.kind: slurm`` as one SLURM array task per subject (``pipeline.runtime.executors``).

    Returns the results by subject, in ``subjects``' order, and a failure row per subject that failed
    (only with ``keep_going``; without it the first failure stops the stage). A failed subject's files
    under ``out`` are removed, so nothing half-written goes downstream; no subject left is an error.
    ``work`` must be picklable (a module-level function or a ``functools.partial`` of one);
    ``files``: each subject's input, named in messages.
    """
    files = files or {}
    outcomes: dict[str, T] = {}
    failures: dict[str, dict] = {}

    def settle(subject: str, number: int, result: Callable[[], T], job: str = "") -> None:
        try:
            outcomes[subject] = result()
            log.info("%s [%d/%d] sub-%s done", stage, number, len(subjects), subject)
        except BrokenProcessPool:
            raise  # not this subject's fault alone: see below
        except Exception as error:  # noqa: BLE001 - every cause is reported, then raised or listed
            remove_subject_files(out, subject)
            failures[subject] = failure_row(stage, subject, files.get(subject), error, keep_going, job)

    if executor is not None and executor.kind == "slurm" and subjects:
        for number, (subject, job) in enumerate(Slurm(executor.slurm).map(stage, work, subjects), 1):
            settle(subject, number, lambda job=job: unwrap(job.outcome()), job.where())
        return finish(stage, subjects, outcomes, failures)
    budget = plan_budget(workers, len(subjects))
    log.info("%s: %d subject(s), %d at a time with %d thread(s) each", stage, len(subjects), budget.processes,
             budget.threads)
    if budget.processes == 1:
        with thread_limit(budget.threads):
            for number, subject in enumerate(subjects, 1):
                log.info("%s [%d/%d] sub-%s", stage, number, len(subjects), subject)
                settle(subject, number, lambda subject=subject: work(subject, budget.threads))
    else:
        spawn = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(budget.processes, mp_context=spawn, initializer=_start_worker_process,
                                   initargs=(budget.threads, logging.getLogger().getEffectiveLevel()))
        try:
            futures: dict[Future, str] = {pool.submit(work, subject, budget.threads): subject for subject in subjects}
            for number, future in enumerate(as_completed(futures), 1):
                settle(futures[future], number, future.result)
        except BrokenProcessPool:
            unsettled = [subject for subject in subjects if subject not in outcomes and subject not in failures]
            raise SubjectFailed(f"{stage}: a worker process died (out of memory? killed?) while working on one of "
                                f"{', '.join('sub-' + s for s in unsettled)}; lower `workers` in params.yaml") from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return finish(stage, subjects, outcomes, failures)


def unwrap(outcome):
    """A job's value, or the exception its work raised, raised here as it would have been locally."""
    if outcome.error is not None:
        raise outcome.error
    return outcome.value


def finish(stage: str, subjects: Sequence[str], outcomes: dict[str, T], failures: dict[str, dict]
           ) -> tuple[dict[str, T], list[dict]]:
    """The results in ``subjects``' order and the failure rows; no subject left is an error."""
    if not outcomes:
        listed = "".join(f"\n  {row['participant_id']}: {row['reason']}" for row in failures.values())
        raise SubjectFailed(f"{stage}: no subject left to work on{listed or ' (all were lost upstream)'}")
    ordered = {subject: outcomes[subject] for subject in subjects if subject in outcomes}
    return ordered, [failures[subject] for subject in subjects if subject in failures]


def remove_subject_files(out: Path, case: str) -> None:
    """Everything of one case under ``out``: its ``sub-<case>`` folders and ``sub-<case>_*`` files, then the
    folders that held only them (a session's)."""
    for path in sorted(out.rglob(f"sub-{case}*"), reverse=True):
        if path.name != f"sub-{case}" and not path.name.startswith(f"sub-{case}_"):
            continue  # sub-1 must not take sub-10 with it
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    folder = case_dir(out, case) / "anat"
    while folder != out and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def failure_row(stage: str, subject: str, file: Path | None, error: Exception, keep_going: bool, job: str = ""
                ) -> dict:
    """A failure's row for ``failures.tsv`` with ``keep_going``; without it, the error, naming subject and file
    (and the SLURM job and its log, ``job``, when it ran on a cluster)."""
    if isinstance(error, ToolMissing | ConfigError):
        raise error  # the study's set-up, not the subject, is wrong: no subject would succeed
    where = f"sub-{subject}" + (f" ({file})" if file else "")
    reason = str(error) if isinstance(error, InputError | JobFailed) else f"{type(error).__name__}: {error}"
    if job and job not in reason:
        reason = f"{reason} [{job}]"
    if not keep_going:
        if isinstance(error, InputError):
            raise InputError(reason) from None
        raise SubjectFailed(f"{stage}: {where} failed: {reason}\n(set keep_going: true in params.yaml to go on "
                            "without it)") from error
    log.error("%s: %s failed and is left out (keep_going): %s", stage, where, reason)
    return {"participant_id": f"sub-{subject}", "stage": stage, "file": str(file or ""), "reason": reason}


def read_failures(folder: Path) -> list[dict]:
    """The failures a stage's output lists (its own and those it inherited); none when there is no table."""
    table = folder / FAILURES
    return read_tsv(table) if table.is_file() else []


def failed_ids(folder: Path) -> set[str]:
    return {row["participant_id"] for row in read_failures(folder)}


def not_failed(subjects: list[str], upstream: Path) -> list[str]:
    """The subjects an upstream stage's output does not list as failed (``keep_going``)."""
    lost = failed_ids(upstream)
    return [subject for subject in subjects if f"sub-{subject}" not in lost]


def write_failures(rows: list[dict], out: Path) -> None:
    if rows:
        write_tsv([{column: row[column] for column in FAILURE_COLUMNS} for row in rows], out / FAILURES)
