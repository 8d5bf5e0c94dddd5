"""Stage 9 — report: one self-contained HTML page comparing every (segmenter x stripper) strategy.

Dice table and bar chart (real and synthetic), training curves, example predictions on
real test heads in three planes, tissue volumes, Dice by height, and the subjects the QC gate excluded.
Writes ``data/report/index.html`` with its PNG figures and ``dice.csv`` (every combo's Dice).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import logging
from pathlib import Path

import luigi
import numpy as np

from pipeline.config import Config, load_config
from pipeline.evaluation.compare import Difference, Scores, paired_difference, scores_by_subject
from pipeline.io import read_tsv, write_csv, write_text
from pipeline.labels import TISSUES
from pipeline.stages.base import Gathered, Stage
from pipeline.stages.evaluate import Evaluate
from pipeline.stages.segment_qc import SegmentQC

log = logging.getLogger("pipeline")

KINDS = ("external", "teacher", "real", "synthetic")  # the ones a study has are shown
# What each kind of Dice compares the predictions with.
KIND_NOTES = {
    "external": "whole real test heads (3D) against the reference labels you supplied (evaluate.reference_labels): "
                "one reference for every strategy",
    "teacher": "not a model: the segmenter's own labels of the same heads against your reference labels, what a "
               "model trained on them can reach at best",
    "real": "whole real test heads (3D) against each segmenter's own labels: compares strippers for one segmenter",
    "synthetic": "the labels the synthetic test images were generated from",
}


class Evaluations(Gathered):
    """Every configured combo evaluated (and what the report shows of its QC and segmentation)."""

    folders = ("data/evaluation", "metrics", "data/qc", "data/segmented")

    def requires(self) -> list[Stage]:
        return [Evaluate(segmenter=seg, stripper=strip) for seg, strip in load_config().combos()]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def dice_rows(combos: list[str], metrics_dir: Path, section: str = "dice") -> list[dict]:
    """Per combo and kind, the mean Dice per tissue of ``section``: dice (whole heads) or dice_band."""
    rows = []
    for combo in combos:
        metrics = json.loads((metrics_dir / f"{combo}.json").read_text())
        cases = {"external": metrics.get("n_external"), "teacher": metrics.get("n_external"), "real": metrics["n_real"],
                 "synthetic": metrics["n_test"]}
        for kind in [kind for kind in KINDS if kind in metrics[section]]:
            scores = metrics[section][kind]
            rows.append({"combo": combo, "kind": kind, **{k: scores.get(k) for k in [*TISSUES.values(), "mean"]},
                         "sd over seeds": scores.get("sd_over_seeds"), "cases": cases[kind],
                         "seeds": 1 if kind == "teacher" else metrics.get("n_seeds", 1)})
    return rows


def bar_chart(rows: list[dict], path: Path) -> None:
    plt = _figure()
    kinds = [kind for kind in KINDS if any(row["kind"] == kind for row in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 3.5), sharey=True, squeeze=False)
    axes = axes[0]
    for ax, kind in zip(axes, kinds, strict=True):
        selected = [row for row in rows if row["kind"] == kind]
        width = 0.8 / max(len(selected), 1)
        for i, row in enumerate(selected):
            values = [row[t] if row[t] is not None else np.nan for t in TISSUES.values()]
            ax.bar(np.arange(3) + i * width, values, width, label=row["combo"])
        ax.set_xticks(np.arange(3) + 0.4 - width / 2, list(TISSUES.values()))
        ax.set_title(f"Dice: {kind}")
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def curves(combos: list[str], metrics_dir: Path, path: Path, fold: int | str) -> None:
    """Training curves. With fold all, nnU-Net's "validation" batches come from the training cases: say so."""
    held_out = "training cases (fold all)" if fold == "all" else f"held-out fold {fold}"
    plt = _figure()
    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(11, 3.5))
    for combo in combos:
        with open(metrics_dir / f"{combo}-training.csv") as handle:
            rows = list(csv.DictReader(handle))
        epochs = [int(r["epoch"]) for r in rows]
        loss_ax.plot(epochs, [float(r["train_loss"]) for r in rows], label=f"{combo} train")
        loss_ax.plot(epochs, [float(r["val_loss"]) for r in rows], "--", label=f"{combo} on {held_out}")
        dice_ax.plot(epochs, [float(r["pseudo_dice"]) for r in rows], label=combo)
    loss_ax.set(title="loss", xlabel="epoch")
    dice_ax.set(title=f"nnU-Net pseudo Dice on {held_out}", xlabel="epoch", ylim=(0, 1))
    loss_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def panels(combo: str, evaluation: Path) -> list[Path]:
    """The evaluate stage's three-plane picture of each real test head (teacher, model, reference)."""
    return sorted((evaluation / combo / "panels").glob("*.png"))


