"""Stage 9 — report: one self-contained HTML page comparing every (segmenter x stripper) strategy.

Dice table and bar chart (real and synthetic), training curves, each real test head's prediction in three planes
(drawn here from the label volumes evaluate wrote, so that only the report reruns when the pictures' code changes),
tissue volumes, Dice by height, and the subjects the QC gate excluded. Writes ``data/report/index.html`` (every
figure embedded), its PNG figures, ``panels/<combo>/sub-<case>.png`` and ``dice.csv`` (every combo's Dice).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
from pathlib import Path

import luigi
import nibabel as nib
import numpy as np

from pipeline.core.bids import Folders, subject_file
from pipeline.core.config import Config, EvaluateConfig, load_config
from pipeline.core.io import read_tsv, write_csv, write_text
from pipeline.core.labels import TISSUES
from pipeline.evaluation.compare import CasesTable, Difference, cases_scores, paired_difference, read_cases
from pipeline.evaluation.heads import HeldOutHead, load_held_out_head
from pipeline.evaluation.metrics import NOTES, Evaluation, Kind, TissueDice, read_evaluation
from pipeline.imaging.overlays import brain_centre, three_planes
from pipeline.imaging.slices import level_index
from pipeline.stages.acquire import Acquire
from pipeline.stages.base import Gathered, Stage
from pipeline.stages.evaluate import Evaluate
from pipeline.stages.harmonize import Harmonize
from pipeline.stages.segment_qc import SegmentQC
from pipeline.stages.strip import Strip
from pipeline.stages.train import Train

log = logging.getLogger("pipeline")

EVALUATION = Path("data/evaluation")
FIGURE_WIDTH_IN, FIGURE_DPI = 10.0, 100  # 1000 pixels: the page's width on a laptop screen

class Evaluations(Gathered):
    """Every configured combo evaluated (and what the report shows of its QC and segmentation, and draws its test
    heads over: their stripped brains, labels and reference levels)."""

    folders = ("data/evaluation", "metrics", "data/qc", "data/segmented", "data/stripped", "data/harmonized")

    def requires(self) -> list[Stage]:
        return [Evaluate(segmenter=seg, stripper=strip) for seg, strip in load_config().combos()]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def evaluations(combos: list[str], folder: Path = EVALUATION) -> dict[str, Evaluation]:
    """What evaluate measured of each combo (``data/evaluation/<combo>/evaluation.json``)."""
    return {combo: read_evaluation(folder / combo) for combo in combos}


def tissues(scores: TissueDice) -> dict[str, float | None]:
    return {name: getattr(scores, name) for name in [*TISSUES.values(), "mean"]}


def dice_rows(evaluated: dict[str, Evaluation]) -> list[dict]:
    """Per combo and kind, the mean Dice per tissue over whole heads (synthetic: slices), its 95 % interval, the
    cases it is the mean of and, with several seeds, its SD over seeds."""
    rows = []
    for combo, evaluation in evaluated.items():
        for kind, scores in sorted(evaluation.dice.items(), key=lambda item: list(Kind).index(item[0])):
            ci = scores.ci95
            row = {"combo": combo, "kind": kind.value, **tissues(scores),
                   "95 % CI of the mean": f"{ci.low:.3f}-{ci.high:.3f}" if ci else "", "cases": scores.n,
                   "seeds": 1 if kind is Kind.TEACHER else evaluation.n_seeds}
            rows.append(row | ({"sd over seeds": scores.sd_over_seeds} if evaluation.n_seeds > 1 else {}))
    return rows


def band_rows(evaluated: dict[str, Evaluation]) -> list[dict]:
    """Per combo and whole-head kind, the mean Dice per tissue within the band around the reference level."""
    return [{"combo": combo, "kind": kind.value, **tissues(scores)} for combo, evaluation in evaluated.items()
            for kind, scores in evaluation.dice_band.items()]


def bar_chart(rows: list[dict], path: Path) -> None:
    """One panel per kind of Dice, two to a row: as wide as the page whatever the number of kinds."""
    plt = _figure()
    kinds = [kind.value for kind in Kind if any(row["kind"] == kind for row in rows)]
    columns = min(len(kinds), 2)
    lines = math.ceil(len(kinds) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(FIGURE_WIDTH_IN, 3.2 * lines), sharey=True, squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(kinds):]:
        ax.set_visible(False)
    for ax, kind in zip(axes, kinds, strict=False):
        selected = [row for row in rows if row["kind"] == kind]
        width = 0.8 / max(len(selected), 1)
        for i, row in enumerate(selected):
            values = [row[t] if row[t] is not None else np.nan for t in TISSUES.values()]
            ax.bar(np.arange(3) + i * width, values, width, label=row["combo"])
        ax.set_xticks(np.arange(3) + 0.4 - width / 2, list(TISSUES.values()))
        ax.set_title(f"Dice: {kind}")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    save(fig, path)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    _figure().close(fig)


def curves(curve_files: dict[str, Path], path: Path, fold: int | str) -> None:
    """Training curves (each combo's train stage ``curve_template``). With fold all, nnU-Net's "validation" batches
    come from the training cases: say so."""
    held_out = "training cases (fold all)" if fold == "all" else f"held-out fold {fold}"
    plt = _figure()
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_IN, 3.5))
    for combo, curve_file in curve_files.items():
        with open(curve_file) as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        loss_ax.plot(epochs, [float(r["train_loss"]) for r in rows], label=f"{combo} train")
        loss_ax.plot(epochs, [float(r["val_loss"]) for r in rows], "--", label=f"{combo} on {held_out}")
        dice_ax.plot(epochs, [float(r["pseudo_dice"]) for r in rows], label=combo)
    loss_ax.set(title="loss", xlabel="epoch")
    dice_ax.set(title=f"nnU-Net pseudo Dice on {held_out}", xlabel="epoch", ylim=(0, 1))
    loss_ax.legend(fontsize=7)
    save(fig, path)


def head_panel(head: HeldOutHead, labels: np.ndarray, path: Path, title: str) -> None:
    """The head in three planes through its reference level: the segmenter's labels, the model's, the reference."""
    three_planes(head.brain.get_fdata(dtype=np.float32), panel_layers(head, labels), path, title,
                 brain_centre(head.mask, level_index(head.brain, head.level_mm)))


def panel_layers(head: HeldOutHead, labels: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The panel's rows, on the brain's grid. The reference is blank where it is not scored (planes not drawn,
    labels left out), and its row says so: the model's tissue there is not counted against it."""
    layers = [("teacher", head.teacher), ("model", labels)]
    if head.reference is not None:
        name = "reference" if head.scored is None else "reference (blank: not scored)"
        layers.append((name, head.on_brain(head.reference)))
    return layers


def predicted_cases(volumes: Path) -> list[str]:
    """The real test heads evaluate predicted (``volumes/sub-<case>/[ses-*/]anat/sub-<case>_dseg.nii.gz``)."""
    return sorted(path.name.removeprefix("sub-").removesuffix("_dseg.nii.gz")
                  for path in volumes.rglob("sub-*_dseg.nii.gz"))


def panels(combo: str, folders: Folders, evaluation: Path, out: Path, config: EvaluateConfig) -> list[Path]:
    """A three-plane picture (teacher, model, reference) of each real test head of ``combo``, from the labels its
    first seed's model predicted (``evaluation/<combo>/volumes``), written under ``out``."""
    volumes, drawn = evaluation / combo / "volumes", []
    for case in predicted_cases(volumes):
        # what evaluate wrote, read as it is: load_nifti would refuse a model's empty (constant) prediction
        labels = np.asarray(nib.load(subject_file(volumes, case, "dseg")).dataobj, dtype=np.uint8)
        drawn.append(out / f"sub-{case}.png")
        head_panel(load_held_out_head(case, folders, config), labels, drawn[-1], f"sub-{case}  {combo}")
    return drawn


def combo_folders(segmenter: str, stripper: str) -> Folders:
    """Where a combo's test heads are: its labels, its stripped brains, the harmonized heads."""
    return Folders(SegmentQC.labels(segmenter, stripper).out_dir(), Strip(stripper=stripper).out_dir(),
                   Harmonize().out_dir(), Acquire().out_dir())


def height_chart(evaluated: dict[str, Evaluation], path: Path) -> bool:
    """GM and WM Dice per fifth of the brain's height, model against teacher (or the segmenter's labels)."""
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_IN, 3.5), sharey=True)
    drawn = False
    for combo, evaluation in evaluated.items():
        heights = evaluation.dice_by_height
        kind = Kind.EXTERNAL if Kind.EXTERNAL in heights else Kind.REAL
        for ax, tissue in zip(axes, ("GM", "WM"), strict=True):
            if kind in heights:
                ax.plot(range(1, 6), [np.nan if v is None else v for v in heights[kind][tissue]], "o-",
                        label=f"{combo} model ({kind.value})")
                drawn = True
            if Kind.TEACHER in heights:
                ax.plot(range(1, 6), [np.nan if v is None else v for v in heights[Kind.TEACHER][tissue]], "s--",
                        label=f"{combo} teacher")
    for ax, tissue in zip(axes, ("GM", "WM"), strict=True):
        ax.set(title=f"{tissue} Dice by height", xlabel="fifth of the brain's height (1: bottom)", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    save(fig, path)
    return drawn


def cost_rows(evaluated: dict[str, Evaluation], qc_metrics: dict[str, Path]) -> list[dict]:
    """What each strategy cost: its segmenter's seconds per head (for the consensus, the fusion's plus those of the
    segmenters it fuses: each combo's segment_qc metrics) and the training's wall time."""
    rows = []
    for combo, evaluation in evaluated.items():
        qc = json.loads(qc_metrics[combo].read_text()).get("cost", {})
        fused = qc.get("fused") or {}
        rows.append({"combo": combo, "segmenter s/head": qc.get("mean_seconds_per_head"),
                     "threads per head": qc.get("threads_per_head"),
                     "fused segmenters s/head": ", ".join(f"{m} {s}" for m, s in fused.items()) or "",
                     "training s": evaluation.train_wall_s})
    return rows


def combo_rows(combos: list[str], folder: Path, name: str) -> list[dict]:
    """Every combo's rows of a table it wrote (``folder/<combo>/name``), the combo first."""
    return [{"combo": combo, **row} for combo in combos if (folder / combo / name).is_file()
            for row in read_tsv(folder / combo / name)]


def exclusions(combos: list[str], qc_dir: Path) -> list[dict]:
    return [row for row in combo_rows(combos, qc_dir, "qc.tsv") if row.get("included") in ("False", "0")]


def exclusion_overlays(excluded: list[dict], labels: dict[str, Path]) -> list[Path]:
    """The label overlay of each excluded subject (``labels``: each combo's labels folder: its segment stage's, or
    for the consensus, segment_qc's), where it exists."""
    overlays = [labels[row["combo"]] / "qc" / f"{row['participant_id']}_dseg.png" for row in excluded]
    return [overlay for overlay in overlays if overlay.is_file()]


def embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.stem)}">'


