import socket
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.bids import split_subjects
from pipeline.core.config import AcquireConfig
from pipeline.core.io import InputError, read_tsv
from pipeline.sources import gather
from pipeline.sources.local_bids import bids_scans
from pipeline.sources.sample import sample_scans
from pipeline.stages.acquire import write_scan


def test_bids_reader_finds_every_real_subject(ds000011: Path):
    scans = bids_scans(ds000011, [])
    assert [s.subject for s in scans] == [f"{n:02d}" for n in range(1, 11)]
    assert all(s.path.name == f"sub-{s.subject}_T1w.nii.gz" for s in scans)


def test_bids_reader_selects_subjects_and_reports_missing(ds000011: Path):
    assert [s.subject for s in bids_scans(ds000011, ["03", "01"])] == ["01", "03"]
    with pytest.raises(InputError, match="99"):
        bids_scans(ds000011, ["01", "99"])


def test_bids_reader_rejects_missing_root(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        bids_scans(tmp_path / "nowhere", [])


def test_sample_source_uses_packaged_real_heads():
    scans = sample_scans()
    assert {s.subject for s in scans} == {"robex", "mni152"}
    for scan in scans:
        assert scan.path.is_file() and scan.path.stat().st_size > 100_000


def test_split_is_deterministic_by_subject_and_shares_when_too_small():
    subjects = [f"{n:02d}" for n in range(1, 11)]
    split, shared = split_subjects(subjects, 0.2, seed=42)
    assert not shared
    assert sorted(split.values()).count("test") == 2
    assert split == split_subjects(list(reversed(subjects)), 0.2, seed=42)[0]
    seeds_tried = [split_subjects(subjects, 0.2, seed=seed)[0] for seed in range(5)]
    assert len({tuple(sorted(s.items())) for s in seeds_tried}) > 1  # the seed really drives the split
    assert split_subjects(["a", "b"], 0.2, seed=1) == ({"a": "both", "b": "both"}, True)


def test_write_scan_copies_a_real_head(ds000011: Path, tmp_path: Path):
    scan = bids_scans(ds000011, ["02"])[0]
    copied = write_scan(scan, tmp_path)
    assert copied == tmp_path / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    assert np.array_equal(nib.load(copied).get_fdata(), nib.load(scan.path).get_fdata())


def _bids_with(tmp_path: Path, subject: str, writer) -> Path:
    anat = tmp_path / "bids" / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True)
    writer(anat / f"sub-{subject}_T1w.nii.gz")
    return tmp_path / "bids"


@pytest.mark.parametrize(
    ("writer", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(b"not an image at all" * 100), "not a readable NIfTI"),
        (lambda p: nib.save(nib.Nifti1Image(np.ones((32, 32), np.float32), np.eye(4)), p), "3D"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((32, 32, 32), np.float32), np.eye(4)), p), "constant"),
    ],
)
def test_bad_inputs_name_subject_and_file(tmp_path: Path, writer, message):
    root = _bids_with(tmp_path, "07", writer)
    scan = bids_scans(root, [])[0]
    with pytest.raises(InputError, match=message) as error:
        write_scan(scan, tmp_path / "out")
    assert "07" in str(error.value) and "sub-07_T1w.nii.gz" in str(error.value)


def test_truncated_gzip_is_reported(ds000011: Path, tmp_path: Path):
    def truncated(path: Path) -> None:
        data = (ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz").read_bytes()
        path.write_bytes(data[: len(data) // 2])

    scan = bids_scans(_bids_with(tmp_path, "01", truncated), [])[0]
    with pytest.raises(InputError, match="not a readable NIfTI"):
        write_scan(scan, tmp_path / "out")


def test_openneuro_offline_fails_fast_with_a_clear_message(tmp_path: Path):
    try:
        socket.getaddrinfo("openneuro.org", 443)
        pytest.skip("this machine is online: the offline failure cannot be shown")
    except OSError:
        pass
    config = AcquireConfig(source="openneuro", dataset="ds002330", subjects=["01"])
    with pytest.raises(InputError, match="ds002330"):
        gather(config, tmp_path / "dl")


def test_participants_table_round_trips(tmp_path: Path):
    from pipeline.core.io import write_tsv

    write_tsv([{"participant_id": "sub-01", "split": "train"}], tmp_path / "p.tsv")
    assert read_tsv(tmp_path / "p.tsv") == [{"participant_id": "sub-01", "split": "train"}]



def resave_as_mgz(source: Path, target: Path) -> nib.MGHImage:
    real = nib.load(source)
    image = nib.MGHImage(np.asarray(real.dataobj).astype(np.float32), real.affine)
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, target)
    return image


def test_a_folder_of_heads_is_a_subject_per_file_with_sanitised_labels(ds000011: Path, tmp_path: Path):
    heads = tmp_path / "heads"
    heads.mkdir()
    (heads / "patient_01.nii.gz").symlink_to(ds000011 / "sub-01/anat/sub-01_T1w.nii.gz")
    resave_as_mgz(ds000011 / "sub-02/anat/sub-02_T1w.nii.gz", heads / "patient-02.mgz")
    (heads / "notes.txt").write_text("not a head")
    scans = gather(AcquireConfig(source="folder", folder=str(heads)), tmp_path / "download")
    assert [(s.case, s.path.name) for s in scans] == [("patient01", "patient_01.nii.gz"),
                                                        ("patient02", "patient-02.mgz")]
    written = write_scan(scans[1], tmp_path / "raw")  # the FreeSurfer volume becomes BIDS NIfTI, same voxels
    assert written == tmp_path / "raw/sub-patient02/anat/sub-patient02_T1w.nii.gz"
    copied, original = nib.load(written), nib.load(heads / "patient-02.mgz")
    assert np.allclose(copied.affine, original.affine) and np.array_equal(copied.get_fdata(), original.get_fdata())
    (heads / "patient 01.nii").write_bytes(b"")
    with pytest.raises(InputError, match="would both be subject patient01"):
        gather(AcquireConfig(source="folder", folder=str(heads)), tmp_path / "download")


def test_bids_reader_takes_mgz_and_names_the_run_it_uses(ds000011: Path, tmp_path: Path, caplog):
    anat = tmp_path / "bids" / "sub-01" / "anat"
    resave_as_mgz(ds000011 / "sub-01/anat/sub-01_T1w.nii.gz", anat / "sub-01_run-2_T1w.mgz")
    resave_as_mgz(ds000011 / "sub-01/anat/sub-01_T1w.nii.gz", anat / "sub-01_run-1_T1w.mgz")
    with caplog.at_level("WARNING", logger="pipeline"):
        scans = bids_scans(tmp_path / "bids", [])
    assert [s.path.name for s in scans] == ["sub-01_run-1_T1w.mgz"]
    assert ("sub-01 has 2 T1w images (sub-01_run-1_T1w.mgz, sub-01_run-2_T1w.mgz): using sub-01_run-1_T1w.mgz, "
            "the lowest run (acquire.runs: first)") in caplog.text
