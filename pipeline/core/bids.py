"""The BIDS layout, read and written in one place: the raw dataset ``acquire`` writes (``data/raw``) and the
derivative datasets the other stages write, each one other tools can read as fMRIPrep's outputs are read.

A *case* is one T1w head: a subject, or a subject's session, or (``acquire.runs: all``) one run of it. Its
label is its file name's entities without ``sub-``: ``01``, ``01_ses-A``, ``01_ses-A_run-2``, so that
``sub-<case>_<suffix>`` is the name of its files and the subject is the label's first part. The split into
train and test is by subject (``participants.tsv``), so a subject's sessions are never on both sides.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pipeline.core.io import HEAD_SUFFIXES, InputError, read_tsv, write_json, write_tsv
from pipeline.core.labels import LABEL_NAMES

BIDS_VERSION = "1.9.0"
CODE_URL = "https://github.com/synthseg-pipeline/synthseg-pipeline"
LABEL = re.compile(r"^[A-Za-z0-9]+$")  # a BIDS label: letters and digits, no separators, no '..'
CASE = re.compile(r"^[A-Za-z0-9]+(?:_[a-z]+-[A-Za-z0-9]+)*$")  # a subject label, then entities
ENTITY = re.compile(r"^([a-z]+)-([A-Za-z0-9]+)$")
# The entities a T1w head's name may carry that tell one of a session's heads from another (and its labels).
RUN_ENTITIES = ("acq", "ce", "rec", "run", "echo", "part", "chunk")
# participants.json and scans.json: what the custom columns of the raw tables hold (BIDS asks for it)
PARTICIPANT_COLUMNS = {
    "split": {"Description": "the subject's role in the study", "Levels": {
        "train": "its synthetic images train the models", "test": "held out: its real and synthetic slices test them",
        "both": "too few subjects to split: it trains and tests"}},
}
SCAN_COLUMNS = {"source": {"Description": "the file this T1w image was copied from"}}


def subject_of(case: str) -> str:
    """The subject label of a case label (``01_ses-A`` -> ``01``); a case id (``sub-01_ses-A``) gives ``sub-01``."""
    return case.split("_", 1)[0]


def entities(name: str) -> dict[str, str]:
    """The key-value entities of a BIDS file name or case id (``sub-01_ses-A_run-2_T1w.nii.gz``)."""
    return dict(match.groups() for part in name.split(".", 1)[0].split("_") if (match := ENTITY.match(part)))


def run_entities(name: str) -> dict[str, str]:
    """The entities of a file name or case id that tell one of a session's heads from another (``RUN_ENTITIES``)."""
    found = entities(name)
    return {key: found[key] for key in RUN_ENTITIES if key in found}


def case_dir(root: Path, case: str) -> Path:
    """ROOT/sub-X or ROOT/sub-X/ses-Y: the folder that holds a case's ``anat`` folder."""
    session = entities(f"sub-{case}").get("ses")
    folder = root / f"sub-{subject_of(case)}"
    return folder / f"ses-{session}" if session else folder


STRUCTURES = "desc-structures_dseg"  # an atlas segmenter's own labels (FreeSurfer numbers), beside its tissues (dseg)


def subject_file(root: Path, case: str, suffix: str) -> Path:
    """A case's image in a BIDS(-derivative) tree: ROOT/sub-X[/ses-Y]/anat/sub-<case>_SUFFIX.nii.gz."""
    return case_dir(root, case) / "anat" / f"sub-{case}_{suffix}.nii.gz"


@dataclass(frozen=True, order=True)
class Case:
    label: str  # the case label, without "sub-"
    split: str  # its subject's: train | test | both

    @property
    def subject(self) -> str:
        return subject_of(self.label)

    @property
    def in_train(self) -> bool:
        return self.split in ("train", "both")

    @property
    def in_test(self) -> bool:
        return self.split in ("test", "both")


def read_cases(raw: Path) -> list[Case]:
    """Every case of the raw dataset, in label order: the heads its scans tables list (a subject's sessions
    and runs), each with its subject's split from ``participants.tsv``."""
    splits = {row["participant_id"]: row["split"] for row in read_tsv(raw / "participants.tsv")}
    cases = sorted(Case(case.removeprefix("sub-"), splits[subject_of(case)]) for case in read_sources(raw)
                   if subject_of(case) in splits)
    missing = sorted(set(splits) - {f"sub-{case.subject}" for case in cases})
    if missing:
        raise InputError(f"{raw}: {', '.join(missing)} in participants.tsv but in no scans table (re-run acquire)")
    return cases


