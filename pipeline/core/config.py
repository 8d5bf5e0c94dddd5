"""The one typed configuration of the pipeline, read from ``params.yaml``.

Every key is declared here; an unknown or misspelled key, a wrong type or an
unknown method stops with a message naming the key (``ConfigError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PARAMS_FILE = Path("params.yaml")

StripMethod = Literal["deepbet", "hdbet", "robex", "synthstrip"]
# New methods go at the end: a combo's nnU-Net dataset number follows the method's place (pipeline.nnunet.models).
SegmentMethod = Literal["hmrf", "samseg", "fast", "synthseg", "fastsurfer", "atropos", "consensus"]
CONSENSUS = "consensus"  # a segmenter of its own kind: the fusion of the others (pipeline/tools/consensus.py)
# Atlas-based segmenters: they name anatomical structures (FreeSurfer labels, kept beside their tissues by the segment
# stage); the others find intensity classes.
ANATOMICAL: tuple[str, ...] = ("samseg", "synthseg", "fastsurfer")
View = Literal["axial", "coronal", "sagittal"]
Precision = Literal["auto", "float32", "mixed"]  # a network's arithmetic (train.precision, train.predict_precision)
Window = Literal["nnunet", "plane"]  # the tiles a slice goes through the network in (train.predict_window)
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Range = tuple[float, float]


class ConfigError(ValueError):
    """params.yaml is invalid; the message names the offending key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _unique(methods: list[str]) -> list[str]:
    if not methods:
        raise ValueError("needs at least one method")
    if len(set(methods)) != len(methods):
        raise ValueError(f"lists a method twice: {methods}")
    return methods


# --- acquire -----------------------------------------------------------------
class AcquireConfig(Strict):
    # where the heads come from: sample (offline, packaged heads), bids (acquire.bids_root), folder (acquire.folder) or
    # openneuro (acquire.dataset; downloads)
    source: Literal["sample", "bids", "folder", "openneuro"] = "sample"
    bids_root: str | None = None  # for source=bids
    folder: str | None = None  # for source=folder: a plain folder of heads, one subject per file
    dataset: str = "ds002330"  # for source=openneuro
    # empty: every subject found. BIDS labels are letters and digits: no path separators, no "..".
    subjects: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9]+$")]] = []
    # Several T1w heads in one subject or session: "first", the lowest run number (logged), or "all", each
    # one a case of its own (its name keeps the acq/run/... entities that tell it apart).
    runs: Literal["first", "all"] = "first"
    # share of subjects held out for testing (split by subject, seeded by ``seed``)
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2


# --- harmonize ---------------------------------------------------------------
class SynthSRConfig(Strict):
    cpu: bool = True  # threads: the ``workers`` budget


class HarmonizeConfig(Strict):
    # builtin: reorient to RAS, resample, N4, percentile normalization; synthsr: FreeSurfer's mri_synthsr
    method: Literal["builtin", "synthsr"] = "builtin"
    # isotropic voxel the heads are resampled to (cubic spline)
    voxel_size_mm: Annotated[float, Field(gt=0.2, le=4.0)] = 1.0
    # N4 bias-field correction (SimpleITK)
    n4: bool = True
    # N4 runs on a copy shrunk by this factor (the field is smooth), evaluated at full resolution
    n4_shrink: Annotated[int, Field(ge=1, le=8)] = 4
    # N4 iterations per fitting level (4 levels)
    n4_iterations: Annotated[int, Field(ge=1)] = 30
    # the head's intensities between these percentiles mapped to [0, 1]
    percentiles: Range = (0.5, 99.5)
    synthsr: SynthSRConfig = SynthSRConfig()


# --- strip -------------------------------------------------------------------
class DeepbetConfig(Strict):
    # probability above which a voxel is brain
    threshold: Probability = 0.5
    # dilations of the mask (voxels; negative: erosions)
    n_dilate: int = 0


class HdbetConfig(Strict):
    # fast: one model; accurate: the five-fold ensemble (5x the time)
    mode: Literal["fast", "accurate"] = "fast"
    # test-time mirroring (8x the time)
    tta: bool = False


class RobexConfig(Strict):
    # ROBEX's random seed
    seed: int = 0


