r"""Where the heads come from (``acquire.source``): each source a module whose ``scans(config, download_dir)``
lists the T1w heads it offers as ``SourceScan``\ s; the acquire stage copies them into the raw BIDS tree."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.bids import subject_of
from pipeline.core.config import AcquireConfig
from pipeline.core.io import InputError

MODULES = {"sample": "sample", "bids": "local_bids", "folder": "folder", "openneuro": "openneuro"}  # by source


@dataclass(frozen=True)
class SourceScan:
    case: str  # the case label (pipeline.core.bids): subject, then session and run entities, without "sub-"
    path: Path
    origin: str  # where it came from, for the dataset description

    @property
    def subject(self) -> str:
        return subject_of(self.case)


def found(scans: list[SourceScan], subjects: list[str], source: str, where: str, nothing: str) -> list[SourceScan]:
    """``scans``, or an error naming the requested ``subjects`` that ``where`` lacks, or saying it holds ``nothing``
    usable."""
    missing = sorted(set(subjects) - {scan.subject for scan in scans})
    if missing:
        raise InputError(f"{source}: subjects not found {where}: {', '.join(missing)}")
    if not scans:
        raise InputError(f"{source}: {nothing}")
    return scans


def gather(config: AcquireConfig, download_dir: Path) -> list[SourceScan]:
    """The heads ``config.source`` offers (a source is imported only when it is the one configured)."""
    return importlib.import_module(f"{__name__}.{MODULES[config.source]}").scans(config, download_dir)