def table(rows: list[dict]) -> str:
    if not rows:
        return "<p>none</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: object) -> str:
    """A cell: floats to 3 decimals; nothing to show (None, NaN) as a dash, never "None"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def combo_tasks(config: Config, stage: type[Stage]) -> dict[str, Stage]:
    """``stage``'s task of every configured combo, by combo name: where the report reads what that stage wrote."""
    return {f"{seg}-{strip}": stage(segmenter=seg, stripper=strip) for seg, strip in config.combos()}


def comparison_kind(cases: dict[str, CasesTable]) -> Kind:
    """external when every combo was scored against the user's reference labels, else real."""
    return Kind.EXTERNAL if all(cases_scores(table, Kind.EXTERNAL) for table in cases.values()) else Kind.REAL


def comparable(a: str, b: str, kind: Kind) -> bool:
    """dice.real scores each model against its own segmenter's labels: only strippers of one segmenter compare."""
    return kind is Kind.EXTERNAL or a.split("-")[0] == b.split("-")[0]


def pairwise(cases: dict[str, CasesTable], kind: Kind, score: str = "mean") -> list[Difference]:
    """Every comparable pair of combos, paired over test subjects (and seeds); ``score``: the mean over tissues or
    one tissue's Dice."""
    combos = list(cases)
    scores = {combo: cases_scores(table, kind, score) for combo, table in cases.items()}
    return [paired_difference(a, scores[a], b, scores[b], measure=f"{score} Dice") for i, a in enumerate(combos)
            for b in combos[i + 1:]
            if comparable(a, b, kind) and scores[a] and scores[b]]


