"""Per-head work and training as SLURM jobs, on a real one-node SLURM cluster started here (Debian's slurm-wlm and
munge, as root: tests/slurm_cluster.py). A small real study (two ds000011 heads) runs once locally and once through
the cluster: every per-head stage's heads are array tasks (recorded with their job ids), the outputs are the same
bytes, and a head that fails on the cluster fails its stage naming the head, the job and its log. Where SLURM
cannot be started the tests skip, saying why; the local executor's tests run everywhere."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from pipeline.core.io import read_tsv

from .conftest import copy_outputs, copy_project, set_params, tiny_study, venv_env
from .slurm_cluster import one_node_cluster, slurm_unavailable_reason

pytestmark = pytest.mark.slow

PER_HEAD = ("data/harmonized", "data/stripped/deepbet", "data/segmented/hmrf-deepbet",
            "data/synthetic/hmrf-deepbet")
# the test cluster has no GPU: the training and prediction jobs ask for none
JOBS = {"partition": "debug", "cpus_per_task": 1, "mem_gb": 2.0, "time_min": 15, "max_parallel": 2, "gpus": 0,
        "gpu_cpus_per_task": 2, "gpu_mem_gb": 4.0, "gpu_time_min": 30}


@pytest.fixture(scope="module")
def cluster() -> dict[str, str]:
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(f"no SLURM cluster can be started here: {reason}")
    # munged wants every folder above its socket searchable by all: not pytest's private temporary folders
    workdir = Path(tempfile.mkdtemp(prefix="slurm-test-"))
    workdir.chmod(0o755)
    try:
        with one_node_cluster(workdir, cpus=2, memory_mb=65536) as env:
            yield env
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` in ``project``, with the cluster's client settings (its PATH after the venv's)."""
    merged = venv_env() | (env or {})
    merged["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{merged['PATH']}"
    return subprocess.run(["python", "-m", "pipeline", *args], cwd=project, env=merged, capture_output=True,
                          text=True)


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder``, by its path, to its content's hash."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def on_slurm(project: Path, folder: Path) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["executor"] = {"kind": "slurm", "slurm": params["executor"]["slurm"] | JOBS | {"folder": str(folder)}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def local(cluster, request, tmp_path_factory, ds000011: Path) -> Path:
    """The tiny study run on this machine through synthesis: the session's study up to segmentation (asked for once
    the cluster has started: without SLURM the module skips before building it), synthesize run here."""
    project = copy_project(tmp_path_factory.mktemp("local"))
    tiny_study(project, ds000011, ["01", "02"], test_fraction=0.5)
    copy_outputs(request.getfixturevalue("upstream_study"), project)
    result = run(project, "run", "synthesize", "--segmenter", "hmrf", "--stripper", "deepbet")
    assert result.returncode == 0, result.stderr[-3000:]
    return project


def test_per_head_stages_run_as_slurm_array_tasks_and_write_the_same_bytes_as_a_local_run(
        cluster, local: Path, tmp_path_factory, ds000011: Path):
    stage = ["run", "synthesize", "--segmenter", "hmrf", "--stripper", "deepbet"]

    cluster_study = copy_project(tmp_path_factory.mktemp("on-slurm"))
    tiny_study(cluster_study, ds000011, ["01", "02"], test_fraction=0.5)
    jobs_folder = tmp_path_factory.mktemp("jobs")
    on_slurm(cluster_study, jobs_folder)
    result = run(cluster_study, *stage, env=cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "as SLURM array" in result.stderr

    for folder in PER_HEAD:
        assert digests(cluster_study / folder) == digests(local / folder), folder
    jobs = read_tsv(jobs_folder / "jobs.tsv")
    for name in ("harmonize", "strip deepbet", "segment hmrf-deepbet", "synthesize hmrf-deepbet"):
        ran = {row["case"]: row["job_id"] for row in jobs if row["stage"] == name}
        assert set(ran) == {"01", "02"}, (name, jobs)
        arrays = {job.split("_")[0] for job in ran.values()}
        assert len(arrays) == 1 and all("_" in job for job in ran.values())  # one array, a task per head

    # the training as a job of its own, then predict's heads as jobs
    result = run(cluster_study, "run", "train", "--segmenter", "hmrf", "--stripper", "deepbet", env=cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run(cluster_study, "predict", "--model", "models/hmrf-deepbet", "--input",
                 str(ds000011 / "sub-03" / "anat" / "sub-03_T1w.nii.gz"), "--output", "predicted", "--executor",
                 "slurm", env=cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (cluster_study / "predicted" / "sub-03_dseg.nii.gz").is_file()
    assert read_tsv(cluster_study / "predicted" / "tissue_volumes.tsv")[0]["case"] == "sub-03"
    stages = [row["stage"] for row in read_tsv(jobs_folder / "jobs.tsv")]
    assert "train hmrf-deepbet seed 42" in stages and "predict" in stages


def test_a_head_that_fails_on_the_cluster_fails_its_stage_naming_the_head_the_job_and_its_log(
        cluster, tmp_path_factory, ds000011: Path):
    import nibabel as nib
    import numpy as np

    heads = tmp_path_factory.mktemp("heads")
    real = nib.load(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    nib.save(real, heads / "good.nii.gz")
    # readable, but a 40 mm field of view: the acquisition QC refuses it in harmonize, on the cluster
    nib.save(nib.Nifti1Image(np.asarray(real.dataobj)[:40, :30, :30].astype(np.float32), real.affine),
             heads / "small.nii.gz")
    project = copy_project(tmp_path_factory.mktemp("failing"))
    set_params(project, acquire={"source": "folder", "folder": str(heads), "test_fraction": 0.5})
    jobs_folder = tmp_path_factory.mktemp("failing-jobs")
    on_slurm(project, jobs_folder)
    result = run(project, "run", "harmonize", env=cluster)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr[-3000:]
    job = next(row for row in read_tsv(jobs_folder / "jobs.tsv") if row["case"] == "small")
    for named in ("subject small", "field of view", f"SLURM job {job['job_id']}", job["log"]):
        assert named in errors[0], (named, errors[0])
    assert not (project / "data/harmonized").exists()  # nothing half-written
