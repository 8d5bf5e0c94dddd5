"""Shared fixtures: the real data beside the project (../shared/data), read in place."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
DS000011 = SHARED_DATA / "ds000011"
LABEL_MAPS = SHARED_DATA / "synthseg-label-maps"
OASIS = SHARED_DATA / "oasis-manual"


@pytest.fixture(scope="session")
def ds000011() -> Path:
    if not DS000011.is_dir():
        pytest.skip(f"real test data not found at {DS000011}")
    return DS000011


@pytest.fixture(scope="session")
def oasis() -> Path:
    """Real skull-stripped brains with manual tissue labels (CC BY-NC: tests and benchmarks only)."""
    if not OASIS.is_dir():
        pytest.skip(f"real test data not found at {OASIS}")
    return OASIS


@pytest.fixture(scope="session")
def label_maps() -> Path:
    if not LABEL_MAPS.is_dir():
        pytest.skip(f"real label maps not found at {LABEL_MAPS}")
    return LABEL_MAPS


COPIED = ["pipeline", "dvc.yaml", "params.yaml", "luigi.cfg", ".dvcignore", "requirements.lock"]


def copy_project(destination: Path) -> Path:
    """A fresh copy of the project's code and configuration, to run a study in."""
    import shutil

    destination.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source = PROJECT_ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, destination / name)
    return destination


def set_params(project: Path, **sections: dict) -> None:
    """Merge ``sections`` into the project's params.yaml (one level deep per section)."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in sections.items():
        params[key] = params[key] | value if isinstance(value, dict) else value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_study(project: Path, ds000011: Path, subjects: list[str], test_fraction: float = 0.34) -> None:
    """Real subjects, the fastest settings of every stage: a study that runs in minutes on 2 cores."""
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["segment"]["hmrf"]["max_iterations"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    set_params(project,
               acquire={"source": "bids", "bids_root": str(ds000011), "subjects": subjects,
                        "test_fraction": test_fraction},
               synth={"n_train": 8, "n_test": 4},
               train={"profile": "ci"})


def venv_env() -> dict[str, str]:
    """The environment for subprocesses: this venv's ``python`` first on PATH, no DVC analytics."""
    import os
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env
