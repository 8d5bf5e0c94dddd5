"""The real DVC pipeline, end to end, on real subjects from ds000011 with a tiny profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

COPIED = ["pipeline", "dvc.yaml", "params.yaml", "luigi.cfg", ".dvcignore"]


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ)
    env["PATH"] = f"{Path(os.sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` = this venv's
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def _tiny_params(project: Path, ds000011: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["acquire"] |= {"source": "bids", "bids_root": str(ds000011), "subjects": ["01", "02", "03"],
                          "test_fraction": 0.34}
    params["segment"]["hmrf"]["max_iterations"] = 3
    params["synth"] |= {"n_train": 8, "n_test": 4}
    params["train"]["profile"] = "ci"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory, ds000011: Path) -> Path:
    project = tmp_path_factory.mktemp("study")
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, project / name)
    _tiny_params(project, ds000011)
    _run(["git", "init", "-q"], project)
    _run(["git", "config", "user.email", "ci@example.org"], project)
    _run(["git", "config", "user.name", "ci"], project)
    _run(["dvc", "init", "-q"], project)
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "study"], project)
    _run(["dvc", "repro"], project)
    return project


def test_repro_writes_metrics_with_dice_in_range(project: Path):
    metrics = json.loads((project / "metrics" / "hmrf-deepbet.json").read_text())
    dice = metrics["dice"]["synthetic"]
    assert set(dice) == {"GM", "WM", "CSF", "mean"}
    assert all(0.0 <= value <= 1.0 for value in dice.values() if value is not None)
    assert dice["mean"] is not None
    assert metrics["n_train"] == 2 * 8 and metrics["n_test"] == 4  # 2 train subjects, 1 test subject
    assert metrics["train_test_share_subject"] is False


def test_dvc_status_is_clean_and_second_repro_runs_nothing(project: Path):
    assert "up to date" in _run(["dvc", "status"], project)
    second = _run(["dvc", "repro"], project)
    assert "Running stage" not in second


def test_acquired_subjects_follow_the_split(project: Path):
    rows = (project / "data" / "raw" / "participants.tsv").read_text().splitlines()[1:]
    splits = sorted(row.split("\t")[-1] for row in rows)
    assert splits == ["test", "train", "train"]