class SynthStripConfig(Strict):
    model: str | None = None  # a SynthStrip .pt file: use nipreps-synthstrip instead of mri_synthstrip
    # mask border, mm (mri_synthstrip -b)
    border_mm: int = 1


class StripQcConfig(Strict):
    """Plausible ranges of a brain mask; a subject outside them is flagged in ``masks.tsv``."""

    # plausible brain volume, mL
    brain_ml: Range = (800.0, 2200.0)
    max_components: Annotated[int, Field(ge=1)] = 3  # disconnected pieces of the mask
    max_border_fraction: Probability = 0.01  # share of mask voxels on the image's faces: a cut-off brain


class StripConfig(Strict):
    # the skull strippers to compare: deepbet | hdbet | robex | synthstrip (FreeSurfer, or nipreps-synthstrip with a
    # model file)
    methods: list[StripMethod] = ["deepbet"]
    # voxels kept around the brain mask's bounding box when cropping
    crop_margin_vox: Annotated[int, Field(ge=0)] = 4
    qc: StripQcConfig = StripQcConfig()
    deepbet: DeepbetConfig = DeepbetConfig()
    hdbet: HdbetConfig = HdbetConfig()
    robex: RobexConfig = RobexConfig()
    synthstrip: SynthStripConfig = SynthStripConfig()

    _unique = field_validator("methods")(_unique)


# --- segment -----------------------------------------------------------------
class HmrfConfig(Strict):
    # smoothness of the Markov random field (dipy TissueClassifierHMRF)
    beta: Annotated[float, Field(ge=0.0)] = 0.1
    # iterations of the HMRF's ICM
    max_iterations: Annotated[int, Field(ge=1)] = 10
    # stop when the energy changes less than this
    tolerance: float = 1e-5


class SamsegConfig(Strict):
    # fast: one 2 mm atlas-deformation level instead of 2 mm then 1 mm (quicker, coarser; for tests and
    # previews). Real studies keep SAMSEG's full multi-resolution fit.
    fast: bool = False


class FastConfig(Strict):
    mrf_beta: Annotated[float, Field(ge=0.0)] = 0.1  # -H: spatial smoothness of the MRF
    iterations: Annotated[int, Field(ge=1)] = 4  # -I: main-loop iterations during bias-field removal
    bias_correction: bool = True  # False: -N (the harmonize stage already ran N4)


class SynthSegConfig(Strict):
    robust: bool = False  # --robust: slower, for low-resolution or clinical scans
    cpu: bool = True  # --cpu: never reach for a GPU


class FastSurferConfig(Strict):
    # where FastSurfer runs: auto (the GPU when there is one) | cpu | cuda
    device: Literal["auto", "cpu", "cuda"] = "auto"


class AtroposConfig(Strict):
    """ANTs Atropos (antspyx), as ANTs' own brain-tissue scripts run it without priors."""

    # the classes' starting point: kmeans (ANTs' choice without tissue priors) or otsu
    initialization: Literal["kmeans", "otsu"] = "kmeans"
    mrf_smoothing: Annotated[float, Field(ge=0.0)] = 0.1  # the Markov random field's weight (-m [0.1,1x1x1])
    iterations: Annotated[int, Field(ge=1)] = 5  # EM iterations (-c [5,0])


class ConsensusConfig(Strict):
    """How the ``consensus`` segmenter fuses the others' labels, voxel by voxel."""

    # majority: the label most segmenters give (a tie goes to the first of them in ``of``); staple: each
    # segmenter weighted by how well it agrees with the others (STAPLE, Warfield et al. 2004; SimpleITK);
    # anatomy: each where it is reliable: the intensity segmenters' majority, but GM in the deep grey structures
    # (labels.DEEP_GREY) at least half the atlas-based ones name, as raters draw them
    fusion: Literal["majority", "staple", "anatomy"] = "majority"
    # the segmenters fused (empty: every other one in segment.methods); at least two
    of: list[SegmentMethod] = []