def height_chart(combos: list[str], metrics_dir: Path, path: Path) -> bool:
    """GM and WM Dice per fifth of the brain's height, model against teacher (or the segmenter's labels)."""
    plt = _figure()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=True)
    drawn = False
    for combo in combos:
        heights = json.loads((metrics_dir / f"{combo}.json").read_text()).get("dice_by_height", {})
        kind = "external" if "external" in heights else "real"
        for ax, tissue in zip(axes, ("GM", "WM"), strict=True):
            if kind in heights:
                ax.plot(range(1, 6), [np.nan if v is None else v for v in heights[kind][tissue]], "o-",
                        label=f"{combo} model ({kind})")
                drawn = True
            if "teacher" in heights:
                ax.plot(range(1, 6), [np.nan if v is None else v for v in heights["teacher"][tissue]], "s--",
                        label=f"{combo} teacher")
    for ax, tissue in zip(axes, ("GM", "WM"), strict=True):
        ax.set(title=f"{tissue} Dice by height", xlabel="fifth of the brain's height (1: bottom)", ylim=(0, 1))
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return drawn


def cost_rows(combos: list[str], metrics_dir: Path) -> list[dict]:
    """What each strategy cost: its segmenter's seconds per head (for the consensus, the fusion's plus those of the
    segmenters it fuses) and the training's wall time."""
    rows = []
    for combo in combos:
        qc = json.loads((metrics_dir / f"qc-{combo}.json").read_text()).get("cost", {})
        evaluated = json.loads((metrics_dir / f"{combo}.json").read_text())
        fused = qc.get("fused") or {}
        rows.append({"combo": combo, "segmenter s/head": qc.get("mean_seconds_per_head"),
                     "threads per head": qc.get("threads_per_head"),
                     "fused segmenters s/head": ", ".join(f"{m} {s}" for m, s in fused.items()) or "",
                     "training s": evaluated.get("train_wall_s")})
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
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def subject_scores(combo: str, metrics_dir: Path, kind: str) -> Scores:
    """Mean Dice per real test subject (and training seed) of one combo, from its cases table."""
    with open(metrics_dir / f"{combo}-cases.csv") as handle:
        rows = [row | {"mean": None if row["mean"] == "n/a" else row["mean"]} for row in csv.DictReader(handle)
                if row["kind"] == kind]
    return scores_by_subject(rows)


def comparison_kind(combos: list[str], metrics_dir: Path) -> str:
    """external when every combo was scored against the user's reference labels, else real."""
    return "external" if all(subject_scores(c, metrics_dir, "external") for c in combos) else "real"


def comparable(a: str, b: str, kind: str) -> bool:
    """dice.real scores each model against its own segmenter's labels: only strippers of one segmenter compare."""
    return kind == "external" or a.split("-")[0] == b.split("-")[0]


def pairwise(combos: list[str], metrics_dir: Path, kind: str) -> list[Difference]:
    scores = {combo: subject_scores(combo, metrics_dir, kind) for combo in combos}
    return [paired_difference(a, scores[a], b, scores[b]) for i, a in enumerate(combos) for b in combos[i + 1:]
            if comparable(a, b, kind) and scores[a] and scores[b]]


def verdict(rows: list[dict], differences: list[Difference], kind: str) -> str:
    """The strategy with the best mean real-head Dice, named the best only when every paired 95 % CI against
    it excludes 0."""
    what = {"external": "against your reference labels", "real": "against each segmenter's labels"}[kind]
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


