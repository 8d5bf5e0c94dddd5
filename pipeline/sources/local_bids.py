"""``acquire.source: bids``: the heads of a local BIDS root, with or without sessions; several runs as
``acquire.runs`` says."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.bids import RUN_ENTITIES, run_entities, session_dirs, t1w_images
from pipeline.core.config import AcquireConfig
from pipeline.core.io import InputError
from pipeline.sources import SourceScan, found

log = logging.getLogger("pipeline")


def run_label(case: str, path: Path) -> str:
    """The case label of one of several heads of a subject or session: the case, then the entities of the
    file's name that tell it from the others (``sub-01_ses-A_run-2_T1w.nii.gz`` -> ``01_ses-A_run-2``)."""
    return "_".join([case, *(f"{key}-{value}" for key, value in run_entities(path.name).items())])


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
    return found(scans, subjects, "bids", f"under {root}", f"no sub-*/[ses-*/]anat/*_T1w.nii[.gz] under {root}")


def scans(config: AcquireConfig, download_dir: Path) -> list[SourceScan]:
    if not config.bids_root:
        raise InputError("acquire.bids_root must name a BIDS folder when acquire.source is 'bids'")
    return bids_scans(Path(config.bids_root).expanduser(), config.subjects, config.runs)