class SegmentQCConfig(Strict):
    """Per-subject ranges a segmentation must fall in to be used for synthesis."""

    # Shares of the labelled brain (GM + WM + CSF).
    gm_fraction: Range = (0.25, 0.65)
    # plausible share of white matter
    wm_fraction: Range = (0.20, 0.55)
    # plausible share of CSF
    csf_fraction: Range = (0.02, 0.45)
    max_unlabelled_fraction: Probability = 0.10  # brain-mask voxels the segmenter left as background
    # Per tissue, Dice with the best-agreeing other segmenter (only when several are configured).
    min_dice: Probability = 0.6
    force_include: list[str] = []  # participant ids ("sub-XX") used whatever their QC says

    @field_validator("force_include")
    @classmethod
    def _participant_ids(cls, ids: list[str]) -> list[str]:
        wrong = [value for value in ids if not value.startswith("sub-")]
        if wrong:
            raise ValueError(f"expects participant ids like 'sub-01', got {wrong}")
        return ids


class SegmentConfig(Strict):
    # the tissue segmenters to compare: hmrf | samseg | fast (FSL) | synthseg (FreeSurfer) | fastsurfer | atropos
    # (ANTs) | consensus (the others' labels fused, voxel by voxel: segment.consensus). Default atropos: on manual
    # labels (oasis-manual, 4 held-out heads) its labels beat HMRF's in GM by 0.045 and its model HMRF's by 0.025,
    # WM level, at about 1.5x HMRF's seconds a head (docs/benchmarks.md, 2026-12-06, seventh)
    methods: list[SegmentMethod] = ["atropos"]
    hmrf: HmrfConfig = HmrfConfig()
    samseg: SamsegConfig = SamsegConfig()
    fast: FastConfig = FastConfig()
    synthseg: SynthSegConfig = SynthSegConfig()
    fastsurfer: FastSurferConfig = FastSurferConfig()
    atropos: AtroposConfig = AtroposConfig()
    consensus: ConsensusConfig = ConsensusConfig()
    qc: SegmentQCConfig = SegmentQCConfig()

    _unique = field_validator("methods")(_unique)

    def fused(self) -> list[str]:
        """The segmenters the consensus fuses."""
        return list(self.consensus.of) or [method for method in self.methods if method != CONSENSUS]

    @model_validator(mode="after")
    def _consensus_of_configured_segmenters(self) -> SegmentConfig:
        if CONSENSUS not in self.methods:
            return self
        fused = self.fused()
        wrong = [method for method in fused if method not in self.methods or method == CONSENSUS]
        if wrong or len(fused) < 2:
            raise ValueError(f"consensus fuses at least two of the other segment.methods; consensus.of lists "
                             f"{fused} (not configured or not a segmenter: {wrong})")
        if self.consensus.fusion == "anatomy" and not set(fused) & set(ANATOMICAL):
            raise ValueError(f"consensus.fusion: anatomy needs an atlas-based segmenter ({', '.join(ANATOMICAL)}) "
                             f"among the fused {fused}: it names the deep grey structures")
        return self