def per_subject_rows(combos: list[str], metrics_dir: Path, kind: str) -> list[dict]:
    scores = {combo: subject_scores(combo, metrics_dir, kind) for combo in combos}
    subjects = sorted({subject for combo_scores in scores.values() for subject in combo_scores})
    return [{"subject": subject, **{combo: float(np.mean(scores[combo][subject])) if subject in scores[combo]
                                    else None for combo in combos}} for subject in subjects]


def shared_subjects_warning(combos: list[str], metrics_dir: Path) -> str:
    shared = [c for c in combos if json.loads((metrics_dir / f"{c}.json").read_text())["train_test_share_subject"]]
    if not shared:
        return ""
    return ("<p><b>Warning:</b> train and test share subjects in this study (too few subjects to split), so the "
            "real-head Dice is not that of unseen brains.</p>")


class Report(Stage):
    name = "report"
    param_keys = ("strip.methods", "segment.methods", "train.fold", "evaluate.band_mm")
    out_template = "data/report"

    def requires(self) -> list[luigi.Task]:
        return [Evaluations()]

    def build(self, out: Path, config: Config) -> None:
        combos = [f"{seg}-{strip}" for seg, strip in config.combos()]
        metrics = Path("metrics")
        rows = dice_rows(combos, metrics)
        kind = comparison_kind(combos, metrics)
        differences = pairwise(combos, metrics, kind)
        answer = verdict(rows, differences, kind)
        bar_chart(rows, out / "dice.png")
        curves(combos, metrics, out / "training.png", config.train.fold)
        evaluation = Path("data/evaluation")
        heights = height_chart(combos, metrics, out / "height.png")
        excluded = exclusions(combos, Path("data/qc"))
        sections = [
            "<h1>synthseg-pipeline: strategy comparison</h1>",
            f"<p><b>Best strategy on real heads:</b> {html.escape(answer)}</p>",
            shared_subjects_warning(combos, metrics),
            f"<h2>Paired comparisons ({kind} Dice, mean over tissues; bootstrap over test subjects and seeds)</h2>",
            table(difference_rows(differences)),
            f"<h2>Per test subject ({kind} Dice, mean over tissues)</h2>",
            table(per_subject_rows(combos, metrics, kind)),
            "<h2>Dice per tissue (whole real heads, 3D; synthetic test slices)</h2>", table(rows),
            embed(out / "dice.png"),
            "<ul>" + "".join(f"<li><b>{kind}</b>: {html.escape(note)}</li>" for kind, note in KIND_NOTES.items()
                             if any(row["kind"] == kind for row in rows)) + "</ul>",
            "<h2>What each strategy costs</h2>", table(cost_rows(combos, metrics)),
            "<h2>Training</h2>", embed(out / "training.png"),
            f"<h2>Within {config.evaluate.band_mm:g} mm of the reference level (the slab earlier studies scored)</h2>",
            table(dice_rows(combos, metrics, "dice_band")),
            "<h2>By height: where a model falls short of its teacher</h2>",
            embed(out / "height.png") if heights else "<p>no real test heads</p>",
            "<h2>Tissue volumes of each real test head (mL): model, teacher, reference</h2>",
            table(combo_rows(combos, evaluation, "tissue_volumes.tsv")),
            "<h2>Real test heads: teacher, model and reference in three planes</h2>",
            *[f"<h3>{html.escape(c)}</h3>" + "".join(embed(panel) for panel in panels(c, evaluation)) for c in combos],
            "<h2>Subjects excluded by QC</h2>", table(excluded),
            *[embed(overlay) for overlay in exclusion_overlays(excluded, {
                f"{seg}-{strip}": Path(SegmentQC.labels(seg, strip).out_dir()) for seg, strip in config.combos()})],
        ]
        style = "body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:2px 8px;border:1px solid #ccc}"
        write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>synthseg-pipeline report</title>"
                   f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n", out / "index.html")
        write_csv(rows, out / "dice.csv")
        log.info("report: %s (%s)", self.out_dir() / "index.html", answer)
