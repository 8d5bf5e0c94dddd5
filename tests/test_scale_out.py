"""Several workers against one Luigi central scheduler (luigid on loopback) share a study."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import copy_project, tiny_study, venv_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(port: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"luigid did not listen on port {port}")


@pytest.fixture
def scheduler(tmp_path: Path):
    port = _free_port()
    (tmp_path / "luigid-logs").mkdir()
    luigid = Path(sys.executable).parent / "luigid"
    process = subprocess.Popen([str(luigid), "--address", "127.0.0.1", "--port", str(port),
                                "--logdir", str(tmp_path / "luigid-logs"),
                                "--state-path", str(tmp_path / "luigid-state.pickle")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_two_workers_share_a_central_scheduler_and_run_each_task_once(tmp_path: Path, ds000011: Path, scheduler):
    project = copy_project(tmp_path / "study")
    tiny_study(project, ds000011, ["01", "02"])
    command = [sys.executable, "-m", "pipeline", "run", "segment", "--segmenter", "hmrf", "--stripper", "deepbet",
               "--scheduler-host", "127.0.0.1", "--scheduler-port", str(scheduler)]
    workers = [subprocess.Popen(command, cwd=project, env=venv_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(outputs)[-4000:]
    started = Counter(re.findall(r"\[([a-z]+(?: \w+)*)\] started", "\n".join(outputs)))
    assert started == {"acquire": 1, "harmonize": 1, "strip deepbet": 1, "segment hmrf deepbet": 1}
    for subject in ("01", "02"):
        assert (project / "data" / "segmented" / "hmrf-deepbet" / f"sub-{subject}" / "anat"
                / f"sub-{subject}_dseg.nii.gz").is_file()
    assert not list(project.glob("data/**/.*.tmp*")), "a temporary file or folder was left behind"
