"""``bench cross-site``: the degradations of a real head, and the benchmark end to end on the shared data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.apps.bench_cross_site import degrade, slice_axis, thick_slices
from pipeline.core.io import read_tsv


@pytest.fixture(scope="module")
def head(oasis: Path) -> nib.Nifti1Image:
    return nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz")


def test_slice_axes_follow_the_heads_orientation(head):
    codes = nib.aff2axcodes(head.affine)
    assert codes[slice_axis(head.affine, "axial")] in "SI" and codes[slice_axis(head.affine, "coronal")] in "AP"
    flipped = head.affine[:, [1, 0, 2, 3]]  # the same head with its first two voxel axes swapped
    assert slice_axis(flipped, "coronal") == {0: 1, 1: 0, 2: 2}[slice_axis(head.affine, "coronal")]


def test_thick_slices_average_blocks_and_interpolate_between_their_centres():
    ramp = np.broadcast_to(np.arange(12, dtype=np.float32)[None, :, None], (2, 12, 2))
    assert np.allclose(thick_slices(ramp, 1, 3)[0, :, 0][1:-1], np.arange(1, 11))  # a ramp survives (linear)
    comb = np.broadcast_to((np.arange(12) % 2).astype(np.float32)[:, None, None], (12, 2, 2))
    assert np.allclose(thick_slices(comb, 0, 2), 0.5)  # detail finer than the slice is lost
    assert np.array_equal(thick_slices(comb, 0, 1), comb)


@pytest.mark.parametrize("condition", ["axial-3mm", "coronal-5mm"])
def test_thick_slice_heads_lose_detail_across_slices_only(head, condition):
    data = head.get_fdata(dtype=np.float32)
    thick = degrade(head, condition, np.random.default_rng(0))
    axis = slice_axis(head.affine, condition.split("-")[0])
    others = [a for a in range(3) if a != axis]

    def kept(along: int) -> float:  # the share of the head's voxel-to-voxel detail along an axis that is left
        return float(np.abs(np.diff(thick, axis=along)).mean() / np.abs(np.diff(data, axis=along)).mean())

    assert thick.shape == data.shape
    # smoothed across the slices most (in plane only where an edge runs obliquely through a slice)
    assert kept(axis) < 0.8 and kept(axis) < 0.9 * min(kept(a) for a in others)
    assert abs(thick.mean() - data.mean()) < 0.01 * data.mean()  # averaging keeps the intensities


def test_bias_and_noise_degrade_as_documented(head):
    data = head.get_fdata(dtype=np.float32)
    brain = data > np.percentile(data[data > 0], 50)
    biased = degrade(head, "bias", np.random.default_rng(1))
    ratio = np.log(biased[brain] / data[brain])
    assert 0.05 < ratio.std() < 1.0 and np.allclose(biased[data == 0], 0)  # multiplicative, smooth, not uniform
    noisy = degrade(head, "noise", np.random.default_rng(1))
    residual = (noisy - data)[brain]
    assert 0.02 < residual.std() / np.percentile(data[data > 0], 99) < 0.06 and (noisy >= 0).all()
    again = degrade(head, "noise", np.random.default_rng(1))
    assert np.array_equal(noisy, again)  # seeded
    with pytest.raises(ValueError, match="unknown condition"):
        degrade(head, "sagittal-3mm", np.random.default_rng(1))


@pytest.mark.slow
def test_cross_site_bench_end_to_end_on_the_shared_data(ds000011, oasis, tmp_path, capsys):
    """Train on 2 ds000011 heads (skull on; one held out) at the ci profile, score an oasis-manual head against its
    manual labels, clean and with 3 mm coronal slices (the other degradations: the tests above)."""
    conditions = ["clean", "coronal-3mm"]
    start = time.monotonic()
    assert main(["bench", "cross-site", "--train-root", str(ds000011), "--train-subjects", "01", "02",
                 "--train-test-fraction", "0.5", "--test-root", str(oasis), "--test-subjects", "1000",
                 "--conditions", *conditions, "--device", "cpu", "--workdir", str(tmp_path / "work"),
                 "-S", "train.profile=ci", "-S", "synth.n_train=8", "-S", "synth.n_test=4",
                 "-S", "segment.hmrf.max_iterations=3"]) == 0
    result = json.loads(capsys.readouterr().out)
    print(f"bench cross-site end to end: {time.monotonic() - start:.0f} s")
    assert result["n_test_heads"] == 1 and list(result["strategies"]) == ["hmrf-deepbet"]
    strategy = result["strategies"]["hmrf-deepbet"]
    assert strategy["training_site"]["n_real"] == 1 and 0 < strategy["training_site"]["real"]["GM"] <= 1
    site = strategy["test_site"]
    assert list(site) == conditions
    for condition in conditions:
        for tissue in ("GM", "WM"):
            figure = site[condition][tissue]
            low, high = figure["ci95"]
            assert site[condition]["n"] == 1 and 0 <= low <= figure["mean"] <= high <= 1, (condition, tissue)
            if condition != "clean":
                assert figure["minus_clean"] == pytest.approx(figure["mean"] - site["clean"][tissue]["mean"], abs=2e-4)
    rows = read_tsv(tmp_path / "work" / "cross-site" / "hmrf-deepbet-cases.tsv")
    assert {(row["case"], row["condition"]) for row in rows} == {("1000", k) for k in conditions}
    assert len({row["GM"] for row in rows if row["case"] == "1000"}) > 1  # the degradations change the labels
    # each prediction is on its test head's own grid, scored there
    clean = nib.load(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz")
    labels = nib.load(tmp_path / "work" / "cross-site" / "hmrf-deepbet" / "coronal-3mm" / "sub-1000_dseg.nii.gz")
    assert labels.shape == clean.shape and np.allclose(labels.affine, clean.affine, atol=1e-4)
