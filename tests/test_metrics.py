import math
from pathlib import Path

import numpy as np

from pipeline.evaluation.dice import dice, dice_per_tissue, summarize


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


def test_bench_real_reports_the_strategies_this_run_configured_not_stale_ones(tmp_path: Path):
    import json

    import yaml

    from pipeline.apps.bench_real import PROJECT_ROOT, read_strategies

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["strip"]["methods"] = ["deepbet"]
    (tmp_path / "metrics").mkdir()
    for combo, gm in (("hmrf-deepbet", 0.82), ("hmrf-robex", 0.5)):  # robex: left by an earlier run
        tissues = {"GM": gm, "WM": 0.89, "CSF": 0.36}
        metrics = {"dice": {"external": tissues, "teacher": {"GM": 0.845, "WM": 0.918, "CSF": None}},
                   "n_real": 4, "n_external": 4}
        (tmp_path / "metrics" / f"{combo}.json").write_text(json.dumps(metrics))
    strategies = read_strategies(tmp_path, params)
    assert list(strategies) == ["hmrf-deepbet"]
    assert strategies["hmrf-deepbet"]["gap_to_teacher"] == {"GM": 0.025, "WM": 0.028, "CSF": None}
    assert strategies["hmrf-deepbet"]["n_external"] == 4
