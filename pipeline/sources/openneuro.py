"""``acquire.source: openneuro``: only the T1w files of an OpenNeuro dataset, downloaded (``openneuro-py``)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.core.config import AcquireConfig
from pipeline.core.io import InputError
from pipeline.sources import SourceScan
from pipeline.sources.local_bids import bids_scans

log = logging.getLogger("pipeline")


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


def scans(config: AcquireConfig, download_dir: Path) -> list[SourceScan]:
    return openneuro_scans(config.dataset, config.subjects, config.runs, download_dir)
