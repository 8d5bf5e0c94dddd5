"""Bad input: a clear error naming subject and file, a non-zero exit, nothing half-written;
with ``acquire.keep_going`` the other subjects go on and the failure is listed."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.core.config import ConfigError, parse_config
from pipeline.core.io import InputError, load_nifti, save_nifti
from pipeline.imaging.preprocess import to_ras_isotropic
from pipeline.sources.local_bids import bids_scans
from pipeline.stages.acquire import copy_usable

from .conftest import copy_project, set_params, venv_env


def nifti(path: Path, data: np.ndarray, zooms: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Path:
    """Written through the header's pixdim alone, so that even a 0 mm voxel can be stored."""
    image = nib.Nifti1Image(data, None)
    image.header["pixdim"][1 : 1 + len(zooms)] = zooms
    nib.save(image, path)
    return path


def head(shape=(40, 48, 44)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(10, 200, shape).astype(np.float32)


@pytest.mark.parametrize(
    ("data", "zooms", "message"),
    [
        (np.stack([head(), head()], axis=-1), (1.0, 1.0, 1.0, 2.0), "expected a 3D image"),
        (np.where(head() > 190, np.nan, head()), (1.0, 1.0, 1.0), "NaN or infinite"),
        (np.where(head() > 190, np.inf, head()), (1.0, 1.0, 1.0), "NaN or infinite"),
        (head(), (50.0, 1.0, 1.0), "implausible voxel size"),
        # (a 0 mm pixdim never reaches us: nibabel reads it as 1 mm, with a warning)
        (head(), (0.01, 1.0, 1.0), "implausible voxel size"),
        (head((40, 48, 8)), (1.0, 1.0, 1.0), "field of view too small"),
    ],
)
def test_unusable_images_are_refused_with_subject_and_file(tmp_path: Path, data, zooms, message):
    path = nifti(tmp_path / "sub-09_T1w.nii.gz", data, zooms)
    with pytest.raises(InputError, match=message) as error:
        load_nifti(path, "09")
    assert "subject 09" in str(error.value) and str(path) in str(error.value)


def test_a_flipped_oblique_head_is_resampled_to_ras_and_stays_aligned(ds000011: Path):
    original = nib.load(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz")  # LAS, 1 x 1.33 x 1.33 mm
    data = np.asarray(original.dataobj, dtype=np.float32)
    marker = (slice(60, 64), slice(120, 123), slice(100, 103))  # a small bright block at a known place
    data[marker] = 10 * data.max()
    rotation = np.array([[np.cos(0.2), -np.sin(0.2), 0], [np.sin(0.2), np.cos(0.2), 0], [0, 0, 1]])
    oblique = original.affine.copy()
    oblique[:3, :3] = rotation @ oblique[:3, :3]
    marker_world = nib.affines.apply_affine(oblique, [[61.5, 121, 101]])[0]
    resampled = to_ras_isotropic(nib.Nifti1Image(data, oblique), 1.0)
    assert nib.aff2axcodes(resampled.affine) == ("R", "A", "S")
    values = resampled.get_fdata()
    found = np.argwhere(values > 5 * np.asarray(original.dataobj).max())
    found_world = nib.affines.apply_affine(resampled.affine, found).mean(axis=0)
    assert np.linalg.norm(found_world - marker_world) < 1.0  # mm


def test_subject_ids_with_path_separators_are_refused_in_params():
    for bad in ("../etc", "01/02", "a b"):
        with pytest.raises(ConfigError, match=r"acquire\.subjects\.0"):
            parse_config({"acquire": {"subjects": [bad]}})


def test_keep_going_lists_the_broken_subject_and_keeps_the_others(ds000011: Path, tmp_path: Path):
    root = tmp_path / "bids"
    for subject in ("01", "02"):
        shutil.copytree(ds000011 / f"sub-{subject}", root / f"sub-{subject}")
    broken = root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    broken.write_bytes(broken.read_bytes()[:5000])  # a truncated download
    out = tmp_path / "raw"
    out.mkdir()
    kept = copy_usable(bids_scans(root, []), out, keep_going=True)
    assert [scan.case for scan in kept] == ["01"]
    failures = (out / "failures.tsv").read_text()
    assert "sub-02" in failures and "sub-02_T1w.nii.gz" in failures and "not a readable NIfTI" in failures
    assert not (out / "sub-02").exists()


def test_a_broken_subject_stops_the_cli_with_a_clear_message_and_no_output(ds000011: Path, tmp_path: Path):
    root = tmp_path / "bids"
    shutil.copytree(ds000011 / "sub-01", root / "sub-01")
    (root / "sub-05" / "anat").mkdir(parents=True)
    (root / "sub-05" / "anat" / "sub-05_T1w.nii.gz").write_bytes(b"")
    project = copy_project(tmp_path / "study")
    set_params(project, acquire={"source": "bids", "bids_root": str(root)})
    result = subprocess.run([sys.executable, "-m", "pipeline", "run", "acquire"], cwd=project, env=venv_env(),
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert "subject 05" in result.stderr and "sub-05_T1w.nii.gz: file is empty" in result.stderr
    assert not (project / "data" / "raw").exists()
    assert not list((project / "data").glob(".*")), "a temporary folder was left behind"


def test_disk_full_while_writing_leaves_no_file(tmp_path: Path, monkeypatch):
    def full_disk(image, filename):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", full_disk)
    target = tmp_path / "sub-01_desc-brain_T1w.nii.gz"
    with pytest.raises(OSError, match="No space left"):
        save_nifti(head(), np.eye(4), target)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary twin


def resaved(original: nib.Nifti1Image, orientation: str, dtype: type, step_z: int = 1) -> nib.Nifti1Image:
    """A real head as another scanner might store it: reoriented (e.g. LIA, LPS), another type, thicker slices."""
    canonical = nib.as_closest_canonical(original)
    data = canonical.get_fdata(dtype=np.float32)[:, :, ::step_z]
    affine = canonical.affine @ np.diag([1.0, 1.0, step_z, 1.0])
    transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                nib.orientations.axcodes2ornt(tuple(orientation)))
    data = nib.orientations.apply_orientation(data, transform)
    affine = affine @ nib.orientations.inv_ornt_aff(transform, canonical.shape[:2] + (data.shape[2],))
    scale = np.iinfo(dtype).max / data.max()
    return nib.Nifti1Image(np.round(data * scale).astype(dtype), affine)


@pytest.mark.slow
@pytest.mark.parametrize(("orientation", "dtype", "step_z", "suffix", "thick"),
                         [("LIA", np.uint8, 1, ".mgz", False), ("LPS", np.uint16, 3, ".nii.gz", True)],
                         ids=["uint8-LIA-mgz", "uint16-LPS-3mm-slices"])
def test_clinical_scans_are_harmonized_to_the_same_anatomy(ds000011: Path, tmp_path: Path, orientation, dtype,
                                                           step_z, suffix, thick):
    """Resaved real heads (another orientation, integer type, FreeSurfer format, 4 mm axial slices) come out
    RAS at 1 mm with the same reference level as the original, and thick slices carry a QC flag."""
    from pipeline.core.config import HarmonizeConfig
    from pipeline.imaging.preprocess import acquisition_qc, harmonize_builtin
    from pipeline.imaging.slices import reference_level_mm

    original = nib.load(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    clinical = resaved(original, orientation, dtype, step_z)
    path = tmp_path / f"sub-01_T1w{suffix}"
    nib.save(nib.MGHImage(clinical.get_fdata(dtype=np.float32), clinical.affine) if suffix == ".mgz" else clinical,
             path)
    head = load_nifti(path, "01")
    assert nib.aff2axcodes(head.affine) == tuple(orientation)
    qc = acquisition_qc(head, "01", path)
    assert bool(qc["QCFlags"]) == thick and (not thick or "resampled to 1 mm" in qc["QCFlags"][0])
    harmonized, _ = harmonize_builtin(head, HarmonizeConfig())
    reference, _ = harmonize_builtin(load_nifti(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz"),
                                     HarmonizeConfig())
    assert nib.aff2axcodes(harmonized.affine) == ("R", "A", "S")
    assert np.allclose(harmonized.header.get_zooms()[:3], 1.0)
    assert abs(reference_level_mm(harmonized) - reference_level_mm(reference)) < 4.0


def test_a_field_of_view_too_small_for_a_brain_is_refused_naming_the_file(ds000011: Path, tmp_path: Path):
    from pipeline.imaging.preprocess import acquisition_qc

    original = nib.load(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    slab = nib.Nifti1Image(np.asarray(original.dataobj)[:, :, 80:140], original.affine)  # 60 x 1.33 mm = 80 mm
    with pytest.raises(InputError, match=r"subject 01, file .*slab.nii.gz: field of view .* too small"):
        acquisition_qc(slab, "01", tmp_path / "slab.nii.gz")


def test_a_clinical_header_of_2_9999955_mm_slices_is_flagged_as_thick(ds000011: Path, tmp_path: Path):
    """An MS patient's T1 of 0.72 x 0.72 x 3 mm whose header reads 2.9999955 mm: a real head resampled to that
    grid goes through harmonize (what the harmonize stage and predict both run) with the thick-slice flag."""
    from nibabel.processing import resample_to_output

    from pipeline.core.config import HarmonizeConfig
    from pipeline.imaging.preprocess import harmonize

    original = nib.load(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    clinical = resample_to_output(original, voxel_sizes=(0.72, 0.72, 2.9999955), order=1)
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(nib.Nifti1Image(clinical.get_fdata(dtype=np.float32), clinical.affine), path)
    assert nib.load(path).header.get_zooms()[2] < 3.0  # as the scanner wrote it
    head = harmonize(path, "01", HarmonizeConfig(n4=False), tmp_path / "synthsr.nii.gz", threads=1)
    assert head.record["SourceVoxelMM"] == [0.72, 0.72, 3.0]
    assert len(head.record["QCFlags"]) == 1 and "voxels of 3.0 mm" in head.record["QCFlags"][0]
