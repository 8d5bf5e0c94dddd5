"""BIDS in and out on real heads: sessions and runs become cases split by subject, the raw dataset the
acquire stage writes passes the official validator, and a lost session takes only its own files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.bids import case_dir, read_cases, read_sources, subject_file, subject_of
from pipeline.core.config import parse_config
from pipeline.core.io import read_tsv
from pipeline.evaluation.compare import scores_by_subject
from pipeline.evaluation.references import reference_file
from pipeline.runtime.subjects import remove_subject_files
from pipeline.sources.local_bids import bids_scans
from pipeline.stages.acquire import Acquire

from .test_acquire import resave_as_mgz


def head(ds000011: Path, subject: str) -> Path:
    return ds000011 / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"


@pytest.fixture
def sessions_root(ds000011: Path, tmp_path: Path) -> Path:
    """A BIDS root as longitudinal studies have one: sub-01 scanned twice (ses-pre, and ses-post stored as a
    FreeSurfer volume), sub-02 and sub-03 once without sessions; the heads are real ds000011 scans."""
    root = tmp_path / "bids"
    (root / "sub-01/ses-pre/anat").mkdir(parents=True)
    (root / "sub-01/ses-pre/anat/sub-01_ses-pre_T1w.nii.gz").symlink_to(head(ds000011, "01"))
    resave_as_mgz(head(ds000011, "04"), root / "sub-01/ses-post/anat/sub-01_ses-post_T1w.mgz")
    for subject in ("02", "03"):
        (root / f"sub-{subject}/anat").mkdir(parents=True)
        (root / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz").symlink_to(head(ds000011, subject))
    (root / "dataset_description.json").write_text(json.dumps({"Name": "sessions", "BIDSVersion": "1.9.0"}))
    return root


def acquire(root: Path, project: Path, monkeypatch, **acquire_params: object) -> Path:
    """The acquire stage, run as DVC runs it, on ``root``; returns data/raw."""
    project.mkdir(exist_ok=True)
    monkeypatch.chdir(project)
    params = {"acquire": {"source": "bids", "bids_root": str(root), "test_fraction": 0.34} | acquire_params}
    Path("params.yaml").write_text(json.dumps(params))
    parse_config(params)  # the parameters are valid
    Acquire().run()
    return project / "data" / "raw"


def test_each_session_is_a_case_and_the_split_is_by_subject(sessions_root: Path, ds000011: Path, tmp_path: Path,
                                                               monkeypatch):
    raw = acquire(sessions_root, tmp_path / "study", monkeypatch)
    cases = read_cases(raw)
    assert [case.label for case in cases] == ["01_ses-post", "01_ses-pre", "02", "03"]
    splits = {row["participant_id"]: row["split"] for row in read_tsv(raw / "participants.tsv")}
    assert list(splits) == ["sub-01", "sub-02", "sub-03"]  # a row per subject, not per session
    assert {case.split for case in cases if case.subject == "01"} == {splits["sub-01"]}
    assert sorted(splits.values()) == ["test", "train", "train"]
    post = nib.load(subject_file(raw, "01_ses-post", "T1w"))  # the .mgz session, as BIDS NIfTI on its grid
    assert post.shape == nib.load(head(ds000011, "04")).shape[:3]
    assert subject_file(raw, "01_ses-post", "T1w") == raw / "sub-01/ses-post/anat/sub-01_ses-post_T1w.nii.gz"
    scans = read_tsv(raw / "sub-01/ses-post/sub-01_ses-post_scans.tsv")
    assert scans == [{"filename": "anat/sub-01_ses-post_T1w.nii.gz",
                      "source": str(sessions_root / "sub-01/ses-post/anat/sub-01_ses-post_T1w.mgz")}]
    assert set(read_sources(raw)) == {"sub-01_ses-post", "sub-01_ses-pre", "sub-02", "sub-03"}


def test_runs_all_keeps_every_run_as_a_case_and_first_takes_the_lowest_run_number(ds000011: Path,
                                                                                     tmp_path: Path, monkeypatch):
    anat = tmp_path / "bids/sub-01/anat"
    anat.mkdir(parents=True)
    for run, subject in ((2, "01"), (10, "02")):  # run-10 sorts before run-2 by name: the rule is the number
        (anat / f"sub-01_run-{run}_T1w.nii.gz").symlink_to(head(ds000011, subject))
    first = bids_scans(tmp_path / "bids", [], runs="first")
    assert [(scan.case, scan.path.name) for scan in first] == [("01", "sub-01_run-2_T1w.nii.gz")]
    raw = acquire(tmp_path / "bids", tmp_path / "study", monkeypatch, runs="all")
    assert [case.label for case in read_cases(raw)] == ["01_run-10", "01_run-2"]
    copied = nib.load(raw / "sub-01/anat/sub-01_run-10_T1w.nii.gz")
    assert np.array_equal(copied.get_fdata(), nib.load(head(ds000011, "02")).get_fdata())
    assert json.loads((raw / "dataset_description.json").read_text())["TrainTestShareSubject"]  # one subject


def test_runs_that_no_entity_tells_apart_are_refused(ds000011: Path, tmp_path: Path):
    anat = tmp_path / "bids/sub-01/anat"
    anat.mkdir(parents=True)
    (anat / "sub-01_T1w.nii.gz").symlink_to(head(ds000011, "01"))
    (anat / "sub-01_T1w.mgz").symlink_to(head(ds000011, "02"))
    from pipeline.core.io import InputError

    with pytest.raises(InputError, match="not told apart"):
        bids_scans(tmp_path / "bids", [], runs="all")


def test_a_lost_session_takes_its_own_files_only(tmp_path: Path):
    out = tmp_path / "harmonized"
    for case in ("01_ses-pre", "01_ses-post", "10"):
        path = subject_file(out, case, "desc-harmonized_T1w")
        path.parent.mkdir(parents=True)
        path.write_text(case)
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text("{}")
    remove_subject_files(out, "01_ses-post")
    assert not case_dir(out, "01_ses-post").exists()  # nor its emptied folders
    assert sorted(p.name for p in out.rglob("*.nii.gz")) == ["sub-01_ses-pre_desc-harmonized_T1w.nii.gz",
                                                            "sub-10_desc-harmonized_T1w.nii.gz"]


def test_a_subjects_sessions_pool_into_one_subject_for_the_interval_and_find_their_own_reference(tmp_path):
    rows = [{"case": "sub-01_ses-pre", "seed": 42, "mean": 0.8}, {"case": "sub-01_ses-post", "seed": 42, "mean": 0.6},
            {"case": "sub-02", "seed": 42, "mean": 0.9}, {"case": "sub-01_ses-pre", "seed": 7, "mean": 0.7},
            {"case": "sub-01_ses-post", "seed": 7, "mean": 0.5}, {"case": "sub-02", "seed": 7, "mean": None}]
    scores = scores_by_subject(rows)
    assert scores.keys() == {"sub-01", "sub-02"} and subject_of("sub-01_ses-pre") == "sub-01"
    assert np.allclose(scores["sub-01"], [0.7, 0.6]) and scores["sub-02"] == [0.9]
    labels = tmp_path / "manual/sub-01/ses-post/anat"
    labels.mkdir(parents=True)
    (labels / "sub-01_ses-post_dseg.nii.gz").write_bytes(b"")
    assert reference_file(tmp_path / "manual", "01_ses-post") == labels / "sub-01_ses-post_dseg.nii.gz"
    assert reference_file(tmp_path / "manual", "01_ses-post_run-2") == labels / "sub-01_ses-post_dseg.nii.gz"
    assert reference_file(tmp_path / "manual", "01_ses-pre") is None


def bids_validator() -> list[str] | None:
    """The official validator (npm bids-validator 1.15): BIDS_VALIDATOR, or on PATH, or where .ci/run puts it."""
    named = os.environ.get("BIDS_VALIDATOR") or shutil.which("bids-validator")
    local = Path(__file__).parent.parent / ".ci/node/node_modules/.bin/bids-validator"
    found = named or (str(local) if local.is_file() else None)
    return [found] if found else None


def test_the_raw_dataset_with_sessions_passes_the_official_bids_validator(sessions_root: Path, tmp_path: Path,
                                                                           monkeypatch):
    validator = bids_validator()
    if validator is None:
        pytest.skip("bids-validator is not installed (.ci/run installs it with npm where Node is available)")
    raw = acquire(sessions_root, tmp_path / "study", monkeypatch)
    result = subprocess.run([*validator, str(raw), "--json", "--ignoreNiftiHeaders"], capture_output=True,
                            text=True, timeout=600)
    report = json.loads(result.stdout)
    assert report["issues"]["errors"] == [], report["issues"]["errors"]
    warnings = {issue["key"] for issue in report["issues"]["warnings"]}
    # left: the input's own layout (sub-02 and sub-03 have no session, so not every subject has every file)
    # and its authors, which are people acquire cannot name
    assert warnings <= {"MISSING_SESSION", "INCONSISTENT_SUBJECTS", "NO_AUTHORS"}, warnings
    assert report["summary"]["sessions"] == ["post", "pre"] and report["summary"]["subjects"] == ["01", "02", "03"]


@pytest.mark.slow
def test_a_study_with_sessions_trains_on_each_session_and_scores_subjects(sessions_root: Path, tmp_path: Path):
    """Acquire to evaluate on real heads, one subject scanned twice: every stage works per session, the
    sessions of a subject stay on one side of the split, and the interval counts the subject once."""
    from .conftest import copy_project, tiny_study, venv_env

    project = copy_project(tmp_path / "study")
    tiny_study(project, sessions_root, ["01", "02"], test_fraction=0.5)
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "evaluate", "--segmenter", "hmrf",
                             "--stripper", "deepbet"],
                            cwd=project, env=venv_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    split = {row["participant_id"]: row["split"] for row in read_tsv(project / "data/raw/participants.tsv")}
    assert sorted(split.values()) == ["test", "train"]
    for case in ("01_ses-pre", "01_ses-post"):
        assert subject_file(project / "data/segmented/hmrf-deepbet", case, "dseg").is_file()
        synthetic = sorted((project / "data/synthetic/hmrf-deepbet" / split["sub-01"] / "images").glob(
            f"sub-{case}_*.png"))
        assert synthetic, case  # its own samples, on its subject's side of the split
    qc = {row["participant_id"] for row in read_tsv(project / "data/qc/hmrf-deepbet/qc.tsv")}
    assert qc == {"sub-01_ses-pre", "sub-01_ses-post", "sub-02"}
    metrics = json.loads((project / "data/evaluation/hmrf-deepbet/evaluation.json").read_text())
    sub01_tests = split["sub-01"] == "test"
    assert metrics["n_real"] == (2 if sub01_tests else 1) and metrics["n_subjects"] == 1
    assert metrics["n_train"] == 8 * (1 if sub01_tests else 2)  # synth.n_train per training case
