"""Seeds and per-sample random draws of the lab2im generative model.

Every random quantity of a sample comes from that sample's own seed, through one numpy stream per
component (``SeedSequence(seed, spawn_key=(stream,))``): the draws of a sample never depend on the
batch it is generated in, on the other samples, or on the sizes of the other components (a larger
volume changes the velocity grid, not the GMM means). Voxel noise is drawn per axial slice from its
own stream, so a voxel's noise is the same whether one slab or the whole volume is generated.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from pipeline.core.config import SynthConfig
from pipeline.imaging.slices import rows_left_right
from pipeline.synth.priors import IntensityPriors

# One stream per component; never renumber (it would change every dataset).
(_MEANS, _STDS, _AFFINE, _VELOCITY, _BIAS, _INTENSITY, _BLUR, _FLIP, _GMM_NOISE, _WHITE_NOISE, _BACKGROUND,
 _SLICE, _RESOLUTION, _VIEW, _REAL) = range(15)
ACQUISITION_BLUR = 0.75  # lab2im's blurring_sigma_for_downsampling: σ = 0.75 × (low resolution / 1 mm)


def sample_seed(global_seed: int, subject: str, index: int) -> int:
    """Stable 63-bit seed of one sample: sha256 of (global seed, subject, index), never Python's hash()."""
    key = json.dumps([int(global_seed), str(subject), int(index)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def grid_shape(shape: tuple[int, ...], scale: float) -> tuple[int, ...]:
    """Low-resolution grid of a field, as lab2im's ``get_resample_shape`` (ceil of shape × scale)."""
    return tuple(max(1, math.ceil(n * scale)) for n in shape)


def blur_radius(cfg: SynthConfig) -> int:
    """Half-width of lab2im's blurring kernel: window = int(ceil(2.5·σ)/2)·2 + 1 for the nominal σ, or for the
    largest σ a simulated acquisition can ask for (``synth.resolution_probability``)."""
    sigma = cfg.blur_sigma_vox
    if cfg.resolution_probability > 0:
        sigma = max(sigma * cfg.blur_range, ACQUISITION_BLUR * max(cfg.max_thickness_mm, cfg.max_in_plane_mm))
    return int(math.ceil(2.5 * sigma) / 2)


@dataclass(frozen=True, eq=False)
class SampleParams:
    """All random draws of one sample (float64 numpy; cast once when batched)."""

    seed: int
    means: np.ndarray  # (n_labels,): GMM mean of label value i
    stds: np.ndarray  # (n_labels,)
    scaling: np.ndarray  # (3,)
    rotation_deg: np.ndarray  # (3,) about x, y, z
    shearing: np.ndarray  # (6,)
    nonlin_std: float  # σ of the velocity field, ~ U(0, nonlin_std)
    velocity: np.ndarray  # (3, *velocity grid): stationary velocity, voxels
    bias_applied: bool
    bias_std: float  # σ of the log bias field, ~ U(0, bias_field_std) (drawn even when not applied)
    log_bias: np.ndarray  # (*bias grid): zeros when the bias field is not applied
    noise_std: float  # white noise σ, intensity units, ~ U(0, noise_std)
    gamma: float  # log of the gamma exponent, ~ N(0, gamma_std)
    blur_sigma: np.ndarray  # (3,) voxels
    resolution: np.ndarray  # (3,) mm: the simulated acquisition's voxel (1: the label map's own, 1 mm)
    flip: bool
    zero_background: bool  # label 0 rendered as exactly 0: a skull-stripped scan
    level: float  # ~ U(0, 1): the output slice's plane, as the case's levels map it (``pipeline.synth.levels``)
    view: str  # the plane the slice is cut in (synth.views): the volume's axes are those of ``slices.in_view``

    @property
    def affine(self) -> np.ndarray:
        """3×3 matrix of lab2im's ``sample_affine_transform``: scaling · shearing · (Rx · Ry · Rz)."""
        return np.diag(self.scaling) @ _shearing_matrix(self.shearing) @ _rotation_matrix(self.rotation_deg)

    def blur_kernels(self, radius: int) -> np.ndarray:
        """(3, 2r+1) normalised Gaussian taps per axis, truncated at ``radius`` like lab2im's kernel."""
        taps = np.arange(-radius, radius + 1, dtype=np.float64)
        sigma = np.maximum(self.blur_sigma, 1e-6)[:, None]
        kernels = np.exp(-(taps**2) / (2 * sigma**2))
        return kernels / kernels.sum(axis=1, keepdims=True)


def _rotation_matrix(degrees: np.ndarray) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _shearing_matrix(s: np.ndarray) -> np.ndarray:
    return np.array([[1, s[0], s[1]], [s[2], 1, s[3]], [s[4], s[5], 1]])


def draw_parameters(
    seed: int, cfg: SynthConfig, shape: tuple[int, int, int], n_labels: int = 4,
    priors: IntensityPriors | None = None,
) -> SampleParams:
    """Draw every random parameter of one sample for a label volume of ``shape`` (in its view's axes: ``shape``
    is the label map's as ``slices.in_view`` lays it out for ``draw_view(seed, cfg)``).

    ``n_labels`` is max label value + 1; label value i gets the i-th draw of the means/stds streams, so a
    label's Gaussian does not depend on which other labels exist. ``priors``: the GMM's priors per label
    (None: lab2im's, ``cfg.prior_means`` and ``cfg.prior_stds`` for every label).
    """
    shape = tuple(int(n) for n in shape)
    view = draw_view(seed, cfg)
    affine = _rng(seed, _AFFINE)
    scaling = affine.uniform(1 - cfg.scaling_bounds, 1 + cfg.scaling_bounds, 3)
    rotation = affine.uniform(-cfg.rotation_bounds_deg, cfg.rotation_bounds_deg, 3)
    shearing = affine.uniform(-cfg.shearing_bounds, cfg.shearing_bounds, 6)
    vel = _rng(seed, _VELOCITY)
    nonlin_std = float(vel.uniform(0, cfg.nonlin_std))
    velocity = vel.standard_normal((3, *grid_shape(shape, cfg.nonlin_scale))) * nonlin_std
    bias = _rng(seed, _BIAS)
    bias_applied = bool(bias.uniform() < cfg.bias_field_probability)
    bias_std = float(bias.uniform(0, cfg.bias_field_std))
    log_bias = bias.standard_normal(grid_shape(shape, cfg.bias_field_scale)) * bias_std
    intensity = _rng(seed, _INTENSITY)
    noise_std = float(intensity.uniform(0, cfg.noise_std))
    gamma = float(intensity.normal(0, cfg.gamma_std))
    blur = _rng(seed, _BLUR).uniform(1 / cfg.blur_range, cfg.blur_range, 3) * cfg.blur_sigma_vox
    resolution = draw_resolution(seed, cfg)
    blur = np.where(resolution > 1, np.maximum(blur, ACQUISITION_BLUR * resolution), blur)
    if priors is None:
        means = _rng(seed, _MEANS).uniform(*cfg.prior_means, n_labels)
        stds = _rng(seed, _STDS).uniform(*cfg.prior_stds, n_labels)
    else:
        means, stds = priors.draw(_rng(seed, _MEANS), _rng(seed, _STDS), n_labels)
    zero_background = bool(_rng(seed, _BACKGROUND).uniform() < cfg.zero_background)
    if zero_background:
        means, stds = means.copy(), stds.copy()
        means[0] = stds[0] = 0.0
    return SampleParams(
        seed=seed,
        means=means,
        stds=stds,
        scaling=scaling,
        rotation_deg=rotation,
        shearing=shearing,
        nonlin_std=nonlin_std,
        velocity=velocity,
        bias_applied=bias_applied,
        bias_std=bias_std,
        log_bias=log_bias if bias_applied else np.zeros_like(log_bias),
        noise_std=noise_std,
        gamma=gamma,
        blur_sigma=blur,
        resolution=resolution,
        flip=draw_flip(seed, cfg) and rows_left_right(view),  # a sagittal slice's rows run front to back
        zero_background=zero_background,
        level=draw_level(seed),
        view=view,
    )


def draw_flip(seed: int, cfg: SynthConfig) -> bool:
    """The sample's random left–right flip (its own stream: the lab2im engine draws it alone)."""
    return bool(_rng(seed, _FLIP).uniform() < cfg.flip_probability)


def draw_resolution(seed: int, cfg: SynthConfig) -> np.ndarray:
    """(x, y, z) mm of a simulated acquisition (SynthSeg's resolution randomisation, for axial slices): in a
    share ``resolution_probability`` of the samples, in-plane ~ U(1, max_in_plane_mm) and slice thickness ~
    U(1, max_thickness_mm); otherwise 1 mm."""
    stream = _rng(seed, _RESOLUTION)
    if stream.uniform() >= cfg.resolution_probability:
        return np.ones(3)
    in_plane = stream.uniform(1.0, cfg.max_in_plane_mm)
    return np.array([in_plane, in_plane, stream.uniform(1.0, cfg.max_thickness_mm)])


def draw_view(seed: int, cfg: SynthConfig) -> str:
    """The plane the sample is cut in, one of ``synth.views`` (its own stream: the volume's shape, which other
    draws depend on, follows from it)."""
    if len(cfg.views) == 1:
        return cfg.views[0]
    return cfg.views[int(_rng(seed, _VIEW).integers(len(cfg.views)))]


def draw_level(seed: int) -> float:
    """The draw ~ U(0, 1) that picks the sample's output plane (its own stream, as the flip)."""
    return float(_rng(seed, _SLICE).uniform())


def draw_real(seed: int, cfg: SynthConfig) -> bool:
    """Whether the sample is a real slice of its training head instead of a synthetic one (``pipeline.synth.real``):
    ~ Bernoulli(``real_fraction``), from its own stream, so the sample's other draws (its view and level among
    them) are the same either way and ``real_fraction: 0`` leaves every synthetic sample as it was."""
    return cfg.real_fraction > 0 and bool(_rng(seed, _REAL).uniform() < cfg.real_fraction)


def slice_noise(seed: int, z: int, plane: tuple[int, int], white: bool = False) -> np.ndarray:
    """Standard normal noise of axial slice ``z`` (full in-plane size), from its own stream."""
    stream = _WHITE_NOISE if white else _GMM_NOISE
    return _rng(seed, stream, z).standard_normal(plane, dtype=np.float32)