# --- synthesize (lab2im's defaults) --------------------------------------------
class SynthConfig(Strict):
    # builtin: pipeline/synth (torch, only the kept slab); lab2im: the lab2im package (optional, TensorFlow)
    engine: Literal["builtin", "lab2im"] = "builtin"
    # synthetic samples per training subject
    n_train: Annotated[int, Field(ge=1)] = 60
    # synthetic samples per test subject (dice.synthetic)
    n_test: Annotated[int, Field(ge=1)] = 12
    # side of the square slice canvas, pixels (nnU-Net crops every image to its brain)
    size: Annotated[int, Field(ge=32)] = 256
    # pad the label volume in plane with background to size x size before synthesis: no black frame (only when a
    # generated background shows, zero_background < 1: pipeline/synth/canvas.py)
    pad_labels_to_size: bool = True
    # lab2im's uniform prior of a class's mean intensity (priors: uniform), on lab2im's 0-255 scale
    prior_means: Range = (25.0, 225.0)
    # lab2im's uniform prior of a class's intensity spread (priors: uniform)
    prior_stds: Range = (5.0, 25.0)
    # affine scaling ~ U(1 - b, 1 + b) per axis (lab2im)
    scaling_bounds: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    # rotation about each axis ~ U(-b, b) degrees (lab2im)
    rotation_bounds_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 10.0
    # shearing ~ U(-b, b) (lab2im)
    shearing_bounds: Annotated[float, Field(ge=0.0)] = 0.02
    # elastic deformation: the SVF's standard deviation ~ U(0, this), voxels (lab2im)
    nonlin_std: Annotated[float, Field(ge=0.0)] = 4.0
    # elastic deformation: the SVF's grid, as a share of the volume's size (lab2im)
    nonlin_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 1 / 16
    # share of samples with a bias field (lab2im)
    bias_field_probability: Probability = 0.95
    # the log bias field's standard deviation ~ U(0, this) (lab2im; SynthSeg: 0.7)
    bias_field_std: Annotated[float, Field(ge=0.0)] = 0.3
    # the bias field's grid, as a share of the volume's size (lab2im)
    bias_field_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.025
    # log of the gamma exponent ~ N(0, this) (lab2im; SynthSeg: 0.5)
    gamma_std: Annotated[float, Field(ge=0.0)] = 0.2
    # Gaussian blur, voxels (lab2im's blurring at the label map's resolution)
    blur_sigma_vox: Annotated[float, Field(ge=0.0)] = 0.5
    # the blur's sigma per axis ~ U(1 / r, r) x blur_sigma_vox (lab2im)
    blur_range: Annotated[float, Field(ge=1.0)] = 1.15
    # share of samples flipped left-right
    flip_probability: Probability = 0.5
    # white noise standard deviation ~ U(0, this), intensity units (lab2im: 0)
    noise_std: Annotated[float, Field(ge=0.0)] = 0.0
    # Share of samples whose background is exactly 0, as in the skull-stripped real slices the model segments
    # (1: always; 0: lab2im's, a Gaussian of its own; SynthSeg resets it in 5 % of its samples).
    zero_background: Probability = 1.0
    # The GMM's priors (pipeline/synth/priors.py): uniform (lab2im: prior_means, prior_stds for every class),
    # t1 (SynthSeg's T1 priors: WM ~160, cortex ~96, CSF ~44), subject (around the subject's own image).
    priors: Literal["uniform", "t1", "subject"] = "subject"
    subject_prior_spread: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05  # sd of a class mean / intensity range
    subclasses: Annotated[int, Field(ge=1, le=8)] = 3  # Gaussian classes per tissue, by k-means of the image
    # true: the deep grey structures an atlas segmenter named (its structures beside its labels, or the anatomy
    # consensus's) are generation classes of their own, each with its own Gaussian as SynthSeg draws one per
    # structure, their training label GM: with priors: subject, a WM-bright pallidum is drawn WM-bright and
    # labelled GM, as in the real scan (t1 and uniform priors draw them as any GM class). Label maps without
    # structures (intensity segmenters, a majority or staple consensus) are drawn as before, with a warning.
    structure_classes: bool = False
    # Which plane (along its view's axis) each sample is cut from (pipeline/synth/levels.py): brain, any plane
    # of the brain, spread by level_spread (uniform over the brain's extent, or area: in proportion to the tissue
    # in the plane);
    # reference, the seed project's one slice per subject: its reference level, or within ± band_mm of it.
    levels: Literal["brain", "reference"] = "brain"
    # the planes samples are cut in, one drawn per sample: axial, coronal, sagittal (one model learns them all;
    # evaluate and predict segment a head in each and fuse the three: pipeline/nnunet/inference.py)
    views: list[View] = ["axial", "coronal", "sagittal"]
    # levels: brain: planes drawn uniform over the brain's height, or in proportion to the tissue they hold (area)
    level_spread: Literal["uniform", "area"] = "uniform"
    # levels: reference: planes within the reference level ± band_mm (1 mm voxels; 0: the level itself)
    band_mm: Annotated[float, Field(ge=0.0, le=60.0)] = 0.0
    # Resolution randomisation (SynthSeg): in this share of the samples a lower-resolution acquisition is
    # simulated, slice thickness ~ U(1, max_thickness_mm) and in-plane voxels ~ U(1, max_in_plane_mm): blurred as
    # that acquisition (σ = 0.75 × voxel), resampled in plane to it and back; the labels stay at 1 mm.
    resolution_probability: Probability = 0.0
    # resolution randomisation: slice thickness ~ U(1, this), mm
    max_thickness_mm: Annotated[float, Field(ge=1.0, le=10.0)] = 5.0
    # resolution randomisation: in-plane voxel ~ U(1, this), mm
    max_in_plane_mm: Annotated[float, Field(ge=1.0, le=4.0)] = 1.5
    # Share of the training samples that are real slices of the training heads instead of synthetic ones: the
    # stripped, normalised brain as a model sees it at evaluation, with the teacher's labels, in the same views and
    # levels (pipeline/synth/real.py). 0: synthetic only; 1: real only. Test samples (dice.synthetic) stay synthetic.
    # 0.5, the seed's real + synthetic set: against manual labels +0.009 GM / +0.011 WM over synthetic only (two
    # training seeds, oasis-manual), the same at another site (docs/how-to/real-and-synthetic.md).
    real_fraction: Probability = 0.5

    @model_validator(mode="after")
    def _band_needs_reference_levels(self) -> SynthConfig:
        if self.band_mm and self.levels != "reference":
            raise ValueError("band_mm is the band around the reference level: set levels: reference with it")
        if self.levels == "reference" and self.views != ["axial"]:
            raise ValueError("levels: reference is an axial level: it takes views: [axial]")
        return self

    _unique_views = field_validator("views")(_unique)


