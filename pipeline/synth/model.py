"""lab2im's generative model, rendering only the output slice (in the sample's view) of each deformed
volume.

Order of operations, lab2im's (``lab2im_model``; SynthSeg's ``labels_to_image_model`` is the same):
deform the labels (affine ∘ SVF exponential, nearest neighbour) → GMM image from the deformed labels →
bias field → white noise → clip to [0, 300] → min–max to [0, 1] → gamma → Gaussian blur (3D) → slice.
Noise comes before clipping as in lab2im's IntensityAugmentation; blurring comes last and must, since
gamma is not linear. The random left–right flip (never of a sagittal slice) is applied to the final slice
(SynthSeg flips the labels before the GMM): GMM noise is i.i.d. and every field prior is mirror-symmetric, so
both orders give the same distribution, and flipping the output costs nothing.

Departures from lab2im, each a ``synth`` option (``pipeline.core.config``): the GMM's priors per class
(``synth.priors``: lab2im's uniform ones, SynthSeg's T1 ones, or the subject's own, ``priors``); several
classes per tissue (``synth.subclasses``, ``classes``); and a background rendered as exactly 0 in a share of
the samples (``synth.zero_background``; SynthSeg resets it in some of its samples), so that the samples
look like the skull-stripped real slices the model will segment. The grey levels of the output follow
``pipeline.imaging.slices.to_uint8``, the one path real slices take too.

Only what is kept is generated: the output slice z (a plane of the case's brain, ``levels``, else Z//2) depends on
the deformed volume only on the slab z ± r (r: blur radius), so labels, intensities and fields are
computed on that slab (whole plane in x and y: the output keeps it all unless the volume is larger than
``size``). The deformation is a 3D field of the whole volume grid, evaluated at the slab's voxels;
source labels are fetched wherever the sampling coordinates point. The low-resolution fields (velocity,
bias) are drawn at their full size, so every slab voxel gets exactly the value it has in the whole
deformed volume: ``synthesize_full_volume`` builds that volume and tests compare both paths.

Min–max normalisation uses the minimum and maximum over the slab: lab2im normalises over the volume it
generates, which is its cropped output when an output shape is set; here the generated output is the
slab. ``synthesize_full_volume`` takes these statistics over the same voxels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.config import SynthConfig
from pipeline.imaging.slices import in_view, to_uint8
from pipeline.runtime.devices import torch_device
from pipeline.synth.canvas import synthesis_labels
from pipeline.synth.fields import Shape3, flow_displacement, sample_grid
from pipeline.synth.levels import Levels
from pipeline.synth.params import SampleParams, blur_radius, draw_parameters, draw_view, sample_seed, slice_noise
from pipeline.synth.priors import IntensityPriors

__all__ = ["FullVolume", "draw_parameters", "sample_seed", "synthesize_full_volume", "synthesize_slices"]

CLIP = 300.0  # lab2im's IntensityAugmentation(clip=300)
EPSILON = 1e-7  # keras' epsilon in lab2im's min–max
# The SVF's exponential. lab2im integrates by scaling and squaring on a half-resolution grid of the whole
# volume (~1 s per sample on this CPU); on coarser grids it is off by several voxels at nonlin_std = 4.
# We follow the trajectories of the nodes of a half-resolution in-plane lattice (every slice of the slab)
# with RK4, apply the affine there and interpolate the source coordinates bilinearly in plane (exact for
# the affine part). Against the exact flow this errs as much as lab2im's own integration (~0.15 voxel rms
# at nonlin_std = 4; tests/test_synth.py); 2 RK4 steps would halve that for ~25% more time per slice.
FLOW_LATTICE = 2.0  # in-plane lattice spacing, voxels (at most)
FLOW_RK4_STEPS = 1
SVF_UNIT = 2.0  # lab2im reads the velocity as half-resolution voxels while integrating (fields.py)


@dataclass(frozen=True)
class Plan:
    """Where the output slice of a volume of ``shape`` comes from, for a square output of ``size``."""

    shape: Shape3
    size: int
    radius: int  # blur half-width (voxels)
    kept: tuple[tuple[int, int], tuple[int, int]]  # in-plane ranges of the volume kept in the output
    pad: tuple[int, int]  # output offsets of the kept ranges
    centre: int  # the output slice (its z index in the volume)

    @property
    def slab(self) -> np.ndarray:
        return np.arange(self.centre - self.radius, self.centre + self.radius + 1)


def make_plan(shape: Sequence[int], cfg: SynthConfig) -> Plan:
    """The plan of the middle slice (``sample_plan``: each sample's own)."""
    shape = tuple(int(n) for n in shape)
    radius = blur_radius(cfg)
    if len(shape) != 3 or shape[2] < 2 * radius + 2 or min(shape) < 2:
        raise ValueError(f"label volume of shape {shape} is too small for a slab of {2 * radius + 1} slices")
    kept, pad = [], []
    for n in shape[:2]:
        start = max(0, (n - cfg.size) // 2)  # centre crop if larger than the output
        kept.append((start, min(n, start + cfg.size)))
        pad.append(max(0, (cfg.size - n) // 2))  # centre pad if smaller
    return Plan(shape, cfg.size, radius, tuple(kept), tuple(pad), shape[2] // 2)


@dataclass
class Batch:
    """Per-sample draws of a batch as tensors (float32 unless noted)."""

    params: list[SampleParams]
    means: torch.Tensor  # (B, n_labels)
    stds: torch.Tensor
    affine: torch.Tensor  # (B, 3, 3)
    velocity: torch.Tensor  # (B, 3, *velocity grid), voxels
    log_bias: torch.Tensor  # (B, 1, *bias grid)
    noise_std: torch.Tensor  # (B,)
    gamma: torch.Tensor  # (B,) float64 exponent exp(γ)
    kernels: torch.Tensor  # (B, 3, 2r+1)
    flip: torch.Tensor  # (B,) bool


def make_batch(params: list[SampleParams], plan: Plan, device: torch.device) -> Batch:
    def stack(values: list, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.as_tensor(np.stack(values), dtype=dtype, device=device)

    return Batch(
        params=params,
        means=stack([p.means for p in params]),
        stds=stack([p.stds for p in params]),
        affine=stack([p.affine for p in params]),
        velocity=stack([p.velocity for p in params]),
        log_bias=stack([p.log_bias for p in params]).unsqueeze(1),
        noise_std=stack([p.noise_std for p in params]),
        gamma=stack([np.exp(p.gamma) for p in params], torch.float64),
        kernels=stack([p.blur_kernels(plan.radius) for p in params]),
        flip=stack([p.flip for p in params], torch.bool),
    )


def source_coordinates(batch: Batch, shape: Shape3, zs: np.ndarray) -> torch.Tensor:
    """(B, 3, nz, X, Y) coordinates in the label volume that the voxels of slices ``zs`` sample.

    source = c + A·(p − c + u(p)): lab2im's order (SVF in output space, then the affine about the centre
    c). Computed at the lattice nodes and upsampled in plane.
    """
    dev = batch.velocity.device
    nodes = [np.linspace(0, n - 1, math.ceil((n - 1) / FLOW_LATTICE) + 1) for n in shape[:2]]
    if float(batch.velocity.abs().max()) > 0:
        u = flow_displacement(batch.velocity, shape, nodes[0], nodes[1], zs, FLOW_RK4_STEPS, SVF_UNIT)
    else:  # no non-linear deformation (its flow would be exactly 0)
        u = torch.zeros((len(batch.params), 3, len(zs), len(nodes[0]), len(nodes[1])), device=dev)
    centre = [(n - 1) / 2 for n in shape]
    offsets = [np.asarray(a, dtype=np.float64) - c for a, c in zip((*nodes, zs), centre, strict=True)]
    views = [(1, 1, -1, 1), (1, 1, 1, -1), (1, -1, 1, 1)]
    moved = [
        u[:, k] + torch.as_tensor(offsets[k], dtype=torch.float32, device=dev).view(views[k])
        for k in range(3)
    ]
    a = batch.affine.view(-1, 3, 3, 1, 1, 1)
    source = torch.stack(
        [a[:, i, 0] * moved[0] + a[:, i, 1] * moved[1] + a[:, i, 2] * moved[2] + centre[i] for i in range(3)],
        1,
    )
    batch_size, _, nz, mx, my = source.shape
    if (mx, my) == shape[:2]:
        return source
    # align_corners: node j of m sits at voxel j·(n−1)/(m−1), the linspace above
    plane = F.interpolate(
        source.view(batch_size, 3 * nz, mx, my), size=shape[:2], mode="bilinear", align_corners=True
    )
    return plane.view(batch_size, 3, nz, *shape[:2])


def render(
    volume: torch.Tensor, batch: Batch, shape: Shape3, zs: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deformed labels (long) and clipped, un-normalised image of the slices ``zs`` (whole planes).

    ``volume`` is the flattened label volume. Returns (B, nz, X, Y) tensors (z first: slabs are thin).
    """
    source = source_coordinates(batch, shape, zs)
    index = None
    for axis in range(3):
        nearest = source[:, axis].round().clamp_(0, shape[axis] - 1).long()  # edge labels beyond, as neuron's
        index = nearest if index is None else index * shape[axis] + nearest
    labels = volume.take(index).long()
    flat = labels.view(len(batch.params), -1)
    image = batch.means.gather(1, flat) + batch.stds.gather(1, flat) * _noise(batch, shape, zs, white=False)
    xs, ys = np.arange(shape[0]), np.arange(shape[1])
    log_bias = sample_grid(batch.log_bias, shape, xs, ys, zs).view_as(image)
    image = image * log_bias.double().exp().float()  # float64 exp: see _normalise_gamma
    if float(batch.noise_std.max()) > 0:
        image = image + batch.noise_std.view(-1, 1) * _noise(batch, shape, zs, white=True)
    return labels, image.clamp_(0, CLIP).view(labels.shape)


def _noise(batch: Batch, shape: Shape3, zs: np.ndarray, white: bool) -> torch.Tensor:
    """(B, nz·X·Y) standard normal noise of slices ``zs``, from each sample's per-slice streams."""
    draws = [slice_noise(p.seed, int(z), shape[:2], white) for p in batch.params for z in zs]
    return torch.from_numpy(np.stack(draws)).to(batch.means.device).view(len(batch.params), -1)


def _normalise_gamma(
    image: torch.Tensor, low: torch.Tensor, high: torch.Tensor, gamma: torch.Tensor
) -> torch.Tensor:
    """lab2im's min–max to [0, 1], then x ** exp(γ).

    pow (and the bias field's exp) run in float64 before rounding to float32: torch's vectorised and
    scalar (array tail) code paths of transcendental functions can differ by an ulp in float32, which
    would make a voxel depend on its position in the array (slab or volume, batch size); in float64 such
    a difference survives the rounding to float32 with probability ~1e-9 per voxel.
    """
    view = (-1,) + (1,) * (image.dim() - 1)
    low, high = low.view(view), high.view(view)
    image = (torch.minimum(torch.maximum(image, low), high) - low) / (high - low + EPSILON)
    return image.double().pow(gamma.view(view)).float()


def _blur_axis(image: torch.Tensor, dim: int, kernel: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian pass along ``dim`` with zero padding (lab2im's 'SAME' convolution)."""
    taps = kernel.shape[1]
    radius = taps // 2
    if radius == 0:
        return image * kernel[:, 0].view((-1,) + (1,) * (image.dim() - 1))
    pad = [0, 0] * (image.dim() - 1 - dim) + [radius, radius]
    padded = F.pad(image, pad)
    view = (-1,) + (1,) * (image.dim() - 1)
    out = None
    for k in range(taps):
        term = padded.narrow(dim, k, image.shape[dim]) * kernel[:, k].view(view)
        out = term if out is None else out + term
    return out


def _blur_centre(slab: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``_blur_axis`` along z at the slab's centre slice only: (B, 2r+1, X, Y) → (B, X, Y)."""
    out = None
    for k in range(kernel.shape[1]):
        term = slab[:, k] * kernel[:, k].view(-1, 1, 1)
        out = term if out is None else out + term
    return out


def _blur_plane(image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """In-plane passes (x then y) of (B, X, Y)."""
    return _blur_axis(_blur_axis(image, 1, kernels[:, 0]), 2, kernels[:, 1])


def _acquire_in_plane(image: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Slices (B, X, Y) of samples with a simulated in-plane voxel above 1 mm: resampled to it and back to
    1 mm (bilinear), as a low-resolution scan upsampled for segmentation (the blur before was its PSF)."""
    out = image
    for index, params in enumerate(batch.params):
        voxel = float(params.resolution[0])
        if voxel > 1:
            plane = image[index][None, None]
            low = F.interpolate(plane, scale_factor=1 / voxel, mode="bilinear", align_corners=False)
            out = out.clone() if out is image else out
            out[index] = F.interpolate(low, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    return out


def _finish(
    image: torch.Tensor, labels: torch.Tensor, batch: Batch, plan: Plan, targets: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Blurred slices (B, X, Y) and their generation classes → (B, size, size) arrays: crop, flip, grey
    levels (``pipeline.imaging.slices.to_uint8``: with a zero background, 0 outside the brain and the brain's range
    on 1..255, as a real skull-stripped slice), training labels (``targets``), pad."""
    (kx0, kx1), (ky0, ky1) = plan.kept
    image, labels = image[:, kx0:kx1, ky0:ky1], labels[:, kx0:kx1, ky0:ky1]
    flip = batch.flip.view(-1, 1, 1)
    image = _acquire_in_plane(torch.where(flip, image.flip(1), image), batch).cpu().numpy()
    labels = torch.where(flip, labels.flip(1), labels).cpu().numpy()
    grey = np.stack([to_uint8(plane, classes > 0 if params.zero_background else None)
                     for plane, classes, params in zip(image, labels, batch.params, strict=True)])
    if targets is not None:
        labels = np.asarray(targets)[labels]
    out_image = np.zeros((len(image), plan.size, plan.size), np.uint8)
    out_labels = np.zeros((len(image), plan.size, plan.size), labels.dtype)
    px, py = plan.pad
    out_image[:, px : px + image.shape[1], py : py + image.shape[2]] = grey
    out_labels[:, px : px + image.shape[1], py : py + image.shape[2]] = labels
    return out_image, out_labels


def sample_plan(plan: Plan, params: SampleParams, levels: Levels | None = None) -> Plan:
    """The plan of one sample: its output slice where ``levels`` puts its draw (None: the plan's, the middle),
    moved inwards as far as the slab needs."""
    if levels is None:
        return plan
    centre = int(np.clip(levels.plane(params.level), plan.radius, plan.shape[2] - 1 - plan.radius))
    return dataclasses.replace(plan, centre=centre)


def slab_slices(volume: torch.Tensor, batch: Batch, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Blurred float image (B, X, Y) and labels of the output slice, generating only the slab."""
    labels, image = render(volume, batch, plan.shape, plan.slab)
    image = _normalise_gamma(image, image.amin(dim=(1, 2, 3)), image.amax(dim=(1, 2, 3)), batch.gamma)
    image = _blur_plane(_blur_centre(image, batch.kernels[:, 2]), batch.kernels)  # z, x, y: full path's order
    return image, labels[:, plan.radius]


@dataclass
class FullVolume:
    """A sample generated as the whole deformed 3D volume (axes x, y, z), then sliced."""

    labels: np.ndarray  # (X, Y, Z) deformed labels
    image: np.ndarray  # (X, Y, Z) float32 in [0, 1], blurred
    slice_image: np.ndarray  # (size, size) uint8, as synthesize_slices returns it
    slice_labels: np.ndarray


def synthesize_full_volume(
    labels: np.ndarray, cfg: SynthConfig, seed: int, device: str = "cpu", priors: IntensityPriors | None = None,
    targets: np.ndarray | None = None, levels: dict[str, Levels] | None = None,
) -> FullVolume:
    """Reference path: deform and generate the entire volume, blur it in 3D, then take the output slice (axial
    views only).

    Slow and memory-hungry (whole volume); for tests and inspection. With ``cfg.pad_labels_to_size`` the
    volume is the padded one (``canvas.synthesis_labels``). Arguments as ``synthesize_slices``'.
    """
    volume, plan, n_labels, dev = prepare_volume(synthesis_labels(labels, cfg), cfg, device)
    params = draw_parameters(seed, cfg, plan.shape, n_labels, priors)
    if params.view != "axial":
        raise ValueError("synthesize_full_volume draws axial samples only")
    plan = sample_plan(plan, params, None if levels is None else levels["axial"])
    batch = make_batch([params], plan, dev)
    deformed, image = render(volume, batch, plan.shape, np.arange(plan.shape[2]))
    slab = image[:, plan.slab[0] : plan.slab[-1] + 1]
    image = _normalise_gamma(image, slab.amin(dim=(1, 2, 3)), slab.amax(dim=(1, 2, 3)), batch.gamma)
    blurred = _blur_axis(image, 1, batch.kernels[:, 2])
    blurred = _blur_axis(_blur_axis(blurred, 2, batch.kernels[:, 0]), 3, batch.kernels[:, 1])
    out_image, out_labels = _finish(blurred[:, plan.centre], deformed[:, plan.centre], batch, plan, targets)
    return FullVolume(
        labels=deformed[0].permute(1, 2, 0).cpu().numpy(),
        image=blurred[0].permute(1, 2, 0).cpu().numpy(),
        slice_image=out_image[0],
        slice_labels=out_labels[0],
    )


def prepare_volume(
    labels: np.ndarray, cfg: SynthConfig, device: str
) -> tuple[torch.Tensor, Plan, int, torch.device]:
    """Validated, flattened label volume on ``device``, its plan, and max label + 1."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label volume, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.round(labels)):
            raise ValueError("label volume has non-integer values")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise ValueError("label volume has negative labels")
    n_labels = int(labels.max()) + 1
    dtype = np.uint8 if n_labels <= 256 else np.int32
    dev = torch.device(torch_device(device))
    volume = torch.from_numpy(np.ascontiguousarray(labels, dtype=dtype)).to(dev).view(-1)
    return volume, make_plan(labels.shape, cfg), n_labels, dev


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count for a block (None: leave it), restored after."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def synthesize_slices(
    labels: np.ndarray,
    cfg: SynthConfig,
    seeds: Sequence[int],
    device: str = "cpu",
    batch_size: int = 8,
    threads: int | None = 1,
    priors: IntensityPriors | None = None,
    targets: np.ndarray | None = None,
    levels: dict[str, Levels] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """labels: 3D integer volume (RAS, ~1 mm isotropic, any label values 0..255, each its own Gaussian
    class; already cropped to the brain). Returns (images uint8 (N, size, size), labels uint8 (N, size,
    size)): a slice of each deformed volume in the sample's view (``draw_view``; the volume's axes laid out by
    ``slices.in_view``), the plane ``levels[view]`` maps its draw to (None: the middle plane); rows and columns
    are the view's first two axes (axial: x left→right, y posterior→anterior), centre-padded (or centre-cropped)
    to size × size. The padding is background: with ``cfg.pad_labels_to_size`` the label volume is padded before
    synthesis, so the image has generated background there too (``canvas``); otherwise image and labels are
    padded with 0 after. ``priors``: the GMM's per-class priors (``pipeline.synth.priors``; None: lab2im's
    uniform ones); ``targets``: the training label of each class (``pipeline.synth.classes``; None: the classes
    themselves).

    Sample i depends only on (labels, cfg, seeds[i]), not on the batch; ``device``: "cpu", "cuda" or
    "auto" (CUDA arithmetic may differ from the CPU's in the last bits). ``threads``: torch threads while
    generating (None: torch's setting). One is the most efficient: the ops are small, and a second
    OpenMP thread mostly waits (5× slower on a busy host); run subjects in parallel processes instead.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:  # before the views lay its axes out
        raise ValueError(f"expected a 3D label volume, got shape {labels.shape}")
    views = [draw_view(int(seed), cfg) for seed in seeds]
    prepared = {view: prepare_volume(synthesis_labels(in_view(labels, view), cfg), cfg, device)
                for view in dict.fromkeys(views)}
    n_labels = max(item[2] for item in prepared.values()) if prepared else 0
    if n_labels > 256:
        raise ValueError(f"labels up to {n_labels - 1} do not fit the uint8 output; remap them first")
    images = np.zeros((len(seeds), cfg.size, cfg.size), np.uint8)
    segmentations = np.zeros_like(images)
    params = [draw_parameters(int(seed), cfg, prepared[view][1].shape, n_labels, priors)
              for seed, view in zip(seeds, views, strict=True)]
    by_slice: dict[tuple[str, int], list[int]] = {}  # samples of one view's plane share a slab: batched together
    for index, sample in enumerate(params):
        plan = sample_plan(prepared[sample.view][1], sample, None if levels is None else levels[sample.view])
        by_slice.setdefault((sample.view, plan.centre), []).append(index)
    with torch_threads(threads):
        for (view, centre), indices in by_slice.items():
            volume, plan, _, dev = prepared[view]
            slice_plan = dataclasses.replace(plan, centre=centre)
            for start in range(0, len(indices), batch_size):
                chosen = indices[start : start + batch_size]
                batch = make_batch([params[i] for i in chosen], slice_plan, dev)
                image, segmentation = _finish(*slab_slices(volume, batch, slice_plan), batch, slice_plan, targets)
                images[chosen], segmentations[chosen] = image, segmentation
    return images, segmentations