def read_sources(raw: Path) -> dict[str, Path]:
    """Case id (``sub-01_ses-A``) -> the file its head was copied from, from the raw dataset's scans tables."""
    sources = {}
    for table in sorted([*raw.glob("sub-*/sub-*_scans.tsv"), *raw.glob("sub-*/ses-*/sub-*_scans.tsv")]):
        for row in read_tsv(table):
            sources[Path(row["filename"]).name.removesuffix("_T1w.nii.gz")] = Path(row["source"])
    return sources


def t1w_images(anat: Path) -> list[Path]:
    """The T1w images of a BIDS ``anat`` folder (NIfTI or FreeSurfer volumes), lowest run number first."""
    found = [path for path in anat.glob("*_T1w.*") if path.name.endswith(HEAD_SUFFIXES)]
    def run_number(path: Path) -> int:
        run = entities(path.name).get("run", "0")
        return int(run) if run.isdigit() else 0  # BIDS runs are indices; anything else sorts by name

    return sorted(found, key=lambda path: (run_number(path), path.name))


def session_dirs(subject_dir: Path) -> list[Path]:
    """A subject's session folders, or the subject's own folder when it has no sessions."""
    return sorted(path for path in subject_dir.glob("ses-*") if path.is_dir()) or [subject_dir]


def write_raw_tables(out: Path, splits: dict[str, str], sources: dict[str, Path]) -> None:
    """participants.tsv (a row per subject: its split) and a scans table per subject or session (a row per
    head: the file it was copied from), with the JSON files that describe their columns."""
    write_tsv([{"participant_id": f"sub-{subject}", "split": split} for subject, split in sorted(splits.items())],
              out / "participants.tsv")
    write_json(PARTICIPANT_COLUMNS, out / "participants.json")
    by_folder: dict[Path, list[dict]] = {}
    for case, source in sorted(sources.items()):
        folder = case_dir(out, case)
        by_folder.setdefault(folder, []).append({"filename": f"anat/sub-{case}_T1w.nii.gz", "source": str(source)})
    for folder, rows in by_folder.items():
        prefix = "_".join([folder.parent.name, folder.name] if folder.name.startswith("ses-") else [folder.name])
        write_tsv(rows, folder / f"{prefix}_scans.tsv")
    write_json(SCAN_COLUMNS, out / "scans.json")


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


def sidecar(image: Path) -> Path:
    return image.with_name(image.name.replace(".nii.gz", ".json"))


def reference_level(harmonized: Path, subject: str) -> float:
    """The subject's reference axial level (world z, mm), as the harmonize stage found it."""
    record = sidecar(subject_file(harmonized, subject, "desc-harmonized_T1w"))
    try:
        return float(json.loads(record.read_text())["ReferenceLevelMM"])
    except (OSError, KeyError, ValueError) as error:
        raise InputError(f"subject {subject}, file {record}: no reference level ({error}); re-run harmonize") from None


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


def write_dseg_table(folder: Path) -> None:
    """``dseg.tsv``: the index and name of every label in a derivative's ``*_dseg`` maps."""
    write_tsv([{"index": index, "name": name} for index, name in LABEL_NAMES.items()], folder / "dseg.tsv")


@dataclass(frozen=True)
class Folders:
    """Where a study keeps what one strategy's subjects are made from: their labels (a segmenter's), their stripped
    brains (a stripper's) and their harmonized heads with the reference levels; for scoring against reference
    labels, the raw dataset whose scans tables name the file each head was copied from."""

    segmented: Path
    stripped: Path
    harmonized: Path
    raw: Path | None = None

    def source(self, case: str) -> Path | None:
        """The file the case's head was copied from (None: no raw dataset here, or not listed)."""
        return self._sources.get(f"sub-{case}")

    @functools.cached_property
    def _sources(self) -> dict[str, Path]:
        return read_sources(self.raw) if self.raw else {}
