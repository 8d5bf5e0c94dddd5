import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.core.config import EvaluateConfig
from pipeline.core.labels import CSF, GM, WM
from pipeline.evaluation.dice import dice, dice_per_tissue, summarize
from pipeline.evaluation.metrics import (
    Evaluation,
    Kind,
    Scope,
    evaluation_file,
    parse_row_kind,
    read_evaluation,
    read_metrics,
    row_kind,
    write_evaluation,
)


def test_dice_of_identical_maps_is_one_and_of_disjoint_is_zero():
    a = np.zeros((8, 8), np.uint8)
    a[:4] = 1
    a[4:] = 2
    assert dice(a, a, 1) == 1.0
    assert dice(a, 3 - a, 1) == 0.0  # labels swapped


def test_dice_of_half_overlap():
    ref = np.zeros(10, np.uint8)
    ref[:4] = 1
    pred = np.zeros(10, np.uint8)
    pred[2:6] = 1
    assert dice(ref, pred, 1) == 2 * 2 / 8


def test_absent_label_is_nan_and_skipped_in_summary():
    ref = np.ones((4, 4), np.uint8)
    scores = dice_per_tissue(ref, ref)
    assert scores["GM"] == 1.0 and math.isnan(scores["CSF"])
    summary = summarize([scores, {"GM": 0.5, "WM": math.nan, "CSF": math.nan}])
    assert summary["GM"] == 0.75
    assert summary["CSF"] is None
    assert summary["mean"] == 0.75


def scored_study(folder: Path, combos: list[str]) -> dict[str, Evaluation]:
    """What evaluate writes for ``combos``, from rows scored by the real functions: two made-up test heads with
    reference labels (every kind of Dice: external, teacher, real, synthetic; band and height parts), one seed."""
    from pipeline.evaluation.dice import dice_per_tissue
    from pipeline.evaluation.heads import score_head, score_teacher
    from pipeline.stages.evaluate import evaluation, with_mean, with_seed

    from .test_evaluation import made_up_head

    written = {}
    for number, combo in enumerate(combos):
        reference = np.zeros((10, 12, 14), np.uint8)
        reference[2:8, 3:9, 4:8], reference[2:8, 3:9, 8:12 - number] = GM, WM
        reference[4:6, 5:7, 5:11] = CSF
        rows = []
        for case in ("01", "02"):
            head = replace(made_up_head(reference), case=case)
            prediction = head.teacher.copy()
            prediction[:, :, 3 + number][prediction[:, :, 3 + number] == GM] = WM
            rows += with_seed(score_head(head, prediction, EvaluateConfig()), 42) + score_teacher(head,
                                                                                               EvaluateConfig())
            rows += with_seed([{"kind": "synthetic", "case": f"{case}_{i}",
                                **dice_per_tissue(head.teacher[..., i], prediction[..., i])} for i in range(4)], 42)
        result = evaluation(with_mean(rows), n_seeds=1, n_train=8, band_mm=10.0, train_test_share_subject=False,
                            profile="ci", device="cpu", train_wall_s=12.5)
        write_evaluation(result, folder / "data" / "evaluation" / combo, folder / "metrics" / f"{combo}.json")
        written[combo] = result
    return written


def test_evaluate_writes_both_files_and_the_schema_refuses_a_file_missing_a_field(tmp_path: Path):
    evaluated = scored_study(tmp_path, ["hmrf-deepbet"])["hmrf-deepbet"]
    assert read_evaluation(tmp_path / "data/evaluation/hmrf-deepbet") == evaluated
    metrics = read_metrics(tmp_path / "metrics/hmrf-deepbet.json")
    assert set(metrics.dice) == {Kind.EXTERNAL, Kind.TEACHER, Kind.REAL} and set(metrics.ci95) == {Kind.EXTERNAL,
                                                                                                  Kind.REAL}
    assert metrics.dice[Kind.REAL].mean == evaluated.dice[Kind.REAL].mean and metrics.train_s == 12.5
    assert evaluated.dice[Kind.SYNTHETIC].n == 8 and evaluated.dice[Kind.EXTERNAL].n == 2
    assert evaluated.n_subjects == 2
    assert [len(parts) for parts in evaluated.dice_by_height[Kind.REAL].values()] == [5] * 3
    path = tmp_path / "metrics/hmrf-deepbet.json"
    for drop in (["n_subjects"], ["dice", "real", "GM"], ["ci95", "external", "low"]):
        data = json.loads(path.read_text())
        parent = data
        for key in drop[:-1]:
            parent = parent[key]
        del parent[drop[-1]]
        path.write_text(json.dumps(data))
        with pytest.raises(ValidationError, match=drop[-1]):
            read_metrics(path)
    data = json.loads(evaluation_file(tmp_path / "data/evaluation/hmrf-deepbet").read_text())
    del data["dice"]["teacher"]["sd_over_seeds"]  # null with one seed, but a field all the same
    evaluation_file(tmp_path / "data/evaluation/hmrf-deepbet").write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="sd_over_seeds"):
        read_evaluation(tmp_path / "data/evaluation/hmrf-deepbet")


