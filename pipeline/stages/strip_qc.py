"""Stage 3b — strip_qc: every configured stripper side by side.

Writes ``data/strip_qc/index.html`` (each stripper's mask figures and QC verdicts, and its QC
pictures) and the DVC metrics ``metrics/strip.json``: the Dice of each stripper with a reference
brain mask where the source image has one beside it (ROBEX's reference head does), and the Dice
between every two strippers. Masks are compared in world space, so different crops and grids agree.
"""

from __future__ import annotations

import html
import itertools
import logging
import os
from pathlib import Path

import luigi
import nibabel as nib
import numpy as np
from nibabel.affines import apply_affine

from pipeline.core.bids import read_sources, subject_file
from pipeline.core.config import Config, load_config
from pipeline.core.io import read_tsv, write_json, write_text
from pipeline.imaging.grids import Grid, foreground, foreground_on_grid
from pipeline.runtime.subjects import failed_ids
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import Gathered, Stage
from pipeline.stages.strip import Strip

log = logging.getLogger("pipeline")

Table = dict[str, dict[str, str]]  # masks.tsv rows by participant id
FIGURE_COLUMNS = ("brain_ml", "components", "border_fraction")


class StrippedSets(Gathered):
    """Every configured stripper's output, under ``data/stripped``."""

    folders = (str(Path(Strip.out_template).parent),)

    def requires(self) -> list[Stage]:
        return [Strip(stripper=method) for method in load_config().strip.methods]


def covering_grid(image: nib.Nifti1Image, other: nib.Nifti1Image) -> Grid:
    """``image``'s grid, grown so that it also holds ``other``'s foreground (a crop may have cut it)."""
    corners = np.array(list(itertools.product(*zip(*_box(foreground(other)), strict=True))))
    in_image = apply_affine(np.linalg.inv(image.affine) @ other.affine, corners)
    low = np.minimum(np.floor(in_image.min(axis=0)), 0).astype(int)
    high = np.maximum(np.ceil(in_image.max(axis=0)) + 1, image.shape[:3]).astype(int)
    affine = image.affine.copy()
    affine[:3, 3] = apply_affine(image.affine, low)
    return tuple(int(n) for n in high - low), affine


def _box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    coords = np.argwhere(mask)
    return coords.min(axis=0), coords.max(axis=0)


def dice_world(image: nib.Nifti1Image, other: nib.Nifti1Image) -> float:
    """Dice of two masks in world space: both on ``image``'s grid (grown to hold both), nearest neighbour."""
    if not foreground(image).any() or not foreground(other).any():
        return 0.0
    grid = covering_grid(image, other)
    a, b = foreground_on_grid(image, grid), foreground_on_grid(other, grid)
    return float(2.0 * (a & b).sum() / (a.sum() + b.sum()))


def reference_mask(source: Path) -> Path | None:
    """A brain mask beside the source image: ``X_T1w.nii.gz`` -> ``X_desc-brain_mask.nii.gz`` (BIDS
    derivatives) or ``X.nii.gz`` -> ``X_mask.nii.gz`` (ROBEX's reference head)."""
    stem = source.name.removesuffix(".gz").removesuffix(".nii")
    candidates = [f"{stem.removesuffix('_T1w')}_desc-brain_mask.nii.gz", f"{stem}_mask.nii.gz"]
    return next((source.with_name(name) for name in candidates if source.with_name(name).is_file()), None)


def _with_mean(by_subject: dict[str, float]) -> dict[str, float]:
    return {**by_subject, "mean": float(np.mean(list(by_subject.values())))} if by_subject else {}


