"""Per-subject work inside a stage: the ``workers`` core budget, and ``keep_going`` past acquire
(a subject that fails mid-pipeline is left out and listed, up to the QC table)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.core.bids import subject_file
from pipeline.core.io import InputError, read_tsv
from pipeline.runtime.subjects import SubjectFailed, for_each_subject, plan_budget
from pipeline.stages.harmonize import Harmonize
from pipeline.tools.base import ToolMissing

from .conftest import copy_outputs, copy_project, set_params, tiny_study, venv_env


def report_process(subject: str, threads: int) -> dict:
    """Where a subject's work ran, and the thread cap it was given. It takes a second, as a subject's work
    does: a worker that finished at once could take every subject before the other had started."""
    time.sleep(1.0)
    return {"subject": subject, "pid": os.getpid(), "threads": threads, "omp": os.environ.get("OMP_NUM_THREADS")}


def write_then_fail(subject: str, threads: int, out: Path, failing: str, error: str) -> str:
    (out / f"sub-{subject}_partial.txt").write_text("half-written")
    if subject == failing:
        raise {"input": InputError(f"subject {subject}: unreadable"), "tool": RuntimeError("segfault in tool"),
               "missing": ToolMissing("fast was requested but is missing")}[error]
    return subject


def die(subject: str, threads: int) -> None:
    os._exit(9)  # as the kernel's out-of-memory killer would leave it


@pytest.mark.parametrize(("workers", "subjects", "processes", "threads"),
                         [(2, 10, 2, 1), (8, 2, 2, 4), (1, 5, 1, 1), (4, 1, 1, 4), (3, 2, 2, 1)])
def test_the_budget_splits_cores_between_subjects_and_threads(workers, subjects, processes, threads):
    budget = plan_budget(workers, subjects)
    assert (budget.processes, budget.threads) == (processes, threads)
    assert budget.processes * budget.threads <= max(workers, 1)


def test_subjects_run_in_parallel_processes_within_the_budget(tmp_path: Path):
    subjects = ["03", "01", "02", "04"]
    results, failures = for_each_subject("test", subjects, report_process, tmp_path, workers=2, keep_going=False)
    assert list(results) == subjects and not failures  # in the given order, whatever finished first
    pids = {row["pid"] for row in results.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes, not this one
    assert {(row["threads"], row["omp"]) for row in results.values()} == {(1, "1")}


def test_one_worker_runs_here_with_the_whole_budget_as_threads(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    results, _ = for_each_subject("test", ["01"], report_process, tmp_path, workers=3, keep_going=False)
    assert results["01"]["pid"] == os.getpid() and results["01"]["omp"] == "3"
    assert os.environ["OMP_NUM_THREADS"] == "7"  # restored afterwards


@pytest.mark.parametrize("workers", [1, 2])
def test_keep_going_lists_the_failed_subject_and_removes_its_files(tmp_path: Path, workers: int):
    import functools

    work = functools.partial(write_then_fail, out=tmp_path, failing="02", error="tool")
    files = {s: tmp_path / f"in-{s}.nii.gz" for s in ("01", "02", "03")}
    results, failures = for_each_subject("segment x", ["01", "02", "03"], work, tmp_path, workers, True, files)
    assert list(results) == ["01", "03"]
    assert failures == [{"participant_id": "sub-02", "stage": "segment x", "file": str(files["02"]),
                         "reason": "RuntimeError: segfault in tool"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01_partial.txt", "sub-03_partial.txt"]


def test_without_keep_going_a_failure_stops_the_stage_naming_subject_and_file(tmp_path: Path):
    import functools

    work = functools.partial(write_then_fail, out=tmp_path, failing="02", error="tool")
    with pytest.raises(SubjectFailed, match=r"segment x: sub-02 \(.*in-02.nii.gz\) failed: RuntimeError: segfault"):
        for_each_subject("segment x", ["01", "02"], work, tmp_path, 2, False, {"02": tmp_path / "in-02.nii.gz"})
    bad_input = functools.partial(write_then_fail, out=tmp_path, failing="01", error="input")
    with pytest.raises(InputError, match="subject 01: unreadable"):
        for_each_subject("strip", ["01"], bad_input, tmp_path, 1, False)


def test_a_missing_tool_stops_even_with_keep_going(tmp_path: Path):
    import functools

    work = functools.partial(write_then_fail, out=tmp_path, failing="01", error="missing")
    with pytest.raises(ToolMissing, match="fast was requested"):
        for_each_subject("segment", ["01", "02"], work, tmp_path, 1, True)


def test_when_every_subject_fails_the_stage_stops_listing_them(tmp_path: Path):
    import functools

    work = functools.partial(write_then_fail, out=tmp_path, failing="01", error="tool")
    with pytest.raises(SubjectFailed, match=r"no subject left to work on\n  sub-01: RuntimeError: segfault"):
        for_each_subject("segment", ["01"], work, tmp_path, 1, True)


def test_a_killed_worker_process_is_reported_with_its_subjects(tmp_path: Path):
    with pytest.raises(SubjectFailed, match=r"worker process died .* sub-0[12]"):
        for_each_subject("strip", ["01", "02"], die, tmp_path, 2, True)


# --- keep_going on real data: a subject lost mid-pipeline is listed up to the QC table --------------------
def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", "run", *args], cwd=project, env=venv_env(),
                          capture_output=True, text=True)


@pytest.mark.slow
def test_a_subject_lost_in_strip_is_listed_up_to_the_qc_table(tmp_path: Path, ds000011: Path, upstream_study: Path):
    project = copy_project(tmp_path / "study")
    tiny_study(project, ds000011, ["01", "02"], test_fraction=0.5)
    copy_outputs(upstream_study, project, through=Harmonize())  # acquire and harmonize: the session's
    assert run(project, "harmonize").returncode == 0
    corrupted = subject_file(project / "data" / "harmonized", "02", "desc-harmonized_T1w")
    corrupted.write_bytes(corrupted.read_bytes()[:4000])  # a disk fault between two stages

    stopped = run(project, "strip", "--stripper", "deepbet")
    assert stopped.returncode != 0
    assert "subject 02" in stopped.stderr and str(corrupted.relative_to(project)) in stopped.stderr
    assert not (project / "data" / "stripped" / "deepbet").exists()  # nothing half-written

    set_params(project, keep_going=True)
    went_on = run(project, "segment_qc", "--segmenter", "hmrf", "--stripper", "deepbet")
    assert went_on.returncode == 0, went_on.stderr[-3000:]
    stripped_failures = read_tsv(project / "data" / "stripped" / "deepbet" / "failures.tsv")
    assert [(row["participant_id"], row["stage"]) for row in stripped_failures] == [("sub-02", "strip deepbet")]
    assert "not a readable NIfTI" in stripped_failures[0]["reason"]
    segmented = project / "data" / "segmented" / "hmrf-deepbet"
    assert sorted(p.name for p in segmented.glob("sub-*")) == ["sub-01"]
    assert [row["participant_id"] for row in read_tsv(segmented / "volumes.tsv")] == ["sub-01"]
    qc = {row["participant_id"]: row for row in read_tsv(project / "data" / "qc" / "hmrf-deepbet" / "qc.tsv")}
    assert qc["sub-02"]["included"] == "False"
    assert qc["sub-02"]["reason"].startswith("failed in strip deepbet: ") and "sub-02" in qc["sub-02"]["reason"]
    assert qc["sub-01"]["segmenter"] == "hmrf" and qc["sub-01"]["GM_fraction"] != "n/a"