# --- train / evaluate --------------------------------------------------------
AUTO_PROFILE = "auto"  # train.profile: gpu on a GPU, quick on a CPU


class TrainProfile(Strict):
    # epochs of the schedule
    epochs: Annotated[int, Field(ge=1)]
    # training iterations (batches) per epoch
    iterations_per_epoch: Annotated[int, Field(ge=1)]
    # nnU-Net's validation batches per epoch (a loss and pseudo Dice for the curves)
    val_iterations_per_epoch: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)] | None = None  # None: nnU-Net's plan
    base_features: Annotated[int, Field(ge=1)] | None = None  # first-stage width; None: nnU-Net's plan (32)
    # the augmentation this schedule was measured with, used when train.augmentation is auto (None: nnunet). A GPU
    # outruns nnU-Net's CPU augmentation many times over; the synthetic samples are already deformed and
    # re-textured (``synthesis``)
    augmentation: Literal["nnunet", "synthesis"] | None = None
    # processes loading (and augmenting) batches beside the training: None: none when train.deterministic (a
    # CPU run repeats exactly), else one per core; a number: that many, however train.deterministic is set
    loader_processes: Annotated[int, Field(ge=0)] | None = None
    # sgd: nnU-Net's own optimizer (SGD, Nesterov momentum 0.99, learning rate 0.01), tuned for its 250,000
    # iterations; adam: nnU-Net's nnUNetTrainerAdam (AdamW with AMSGrad), which learns faster in the CPU profiles'
    # few thousand (docs/benchmarks.md). Both decay the rate as nnU-Net's poly schedule.
    optimizer: Literal["sgd", "adam"] = "sgd"
    # the rate the schedule starts from; None: the optimizer's in nnU-Net (sgd 0.01, adam nnUNetTrainerAdam1en3's
    # 0.001). quick's 0.002: in its 1,000 iterations closer to manual labels on real brains than 0.001, 0.003,
    # 0.005 or 0.01; thorough's 4,000 gain nothing from it (docs/benchmarks.md)
    learning_rate: Annotated[float, Field(gt=0)] | None = None


