"""``synth.engine: lab2im``: the same samples drawn by the real lab2im package (Billot et al.), when installed.

lab2im's ``ImageGenerator`` builds lab2im_model (TensorFlow/keras) on one label map and generates whole
deformed volumes. We write the (padded, ``canvas``) label volume to a NIfTI with an identity affine (1 mm,
the array's own axes), build one generator per sample after seeding numpy and TensorFlow from the sample's
seed (a keras model's random ops keep their state between calls: only a fresh model makes a sample depend
on its seed alone), then take the axial slice its level draw picks (``levels``), flip it with the builtin
engine's draw, and centre it on ``size`` × ``size`` exactly as the builtin engine does.

``ImageGenerator`` takes the GMM priors and ``blur_range``; lab2im_model fixes the spatial, bias-field,
gamma and blur parameters itself (``LAB2IM_FIXED``, our defaults) and never flips or adds noise. A
configuration that asks for other values stops with a ``ConfigError`` rather than being silently ignored.

Optional: lab2im needs TensorFlow (the maintained fork vcasellesb/lab2im: TensorFlow 2.15 + keras 2.15;
the original BBillot/lab2im: numpy < 1.24), which conflicts with this environment's torch stack, so it is
not a dependency. Without it, ``synthesize_slices`` raises ``ToolMissing`` saying how to install it.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pipeline.core.config import ConfigError, SynthConfig
from pipeline.core.io import save_nifti
from pipeline.imaging.slices import center_pad, central_index, to_uint8
from pipeline.synth.canvas import synthesis_labels
from pipeline.synth.levels import Levels
from pipeline.synth.params import draw_flip, draw_level
from pipeline.tools.base import Tool

INSTALL_HINT = (
    "install the optional lab2im package: pip install git+https://github.com/vcasellesb/lab2im "
    "'tensorflow==2.15.*' 'keras==2.15.*' (the maintained fork; the original BBillot/lab2im needs numpy < 1.24), "
    "or set synth.engine: builtin"
)
TOOL = Tool("lab2im", INSTALL_HINT, modules=("lab2im", "tensorflow"))

# Values lab2im_model gives its layers itself (RandomSpatialDeformation, BiasFieldCorruption,
# IntensityAugmentation, GaussianBlur at an unchanged resolution), by SynthConfig key.
LAB2IM_FIXED: dict[str, float] = {
    "scaling_bounds": 0.15,
    "rotation_bounds_deg": 10.0,
    "shearing_bounds": 0.02,
    "nonlin_std": 4.0,
    "nonlin_scale": 0.0625,
    "bias_field_probability": 0.95,
    "bias_field_std": 0.3,
    "bias_field_scale": 0.025,
    "gamma_std": 0.2,
    "blur_sigma_vox": 0.5,
    "noise_std": 0.0,
}


# What lab2im's model has no option for: one uniform-prior Gaussian per label, its own background.
LAB2IM_ONLY: dict[str, object] = {"priors": "uniform", "subclasses": 1, "zero_background": 0.0,
                                   "resolution_probability": 0.0, "views": ["axial"]}


def check_config(cfg: SynthConfig) -> None:
    """Stop when ``cfg`` asks for a value lab2im's ImageGenerator cannot take."""
    wrong = [
        f"synth.{key} = {getattr(cfg, key)} (lab2im fixes {value})"
        for key, value in LAB2IM_FIXED.items()
        if not math.isclose(getattr(cfg, key), value, rel_tol=1e-9, abs_tol=1e-12)
    ]
    wrong += [f"synth.{key} = {getattr(cfg, key)} (lab2im has only {value})"
              for key, value in LAB2IM_ONLY.items() if getattr(cfg, key) != value]
    if wrong:
        raise ConfigError(
            "synth.engine lab2im: lab2im's ImageGenerator does not take "
            + "; ".join(wrong)
            + ". Use these values or synth.engine: builtin"
        )


def check_installed() -> None:
    """``ToolMissing`` naming the package and how to install it, unless lab2im and TensorFlow import."""
    TOOL.require()