def test_a_row_kind_names_its_kind_and_scope_and_reads_back():
    for kind in Kind:
        for scope in Scope:
            assert parse_row_kind(row_kind(kind, scope)) == (kind, scope)
    assert row_kind(Kind.REAL, Scope.WHOLE) == "real" and row_kind(Kind.TEACHER, Scope.HEIGHT) == "teacher_height"


def test_dvc_exp_show_of_a_two_segmenter_study_has_at_most_40_metric_columns(tmp_path: Path):
    """Two segmenters, one stripper, with reference labels (the most kinds of Dice): the metric columns of
    ``dvc exp show`` are every value DVC shows (numbers, strings; not null, not lists) of every metrics file."""
    import subprocess

    import yaml

    from .conftest import copy_project, set_params, venv_env

    project = copy_project(tmp_path / "study")
    set_params(project, segment={"methods": ["hmrf", "atropos"]})
    scored_study(project, ["hmrf-deepbet", "atropos-deepbet"])
    # strip_qc's metrics as it writes them for one stripper and no reference mask
    (project / "metrics/strip.json").write_text(json.dumps({"reference_dice": {"deepbet": {}}, "agreement_dice": {},
                                                            "qc_pass_fraction": {"deepbet": 1.0},
                                                            "failed": {"deepbet": []}}))
    for args in (["git", "init", "-q"], ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.org", "commit",
                                         "-qm", "study", "--allow-empty"], ["dvc", "init", "-q"],
                 ["git", "add", "-A"], ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.org", "commit",
                                        "-qm", "metrics"]):
        subprocess.run(args, cwd=project, env=venv_env(), check=True, capture_output=True)
    shown = subprocess.run(["dvc", "exp", "show", "--json"], cwd=project, env=venv_env(), check=True,
                           capture_output=True, text=True).stdout
    workspace = json.loads(shown)[0]["data"]["metrics"]
    declared = {path for stage in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values()
                for entry in stage.get("metrics", []) for path in entry}
    assert len(declared) == 2  # strip_qc's and evaluate's (a matrix stage: one file per combo)
    assert set(workspace) == {"metrics/strip.json", "metrics/hmrf-deepbet.json", "metrics/atropos-deepbet.json"}
    columns = [f"{path}:{key}" for path, content in workspace.items() for key in shown_values(content["data"])]
    assert 30 <= len(columns) <= 40, columns
    assert "metrics/hmrf-deepbet.json:dice.external.mean" in columns
    assert "metrics/atropos-deepbet.json:ci95.external.low" in columns


def shown_values(data: dict, prefix: str = "") -> list[str]:
    """The flattened keys DVC makes a column of: nested dicts flattened, null and lists left out."""
    keys = []
    for key, value in data.items():
        if isinstance(value, dict):
            keys += shown_values(value, f"{prefix}{key}.")
        elif value is not None and not isinstance(value, list):
            keys.append(f"{prefix}{key}")
    return keys


def test_bench_real_reports_the_strategies_this_run_configured_not_stale_ones(tmp_path: Path):
    import yaml

    from pipeline.apps.bench_real import PROJECT_ROOT, read_strategies

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["strip"]["methods"], params["segment"]["methods"] = ["deepbet"], ["hmrf"]
    evaluated = scored_study(tmp_path, ["hmrf-deepbet", "hmrf-robex"])  # robex: left by an earlier run
    strategies = read_strategies(tmp_path, params)
    assert list(strategies) == ["hmrf-deepbet"]
    dice = evaluated["hmrf-deepbet"].dice
    gap = strategies["hmrf-deepbet"]["gap_to_teacher"]
    assert gap["GM"] == round(dice[Kind.TEACHER].GM - dice[Kind.EXTERNAL].GM, 4) and gap["GM"] > 0
    assert strategies["hmrf-deepbet"]["external"]["ci95"]["low"] == pytest.approx(dice[Kind.EXTERNAL].mean, abs=1e-4)
    assert strategies["hmrf-deepbet"]["n_external"] == 2 and set(strategies["hmrf-deepbet"]["by_height"]) == {
        "external", "teacher", "real"}


