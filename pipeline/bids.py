"""BIDS metadata of the folders the pipeline writes: each a BIDS derivative dataset other tools can read, as
fMRIPrep's are (``dataset_description.json`` with ``DatasetType: derivative`` and ``GeneratedBy``)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from pipeline.io import write_json

BIDS_VERSION = "1.9.0"
CODE_URL = "https://github.com/synthseg-pipeline/synthseg-pipeline"


def pipeline_version() -> str:
    try:
        return metadata.version("synthseg-pipeline")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def write_derivative_description(folder: Path, name: str, description: str, **generated_by: object) -> None:
    """``folder/dataset_description.json``: a derivative of the study's raw BIDS data (``data/raw``)."""
    write_json({
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "synthseg-pipeline", "Version": pipeline_version(), "Description": description,
                         "CodeURL": CODE_URL, **generated_by}],
        "SourceDatasets": [{"URL": "data/raw"}],
    }, folder / "dataset_description.json")
