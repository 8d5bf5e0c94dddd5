import math

import numpy as np

from pipeline.metrics import dice, dice_per_tissue, summarize


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
