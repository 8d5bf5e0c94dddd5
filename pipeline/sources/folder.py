"""``acquire.source: folder``: a plain folder of heads, one subject per file."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.core.config import AcquireConfig
from pipeline.core.io import HEAD_SUFFIXES, InputError, image_stem
from pipeline.sources import SourceScan, found


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
    return found(chosen, subjects, "folder", f"in {folder}", f"no .nii, .nii.gz, .mgz or .mgh head in {folder}")


def scans(config: AcquireConfig, download_dir: Path) -> list[SourceScan]:
    if not config.folder:
        raise InputError("acquire.folder must name a folder of heads when acquire.source is 'folder'")
    return folder_scans(Path(config.folder).expanduser(), config.subjects)