class StripQc(Stage):
    name = "strip_qc"
    param_keys = ("strip.methods",)
    out_template = "data/strip_qc"
    metrics_template = "metrics/strip.json"

    def requires(self) -> dict[str, luigi.Task]:
        return {"raw": Acquire(), "stripped": StrippedSets()}

    def build(self, out: Path, config: Config) -> None:
        methods = config.strip.methods
        sources = read_sources(self.input_dir("raw"))
        tables = {method: read_mask_qc(self.input_dir("stripped") / method) for method in methods}
        masks = {method: self.masks(method, list(tables[method])) for method in methods}  # the stripped only
        metrics = {
            "reference_dice": {method: reference_dice(masks[method], sources) for method in methods},
            "agreement_dice": agreement_dice(masks),
            "qc_pass_fraction": {method: float(np.mean([row["qc_pass"] == "True" for row in table.values()]))
                                 for method, table in tables.items()},
            "failed": {method: sorted(failed_ids(self.input_dir("stripped") / method)) for method in methods},
        }
        write_json(metrics, self.metrics_path())
        write_text(index_html(tables, metrics, self.input_dir("stripped"), self.out_dir()), out / "index.html")
        log.info("strip_qc: reference %s; agreement %s", metrics["reference_dice"], metrics["agreement_dice"])

    def masks(self, method: str, participant_ids: list[str]) -> dict[str, nib.Nifti1Image]:
        folder = self.input_dir("stripped") / method
        return {pid: nib.load(subject_file(folder, pid.removeprefix("sub-"), "desc-brain_mask"))
                for pid in participant_ids}


def reference_dice(masks: dict[str, nib.Nifti1Image], sources: dict[str, Path]) -> dict[str, float]:
    """Per subject whose source has a reference mask, the Dice with it; and the mean."""
    references = {pid: reference_mask(source) for pid, source in sources.items()}
    return _with_mean({pid: dice_world(masks[pid], nib.load(path))
                       for pid, path in references.items() if path is not None and pid in masks})


def agreement_dice(masks: dict[str, dict[str, nib.Nifti1Image]]) -> dict[str, dict[str, float]]:
    """Per pair of strippers ("a-b"): the Dice of their masks per subject, and the mean."""
    return {f"{a}-{b}": _with_mean({pid: dice_world(masks[a][pid], masks[b][pid])
                                    for pid in masks[a] if pid in masks[b]})
            for a, b in itertools.combinations(masks, 2)}


def index_html(tables: dict[str, Table], metrics: dict, stripped: Path, page: Path) -> str:
    """One page: the mask figures (QC failures in red), the Dice tables, then every QC picture."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Skull stripping QC</title><style>"
        "body{font-family:sans-serif} td,th{padding:2px 8px;text-align:right} .fail{background:#fcc}"
        "</style></head><body><h1>Skull stripping QC</h1>"
        f"<h2>Mask figures</h2>{figures_table(tables)}"
        f"<h2>Dice with the reference mask</h2>{dice_table(metrics['reference_dice'])}"
        f"<h2>Dice between strippers</h2>{dice_table(metrics['agreement_dice'])}"
        f"<h2>Masks</h2>{pictures(tables, stripped, page)}</body></html>\n"
    )


def figures_table(tables: dict[str, Table]) -> str:
    head = "".join(f"<th>{c}</th>" for c in ("subject", "method", *FIGURE_COLUMNS, "QC flags"))
    rows = []
    for method, table in tables.items():
        for pid, row in table.items():
            cells = [pid, method, *(row.get(c, "n/a") for c in FIGURE_COLUMNS), row["qc_reason"]]
            status = "ok" if row["qc_pass"] == "True" else "fail"
            rows.append(f"<tr class='{status}'>{''.join(f'<td>{html.escape(c)}</td>' for c in cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def pictures(tables: dict[str, Table], stripped: Path, page: Path) -> str:
    """Each subject's QC picture from every stripper, linked relative to the page's folder."""
    sections = []
    for pid in next(iter(tables.values())):
        figures = []
        for method in tables:
            link = html.escape(os.path.relpath(stripped / method / "qc" / f"{pid}_mask.png", page))
            figures.append(f"<figure><img src='{link}' width=720><figcaption>{method}</figcaption></figure>")
        sections.append(f"<h3>{html.escape(pid)}</h3>{''.join(figures)}")
    return "".join(sections)


def dice_table(dice: dict[str, dict[str, float]]) -> str:
    columns = sorted({c for scores in dice.values() for c in scores}, key=lambda c: (c == "mean", c))
    if not columns:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    cells = {name: "".join(f"<td>{scores[c]:.3f}</td>" if c in scores else "<td></td>" for c in columns)
             for name, scores in dice.items()}
    body = "".join(f"<tr><td>{html.escape(name)}</td>{row}</tr>" for name, row in cells.items())
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def read_mask_qc(stripped: Path) -> dict[str, dict[str, str]]:
    """A stripper's ``masks.tsv``, by participant id."""
    return {row["participant_id"]: row for row in read_tsv(stripped / "masks.tsv")}
