"""``python -m pipeline bench real``: a whole study on real scans with reference labels, as JSON.

The benchmark the models are judged by: a BIDS folder of real heads (or brains) and a BIDS derivative of
reference labels made by people. It runs the study (``dvc repro``) in a work folder holding a copy of this
project's code and ``params.yaml`` with the data settings (and any ``-S key=value``) applied, and prints,
per strategy, Dice over the whole test heads against the reference (``dice.external``), the teacher's own Dice
there (the segmenter's labels of the same heads against the same reference: what the model can reach at best),
the gap between the two, the same within the band around the reference level, Dice by fifth of the brain's
height, and the wall time. Without ``--reference`` it reports ``dice.real`` (against the segmenter's labels)
and ``dice.synthetic`` only. A second run in the same ``--workdir`` re-runs only what changed (DVC), so an
ablation of a ``synth.*`` option costs synthesis, training and evaluation only.

    python -m pipeline bench real --bids-root ../shared/data/oasis-manual \\
        --reference ../shared/data/oasis-manual/derivatives/manual --test-fraction 0.4 \\
        --workdir /tmp/bench-oasis -S synth.priors=t1
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.core.bids import case_dir
from pipeline.core.config import apply_overrides, parse_config
from pipeline.core.io import InputError
from pipeline.core.labels import TISSUES
from pipeline.evaluation.metrics import Evaluation, Kind, TissueDice, read_evaluation
from pipeline.evaluation.references import check_references
from pipeline.sources.local_bids import bids_scans

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COPIED = ("pipeline", "dvc.yaml", "params.yaml", "luigi.cfg", ".dvcignore", "requirements.lock")


def study_params(bids_root: Path, reference: Path | None, subjects: list[str], test_fraction: float,
                 overrides: list[str]) -> dict:
    """This project's params.yaml with the data settings, then ``overrides``, applied; validated."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["acquire"] |= {"source": "bids", "bids_root": str(bids_root.resolve()), "subjects": subjects,
                          "test_fraction": test_fraction}
    params["evaluate"]["reference_labels"] = str(reference.resolve()) if reference else None
    params = apply_overrides(params, overrides)
    parse_config(params, "bench real parameters")  # a wrong key or value stops here, named
    return params


def prepare(workdir: Path, params: dict) -> None:
    """The project's code and these params in ``workdir`` (a DVC project of its own, kept between runs)."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        source, target = PROJECT_ROOT / name, workdir / name
        if source.is_dir():
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (workdir / ".dvc").is_dir():
        run(["dvc", "init", "--no-scm", "-q"], workdir)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def run(args: list[str], cwd: Path, log: Path | None = None) -> None:
    with (log.open("a") if log else open(os.devnull, "w")) as sink:
        result = subprocess.run(args, cwd=cwd, env=environment(), stdout=sink, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        where = f"; see {log}" if log else ""
        raise SystemExit(f"bench real: {' '.join(args)} failed in {cwd}{where}")


def gap(teacher: TissueDice, model: TissueDice) -> dict[str, float | None]:
    """Per tissue, how far the model falls short of its teacher."""
    return {tissue: None if getattr(teacher, tissue) is None or getattr(model, tissue) is None
            else round(getattr(teacher, tissue) - getattr(model, tissue), 4) for tissue in TISSUES.values()}


def summary(evaluation: Evaluation) -> dict:
    """One strategy's figures: Dice over whole heads (and within the reference band), the gap to the teacher."""
    dice, band = evaluation.dice, evaluation.dice_band
    row: dict = {kind.value: dice[kind].model_dump(mode="json") for kind in Kind if kind in dice}
    if Kind.EXTERNAL in dice:
        row["gap_to_teacher"] = gap(dice[Kind.TEACHER], dice[Kind.EXTERNAL])
    row["band"] = {kind.value: band[kind].model_dump(mode="json") for kind in Kind if kind in band}
    if Kind.EXTERNAL in band:
        row["band"]["gap_to_teacher"] = gap(band[Kind.TEACHER], band[Kind.EXTERNAL])
    row["by_height"] = {kind.value: parts for kind, parts in evaluation.dice_by_height.items()}
    return row | evaluation.model_dump(include={"n_external", "n_external_sparse", "n_external_left_out", "n_real",
                                                "n_seeds", "n_train", "train_wall_s"})


def read_strategies(workdir: Path, params: dict) -> dict[str, dict]:
    """The summary of each strategy ``params`` configures; the work folder also keeps the metrics of strategies
    only an earlier run configured, which are not this run's answer."""
    combos = [f"{segmenter}-{stripper}" for segmenter, stripper in parse_config(params, "bench real").combos()]
    return {combo: summary(read_evaluation(workdir / "data" / "evaluation" / combo)) for combo in combos}


def check_dataset_references(bids_root: Path, reference: Path, params: dict) -> None:
    """Every head's reference read (a table that is not tissues stops here); none for any head stops here too,
    with the file it looked for; the heads without one are named (held out, they get no ``dice.external``)."""
    acquire = params["acquire"]
    sources = {scan.case: scan.path for scan in bids_scans(bids_root, acquire["subjects"], acquire["runs"])}
    cases = list(sources)
    missing = check_references(reference, sources, params["evaluate"]["reference_scheme"])
    if len(missing) == len(cases):
        expected = case_dir(reference, cases[0]) / "anat" / f"sub-{cases[0]}_dseg.nii.gz"
        raise InputError(f"bench real: none of the {len(cases)} head(s) under {bids_root} has a reference label map "
                         f"under {reference} (e.g. {expected}; docs/how-to/reference-labels.md)")
    if missing:
        print(f"bench real: {len(missing)} of {len(cases)} head(s) have no reference labels under {reference} "
              f"({', '.join(f'sub-{case}' for case in missing)}): held out, they get no dice.external",
              file=sys.stderr)


def benchmark(bids_root: Path, reference: Path | None, subjects: list[str], test_fraction: float, workdir: Path,
              overrides: list[str]) -> dict:
    params = study_params(bids_root, reference, subjects, test_fraction, overrides)
    if reference:  # before the study: a folder that would give no dice.external stops here, not after training
        check_dataset_references(bids_root, reference, params)
    prepare(workdir, params)
    log = workdir / "bench-real.log"
    print(f"bench real: running the study in {workdir} (log: {log})", file=sys.stderr)
    start = time.monotonic()
    run(["dvc", "repro"], workdir, log)
    wall = time.monotonic() - start
    strategies = read_strategies(workdir, params)
    return {"bids_root": str(bids_root), "reference": reference and str(reference), "test_fraction": test_fraction,
            "overrides": overrides, "workdir": str(workdir), "wall_s": round(wall, 1), "strategies": strategies}