def generator_arguments(labels_path: Path, labels: np.ndarray, cfg: SynthConfig) -> dict:
    """Keyword arguments of ``lab2im.image_generator.ImageGenerator`` for one label volume.

    Every label value present gets its own Gaussian and is returned as itself; full volumes at the input
    resolution (no cropping or resampling).
    """
    values = np.unique(labels).astype(np.int32)  # lab2im adds 1 to the largest: no uint8 overflow
    return {
        "labels_dir": str(labels_path),
        "generation_labels": values,
        "output_labels": values,
        "batchsize": 1,
        "n_channels": 1,
        "target_res": None,
        "output_shape": None,
        "prior_distributions": "uniform",
        "prior_means": list(cfg.prior_means),
        "prior_stds": list(cfg.prior_stds),
        "blur_range": cfg.blur_range,
    }


def validated(labels: np.ndarray) -> np.ndarray:
    """The label volume as uint8, or a ValueError like the builtin engine's."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label volume, got shape {labels.shape}")
    if not np.array_equal(labels, np.round(labels)):
        raise ValueError("label volume has non-integer values")
    if labels.min() < 0:
        raise ValueError("label volume has negative labels")
    if labels.max() > 255:
        raise ValueError(f"labels up to {labels.max()} do not fit the uint8 output; remap them first")
    return labels.astype(np.uint8)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """A fresh keras session, numpy's and TensorFlow's global seeds from ``seed``; numpy's state restored."""
    import tensorflow as tf

    numpy_seed, tf_seed = (int(word) for word in np.random.SeedSequence(seed).generate_state(2))
    state = np.random.get_state()
    tf.keras.backend.clear_session()
    np.random.seed(numpy_seed)
    tf.random.set_seed(tf_seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def output_slice(image: np.ndarray, labels: np.ndarray, flip: bool, size: int, plane: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A generated volume's axial slice ``plane`` (None: the middle), flipped left–right if drawn, on the
    size × size canvas."""
    z = central_index(image.shape[2]) if plane is None else int(np.clip(plane, 0, image.shape[2] - 1))
    image_slice, label_slice = image[:, :, z], labels[:, :, z]
    if flip:
        image_slice, label_slice = image_slice[::-1], label_slice[::-1]
    return center_pad(to_uint8(image_slice), size), center_pad(label_slice.astype(np.uint8), size)


def generate(arguments: dict, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One full (image, labels) volume pair from a generator built for ``seed``."""
    from lab2im.image_generator import ImageGenerator

    with seeded(seed):
        image, labels = ImageGenerator(**arguments).generate_image()
    image, labels = np.asarray(image, dtype=np.float32), np.asarray(labels)
    if image.shape != shape or labels.shape != shape:
        raise RuntimeError(f"lab2im returned volumes of shape {image.shape} and {labels.shape}, expected {shape}")
    return image, labels


def synthesize_slices(labels: np.ndarray, cfg: SynthConfig, seeds: Sequence[int],
                      levels: dict[str, Levels] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``model.synthesize_slices``' contract (uint8 images and labels, (N, size, size)), drawn by lab2im."""
    check_config(cfg)
    check_installed()
    volume = synthesis_labels(validated(labels), cfg)
    images = np.zeros((len(seeds), cfg.size, cfg.size), np.uint8)
    segmentations = np.zeros_like(images)
    with tempfile.TemporaryDirectory(prefix="lab2im-") as folder:
        path = Path(folder) / "labels.nii.gz"
        save_nifti(volume, np.eye(4), path)
        arguments = generator_arguments(path, volume, cfg)
        for index, seed in enumerate(seeds):
            image, deformed = generate(arguments, volume.shape, int(seed))
            plane = None if levels is None else levels["axial"].plane(draw_level(int(seed)))
            images[index], segmentations[index] = output_slice(image, deformed, draw_flip(int(seed), cfg), cfg.size,
                                                               plane)
    return images, segmentations
