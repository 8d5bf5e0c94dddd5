"""``bench cross-site``: the degradations of a real head (the benchmark end to end: tests/test_real_brains.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.apps.bench_cross_site import degrade, slice_axis, thick_slices


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


def test_a_degraded_copy_belongs_to_its_source_head_not_to_its_subject_label(head, tmp_path: Path):
    """Two test sites with a sub-1000 each, scored from one work folder: each gets its own head's copy."""
    from pipeline.apps.bench_cross_site import degraded_head
    from pipeline.core.io import save_nifti

    data = head.get_fdata(dtype=np.float32)
    first, second = tmp_path / "site-a" / "sub-1000_T1w.nii.gz", tmp_path / "site-b" / "sub-1000_T1w.nii.gz"
    save_nifti(data, head.affine, first)
    save_nifti(data[::-1].copy(), head.affine, second)  # another head under the same label
    copies = [degraded_head(path, "1000", "axial-3mm", tmp_path / "heads") for path in (first, second, first)]
    assert copies[0] != copies[1] and copies[2] == copies[0]  # written once per source
    thick = [nib.load(copy).get_fdata(dtype=np.float32) for copy in copies[:2]]
    assert np.allclose(thick[0], degrade(nib.load(first), "axial-3mm", np.random.default_rng(0)), atol=1e-4)
    assert slice_axis(head.affine, "axial") != 0 and np.allclose(thick[1][::-1], thick[0])  # of its own head


def test_a_head_on_thick_slices_of_its_own_keeps_its_extent_and_its_raters_tissues_their_volumes(head, oasis: Path):
    """``coronal-1.5mm-grid``: a real OASIS head on 1.5 mm coronal slices, as IBSR's heads are; its manual labels
    carried there as raters on that grid would draw them."""
    from pipeline.apps.bench_cross_site import SiteHead, on_thick_slices, reference_on
    from pipeline.core.labels import GM, WM
    from pipeline.evaluation.references import reference_tissues

    thick = on_thick_slices(head, "coronal-1.5mm-grid")
    axis = slice_axis(head.affine, "coronal")
    assert thick.shape[axis] == int(np.ceil(head.shape[axis] / 1.5))
    assert [n for a, n in enumerate(thick.shape) if a != axis] == [n for a, n in enumerate(head.shape) if a != axis]
    start = np.zeros(3)
    start[axis] = -0.5  # the outer face of the first slice
    assert np.allclose(nib.affines.apply_affine(thick.affine, start), nib.affines.apply_affine(head.affine, start))
    data = head.get_fdata(dtype=np.float32)
    assert abs(thick.get_fdata().sum() * 1.5 / data.sum() - 1) < 0.01  # each slice the average of what it spans
    root = oasis / "derivatives" / "manual"
    reference = np.asarray(reference_tissues(root / "sub-1000/anat/sub-1000_dseg.nii.gz", root, "table",
                                             "1000").dataobj)
    site = SiteHead("1000", oasis / "sub-1000/anat/sub-1000_T1w.nii.gz", root / "sub-1000/anat/sub-1000_dseg.nii.gz",
                    head, reference, None)
    assert reference_on(site, head)[1] is reference  # the head's own grid: as drawn
    scored, carried = reference_on(site, thick)
    assert scored is None and carried.shape == thick.shape
    for tissue in (GM, WM):
        assert abs((carried == tissue).sum() * 1.5 / (reference == tissue).sum() - 1) < 0.03, tissue


def test_an_unknown_condition_stops_the_benchmark_before_it_trains(tmp_path: Path):
    from pipeline.apps.bench_cross_site import CONDITION, CONDITIONS, benchmark
    from pipeline.core.io import InputError

    assert all(CONDITION.match(condition) for condition in CONDITIONS)
    with pytest.raises(InputError, match=r"unknown condition\(s\) sagittal-3mm, coronal-grid:"):
        benchmark(tmp_path, tmp_path, tmp_path, tmp_path / "work", train_subjects=[], test_subjects=[],
                  train_test_fraction=0.3, conditions=["clean", "sagittal-3mm", "coronal-grid", "axial-1.5mm-grid"],
                  scheme="table", device="cpu", overrides=[])
    assert not (tmp_path / "work").exists()


def test_on_a_coarser_grid_a_voxels_left_out_part_casts_no_background_vote():
    """A 3 mm voxel that is one third left out ("cerebellum"), one third WM, one third background: scored, and WM,
    not the background its left-out third and its background third would make it."""
    from pipeline.apps.bench_cross_site import SiteHead, reference_on
    from pipeline.core.labels import WM

    reference = np.zeros((6, 6, 6), np.uint8)
    reference[:, :, 1] = WM  # z planes 0-2 make the first 3 mm voxel: plane 0 left out, 1 WM, 2 background
    left_out = np.zeros(reference.shape, bool)
    left_out[:, :, 0] = True
    own = nib.Nifti1Image(np.zeros(reference.shape, np.float32), np.eye(4))
    coarse = np.diag([1.0, 1.0, 3.0, 1.0])
    coarse[2, 3] = 1.0  # the first 3 mm voxel spans planes 0-2
    site = SiteHead("01", Path("unused"), Path("unused"), own, reference, ~left_out)
    scored, carried = reference_on(site, nib.Nifti1Image(np.zeros((6, 6, 2), np.float32), coarse))
    assert scored[:, :, 0].all() and (carried[:, :, 0] == WM).all()
    without_mask = SiteHead("01", Path("unused"), Path("unused"), own, reference, None)
    assert (reference_on(without_mask, nib.Nifti1Image(np.zeros((6, 6, 2), np.float32), coarse))[1][:, :, 0] == 0).all()


def test_a_test_sites_reference_off_its_head_stops_the_benchmark_before_it_trains(oasis: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    """A real OASIS head whose manual map was saved with a voxel-index affine: the benchmark stops naming the
    subject and the file, before any training; the map as it is passes."""
    from pipeline.apps import bench_cross_site
    from pipeline.core.io import InputError, read_tsv, save_nifti, write_tsv

    anat = tmp_path / "site" / "sub-1000" / "anat"
    anat.mkdir(parents=True)
    (anat / "sub-1000_T1w.nii.gz").symlink_to(oasis / "sub-1000" / "anat" / "sub-1000_T1w.nii.gz")
    manual = oasis / "derivatives" / "manual"
    assert [head.case for head in bench_cross_site.site_heads(tmp_path / "site", manual, "table", ["1000"])] == [
        "1000"]

    labels = np.asarray(nib.load(manual / "sub-1000" / "anat" / "sub-1000_dseg.nii.gz").dataobj)
    reference = tmp_path / "manual"
    save_nifti(labels, np.eye(4), reference / "sub-1000" / "anat" / "sub-1000_dseg.nii.gz")
    write_tsv(read_tsv(manual / "dseg.tsv"), reference / "dseg.tsv")

    def train_study(*args, **kwargs):
        raise AssertionError("trained before the test site's references were checked")

    monkeypatch.setattr(bench_cross_site, "train_study", train_study)
    with pytest.raises(InputError, match=r"sub-1000: only \d+\.\d% .*sub-1000_dseg\.nii\.gz"):
        bench_cross_site.benchmark(tmp_path, tmp_path / "site", reference, tmp_path / "work", train_subjects=[],
                                   test_subjects=["1000"], train_test_fraction=0.3, conditions=["clean"],
                                   scheme="table", device="cpu", overrides=[])