def verdict(rows: list[dict], differences: list[Difference], kind: Kind) -> str:
    """The strategy with the best mean real-head Dice, named the best only when every paired 95 % CI against
    it excludes 0."""
    what = {Kind.EXTERNAL: "against your reference labels", Kind.REAL: "against each segmenter's labels"}[kind]
    scored = [row for row in rows if row["kind"] == kind and row["mean"] is not None]
    if not scored:
        return "no real-head Dice yet"
    best = max(scored, key=lambda row: row["mean"])
    against = [d for d in differences if best["combo"] in (d.a, d.b)]
    if not against:
        return (f"{best['combo']} (mean Dice {best['mean']:.3f} on whole real test heads, {what}; nothing to compare "
                "with)")
    undecided = [d for d in against if d.winner != best["combo"]]
    if undecided:
        return "; ".join(d.verdict() for d in undecided) + f" (mean Dice on whole real test heads, {what})"
    return f"{best['combo']} (mean Dice {best['mean']:.3f} on whole real test heads, {what}): " + "; ".join(
        d.verdict() for d in against)


def difference_rows(differences: list[Difference]) -> list[dict]:
    return [{"a": d.a, "b": d.b, "a - b": d.mean, "95 % CI low": d.ci95[0], "95 % CI high": d.ci95[1],
             "subjects": d.n_subjects, "seeds": d.n_seeds, "verdict": d.verdict()} for d in differences]


