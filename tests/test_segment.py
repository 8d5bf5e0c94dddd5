"""Segmentation: SAMSEG and hmrf on a real head, the QC gate, and the segment -> qc -> synthesize chain."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import get_args

import luigi
import nibabel as nib
import numpy as np
import pytest
import yaml

from pipeline.core.bids import STRUCTURES, subject_file, write_raw_tables
from pipeline.core.config import (
    CONSENSUS,
    ConfigError,
    HarmonizeConfig,
    SegmentMethod,
    SegmentQCConfig,
    StripConfig,
    parse_config,
)
from pipeline.core.io import InputError, load_nifti, load_png, read_tsv, save_nifti, write_json
from pipeline.core.labels import (
    CSF,
    DEEP_GREY,
    GM,
    NON_BRAIN,
    WM,
    present_labels,
    unmapped_labels,
    voxel_volume_ml,
)
from pipeline.evaluation.dice import dice_per_tissue
from pipeline.imaging.overlays import three_planes
from pipeline.imaging.preprocess import crop_to_brain, harmonize_builtin
from pipeline.runtime.subjects import read_failures
from pipeline.stages import synthesize
from pipeline.stages.segment import Segmentation, segmentation
from pipeline.stages.segment_qc import SegmentQC, agreement, decide, failures, measures
from pipeline.stages.synthesize import Synthesize, read_decisions
from pipeline.tools.registry import SEGMENTERS, brain_mask
from pipeline.tools.segmentation import SegmentJob, tool_image

from .conftest import PROJECT_ROOT
from .phantom import phantom

QC = SegmentQCConfig()


# --- SAMSEG (fast setting) and hmrf on a real head ----------------------------------------------------
@pytest.fixture(scope="module")
def head(ds000011: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """ds000011 sub-01 as the strip stage leaves it: harmonized, deepbet-stripped, normalized, cropped; at 1.5 mm,
    a third of the voxels for hmrf and Atropos (SAMSEG's fast fit takes as long at either size)."""
    raw = load_nifti(ds000011 / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    harmonized, _ = harmonize_builtin(raw, HarmonizeConfig(voxel_size_mm=1.5))
    config = StripConfig()
    brain, mask = crop_to_brain(harmonized, brain_mask("deepbet", harmonized, config), config.crop_margin_vox)
    return brain, np.asarray(mask.dataobj) > 0


def run_real(method: str, head, workdir: Path, **section) -> Segmentation:
    image, mask = head
    config = parse_config({"segment": {"methods": [method], method: section}}).segment
    return segmentation(method, SegmentJob(tool_image(image, mask), mask, workdir, 2), config)


@pytest.fixture(scope="module")
def real_runs(head, tmp_path_factory) -> dict:
    """The segmenters' tissues and SAMSEG's own seg.mgz. hmrf and Atropos run beside SAMSEG: it is a
    subprocess whose single-threaded phases (registration) leave a core free."""
    workdir = tmp_path_factory.mktemp("samseg")
    with ThreadPoolExecutor(1) as pool:
        samseg = pool.submit(run_real, "samseg", head, workdir, fast=True)
        hmrf = run_real("hmrf", head, tmp_path_factory.mktemp("hmrf"))
        atropos = run_real("atropos", head, tmp_path_factory.mktemp("atropos"))
        assert hmrf.structures is None and atropos.structures is None  # intensity segmenters name no structure
        return {"samseg": samseg.result().tissues, "hmrf": hmrf.tissues, "atropos": atropos.tissues,
                "structures": samseg.result().structures, "seg.mgz": workdir / "samseg" / "seg.mgz"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["samseg", "hmrf", "atropos"])
def test_real_segmentation_is_plausible_and_passes_qc(head, real_runs, method: str):
    image, mask = head
    labels = real_runs[method]
    row = measures(labels, image.get_fdata(dtype=np.float32), mask, voxel_volume_ml(image.affine))
    assert 0.30 < row["GM_fraction"] < 0.55, row
    assert 0.25 < row["WM_fraction"] < 0.45, row
    assert 0.10 < row["CSF_fraction"] < 0.35, row
    assert 1000 < row["GM_ml"] + row["WM_ml"] + row["CSF_ml"] < 1800, row
    assert row["CSF_mean_t1"] < row["GM_mean_t1"] < row["WM_mean_t1"], row
    assert failures(row, [], QC) == []


@pytest.mark.slow
@pytest.mark.parametrize("method", ["samseg", "atropos"])
def test_real_segmenters_agree_with_hmrf(real_runs, method: str):
    dice = dice_per_tissue(real_runs[method], real_runs["hmrf"])
    assert min(dice.values()) >= 0.7, dice


@pytest.mark.slow
def test_atropos_labels_the_same_head_the_same_way_twice(head, real_runs, tmp_path):
    """Atropos draws its initialization at random unless seeded: the wrapper seeds it."""
    assert np.array_equal(run_real("atropos", head, tmp_path).tissues, real_runs["atropos"])


@pytest.mark.slow
def test_real_samseg_output_labels_are_all_decided(head, real_runs):
    _, mask = head
    labels = real_runs["samseg"]
    raw = np.asarray(nib.load(real_runs["seg.mgz"]).dataobj).astype(np.int64)
    assert raw.shape == mask.shape  # SAMSEG answers on its input's grid
    assert unmapped_labels(raw) == []
    assert {2, 3, 4, 16, 24, 41, 42, 43} <= set(present_labels(raw))
    # What SAMSEG calls non-brain inside the stripper's mask (dura, skull edge) is what stays unlabelled.
    non_brain = np.isin(raw[mask], list(NON_BRAIN)).mean()
    assert (labels[mask] == 0).mean() == pytest.approx(non_brain, abs=0.002)
    # the structures it named are kept as it named them, inside the mask
    assert np.array_equal(real_runs["structures"], np.where(mask, raw, 0))


@pytest.mark.slow
def test_the_anatomy_consensus_of_real_hmrf_and_samseg_is_hmrf_but_grey_in_samsegs_deep_grey_structures(real_runs):
    """On a real head HMRF calls much of the deep grey nuclei WM (by brightness); the ``anatomy`` consensus keeps
    HMRF's labels everywhere else and makes the structures SAMSEG names there GM, as raters draw them."""
    from pipeline.tools.consensus import fuse

    hmrf, structures = real_runs["hmrf"], real_runs["structures"]
    fused = fuse([hmrf, real_runs["samseg"]], "anatomy", structures=[None, structures])
    deep = np.isin(structures, DEEP_GREY)
    assert deep.sum() * 1.5**3 / 1000 > 30  # mL: the nuclei, hippocampi and amygdalae of a real head
    assert (hmrf[deep] == WM).mean() > 0.2  # what the fusion is for
    pallidum = np.isin(structures, (13, 52))
    assert (hmrf[pallidum] == WM).mean() > 0.5  # WM-bright on T1
    assert (fused[deep] == GM).all()
    assert np.array_equal(fused[~deep], hmrf[~deep])


def test_segmenter_registry_covers_every_configured_method_and_params_yaml():
    methods = set(get_args(SegmentMethod))
    assert set(SEGMENTERS) | {CONSENSUS} == methods  # the consensus is made from the others, in segment_qc
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    assert methods | {"methods", "qc"} <= set(params["segment"])  # DVC reads segment.<method>


# --- the QC gate on a phantom whose truth is known ------------------------------------------------------
def qc_row(labels: np.ndarray, others: dict[str, np.ndarray] | None = None, qc: SegmentQCConfig = QC) -> dict:
    image, mask, _ = phantom()
    others = others or {}
    row = measures(labels, image.get_fdata(dtype=np.float32), mask, 0.001) | agreement(labels, others)
    return row | decide("sub-01", failures(row, list(others), qc), qc)


def swapped(labels: np.ndarray) -> np.ndarray:
    return np.choose(labels, [0, WM, GM, CSF]).astype(np.uint8)


def test_qc_passes_a_good_segmentation():
    _, _, truth = phantom()
    row = qc_row(truth, {"other": truth})
    assert row["included"] and row["reason"] == "passed"
    assert row["unlabelled_fraction"] == 0.0 and row["dice_other_GM"] == 1.0


def test_qc_excludes_swapped_classes_with_the_reason():
    _, _, truth = phantom()
    row = qc_row(swapped(truth))
    assert not row["included"]
    assert "mean T1 not CSF < GM < WM (CSF 0.25" in row["reason"]


def test_qc_excludes_an_empty_white_matter():
    _, _, truth = phantom()
    row = qc_row(np.where(truth == WM, GM, truth).astype(np.uint8))
    assert not row["included"]
    assert "WM fraction 0.000 outside [0.2, 0.55]" in row["reason"]
    assert "WM nan" in row["reason"]


def test_qc_excludes_a_mostly_unlabelled_brain():
    _, _, truth = phantom()
    row = qc_row(np.where(truth == CSF, 0, truth).astype(np.uint8))
    assert not row["included"] and "of the brain mask unlabelled (max 0.1)" in row["reason"]


def test_qc_needs_agreement_with_at_least_one_other_segmenter():
    _, _, truth = phantom()
    broken = swapped(truth)
    alone = qc_row(truth, {"broken": broken})
    assert not alone["included"] and "GM Dice 0.00 with broken" in alone["reason"]
    assert qc_row(truth, {"broken": broken, "good": truth})["included"]


def test_force_include_keeps_a_failing_subject_and_says_so():
    _, _, truth = phantom()
    row = qc_row(swapped(truth), qc=SegmentQCConfig(force_include=["sub-01"]))
    assert row["included"]
    assert row["reason"].startswith("forced by segment.qc.force_include (failed: mean T1 not CSF < GM < WM")


def test_force_include_takes_participant_ids():
    with pytest.raises(ConfigError, match="force_include"):
        parse_config({"segment": {"qc": {"force_include": ["01"]}}})


def test_overlay_png_shows_three_planes(tmp_path: Path):
    image, _, truth = phantom()
    three_planes(image.get_fdata(), [("hmrf", truth)], tmp_path / "qc" / "sub-01_dseg.png", "sub-01 hmrf-deepbet")
    png = load_png(tmp_path / "qc" / "sub-01_dseg.png")
    assert png.ndim == 3 and png.shape[1] > 2 * png.shape[0]  # three panels side by side


# --- the stages: segment writes labels and overlays; qc decides; synthesize skips the excluded ----------
@pytest.fixture
def study(tmp_path: Path, monkeypatch) -> Path:
    """A project folder with three stripped phantom subjects (02 and 03 for testing and training)."""
    monkeypatch.chdir(tmp_path)
    # One worker: the stages run in this process, where the tests' monkeypatches apply.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"workers": 1, "segment": {"methods": ["hmrf"]}}))
    image, mask, _ = phantom()
    splits: dict[str, str] = {}
    stripped = Path("data/stripped/deepbet")
    for subject, split in (("01", "train"), ("02", "train"), ("03", "test")):
        brain = image.get_fdata(dtype=np.float32)
        save_nifti(brain, image.affine, subject_file(stripped, subject, "desc-brain_T1w"))
        save_nifti(mask.astype(np.uint8), image.affine, subject_file(stripped, subject, "desc-brain_mask"))
        level = {"ReferenceLevelMM": float(image.affine[2, 3])}  # what harmonize found (any plane will do here)
        write_json(level, Path(f"data/harmonized/sub-{subject}/anat/sub-{subject}_desc-harmonized_T1w.json"))
        splits[subject] = split
    write_raw_tables(Path("data/raw"), splits, {f"{s}": Path(f"/heads/{s}.nii.gz") for s in splits})
    return tmp_path


def test_segment_stage_writes_labels_volumes_and_overlays(study: Path):
    from pipeline.stages.segment import Segment

    task = Segment(segmenter="hmrf", stripper="deepbet")
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    out = Path("data/segmented/hmrf-deepbet")
    _, mask, truth = phantom()
    labels = np.asarray(nib.load(subject_file(out, "02", "dseg")).dataobj)
    assert min(dice_per_tissue(truth, labels).values()) > 0.95
    assert [row["participant_id"] for row in read_tsv(out / "volumes.tsv")] == ["sub-01", "sub-02", "sub-03"]
    assert sorted(path.name for path in (out / "qc").iterdir()) == [f"sub-0{n}_dseg.png" for n in (1, 2, 3)]


def test_qc_stage_excludes_and_synthesize_skips_with_a_log(study: Path, monkeypatch, caplog):
    image, _, truth = phantom()
    out = Path("data/segmented/hmrf-deepbet")
    for subject, labels in (("01", truth), ("02", swapped(truth)), ("03", truth)):
        save_nifti(labels, image.affine, subject_file(out, subject, "dseg"))
    write_json({"mean_seconds_per_head": 1.0}, Path("metrics/segment-hmrf-deepbet.json"))  # segment: done
    written = []
    monkeypatch.setattr(synthesize, "write_samples", lambda out, subject, *args: written.append(subject))
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert luigi.build([Synthesize(segmenter="hmrf", stripper="deepbet")], local_scheduler=True,
                           log_level="WARNING")
    decisions = read_decisions(Path("data/qc/hmrf-deepbet/qc.tsv"))
    assert decisions["sub-01"] == (True, "passed") and decisions["sub-03"] == (True, "passed")
    assert not decisions["sub-02"][0] and "mean T1 not CSF < GM < WM" in decisions["sub-02"][1]
    assert written == ["01", "03"]
    assert "sub-02 skipped, excluded by segmentation QC: mean T1 not CSF < GM < WM" in caplog.text
    metrics = yaml.safe_load(Path("metrics/qc-hmrf-deepbet.json").read_text())
    assert metrics["included"] == 2 and list(metrics["excluded"]) == ["sub-02"]


# --- the consensus: the segmenters' labels fused voxel by voxel ------------------------------------------------------
def test_the_majority_vote_of_three_maps_is_the_hand_counted_one():
    from pipeline.tools.consensus import majority_vote

    a = np.array([[GM, GM, WM, CSF], [0, GM, WM, CSF]], np.uint8)
    b = np.array([[GM, WM, WM, GM], [0, CSF, CSF, CSF]], np.uint8)
    c = np.array([[WM, WM, GM, WM], [GM, WM, CSF, GM]], np.uint8)
    # by hand: two of three where two agree; all three differ: the first map's label (a's)
    expected = np.array([[GM, WM, WM, CSF], [0, GM, CSF, CSF]], np.uint8)
    assert np.array_equal(majority_vote([a, b, c]), expected)
    assert np.array_equal(majority_vote([c, b, a])[0], [GM, WM, WM, WM])  # ties follow the order given
    with pytest.raises(ValueError, match="not tissues"):
        majority_vote([a, b, np.full(a.shape, 7, np.uint8)])


def test_staple_trusts_a_reliable_segmenter_over_two_unreliable_ones_that_happen_to_agree():
    """STAPLE weighs each segmenter by its estimated reliability: where two noisy maps agree on a wrong label
    against a reliable one, the vote follows them and STAPLE does not."""
    from pipeline.tools.consensus import fuse

    _, mask, truth = phantom()
    rng = np.random.default_rng(0)

    def noisy() -> np.ndarray:
        wrong = mask & (rng.random(truth.shape) < 0.4)
        return np.where(wrong, rng.integers(1, 4, truth.shape), truth).astype(np.uint8)

    maps = [truth.copy(), noisy(), noisy()]
    majority, staple = fuse(maps, "majority"), fuse(maps, "staple")
    assert min(dice_per_tissue(truth, staple).values()) > 0.99
    assert min(dice_per_tissue(truth, majority).values()) < min(dice_per_tissue(truth, staple).values())


def test_the_anatomy_fusion_takes_the_intensity_segmenters_vote_and_the_atlas_deep_grey_by_hand():
    from pipeline.tools.consensus import fuse

    hmrf = np.array([[GM, WM, WM, WM, CSF, 0]], np.uint8)
    atropos = np.array([[GM, GM, WM, WM, CSF, 0]], np.uint8)
    samseg = np.array([[WM, GM, GM, GM, GM, 0]], np.uint8)
    # SAMSEG's own names: cortex, thalamus, pallidum, cerebral WM, caudate, unknown
    structures = np.array([[3, 10, 13, 2, 11, 0]])
    # the intensity segmenters' vote (a tie: hmrf's, the first), GM where SAMSEG names a deep grey structure
    expected = np.array([[GM, GM, GM, WM, GM, 0]], np.uint8)
    fused = fuse([hmrf, samseg, atropos], "anatomy", structures=[None, structures, None])
    assert np.array_equal(fused, expected)
    # two atlases: a structure counts where at least half of them name it
    other = np.array([[3, 2, 2, 2, 11, 0]])
    fused = fuse([hmrf, samseg, samseg], "anatomy", structures=[None, structures, other])
    assert np.array_equal(fused, expected)
    # atlases only: their own vote outside the deep grey structures
    fused = fuse([samseg, samseg], "anatomy", structures=[structures, other])
    assert np.array_equal(fused, [[WM, GM, GM, GM, GM, 0]])
    with pytest.raises(ValueError, match="atlas-based"):
        fuse([hmrf, atropos], "anatomy", structures=[None, None])


def test_the_anatomy_consensus_needs_an_atlas_segmenter_among_those_it_fuses():
    with pytest.raises(ConfigError, match="anatomy needs an atlas-based segmenter"):
        parse_config({"segment": {"methods": ["hmrf", "atropos", "consensus"], "consensus": {"fusion": "anatomy"}}})
    parse_config({"segment": {"methods": ["hmrf", "samseg", "consensus"], "consensus": {"fusion": "anatomy"}}})


def test_segment_qc_fuses_the_consensus_of_the_other_segmenters_and_checks_it(study: Path):
    from pipeline.runtime.graph import dvc_yaml
    from pipeline.stages.segment import Segment

    (study / "params.yaml").write_text(yaml.safe_dump({"workers": 1, "keep_going": True, "segment": {
        "methods": ["hmrf", "atropos", "samseg", "consensus"]}}))
    image, mask, truth = phantom()
    rng = np.random.default_rng(1)
    maps = {method: np.where(mask & (rng.random(truth.shape) < 0.2), CSF, truth).astype(np.uint8)
            for method in ("hmrf", "atropos", "samseg")}
    for method, labels in maps.items():
        out = Path(f"data/segmented/{method}-deepbet")
        for subject in ("01", "02", "03"):
            save_nifti(labels, image.affine, subject_file(out, subject, "dseg"))
        write_json({"mean_seconds_per_head": 10.0}, Path(f"metrics/segment-{method}-deepbet.json"))
    broken = subject_file(Path("data/segmented/samseg-deepbet"), "03", "dseg")
    broken.write_bytes(b"not a NIfTI")  # with keep_going, this subject is lost, the others fused
    task = SegmentQC(segmenter="consensus", stripper="deepbet")
    assert {t.segmenter for t in task.requires()["segmented"].requires() if isinstance(t, Segment)} == {
        "hmrf", "atropos", "samseg", "consensus"}  # in Luigi: every segmenter, the ones it fuses among them
    assert luigi.build([task], local_scheduler=True, log_level="WARNING")
    fused = np.asarray(nib.load(subject_file(Path("data/qc/consensus-deepbet"), "02", "dseg")).dataobj)
    votes = sum((labels == CSF).astype(int) for labels in maps.values())
    assert np.array_equal(fused == CSF, (votes >= 2) | (truth == CSF))  # CSF where two of three said so
    decisions = read_decisions(Path("data/qc/consensus-deepbet/qc.tsv"))
    assert [included for _, (included, _) in sorted(decisions.items())] == [True, True, False]
    failures = read_failures(Path("data/qc/consensus-deepbet"))
    assert [row["participant_id"] for row in failures] == ["sub-03"] and str(broken) in failures[0]["reason"]
    assert not subject_file(Path("data/qc/consensus-deepbet"), "03", "dseg").exists()
    metrics = yaml.safe_load(Path("metrics/qc-consensus-deepbet.json").read_text())
    assert set(metrics["cost"]["seconds_per_head"]) == {"sub-01", "sub-02"}
    assert metrics["cost"]["fused"] == {"hmrf": 10.0, "atropos": 10.0, "samseg": 10.0}
    assert SegmentQC.labels("consensus", "deepbet").out_dir() == Path("data/qc/consensus-deepbet")
    stages = yaml.safe_load(dvc_yaml())["stages"]  # in DVC: segment_qc depends on every segmenter's labels
    assert "data/segmented" in stages["segment_qc"]["deps"]
    assert "data/qc/${item.segmenter}-${item.stripper}" in stages["synthesize"]["deps"]


def test_segment_qc_makes_the_anatomy_consensus_from_the_structures_file_the_atlas_segmenter_left(study: Path):
    """The segment stage keeps an atlas segmenter's structures beside its tissues (``desc-structures_dseg``); the
    anatomy consensus reads them there."""
    (study / "params.yaml").write_text(yaml.safe_dump({"workers": 1, "segment": {
        "methods": ["hmrf", "samseg", "consensus"], "consensus": {"fusion": "anatomy"}}}))
    image, mask, truth = phantom()
    core = np.zeros(truth.shape, bool)
    core[18:22, 20:24, 16:20] = True  # a "pallidum" inside the phantom's WM
    assert (truth[core] == WM).all()
    structures = np.where(core, 13, np.choose(truth, [0, 3, 2, 24])).astype(np.int32)
    for method in ("hmrf", "samseg"):
        out = Path(f"data/segmented/{method}-deepbet")
        for subject in ("01", "02", "03"):
            save_nifti(truth if method == "hmrf" else np.where(core, GM, truth).astype(np.uint8), image.affine,
                       subject_file(out, subject, "dseg"))
            if method == "samseg":
                save_nifti(structures, image.affine, subject_file(out, subject, STRUCTURES))
        write_json({"mean_seconds_per_head": 10.0}, Path(f"metrics/segment-{method}-deepbet.json"))
    assert luigi.build([SegmentQC(segmenter="consensus", stripper="deepbet")], local_scheduler=True,
                       log_level="WARNING")
    fused = np.asarray(nib.load(subject_file(Path("data/qc/consensus-deepbet"), "02", "dseg")).dataobj)
    assert np.array_equal(fused, np.where(core, GM, truth))
    # the structures it took GM from go with its labels, for synthesis (synth.structure_classes)
    kept = nib.load(subject_file(Path("data/qc/consensus-deepbet"), "02", STRUCTURES)).dataobj
    assert np.array_equal(np.asarray(kept), np.where(mask, structures, 0))
    description = yaml.safe_load(Path("data/qc/consensus-deepbet/dataset_description.json").read_text())
    assert "consensus (anatomy) of hmrf, samseg" in description["GeneratedBy"][0]["Description"]


def test_the_atlas_segmenters_are_the_ones_whose_wrappers_return_structures():
    from pipeline.core.config import ANATOMICAL

    assert {method for method in SEGMENTERS if SEGMENTERS[method].anatomical} == set(ANATOMICAL)


def test_segment_stage_keeps_an_atlas_segmenters_structures_beside_its_tissues_with_a_standin(study: Path, monkeypatch):
    """A stand-in atlas segmenter (SAMSEG's place, hmrf's tool check) naming the phantom's structures: the stage writes
    the tissues they map to and the structures themselves, and says so in the derivative's description."""
    from pipeline.stages.segment import Segment
    from pipeline.tools.segmentation import Segmenter

    def name_structures(job: SegmentJob, config) -> np.ndarray:
        truth = phantom()[2]
        return np.choose(truth, [0, 3, 2, 24]).astype(np.int64) + 10 * (truth == GM)  # 13: the "pallidum"

    monkeypatch.setitem(SEGMENTERS, "samseg", Segmenter(SEGMENTERS["hmrf"].tool, name_structures, anatomical=True))
    (study / "params.yaml").write_text(yaml.safe_dump({"workers": 1, "segment": {"methods": ["samseg"]}}))
    assert luigi.build([Segment(segmenter="samseg", stripper="deepbet")], local_scheduler=True, log_level="WARNING")
    out, (_, mask, truth) = Path("data/segmented/samseg-deepbet"), phantom()
    tissues = np.asarray(nib.load(subject_file(out, "02", "dseg")).dataobj)
    structures = np.asarray(nib.load(subject_file(out, "02", STRUCTURES)).dataobj)
    assert np.array_equal(tissues, truth)  # 13 (pallidum) is GM, 2 WM, 24 CSF
    assert np.array_equal(structures, np.where(mask, np.choose(truth, [0, 13, 2, 24]), 0))
    description = yaml.safe_load((out / "dataset_description.json").read_text())
    assert STRUCTURES in description["GeneratedBy"][0]["Description"]


def test_the_anatomy_consensus_of_labels_made_without_structures_stops_naming_them_and_what_to_rerun(study: Path):
    (study / "params.yaml").write_text(yaml.safe_dump({"workers": 1, "segment": {
        "methods": ["hmrf", "samseg", "consensus"], "consensus": {"fusion": "anatomy"}}}))
    image, _, truth = phantom()
    for method in ("hmrf", "samseg"):
        for subject in ("01", "02", "03"):
            save_nifti(truth, image.affine, subject_file(Path(f"data/segmented/{method}-deepbet"), subject, "dseg"))
        write_json({"mean_seconds_per_head": 10.0}, Path(f"metrics/segment-{method}-deepbet.json"))
    with pytest.raises(InputError, match=r"no structures beside 3 label map\(s\), e\.g\. .*sub-01_desc-structures_dseg"
                                         r".*dvc repro -f segment@samseg-deepbet"):
        SegmentQC(segmenter="consensus", stripper="deepbet").build(Path("data/qc/consensus-deepbet"),
                                                                    parse_config(yaml.safe_load(Path("params.yaml").read_text())))
