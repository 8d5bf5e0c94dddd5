"""DVC beyond one workspace, on real subjects from ds000011: a parameter sweep through the
experiment queue (two experiments run in parallel), and a remote shared between machines
(a clone pulls the outputs instead of recomputing them)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from .conftest import copy_study, venv_env

pytestmark = pytest.mark.slow

TARGET = "strip@deepbet"  # acquire -> harmonize -> strip: the cheap start of the study
STRIPPED = "data/stripped/deepbet"
SHARED_OUTPUTS = ("data/raw", "data/harmonized", STRIPPED)
THRESHOLDS = (0.4, 0.6)  # strip.deepbet.threshold: a lower threshold keeps more voxels
QUEUE_TIMEOUT_S = 600
POLL_S = 5  # each poll is a dvc process: more often takes a core from the experiments


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=venv_env(), capture_output=True, text=True)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _output(args: list[str], cwd: Path) -> str:
    result = _run(args, cwd)
    return result.stdout + result.stderr


def _commit(repo: Path, message: str) -> None:
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", message], repo)


@pytest.fixture(scope="module")
def project(tmp_path_factory, upstream_study: Path) -> Path:
    """A git + DVC repo whose first stages ran once, with dvc.lock committed: the session's tiny study, copied."""
    project = copy_study(upstream_study, tmp_path_factory.mktemp("sharing") / "project")
    assert "Running stage" not in _output(["dvc", "repro", TARGET], project)
    return project


def _experiment_name(threshold: float) -> str:
    return f"threshold-{threshold}"


def _queue_statuses(project: Path, names: list[str]) -> dict[str, str]:
    """``dvc queue status``'s last column (Queued, Running, Success, Failed...) per experiment name."""
    statuses = {}
    for line in _output(["dvc", "queue", "status"], project).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in names:
            statuses[parts[1]] = parts[-1]
    return statuses


def _wait_for_queue(project: Path, names: list[str]) -> dict[str, str]:
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while time.monotonic() < deadline:
        statuses = _queue_statuses(project, names)
        if len(statuses) == len(names) and not {"Queued", "Running"} & set(statuses.values()):
            return statuses
        time.sleep(POLL_S)
    raise TimeoutError(f"the queue did not finish in {QUEUE_TIMEOUT_S} s: {_queue_statuses(project, names)}")


@pytest.fixture(scope="module")
def sweep(project: Path) -> dict[str, str]:
    """Queue one experiment per threshold, run them two at a time; each one's final queue status."""
    names = [_experiment_name(threshold) for threshold in THRESHOLDS]
    for name, threshold in zip(names, THRESHOLDS, strict=True):
        _run(["dvc", "exp", "run", "--queue", TARGET, "--name", name, "-S", f"strip.deepbet.threshold={threshold}"],
             project)
    # its workers are daemons that may keep the command's stdout: a file, not a pipe that never reaches its end
    with open(project.parent / "queue-start.log", "w") as log:
        started = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, env=venv_env(), stdout=log,
                                 stderr=subprocess.STDOUT)
    assert started.returncode == 0, (project.parent / "queue-start.log").read_text()[-3000:]
    try:
        return _wait_for_queue(project, names)
    finally:
        _run(["dvc", "queue", "stop", "--kill"], project, check=False)


def _exp_show(project: Path) -> tuple[dict, dict[str, dict]]:
    """``dvc exp show --json``: the baseline commit's data, and each experiment's data (params, outs) by name."""
    baseline, *_ = (commit for commit in json.loads(_run(["dvc", "exp", "show", "--json"], project).stdout)
                    if commit["rev"] != "workspace")
    experiments = {rev["name"]: rev["data"] for experiment in baseline.get("experiments") or []
                   for rev in experiment["revs"]}
    return baseline["data"], experiments


def _brain_ml(text: str) -> dict[str, float]:
    """brain_ml per subject, from a ``masks.tsv``."""
    return {row["participant_id"]: float(row["brain_ml"]) for row in csv.DictReader(io.StringIO(text), delimiter="\t")}


def _experiment_masks(project: Path, name: str) -> str:
    """An experiment's ``masks.tsv``, read from the DVC cache without touching the workspace."""
    import dvc.api

    return dvc.api.read(f"{STRIPPED}/masks.tsv", repo=str(project), rev=name)


def test_queued_sweep_runs_both_values_and_reuses_the_unchanged_stages(project: Path, sweep: dict[str, str]):
    logs = {name: _output(["dvc", "queue", "logs", name], project) for name in sweep}
    assert set(sweep.values()) == {"Success"}, f"{sweep}\n" + "\n".join(logs.values())[-4000:]
    for log in logs.values():
        assert f"Running stage '{TARGET}'" in log
        assert "Running stage 'acquire'" not in log and "Running stage 'harmonize'" not in log


def test_exp_show_lists_both_experiments_with_their_params_and_outputs(project: Path, sweep: dict[str, str]):
    baseline, experiments = _exp_show(project)
    stripped = {baseline["outs"][STRIPPED]["hash"]}
    for threshold in THRESHOLDS:
        data = experiments[_experiment_name(threshold)]
        assert data["params"]["params.yaml"]["data"]["strip"]["deepbet"]["threshold"] == threshold
        for upstream in ("data/raw", "data/harmonized"):
            assert data["outs"][upstream]["hash"] == baseline["outs"][upstream]["hash"], upstream
        stripped.add(data["outs"][STRIPPED]["hash"])
    assert len(stripped) == 1 + len(THRESHOLDS), "each threshold should give its own stripped output"


def test_swept_threshold_changes_the_brain_volume(project: Path, sweep: dict[str, str]):
    low, high = (_brain_ml(_experiment_masks(project, _experiment_name(threshold))) for threshold in THRESHOLDS)
    workspace = _brain_ml((project / STRIPPED / "masks.tsv").read_text())  # threshold 0.5: between the two
    assert set(low) == set(high) == set(workspace) == {"sub-01", "sub-02"}
    for subject in workspace:
        assert low[subject] > workspace[subject] > high[subject], (subject, low, workspace, high)


def _digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


class Clone(NamedTuple):
    path: Path
    remotes: str  # ``dvc remote list`` in the clone, before pulling
    pull_log: str


@pytest.fixture(scope="module")
def clone(project: Path, tmp_path_factory) -> Clone:
    """Machine A pushes to the shared remote; machine B makes a fresh git clone and pulls."""
    remote = tmp_path_factory.mktemp("remote")
    _run(["dvc", "remote", "add", "-d", "shared", str(remote)], project)
    _commit(project, "shared DVC remote")
    _run(["dvc", "push", "--with-deps", TARGET], project)
    path = tmp_path_factory.mktemp("machine-b") / "project"
    _run(["git", "clone", "-q", str(project), str(path)], project)
    assert not (path / STRIPPED).exists()
    remotes = _output(["dvc", "remote", "list"], path)
    return Clone(path, remotes, _output(["dvc", "pull", "--with-deps", TARGET], path))


def test_clone_carries_the_remote_and_pulls_identical_outputs(project: Path, clone: Clone):
    assert "shared" in clone.remotes, clone.remotes
    assert "fetched" in clone.pull_log, clone.pull_log
    for folder in SHARED_OUTPUTS:
        assert _digests(clone.path / folder), folder
        assert _digests(clone.path / folder) == _digests(project / folder), folder


def test_clone_is_up_to_date_and_repro_recomputes_nothing(clone: Clone):
    assert "up to date" in _output(["dvc", "status", "--with-deps", TARGET], clone.path)
    repro = _output(["dvc", "repro", TARGET], clone.path)
    assert "Running stage" not in repro, repro