def tissue_difference_rows(cases: dict[str, CasesTable], kind: Kind) -> list[dict]:
    """The paired comparisons tissue by tissue: a mean over tissues can be decided by one tissue that the reference
    labels draw only in part (oasis-manual's CSF is the ventricles), while the others say nothing or the opposite."""
    return [{"tissue": tissue, **row} for tissue in TISSUES.values()
            for row in difference_rows(pairwise(cases, kind, tissue))]


def per_subject_rows(cases: dict[str, CasesTable], kind: Kind) -> list[dict]:
    scores = {combo: cases_scores(table, kind) for combo, table in cases.items()}
    subjects = sorted({subject for combo_scores in scores.values() for subject in combo_scores})
    return [{"subject": subject, **{combo: float(np.mean(combo_scores[subject])) if subject in combo_scores
                                    else None for combo, combo_scores in scores.items()}} for subject in subjects]


def shared_subjects_warning(evaluated: dict[str, Evaluation]) -> str:
    if not any(evaluation.train_test_share_subject for evaluation in evaluated.values()):
        return ""
    return ("<p><b>Warning:</b> train and test share subjects in this study (too few subjects to split), so the "
            "real-head Dice is not that of unseen brains.</p>")


class Report(Stage):
    name = "report"
    # evaluate.reference_*: the panels draw each head's reference labels
    param_keys = ("strip.methods", "segment.methods", "train.fold", "evaluate.band_mm", "evaluate.reference_labels",
                  "evaluate.reference_scheme")
    out_template = "data/report"

    def requires(self) -> list[luigi.Task]:
        return [Evaluations()]

    def build(self, out: Path, config: Config) -> None:
        combos = [f"{seg}-{strip}" for seg, strip in config.combos()]
        evaluated = evaluations(combos)
        rows = dice_rows(evaluated)
        cases = {combo: read_cases(task.plot_path(task.cases_template))
                 for combo, task in combo_tasks(config, Evaluate).items()}
        kind = comparison_kind(cases)
        differences = pairwise(cases, kind)
        answer = verdict(rows, differences, kind)
        bar_chart(rows, out / "dice.png")
        curves({combo: task.plot_path(task.curve_template) for combo, task in combo_tasks(config, Train).items()},
               out / "training.png", config.train.fold)
        heights = height_chart(evaluated, out / "height.png")
        excluded = exclusions(combos, Path("data/qc"))
        drawn = {f"{seg}-{strip}": panels(f"{seg}-{strip}", combo_folders(seg, strip), EVALUATION,
                                          out / "panels" / f"{seg}-{strip}", config.evaluate)
                 for seg, strip in config.combos()}
        sections = [
            "<h1>synthseg-pipeline: strategy comparison</h1>",
            f"<p><b>Best strategy on real heads:</b> {html.escape(answer)}</p>",
            shared_subjects_warning(evaluated),
            f"<h2>Paired comparisons ({kind} Dice, mean over tissues; bootstrap over test subjects and seeds)</h2>",
            table(difference_rows(differences)),
            f"<h2>Paired comparisons per tissue ({kind} Dice; read the tissues your reference labels draw "
            "whole)</h2>",
            table(tissue_difference_rows(cases, kind)),
            f"<h2>Per test subject ({kind} Dice, mean over tissues)</h2>",
            table(per_subject_rows(cases, kind)),
            "<h2>Dice per tissue (whole real heads, 3D; synthetic test slices)</h2>", table(rows),
            embed(out / "dice.png"),
            "<ul>" + "".join(f"<li><b>{kind}</b>: {html.escape(note)}</li>" for kind, note in NOTES.items()
                             if any(row["kind"] == kind for row in rows)) + "</ul>",
            "<h2>What each strategy costs</h2>", table(cost_rows(evaluated, {
                combo: task.metrics_path() for combo, task in combo_tasks(config, SegmentQC).items()})),
            "<h2>Training</h2>", embed(out / "training.png"),
            f"<h2>Within {config.evaluate.band_mm:g} mm of the reference level (the slab earlier studies scored)</h2>",
            table(band_rows(evaluated)),
            "<h2>By height: where a model falls short of its teacher</h2>",
            embed(out / "height.png") if heights else "<p>no real test heads</p>",
            "<h2>Tissue volumes of each real test head (mL): model, teacher, reference</h2>",
            table(combo_rows(combos, EVALUATION, "tissue_volumes.tsv")),
            "<h2>Real test heads: teacher, model and reference in three planes</h2>",
            *[f"<h3>{html.escape(c)}</h3>" + "".join(embed(panel) for panel in drawn[c]) for c in combos],
            "<h2>Subjects excluded by QC</h2>", table(excluded),
            *[embed(overlay) for overlay in exclusion_overlays(excluded, {
                f"{seg}-{strip}": combo_folders(seg, strip).segmented for seg, strip in config.combos()})],
        ]
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;border:1px solid #ccc}"
                 "img{max-width:100%;height:auto}")  # no figure wider than the page
        write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>synthseg-pipeline report</title>"
                   f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n", out / "index.html")
        write_csv(rows, out / "dice.csv")
        log.info("report: %s (%s)", self.out_dir() / "index.html", answer)