class TrainConfig(Strict):
    # the schedule to train with: a name in train.profiles, or auto: gpu where the training runs on a GPU, quick
    # on a CPU (the training record names the one that ran)
    profile: str = "auto"
    # named schedules (train.profiles.<name>): ci for tests; quick, the CPU default (about 2 minutes a model on 2
    # cores); thorough, quick's network 4 times as long (about 6 minutes a model on 2 cores; on real brains it
    # gains about 0.01 GM and WM over quick against manual labels: docs/benchmarks.md); gpu, nnU-Net's network in
    # large batches with the synthesis's own augmentation, sized for a GPU's minutes; standard, nnU-Net's own plan
    # and schedule (hours on a GPU)
    profiles: dict[str, TrainProfile] = {
        "ci": TrainProfile(epochs=2, iterations_per_epoch=5, val_iterations_per_epoch=2, batch_size=4, base_features=8,
                           optimizer="adam", learning_rate=0.002),
        "quick": TrainProfile(epochs=40, iterations_per_epoch=25, val_iterations_per_epoch=5, batch_size=2,
                              base_features=16, optimizer="adam", learning_rate=0.002),
        "thorough": TrainProfile(epochs=100, iterations_per_epoch=40, val_iterations_per_epoch=5, batch_size=2,
                                 base_features=16, optimizer="adam"),
        "gpu": TrainProfile(epochs=40, iterations_per_epoch=100, val_iterations_per_epoch=5, batch_size=64,
                            augmentation="synthesis", loader_processes=12),
        "standard": TrainProfile(epochs=1000, iterations_per_epoch=250, val_iterations_per_epoch=50),
    }
    # nnU-Net's fold: all (train on every synthetic training case) or 0-4 (a fifth held out for nnU-Net's validation)
    fold: Literal[0, 1, 2, 3, 4, "all"] = "all"
    # auto: the profile's (train.profiles.<name>.augmentation; nnunet where it names none); nnunet: nnU-Net's own
    # data augmentation with the brain kept upright (rotations within 15 degrees, no mirroring); synthesis: only
    # the synthesis's (which already deforms, flips and re-textures every sample) (pipeline/nnunet/trainers)
    augmentation: Literal["auto", "nnunet", "synthesis"] = "auto"
    # Online synthesis: every training sample nnU-Net loads is drawn afresh from the case's label map
    # (pipeline.synth.online), as SynthSeg trains, instead of read from the synthesize stage's fixed PNG set.
    online_synthesis: bool = False
    # auto: the GPU when torch sees one
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # seeded training, augmentation in the training process: a CPU run repeats exactly
    deterministic: bool = True
    # The training's own seed (null: the study's ``seed``): retrain on the same data with other seeds to see
    # how much Dice moves from one training run to the next.
    seed: int | None = None
    # Train and evaluate each strategy once per seed, on the same synthetic set and split (empty: once, with
    # ``seed``). The report's intervals then cover the training's own noise as well as the subjects'.
    seeds: list[int] = []
    # the training's arithmetic: auto: mixed where the device computes it natively (nnU-Net's float16 on a GPU;
    # bfloat16 on a CPU with AVX-512 BF16 or AMX, where an iteration takes about 12 % less time), else float32;
    # float32 (a CPU only: nnU-Net trains on a GPU in float16 always); mixed: always (emulated, far slower, on a
    # CPU without bfloat16). The model folder's plans.json records the arithmetic that ran.
    precision: Precision = "auto"
    # nnU-Net's mirroring at prediction: left-right, 2x the time (models trained before the upright trainer: both
    # in-plane axes, 4x); on real brains +0.0005 Dice (docs/benchmarks.md)
    predict_tta: bool = False
    # the network's arithmetic at prediction: auto: mixed where the device computes it natively (float16 on a GPU;
    # bfloat16 on a CPU with AVX-512 BF16 or AMX, twice as fast there), else float32; float32: nnU-Net's own CPU
    # arithmetic; mixed: always (emulated, far slower, on a CPU without bfloat16). Mixed moves about 0.04 % of a
    # head's voxels against float32, where two classes all but tie.
    predict_precision: Precision = "auto"
    # the tiles a slice goes through the network in: nnunet: nnU-Net's sliding window (its planned patch, 128 x 128
    # for 256 x 256 slices, half-overlapping, Gaussian-weighted: its own prediction, label for label); plane: each
    # slice whole, one tile (on 2 CPU cores a head's inference in about 0.7 of the time; Dice against manual labels
    # within 0.003 either way, against the model's teacher 0.001-0.006 lower; docs/benchmarks.md)
    predict_window: Window = "nnunet"

    def profile_name(self, device: str) -> str:
        """The profile that trains on ``device`` ("cuda" or "cpu"): ``profile``, or for auto gpu or quick."""
        if self.profile != AUTO_PROFILE:
            return self.profile
        return "gpu" if device == "cuda" else "quick"

    def active_profile(self, device: str) -> TrainProfile:
        return self.profiles[self.profile_name(device)]

    def trainer_augmentation(self, device: str) -> Literal["nnunet", "synthesis"]:
        """The augmentation that trains on ``device``: ``augmentation``, or for auto the profile's (else nnunet)."""
        if self.augmentation != "auto":
            return self.augmentation
        return self.active_profile(device).augmentation or "nnunet"

    def training_seed(self, study_seed: int) -> int:
        return study_seed if self.seed is None else self.seed

    def training_seeds(self, study_seed: int) -> list[int]:
        """The seeds each strategy is trained with, the first one's model the one ``predict`` uses."""
        return list(self.seeds) or [self.training_seed(study_seed)]

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"lists a seed twice: {seeds}")
        return seeds


