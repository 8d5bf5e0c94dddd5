"""A trained model applied in this process (``SlicePredictor``): read by the evaluate stage, ``predict`` and the
benches, never by the train stage (``pipeline.nnunet.models`` holds what training writes)."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

import numpy as np

from pipeline.core.config import Precision, Window
from pipeline.imaging.slices import rows_left_right
from pipeline.nnunet.models import model_folder
from pipeline.nnunet.runner import TRAINER_DIR
from pipeline.runtime.devices import uses_mixed_precision
from pipeline.runtime.environ import scoped_environ


class SlicePredictor:
    """A trained network in this process, segmenting 8-bit slices exactly as ``nnUNetv2_predict`` segments the
    same slices read from PNGs (``NaturalImage2DIO``'s layout and spacing, nnU-Net's own preprocessing, sliding
    window and export), without a process and a file per slice, and with the tiles of many slices through the
    network at once (``batch_size`` patch-sized tiles a call: ``tile_batch_size``). nnU-Net's per-tile arithmetic is
    kept, in its order (Gaussian weights, half-precision sums): a slice's labels do not depend on the batch it was
    in. In mixed precision (``precision``; by default on a GPU, as nnU-Net's own prediction, and on a CPU that
    computes bfloat16 natively) labels differ from float32's only where two classes all but tie.

    ``window``: ``nnunet``, nnU-Net's sliding window of patch-sized tiles, half-overlapping (a mid-brain slice is
    four tiles); ``plane``, each slice one tile, padded to the network's stride (the same arithmetic, about half
    the pixels through the network; labels differ where the tiles' context did: docs/benchmarks.md)."""

    def __init__(self, predictor, batch_size: int | None = None, precision: Precision = "auto",
                 window: Window = "nnunet") -> None:
        self.predictor = predictor  # an initialised nnUNetPredictor
        self._batch_size = batch_size
        for name, value, kind in (("precision", precision, Precision), ("window", window, Window)):
            if value not in get_args(kind):
                raise ValueError(f"{name} {value!r} is not one of {get_args(kind)}")
        self.precision, self.window = precision, window

    @property
    def mixed_precision(self) -> bool:
        """Whether the network runs in torch's autocast (mixed) precision: ``precision`` "mixed", or "auto" where
        the device computes it natively (``native_mixed_precision``)."""
        return uses_mixed_precision(self.precision, self.predictor.device.type)

    @property
    def batch_size(self) -> int:
        """Tiles a network call (sized to the device the first time it is asked)."""
        if self._batch_size is None:
            self._batch_size = tile_batch_size(self.predictor, value_bytes=2 if self.mixed_precision else 4)
        return self._batch_size

    @classmethod
    def from_folder(cls, models: Path, dataset_id: int, trainer: str, fold: str, device: str, tta: bool,
                    batch_size: int | None = None, precision: Precision = "auto", window: Window = "nnunet"
                    ) -> SlicePredictor:
        """The model a train stage wrote under ``models`` (nnU-Net's results root)."""
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        # nnU-Net prints where it finds the trainer class (by name, in the folders nnUNet_extTrainer names) and, on a
        # CPU, that it cannot work on the device: not for the user's terminal, nor a benchmark's JSON
        with scoped_environ({"nnUNet_extTrainer": str(TRAINER_DIR)}), \
                contextlib.redirect_stdout(io.StringIO()):
            predictor = nnUNetPredictor(use_mirroring=tta, perform_everything_on_device=device == "cuda",
                                        device=torch.device(device), verbose=False, allow_tqdm=False)
            predictor.initialize_from_trained_model_folder(str(model_folder(models, dataset_id, trainer)), (fold,))
        return cls(predictor, batch_size, precision, window)

    @classmethod
    def from_trainer(cls, trainer, precision: Precision = "auto", window: Window = "nnunet") -> SlicePredictor:
        """A trainer's network as it is now (deep supervision off: call while it is set so)."""
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        with contextlib.redirect_stdout(io.StringIO()):  # on a CPU nnU-Net prints that it cannot work on the device
            predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=trainer.device.type == "cuda",
                                        device=trainer.device, verbose=False, allow_tqdm=False)
        network = getattr(trainer.network, "_orig_mod", trainer.network)  # torch.compile's wrapper, if any
        predictor.manual_initialization(network, trainer.plans_manager, trainer.configuration_manager,
                                        [network.state_dict()], trainer.dataset_json, type(trainer).__name__,
                                        trainer.inference_allowed_mirroring_axes)
        return cls(predictor, precision=precision, window=window)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The labels (uint8, (N, H, W)) of N 2D uint8 images (N, H, W)."""
        return np.stack([self._export(logits, properties)
                         for logits, properties in self._logits(images)]).astype(np.uint8)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """The class probabilities (float32, (N, classes, H, W)) of N 2D uint8 images (N, H, W)."""
        return np.stack([self._export(logits, properties, probabilities=True)
                         for logits, properties in self._logits(images)])

    def probabilities_in(self, view: str) -> Callable[[np.ndarray], np.ndarray]:
        """``probabilities`` for ``view``'s slices: test-time mirroring (left-right) only where rows run left-right
        (a sagittal slice mirrored would face backwards)."""
        if rows_left_right(view) or not self.predictor.use_mirroring:
            return self.probabilities
        predictor = copy.copy(self.predictor)  # the same network, mirroring off
        predictor.use_mirroring = False
        return SlicePredictor(predictor, self._batch_size, self.precision, self.window).probabilities

    def _logits(self, images: np.ndarray) -> list[tuple[object, dict]]:
        """Each image through nnU-Net's preprocessing (crop to its non-zero box, normalisation), then its window's
        tiles, every image's together, through the network, tiles of one shape a call (``tiles_per_call``): (logits
        on the cropped image, nnU-Net's properties) per image."""
        import torch
        from acvl_utils.cropping_and_padding.padding import pad_nd_image
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        predictor = self.predictor
        patch = tuple(predictor.configuration_manager.patch_size)
        # a whole plane must halve evenly at each of the network's poolings
        stride = tuple(np.prod(predictor.configuration_manager.pool_op_kernel_sizes, axis=0).tolist())
        preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
        device = predictor.device
        predictor.network = predictor.network.to(device).eval()  # as nnU-Net's own prediction does
        classes = predictor.label_manager.num_segmentation_heads
        padded, tiles, sums = [], {}, []
        for index, image in enumerate(images):
            data, _, properties = preprocessor.run_case_npy(
                image[None, None].astype(np.float32), None, {"spacing": [999, 1, 1]}, predictor.plans_manager,
                predictor.configuration_manager, predictor.dataset_json)
            data, revert = pad_nd_image(torch.from_numpy(data[:, 0]), patch, "constant", {"value": 0}, True,
                                        stride if self.window == "plane" else None)
            padded.append((data.to(device), revert, properties))
            tile = patch if self.window == "nnunet" else tuple(data.shape[1:])
            steps = compute_steps_for_sliding_window(data.shape[1:], tile, predictor.tile_step_size)
            tiles.setdefault(tile, []).extend((index, x, y) for x in steps[0] for y in steps[1])
            sums.append((torch.zeros((classes, *data.shape[1:]), dtype=torch.half, device=device),
                         torch.zeros(data.shape[1:], dtype=torch.half, device=device)))
        with torch.inference_mode(), torch.autocast(device.type, enabled=self.mixed_precision):
            for tile, chosen_tiles in tiles.items():
                self._predict_tiles(tile, chosen_tiles, padded, sums)
        out = []
        for (_, revert, properties), (logits, counts) in zip(padded, sums, strict=True):
            torch.div(logits, counts, out=logits)
            out.append((logits[(slice(None), *revert[1:])][:, None].cpu(), properties))
        return out

    def _predict_tiles(self, tile: tuple[int, int], tiles: list[tuple[int, int, int]], padded: list, sums: list
                       ) -> None:
        """Tiles of one shape through the network, as many a call as ``batch_size`` patches hold pixels, each added
        to its image's sums with nnU-Net's Gaussian weight (a whole plane, the only tile of its image: weight 1,
        which its sums would divide out but for half precision's rounding)."""
        import torch
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        predictor = self.predictor
        if self.window == "nnunet":
            weight = compute_gaussian(tile, sigma_scale=1. / 8, value_scaling_factor=10, device=predictor.device)
        else:
            weight = torch.ones(tile, dtype=torch.half, device=predictor.device)
        per_call = tiles_per_call(self.batch_size, predictor.configuration_manager.patch_size, tile)
        for start in range(0, len(tiles), per_call):
            chosen = tiles[start:start + per_call]
            batch = torch.stack([padded[i][0][:, x:x + tile[0], y:y + tile[1]] for i, x, y in chosen])
            predictions = predictor._internal_maybe_mirror_and_predict(batch)
            for (i, x, y), prediction in zip(chosen, predictions, strict=True):
                logits, counts = sums[i]
                logits[:, x:x + tile[0], y:y + tile[1]] += prediction * weight
                counts[x:x + tile[0], y:y + tile[1]] += weight

    def _export(self, logits, properties: dict, probabilities: bool = False) -> np.ndarray:
        """nnU-Net's own conversion of one image's logits to its labels or probabilities, uncropped."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        predictor = self.predictor
        result = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, properties,
            return_probabilities=probabilities)
        if probabilities:
            return np.asarray(result[1][:, 0], dtype=np.float32)
        return np.asarray(result[0], dtype=np.uint8)


def tiles_per_call(batch_size: int, patch: Sequence[int], tile: Sequence[int]) -> int:
    """Tiles of shape ``tile`` a network call takes: as many as hold the pixels of ``batch_size`` patches (at
    least one), so that a call's memory does not grow with the tiles' size."""
    return max(1, batch_size * int(np.prod(patch)) // int(np.prod(tile)))


def tile_batch_size(predictor, cpu_tiles: int = 16, share_of_free_memory: float = 0.5, value_bytes: int = 2) -> int:
    """Tiles a network call takes: on a GPU as many as half its free memory holds (every full-resolution
    activation of a tile, times two for the decoder's, ``value_bytes`` each: 2 in mixed precision, 4 in float32,
    with mirroring's extra pass), at most 1024; on a CPU ``cpu_tiles`` (larger batches gain nothing there and cost
    memory)."""
    import torch

    if predictor.device.type != "cuda":
        return cpu_tiles
    free, _ = torch.cuda.mem_get_info(predictor.device)
    patch = predictor.configuration_manager.patch_size
    features = predictor.configuration_manager.network_arch_init_kwargs["features_per_stage"]
    # per stage: ~6 tensors (convolutions, norms, non-linearities) of features x pixels, halved per stage
    per_tile = sum(6 * f * int(np.prod(patch)) // 4 ** s for s, f in enumerate(features)) * 2 * value_bytes
    per_tile *= 2 if predictor.use_mirroring else 1
    return int(max(1, min(1024, share_of_free_memory * free // per_tile)))