def test_the_reports_dice_figure_fits_a_laptop_screen_and_its_tables_print_no_none(tmp_path: Path):
    """Four kinds of Dice (reference labels given) in a figure no wider than the page, every panel drawn; one seed:
    no "sd over seeds" column, and a value that does not exist prints as a dash."""
    from PIL import Image

    from pipeline.stages.report import bar_chart, dice_rows, evaluations, table

    scored_study(tmp_path, ["hmrf-deepbet", "atropos-deepbet"])
    rows = dice_rows(evaluations(["hmrf-deepbet", "atropos-deepbet"], tmp_path / "data" / "evaluation"))
    assert {row["kind"] for row in rows} == {kind.value for kind in Kind}
    bar_chart(rows, tmp_path / "dice.png")
    width, height = Image.open(tmp_path / "dice.png").size
    assert width <= 1000 and height > 400  # the page is 1100 px wide; four panels, two to a row
    page = table(rows + [{"combo": "none", "kind": "real", "GM": None, "mean": float("nan")}])
    assert "None" not in page and "nan" not in page and "&ndash;" in page
    assert "sd over seeds" not in page and "95 % CI of the mean" in page


def test_the_report_draws_each_predicted_test_head_from_the_volume_evaluate_wrote(tmp_path: Path):
    """The report, not evaluate, draws the panels (editing overlays.py reruns no evaluation): one per head evaluate
    predicted, teacher over model, the model's row showing the labels in ``volumes/`` (none: no tissue colour)."""
    from PIL import Image

    from pipeline.core.bids import Folders, sidecar, subject_file
    from pipeline.core.io import save_nifti
    from pipeline.stages.report import embed, panels

    folders = Folders(tmp_path / "segmented", tmp_path / "stripped", tmp_path / "harmonized")
    volumes = tmp_path / "evaluation" / "hmrf-deepbet" / "volumes"
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -10.0  # world z = 0, the reference level, is plane 10
    brain = np.zeros((20, 20, 20), np.float32)
    brain[4:16, 4:16, 4:16] = 1.0
    teacher = np.zeros(brain.shape, np.uint8)
    teacher[4:16, 4:16, 4:10], teacher[4:16, 4:16, 10:16], teacher[8:12, 8:12, 4:16] = GM, WM, CSF
    predictions = {"01": teacher, "02": np.zeros_like(teacher)}
    for case in [*predictions, "03"]:  # 03: a test head evaluate did not predict (no volume)
        save_nifti(brain, affine, subject_file(folders.stripped, case, "desc-brain_T1w"))
        save_nifti((brain > 0).astype(np.uint8), affine, subject_file(folders.stripped, case, "desc-brain_mask"))
        save_nifti(teacher, affine, subject_file(folders.segmented, case, "dseg"))
        harmonized = subject_file(folders.harmonized, case, "desc-harmonized_T1w")
        save_nifti(brain, affine, harmonized)
        sidecar(harmonized).write_text(json.dumps({"ReferenceLevelMM": 0.0}))
        if case in predictions:
            save_nifti(predictions[case], affine, subject_file(volumes, case, "dseg"))
    drawn = panels("hmrf-deepbet", folders, tmp_path / "evaluation", tmp_path / "report", EvaluateConfig())
    assert drawn == [tmp_path / "report" / "sub-01.png", tmp_path / "report" / "sub-02.png"]

    def colour(picture: np.ndarray) -> float:
        """How far the picture is from grey: the mean spread of its RGB channels."""
        return float(np.mean(picture[..., :3].max(axis=-1) - picture[..., :3].min(axis=-1).astype(float)))

    rows = {}
    for case, path in zip(predictions, drawn, strict=True):
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert picture.shape[0] > 0.6 * picture.shape[1]  # two rows of three planes: teacher, model
        half = picture.shape[0] // 2
        rows[case] = colour(picture[:half]), colour(picture[half:])
        assert f'alt="{path.stem}"' in embed(path)
    assert rows["01"][0] == pytest.approx(rows["02"][0], rel=0.05)  # the same teacher
    assert rows["01"][1] > 5 * rows["02"][1]  # the model's row: tissue colours where the volume has labels