# --- evaluate ----------------------------------------------------------------
class EvaluateConfig(Strict):
    # A BIDS derivative with each subject's reference labels (sub-X/anat/sub-X*_dseg.nii.gz on the raw head,
    # and a dseg.tsv label table): test subjects that have one are also scored against it (dice.external).
    reference_labels: str | None = None
    # how labels become tissues (pipeline/evaluation/references.py)
    reference_scheme: Literal["table", "freesurfer"] = "table"
    # Whole heads are scored in 3D; as a secondary figure (dice_band), also the planes every step_mm within each
    # test head's reference level ± band_mm, pooled into one Dice per subject (0: the reference level only).
    band_mm: Annotated[float, Field(ge=0.0, le=60.0)] = 10.0
    # the band's planes are this far apart
    step_mm: Annotated[float, Field(gt=0.0)] = 2.0


# --- where the work runs ----------------------------------------------------------------------------------------
class SlurmConfig(Strict):
    """SLURM jobs (``executor.kind: slurm``), submitted through submitit: one array task per head for the per-head
    stages, one GPU job per training (and seed) and per evaluation. Keep the study folder, ``folder`` and the DVC
    cache on a filesystem every node shares."""

    partition: str | None = None  # the per-head jobs' partition (null: the cluster's default)
    # a per-head job's time limit, minutes (more than 10: submitit's pre-emption signal comes before the end)
    time_min: Annotated[int, Field(gt=10)] = 120
    mem_gb: Annotated[float, Field(gt=0)] = 8.0  # a per-head job's memory (SAMSEG and HD-BET need the most)
    cpus_per_task: Annotated[int, Field(ge=1)] = 2  # a per-head job's CPUs, and the threads the tools use
    max_parallel: Annotated[int, Field(ge=1)] = 64  # array throttle: at most this many heads at once
    # other sbatch options, as sbatch spells them without the dashes (e.g. account: lab, qos: normal)
    options: dict[str, str | int] = {}
    # shell lines each job runs first (e.g. module load freesurfer); the pipeline's own Python is used as it is
    setup: list[str] = []
    gpu_partition: str | None = None  # the training and evaluation jobs' partition (null: ``partition``)
    gpus: Annotated[int, Field(ge=0)] = 1  # GPUs per training or evaluation job (0: a CPU job)
    gpu_time_min: Annotated[int, Field(gt=10)] = 1440  # a GPU job's (training, evaluation, predict) time limit, minutes
    gpu_mem_gb: Annotated[float, Field(gt=0)] = 32.0  # a GPU job's memory
    gpu_cpus_per_task: Annotated[int, Field(ge=1)] = 8  # a GPU job's CPUs (nnU-Net's data loaders)
    folder: str = ".slurm"  # job scripts, logs and the record of every job (jobs.tsv), beside the study


class ExecutorConfig(Strict):
    # local: this machine, within the ``workers`` budget; slurm: jobs on a SLURM cluster (executor.slurm)
    kind: Literal["local", "slurm"] = "local"
    slurm: SlurmConfig = SlurmConfig()


