"""The one typed configuration of the pipeline, read from ``params.yaml``.

Every key is declared here; an unknown or misspelled key, a wrong type or an
unknown method stops with a message naming the key (``ConfigError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PARAMS_FILE = Path("params.yaml")

StripMethod = Literal["deepbet"]
SegmentMethod = Literal["hmrf"]
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
    source: Literal["sample", "bids", "openneuro"] = "sample"
    bids_root: str | None = None  # for source=bids
    dataset: str = "ds002330"  # for source=openneuro
    subjects: list[str] = []  # empty: every subject found
    test_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2


# --- harmonize ---------------------------------------------------------------
class SynthSRConfig(Strict):
    threads: Annotated[int, Field(ge=1)] = 2
    cpu: bool = True


class HarmonizeConfig(Strict):
    method: Literal["builtin", "synthsr"] = "builtin"
    voxel_size_mm: Annotated[float, Field(gt=0.2, le=4.0)] = 1.0
    n4: bool = True
    n4_shrink: Annotated[int, Field(ge=1, le=8)] = 4
    n4_iterations: Annotated[int, Field(ge=1)] = 30
    percentiles: Range = (0.5, 99.5)
    synthsr: SynthSRConfig = SynthSRConfig()


# --- strip -------------------------------------------------------------------
class DeepbetConfig(Strict):
    threshold: Probability = 0.5
    n_dilate: int = 0


class HdbetConfig(Strict):
    mode: Literal["fast", "accurate"] = "fast"
    tta: bool = False


class RobexConfig(Strict):
    seed: int = 0


class SynthStripConfig(Strict):
    model: str | None = None  # a SynthStrip .pt file: use nipreps-synthstrip instead of mri_synthstrip
    border_mm: int = 1


class StripConfig(Strict):
    methods: list[StripMethod] = ["deepbet"]
    crop_margin_vox: Annotated[int, Field(ge=0)] = 4
    deepbet: DeepbetConfig = DeepbetConfig()
    hdbet: HdbetConfig = HdbetConfig()
    robex: RobexConfig = RobexConfig()
    synthstrip: SynthStripConfig = SynthStripConfig()

    _unique = field_validator("methods")(_unique)


# --- segment -----------------------------------------------------------------
class HmrfConfig(Strict):
    beta: Annotated[float, Field(ge=0.0)] = 0.1
    max_iterations: Annotated[int, Field(ge=1)] = 10
    tolerance: float = 1e-5


class SegmentConfig(Strict):
    methods: list[SegmentMethod] = ["hmrf"]
    hmrf: HmrfConfig = HmrfConfig()

    _unique = field_validator("methods")(_unique)


# --- synthesize (lab2im's defaults) --------------------------------------------
class SynthConfig(Strict):
    n_train: Annotated[int, Field(ge=1)] = 60
    n_test: Annotated[int, Field(ge=1)] = 12
    size: Annotated[int, Field(ge=32)] = 256
    prior_means: Range = (25.0, 225.0)
    prior_stds: Range = (5.0, 25.0)
    scaling_bounds: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.15
    rotation_bounds_deg: Annotated[float, Field(ge=0.0, le=180.0)] = 10.0
    shearing_bounds: Annotated[float, Field(ge=0.0)] = 0.02
    nonlin_std: Annotated[float, Field(ge=0.0)] = 4.0
    nonlin_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 1 / 16
    bias_field_probability: Probability = 0.95
    bias_field_std: Annotated[float, Field(ge=0.0)] = 0.3
    bias_field_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.025
    gamma_std: Annotated[float, Field(ge=0.0)] = 0.2
    blur_sigma_vox: Annotated[float, Field(ge=0.0)] = 0.5
    blur_range: Annotated[float, Field(ge=1.0)] = 1.15
    flip_probability: Probability = 0.5
    noise_std: Annotated[float, Field(ge=0.0)] = 0.0


# --- train / evaluate --------------------------------------------------------
class TrainProfile(Strict):
    epochs: Annotated[int, Field(ge=1)]
    iterations_per_epoch: Annotated[int, Field(ge=1)]
    val_iterations_per_epoch: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)] | None = None  # None: nnU-Net's plan
    base_features: Annotated[int, Field(ge=1)] | None = None  # first-stage width; None: nnU-Net's plan (32)


class TrainConfig(Strict):
    profile: str = "ci"
    profiles: dict[str, TrainProfile] = {
        "ci": TrainProfile(epochs=2, iterations_per_epoch=5, val_iterations_per_epoch=2, batch_size=4, base_features=8),
    }
    fold: Literal[0, 1, 2, 3, 4, "all"] = "all"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    predict_tta: bool = False  # nnU-Net's mirroring at prediction: better Dice, 4x (2D) the time

    def active_profile(self) -> TrainProfile:
        return self.profiles[self.profile]


class Config(Strict):
    seed: int = 42
    workers: Annotated[int, Field(ge=1)] = 2  # core budget inside a stage
    acquire: AcquireConfig = AcquireConfig()
    harmonize: HarmonizeConfig = HarmonizeConfig()
    strip: StripConfig = StripConfig()
    segment: SegmentConfig = SegmentConfig()
    synth: SynthConfig = SynthConfig()
    train: TrainConfig = TrainConfig()

    def combos(self) -> list[tuple[str, str]]:
        """Every (segmenter, stripper) pair: one synthetic dataset and model each."""
        return [(seg, strip) for seg in self.segment.methods for strip in self.strip.methods]


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
    if config.train.profile not in config.train.profiles:
        known = ", ".join(sorted(config.train.profiles))
        raise ConfigError(f"{source}: 'train.profile': unknown profile {config.train.profile!r} (known: {known})")
    return config


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
