"""Stage 1 — acquire: gather T1-weighted heads into a BIDS tree under ``data/raw``.

Sources (``pipeline.sources``): ``sample`` (real heads shipped inside installed packages, offline), ``bids`` (any
local BIDS root, with or without sessions), ``folder`` (a plain folder of heads) and ``openneuro`` (the T1w files
of an OpenNeuro dataset). Each head is a case (``pipeline.core.bids``): a subject, a subject's session, or with
``acquire.runs: all`` each of its runs. ``participants.tsv`` records each subject's train/test split and the
scans tables where each head came from.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.core.bids import BIDS_VERSION, CASE, LABEL, split_subjects, subject_file, write_raw_tables
from pipeline.core.config import AcquireConfig, Config
from pipeline.core.io import InputError, load_nifti, write_json, write_text
from pipeline.runtime.subjects import failure_row, write_failures
from pipeline.sources import SourceScan, gather
from pipeline.stages.base import Stage

log = logging.getLogger("pipeline")


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
    imports_by_name = ("pipeline.sources",)  # acquire.source picks the module

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