class Config(Strict):
    # the study's seed: the train/test split, every synthetic sample's draws, the training (unless train.seed)
    seed: int = 42
    workers: Annotated[int, Field(ge=1)] = 2  # core budget inside a stage: subjects at once x threads each
    keep_going: bool = False  # a subject that fails is left out and listed (failures.tsv, QC tables)
    acquire: AcquireConfig = AcquireConfig()
    harmonize: HarmonizeConfig = HarmonizeConfig()
    strip: StripConfig = StripConfig()
    segment: SegmentConfig = SegmentConfig()
    synth: SynthConfig = SynthConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    # where per-head work and training run; how, never what: no stage's DVC param
    executor: ExecutorConfig = ExecutorConfig()

    def combos(self) -> list[tuple[str, str]]:
        """Every (segmenter, stripper) pair: one synthetic dataset and model each."""
        return [(seg, strip) for seg in self.segment.methods for strip in self.strip.methods]


SCHEDULE_KEYS = ("workers", "executor")  # how a stage runs, never what it makes: readable by all, no DVC param


class UndeclaredParameter(Exception):
    """A stage read a parameter its DVC params do not list. Not an ``AttributeError``: ``hasattr`` and
    ``getattr(..., default)`` would take it for a missing attribute and hide the undeclared read."""


class ParamsView:
    """A configuration a stage may read only where its DVC params (``Stage.param_keys``) say, and the schedule
    keys: reading anything else raises ``UndeclaredParameter``, so a stage's params cannot drift from what its
    code reads. A section declared whole is handed out as it is; one declared in part, as a view of its own.
    Methods of the configuration run against the view, so what they read is checked too."""

    __slots__ = ("_model", "_allowed", "_prefix", "_stage")

    def __init__(self, model: BaseModel, allowed: frozenset[str], stage: str, prefix: str = "") -> None:
        self._model, self._allowed, self._stage, self._prefix = model, allowed, stage, prefix

    def _declared(self, key: str) -> bool:
        return key in SCHEDULE_KEYS or any(key == entry or key.startswith(entry + ".") for entry in self._allowed)

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(name)
        method = type(self._model).__dict__.get(name)
        if callable(method):  # a method of the configuration, reading through the view
            return method.__get__(self)
        key, value = self._prefix + name, getattr(self._model, name)
        if self._declared(key):
            return value
        if isinstance(value, BaseModel) and any(entry.startswith(key + ".") for entry in self._allowed):
            return ParamsView(value, self._allowed, self._stage, key + ".")
        raise UndeclaredParameter(f"stage {self._stage} reads '{key}', which its DVC params do not list: add it to "
                                  f"the stage's param_keys (and run python -m pipeline dvc-yaml)")

    def __reduce__(self) -> tuple:  # stages hand their configuration to worker processes
        return ParamsView, (self._model, self._allowed, self._stage, self._prefix)


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}' (misspelled?)")
        else:
            lines.append(f"'{key}': {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def parse_config(raw: object, source: str = "params.yaml") -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    try:
        config = Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None
    if config.train.profile not in config.train.profiles and config.train.profile != AUTO_PROFILE:
        known = ", ".join(sorted([*config.train.profiles, AUTO_PROFILE]))
        raise ConfigError(f"{source}: 'train.profile': unknown profile {config.train.profile!r} (known: {known})")
    missing = [name for name in ("gpu", "quick") if name not in config.train.profiles]
    if config.train.profile == AUTO_PROFILE and missing:
        raise ConfigError(f"{source}: 'train.profile': auto chooses between the profiles gpu and quick; "
                          f"train.profiles lacks {', '.join(missing)}")
    return config


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``raw`` (params.yaml's mapping) with ``KEY=VALUE`` overrides set in place, as ``dvc exp run -S`` sets
    them: dotted keys, YAML values. A key under an unknown section is an error; the values are checked by
    ``parse_config``."""
    for override in overrides:
        dotted, _, text = override.partition("=")
        if not text:
            raise ConfigError(f"-S expects KEY=VALUE, got {override!r}")
        *sections, key = dotted.split(".")
        node = raw
        for section in sections:
            if not isinstance(node.get(section), dict):
                raise ConfigError(f"-S {dotted}: params.yaml has no section '{section}'")
            node = node[section]
        node[key] = yaml.safe_load(text)
    return raw


def load_config(path: Path = PARAMS_FILE) -> Config:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_config(raw, str(path))
